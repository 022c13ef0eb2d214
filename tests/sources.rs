//! Event sources that are not sockets: file descriptors registered with
//! `add_fd` (edge and level triggered) and channels fed from other threads.

mod util;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use msgloop::{
    ChannelError, ChannelMessage, Ctx, Error, Handler, Interest, Reactor, Readiness, SocketId,
    SocketKind, Trigger,
};

#[derive(Default)]
struct Rec {
    ready: Vec<(SocketId, Readiness)>,
    /// Bytes read in `on_ready` (at most `read_per_call` per call).
    read: Vec<u8>,
    read_per_call: usize,
    eof: bool,
    messages: Vec<(SocketId, u32)>,
    strings: Vec<String>,
    wakes: usize,
}

impl Handler for Rec {
    fn on_ready(&mut self, cx: &mut Ctx, fd: SocketId, ready: Readiness) {
        self.ready.push((fd, ready));
        if self.read_per_call == 0 {
            return;
        }
        let s = cx
            .fd_source::<UnixStream>(fd)
            .expect("the stream given to add_fd");
        let mut buf = vec![0u8; self.read_per_call];
        match s.read(&mut buf) {
            Ok(0) => self.eof = true,
            Ok(n) => self.read.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read: {e}"),
        }
    }

    fn on_channel(&mut self, _cx: &mut Ctx, channel: SocketId, msg: ChannelMessage) {
        match msg.downcast::<u32>() {
            Ok(n) => self.messages.push((channel, n)),
            Err(msg) => self
                .strings
                .push(msg.downcast::<String>().expect("u32 or String")),
        }
    }

    fn on_wake(&mut self, _cx: &mut Ctx) {
        self.wakes += 1;
    }
}

fn run_until(r: &mut Reactor, h: &mut Rec, mut done: impl FnMut(&Rec) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done(h) {
        assert!(Instant::now() < deadline, "timed out");
        r.run_once(h, Some(Duration::from_millis(50))).unwrap();
    }
}

#[test]
fn an_edge_triggered_descriptor_reports_each_edge_once() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let id = r.add_fd(ours, Interest::READABLE, Trigger::Edge).unwrap();
    assert_eq!(r.kind(id).unwrap(), SocketKind::Fd);
    let mut h = Rec {
        read_per_call: 2,
        ..Rec::default()
    };
    theirs.write_all(b"hello").unwrap();
    run_until(&mut r, &mut h, |h| !h.ready.is_empty());
    assert!(h.ready[0].1.readable);
    // Edge: the handler read 2 of 5 bytes; no new edge, no new call.
    for _ in 0..5 {
        r.run_once(&mut h, Some(Duration::from_millis(10))).unwrap();
    }
    assert_eq!(h.ready.len(), 1, "edge-triggered: one call per edge");
    assert_eq!(h.read, b"he");
    // A new write is a new edge.
    theirs.write_all(b"!").unwrap();
    run_until(&mut r, &mut h, |h| h.ready.len() == 2);
    // The writer closes: reported as closed (and readable).
    drop(theirs);
    run_until(&mut r, &mut h, |h| {
        h.ready.last().is_some_and(|(_, x)| x.closed)
    });
    r.close(id).unwrap();
}

#[test]
fn a_level_triggered_descriptor_is_reported_while_ready() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    // Level-triggered sources suit blocking descriptors (stdin): the
    // handler reads once per call and is called again while data is left.
    let id = r.add_fd(ours, Interest::READABLE, Trigger::Level).unwrap();
    let mut h = Rec {
        read_per_call: 2,
        ..Rec::default()
    };
    theirs.write_all(b"hello").unwrap();
    run_until(&mut r, &mut h, |h| h.read.len() == 5);
    assert_eq!(h.read, b"hello");
    assert_eq!(h.ready.len(), 3, "2 + 2 + 1 bytes");
    // Drained: no more calls.
    for _ in 0..5 {
        r.run_once(&mut h, Some(Duration::from_millis(10))).unwrap();
    }
    assert_eq!(h.ready.len(), 3);
    drop(theirs);
    run_until(&mut r, &mut h, |h| h.eof);
    r.close(id).unwrap();
}

#[test]
fn a_regular_file_cannot_be_watched_and_the_error_says_so() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let f = util::fds::tempfile();
    match r.add_fd(f, Interest::READABLE, Trigger::Edge) {
        Err(Error::Io(e)) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
        other => panic!("expected EPERM, got {other:?}"),
    }
    assert_eq!(r.socket_count(), 0);
}

#[test]
fn channel_messages_arrive_in_order_from_other_threads() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let (tx, chan) = r.channel::<u32>(1024).unwrap();
    assert_eq!(r.kind(chan).unwrap(), SocketKind::Channel);
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for i in 0..200u32 {
                    let mut msg = t * 1000 + i;
                    // Bounded: a full channel gives the message back.
                    loop {
                        match tx.send(msg) {
                            Ok(()) => break,
                            Err(ChannelError::Full(m)) => {
                                msg = m;
                                std::thread::yield_now();
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            })
        })
        .collect();
    let mut h = Rec::default();
    run_until(&mut r, &mut h, |h| h.messages.len() == 800);
    for t in threads {
        t.join().unwrap();
    }
    // Each thread's messages in the order it sent them.
    for t in 0..4u32 {
        let mine: Vec<u32> = h
            .messages
            .iter()
            .filter(|(c, m)| *c == chan && m / 1000 == t)
            .map(|(_, m)| m % 1000)
            .collect();
        assert_eq!(mine, (0..200).collect::<Vec<_>>());
    }
    assert_eq!(h.wakes, 0, "channel sends are not Waker wake-ups");
    assert_eq!(r.stats(chan).unwrap().messages_in, 800);
    r.close(chan).unwrap();
    assert!(matches!(tx.send(1), Err(ChannelError::Closed(1))));
}

#[test]
fn a_full_channel_refuses_and_a_waker_still_wakes() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let (tx, _chan) = r.channel::<String>(2).unwrap();
    tx.send("a".into()).unwrap();
    tx.send("b".into()).unwrap();
    assert!(matches!(tx.send("c".into()), Err(ChannelError::Full(s)) if s == "c"));
    let waker = r.waker().unwrap();
    waker.wake().unwrap();
    let mut h = Rec::default();
    run_until(&mut r, &mut h, |h| h.strings.len() == 2 && h.wakes == 1);
    assert_eq!(h.strings, ["a", "b"]);
    // Room again.
    tx.send("d".into()).unwrap();
    run_until(&mut r, &mut h, |h| h.strings.len() == 3);
    drop(r);
    assert!(matches!(tx.send("e".into()), Err(ChannelError::Closed(_))));
}
