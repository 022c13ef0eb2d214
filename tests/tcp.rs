//! Length-prefixed TCP frames through the `Reactor`: listeners, accepted
//! and outgoing connections, the read path (oversized headers, pipelining,
//! one byte per write, slow-loris), the bounded write path (`QueueFull`,
//! `on_writable`, coalescing), close reasons and the connection cap.
//!
//! Clients are plain std `TcpStream`s driven from the test thread between
//! `run_once` calls: no threads, every wait bounded.

mod util;

use std::collections::HashSet;
use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use msgloop::framing::{FrameConfig, FrameError, LengthWidth};
use msgloop::{socket2, TcpOptions};
use msgloop::{CloseReason, Ctx, Error, Handler, PeerAddr, Reactor, SocketId, SocketKind};
use util::conn::{Common, ConnLog};

// ---- a recording handler for TCP -------------------------------------------

/// One TCP callback, in order.
#[derive(Debug)]
enum Ev {
    Accept {
        listener: SocketId,
        conn: SocketId,
        peer: PeerAddr,
    },
    Connect(SocketId),
    Frame {
        conn: SocketId,
        data: Vec<u8>,
    },
    Writable(SocketId),
    Close {
        sock: SocketId,
        reason: CloseReason,
    },
    Error {
        sock: SocketId,
        error: Error,
    },
}

impl Ev {
    fn sock(&self) -> SocketId {
        match self {
            Ev::Accept { conn, .. } => *conn,
            Ev::Connect(s) | Ev::Writable(s) => *s,
            Ev::Frame { conn, .. } => *conn,
            Ev::Close { sock, .. } | Ev::Error { sock, .. } => *sock,
        }
    }
}

type Hook = Box<dyn FnMut(&mut Ctx, SocketId, &[u8])>;

/// Records every callback; with `echo`, sends every frame received on an
/// accepted connection back on it (send errors are recorded).
#[derive(Default)]
struct Rec {
    echo: bool,
    events: Vec<Ev>,
    accepted: HashSet<SocketId>,
    send_errors: Vec<(SocketId, Error)>,
    /// Sent on every accepted connection from `on_accept`.
    greet: Option<Vec<u8>>,
    /// Called for every frame, after recording it.
    hook: Option<Hook>,
}

impl Rec {
    fn echo() -> Rec {
        Rec {
            echo: true,
            ..Rec::default()
        }
    }

    fn with_hook(hook: impl FnMut(&mut Ctx, SocketId, &[u8]) + 'static) -> Rec {
        Rec {
            hook: Some(Box::new(hook)),
            ..Rec::default()
        }
    }

    fn frames(&self, conn: SocketId) -> Vec<&[u8]> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Ev::Frame { conn: c, data } if *c == conn => Some(&data[..]),
                _ => None,
            })
            .collect()
    }

    fn frame_count(&self, conn: SocketId) -> usize {
        self.frames(conn).len()
    }

    fn all_frames(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Ev::Frame { .. }))
            .count()
    }

    fn is_closed(&self, sock: SocketId) -> bool {
        !self.closes(sock).is_empty()
    }

    fn connects(&self, sock: SocketId) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Ev::Connect(s) if *s == sock))
            .count()
    }

    /// Events for `sock` after its (first) `on_close`.
    fn events_after_close(&self, sock: SocketId) -> Vec<&Ev> {
        let Some(at) = self
            .events
            .iter()
            .position(|e| matches!(e, Ev::Close { sock: s, .. } if *s == sock))
        else {
            return Vec::new();
        };
        self.events[at + 1..]
            .iter()
            .filter(|e| e.sock() == sock)
            .collect()
    }
}

impl ConnLog for Rec {
    fn common(&self) -> impl Iterator<Item = Common<'_>> {
        self.events.iter().map(|e| match e {
            Ev::Accept { conn, .. } => Common::Accept(*conn),
            Ev::Writable(s) => Common::Writable(*s),
            Ev::Close { sock, reason } => Common::Close(*sock, reason),
            Ev::Error { sock, error } => Common::Error(*sock, error),
            Ev::Connect(_) | Ev::Frame { .. } => Common::Other,
        })
    }
}

impl Handler for Rec {
    fn on_frame(&mut self, cx: &mut Ctx, conn: SocketId, frame: &[u8]) {
        if self.echo && self.accepted.contains(&conn) {
            if let Err(e) = cx.send_frame(conn, frame) {
                self.send_errors.push((conn, e));
            }
        }
        self.events.push(Ev::Frame {
            conn,
            data: frame.to_vec(),
        });
        if let Some(hook) = self.hook.as_mut() {
            hook(cx, conn, frame);
        }
    }

    fn on_accept(&mut self, cx: &mut Ctx, listener: SocketId, conn: SocketId, peer: &PeerAddr) {
        assert_eq!(cx.kind(conn).unwrap(), SocketKind::Tcp);
        assert_eq!(cx.peer_addr(conn).unwrap(), *peer);
        self.accepted.insert(conn);
        if let Some(g) = &self.greet {
            if let Err(e) = cx.send_frame(conn, g) {
                self.send_errors.push((conn, e));
            }
        }
        self.events.push(Ev::Accept {
            listener,
            conn,
            peer: peer.clone(),
        });
    }

    fn on_connect(&mut self, _cx: &mut Ctx, conn: SocketId) {
        self.events.push(Ev::Connect(conn));
    }

    fn on_writable(&mut self, _cx: &mut Ctx, sock: SocketId) {
        self.events.push(Ev::Writable(sock));
    }

    fn on_close(&mut self, cx: &mut Ctx, sock: SocketId, reason: CloseReason) {
        assert!(!cx.contains(sock), "{sock:?} still open in on_close");
        self.events.push(Ev::Close { sock, reason });
    }

    fn on_error(&mut self, _cx: &mut Ctx, sock: SocketId, error: Error) {
        self.events.push(Ev::Error { sock, error });
    }
}

// ---- helpers ----------------------------------------------------------------

const WAIT: Duration = Duration::from_secs(5);

fn opts(frame: FrameConfig, f: impl FnOnce(&mut TcpOptions)) -> TcpOptions {
    let mut o = TcpOptions::new(frame);
    f(&mut o);
    o
}

/// A reactor listening on 127.0.0.1 with `o`.
fn server(o: &TcpOptions) -> (Reactor, SocketId, SocketAddr) {
    let mut reactor = Reactor::new().unwrap();
    let l = reactor.listen_tcp_with("127.0.0.1:0", o).unwrap();
    assert_eq!(reactor.kind(l).unwrap(), SocketKind::TcpListener);
    let addr = reactor.local_addr(l).unwrap().as_inet().unwrap();
    (reactor, l, addr)
}

fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

/// Connects a client and runs the reactor until it is accepted.
fn accept_one(reactor: &mut Reactor, h: &mut Rec, addr: SocketAddr) -> (TcpStream, SocketId) {
    let n = h.accepts().len();
    let s = client(addr);
    util::run_until(reactor, h, |_, h| h.accepts().len() > n, 100);
    let conn = *h.accepts().last().unwrap();
    match h
        .events
        .iter()
        .rev()
        .find(|e| matches!(e, Ev::Accept { .. }))
    {
        Some(Ev::Accept { peer, .. }) => {
            assert_eq!(peer.as_inet(), Some(s.local_addr().unwrap()));
        }
        _ => unreachable!(),
    }
    (s, conn)
}

fn encode(cfg: &FrameConfig, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    cfg.encode_into(payload, &mut v).unwrap();
    v
}

/// Reads one default-format frame (4-byte big-endian length) from `s`.
fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h).expect("frame header");
    let mut p = vec![0u8; u32::from_be_bytes(h) as usize];
    s.read_exact(&mut p).expect("frame payload");
    p
}

/// Sends `payload` as a frame and checks it comes back.
fn echo_check(
    reactor: &mut Reactor,
    h: &mut Rec,
    s: &mut TcpStream,
    conn: SocketId,
    payload: &[u8],
) {
    let n = h.frame_count(conn);
    s.write_all(&encode(&FrameConfig::new(), payload)).unwrap();
    util::run_until(reactor, h, |_, h| h.frame_count(conn) > n, 100);
    assert_eq!(h.frames(conn)[n], payload);
    assert!(h.send_errors.is_empty(), "{:?}", h.send_errors);
    assert_eq!(read_frame(s), payload, "echo on {conn:?}");
}

/// Runs the reactor for about `d` (bounded in calls too).
fn run_for(reactor: &mut Reactor, h: &mut Rec, d: Duration) {
    let end = Instant::now() + d;
    for _ in 0..10_000 {
        let now = Instant::now();
        if now >= end {
            return;
        }
        reactor.run_once(h, Some(end - now)).unwrap();
    }
}

/// The peer's side after the server closed: end of stream or a reset,
/// never data or a hang.
fn assert_peer_sees_close(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("{n} unexpected bytes after the server closed"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
}

/// Reads until end of stream or reset; returns what came before.
fn read_until_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..10_000 {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("waiting for the close: {e}"),
        }
    }
    panic!("no close after {} bytes", got.len());
}

fn set_linger_zero(s: &TcpStream) {
    socket2::SockRef::from(s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

const MAX64K: usize = 64 * 1024;

// ---- read path: oversized headers -------------------------------------------

fn oversized_header_closes_only_that_connection(header: [u8; 4], declared: u64) {
    let cfg = FrameConfig::new().with_max_frame_len(MAX64K);
    let (mut reactor, l, addr) = server(&TcpOptions::new(cfg));
    let mut h = Rec::echo();
    let (mut good, gconn) = accept_one(&mut reactor, &mut h, addr);
    let (mut bad, bconn) = accept_one(&mut reactor, &mut h, addr);
    echo_check(&mut reactor, &mut h, &mut good, gconn, b"before");
    // A valid frame, then the bad header and a few body bytes, one write.
    let mut wire = encode(&cfg, b"ok");
    wire.extend_from_slice(&header);
    wire.extend_from_slice(&[0xAB; 10]);
    bad.write_all(&wire).unwrap();
    util::run_until(&mut reactor, &mut h, |_, h| h.is_closed(bconn), 100);
    // The frame before the bad header was delivered (and echoed).
    assert_eq!(h.frames(bconn), [b"ok"]);
    let closes = h.closes(bconn);
    assert_eq!(closes.len(), 1);
    match closes[0] {
        CloseReason::Frame(FrameError::TooLarge { len, max }) => {
            assert_eq!((*len, *max), (declared, MAX64K));
        }
        other => panic!("expected Frame(TooLarge), got {other:?}"),
    }
    assert!(!reactor.contains(bconn));
    assert!(matches!(reactor.buffered_bytes(bconn), Err(Error::StaleId)));
    // Only that connection: the other one and the listener live on.
    assert!(reactor.contains(gconn) && reactor.contains(l));
    echo_check(&mut reactor, &mut h, &mut good, gconn, b"after");
    assert_eq!(reactor.buffered_bytes(gconn).unwrap(), 0);
    let (mut third, tconn) = accept_one(&mut reactor, &mut h, addr);
    echo_check(&mut reactor, &mut h, &mut third, tconn, b"new");
    // The bad peer sees the close (the echo of "ok", coalesced in the
    // same pass, may be dropped with the connection; if it comes, intact).
    let got = read_until_close(&mut bad);
    assert!(encode(&cfg, b"ok").starts_with(&got), "{got:?}");
    assert!(h.events_after_close(bconn).is_empty());
    assert_eq!(h.close_count(), 1);
}

#[test]
fn header_ffffffff_closes_only_that_connection() {
    let _t = util::guard();
    oversized_header_closes_only_that_connection([0xFF; 4], 0xFFFF_FFFF);
}

#[test]
fn header_max_plus_one_closes_only_that_connection() {
    let _t = util::guard();
    let declared = (MAX64K + 1) as u32;
    oversized_header_closes_only_that_connection(declared.to_be_bytes(), declared as u64);
}

#[test]
fn declared_length_is_not_buffered_and_exact_max_is_delivered() {
    let _t = util::guard();
    let cfg = FrameConfig::new().with_max_frame_len(MAX64K);
    let (mut reactor, _l, addr) = server(&TcpOptions::new(cfg));
    let mut h = Rec::echo();
    let (mut c, conn) = accept_one(&mut reactor, &mut h, addr);
    assert_eq!(
        reactor.buffered_bytes(conn).unwrap(),
        0,
        "idle: nothing held"
    );
    let payload = util::pattern(MAX64K, 9);
    let wire = encode(&cfg, &payload);
    assert_eq!(wire.len(), 4 + MAX64K);
    // Header declaring exactly max, and 10 body bytes.
    c.write_all(&wire[..14]).unwrap();
    util::run_until(
        &mut reactor,
        &mut h,
        |r, _| r.buffered_bytes(conn).unwrap() > 0,
        100,
    );
    // Give any straggler a chance to arrive: memory follows bytes received.
    reactor
        .run_once(&mut h, Some(Duration::from_millis(10)))
        .unwrap();
    let held = reactor.buffered_bytes(conn).unwrap();
    assert!(
        (14..=28).contains(&held),
        "14 bytes received of a {MAX64K} B frame, but {held} B held"
    );
    // Half the body: still proportional to what arrived.
    let half = 4 + MAX64K / 2;
    c.write_all(&wire[14..half]).unwrap();
    util::run_until(
        &mut reactor,
        &mut h,
        |r, _| r.buffered_bytes(conn).unwrap() >= half,
        100,
    );
    let held = reactor.buffered_bytes(conn).unwrap();
    assert!(held <= 2 * half, "{half} B received, {held} B held");
    assert_eq!(h.frame_count(conn), 0);
    // The rest: exactly max is accepted and delivered intact.
    c.write_all(&wire[half..]).unwrap();
    util::run_until(&mut reactor, &mut h, |_, h| h.frame_count(conn) == 1, 100);
    assert!(
        h.frames(conn)[0] == &payload[..],
        "max-size frame corrupted"
    );
    assert!(!h.is_closed(conn));
    assert!(h.send_errors.is_empty(), "{:?}", h.send_errors);
    let echoed = read_frame(&mut c);
    assert!(echoed == payload, "max-size echo corrupted");
    util::run_until(
        &mut reactor,
        &mut h,
        |r, _| r.buffered_bytes(conn).unwrap() == 0,
        100,
    );
    let st = reactor.stats(conn).unwrap();
    assert_eq!(st.messages_in, 1);
    assert_eq!(st.messages_out, 1);
    assert_eq!(st.bytes_out, MAX64K as u64);
}

// ---- read path: pipelining, empty frames, one byte per write ---------------

#[test]
fn thousand_pipelined_frames_in_one_write_arrive_in_order() {
    let _t = util::guard();
    let cfg = FrameConfig::new();
    let (mut reactor, _l, addr) = server(&TcpOptions::new(cfg));
    let mut h = Rec::default();
    let (mut c, conn) = accept_one(&mut reactor, &mut h, addr);
    let payloads: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            let mut p = util::pattern(i % 97, i as u8);
            p.extend_from_slice(&(i as u32).to_be_bytes());
            p
        })
        .collect();
    let mut wire = Vec::new();
    for p in &payloads {
        cfg.encode_into(p, &mut wire).unwrap();
    }
    c.write_all(&wire).unwrap();
    util::run_until(
        &mut reactor,
        &mut h,
        |_, h| h.frame_count(conn) >= 1000,
        200,
    );
    let got = h.frames(conn);
    assert_eq!(got.len(), 1000);
    for (i, (g, p)) in got.iter().zip(&payloads).enumerate() {
        assert_eq!(g, p, "frame {i}");
    }
    assert_eq!(reactor.stats(conn).unwrap().messages_in, 1000);
    assert_eq!(reactor.buffered_bytes(conn).unwrap(), 0);
    assert!(!h.is_closed(conn));
}

#[test]
fn thousand_zero_length_frames_in_one_write() {
    let _t = util::guard();
    let (mut reactor, _l, addr) = server(&TcpOptions::default());
    let mut h = Rec::default();
    let (mut c, conn) = accept_one(&mut reactor, &mut h, addr);
    c.write_all(&[0u8; 4 * 1000]).unwrap();
    util::run_until(
        &mut reactor,
        &mut h,
        |_, h| h.frame_count(conn) >= 1000,
        200,
    );
    let got = h.frames(conn);
    assert_eq!(got.len(), 1000);
    assert!(got.iter().all(|f| f.is_empty()));
    // Nothing left to do: no busy loop, no spurious callbacks.
    for _ in 0..3 {
        let n = reactor
            .run_once(&mut h, Some(Duration::from_millis(20)))
            .unwrap();
        assert_eq!(n, 0, "callbacks with nothing to deliver");
    }
    assert_eq!(h.frame_count(conn), 1000);
    assert_eq!(reactor.buffered_bytes(conn).unwrap(), 0);
}

#[test]
fn frames_delivered_one_byte_per_write_arrive_intact() {
    let _t = util::guard();
    let cfg = FrameConfig::new();
    let (mut reactor, _l, addr) = server(&TcpOptions::new(cfg));
    let mut h = Rec::echo();
    let (mut c, conn) = accept_one(&mut reactor, &mut h, addr);
    c.set_nodelay(true).unwrap();
    let payloads = [util::pattern(150, 1), Vec::new(), util::pattern(40, 2)];
    let mut wire = Vec::new();
    for p in &payloads {
        cfg.encode_into(p, &mut wire).unwrap();
    }
    let mut max_held = 0;
    for (i, b) in wire.iter().enumerate() {
        c.write_all(std::slice::from_ref(b)).unwrap();
        reactor
            .run_once(&mut h, Some(Duration::from_millis(50)))
            .unwrap();
        let held = reactor.buffered_bytes(conn).unwrap();
        assert!(held <= 2 * (i + 1), "{held} B held after {} B", i + 1);
        max_held = max_held.max(held);
    }
    util::run_until(&mut reactor, &mut h, |_, h| h.frame_count(conn) >= 3, 100);
    assert_eq!(
        h.frames(conn),
        payloads.iter().map(|p| &p[..]).collect::<Vec<_>>()
    );
    assert!(max_held > 0, "the frame was never partial: test is void");
    for p in &payloads {
        assert_eq!(&read_frame(&mut c), p);
    }
    assert_eq!(reactor.buffered_bytes(conn).unwrap(), 0);
    assert!(!h.is_closed(conn));
}

// ---- write path: a peer that stops reading ----------------------------------

#[test]
fn slow_reader_gets_queue_full_then_one_on_writable() {
    let _t = util::guard();
    let cfg = FrameConfig::new().with_max_frame_len(MAX64K);
    let o = opts(cfg, |o| o.max_send_queue = 1 << 20);
    let (mut reactor, _l, addr) = server(&o);
    let mut h = Rec::echo();
    let (mut slow, sconn) = accept_one(&mut reactor, &mut h, addr);
    let (mut other, oconn) = accept_one(&mut reactor, &mut h, addr);
    let frame = util::pattern(MAX64K, 3);
    let wire_len = 4 + MAX64K;
    // Keep sending 64 KiB frames to the peer that does not read.
    let mut sent = 0usize;
    let mut full = None;
    for i in 0..10_000 {
        match reactor.send_frame(sconn, &frame) {
            Ok(()) => sent += 1,
            Err(e) => {
                full = Some(e);
                break;
            }
        }
        if i % 16 == 0 {
            reactor.run_once(&mut h, Some(Duration::ZERO)).unwrap();
        }
    }
    match full {
        // Refused at the bound (the queue's size is checked below).
        Some(Error::WouldBlock) => {}
        other => panic!("after {sent} sends: expected WouldBlock, got {other:?}"),
    }
    eprintln!("WouldBlock after {sent} frames of 64 KiB");
    let held = reactor.buffered_bytes(sconn).unwrap();
    assert!((1 << 19..=2 << 20).contains(&held), "queue holds {held} B");
    // Refused again while full; nothing more is queued.
    assert!(matches!(
        reactor.send_frame(sconn, &frame),
        Err(Error::WouldBlock)
    ));
    // Other connections are served meanwhile.
    for i in 0..3u8 {
        echo_check(&mut reactor, &mut h, &mut other, oconn, &[i; 100]);
    }
    assert_eq!(h.writables(sconn), 0, "on_writable before anything drained");
    // The slow client finally reads everything.
    slow.set_nonblocking(true).unwrap();
    let total = sent * wire_len;
    let mut got = Vec::with_capacity(total);
    let mut buf = vec![0u8; 256 * 1024];
    for _ in 0..20_000 {
        if got.len() >= total {
            break;
        }
        loop {
            match slow.read(&mut buf) {
                Ok(0) => panic!("server closed the slow connection"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        reactor
            .run_once(&mut h, Some(Duration::from_millis(1)))
            .unwrap();
    }
    assert_eq!(got.len(), total, "the slow client did not get every byte");
    for (i, f) in got.chunks(wire_len).enumerate() {
        assert_eq!(&f[..4], &(MAX64K as u32).to_be_bytes(), "frame {i}");
        assert!(f[4..] == frame[..], "frame {i} corrupted");
    }
    util::run_until(&mut reactor, &mut h, |_, h| h.writables(sconn) >= 1, 100);
    for _ in 0..3 {
        reactor
            .run_once(&mut h, Some(Duration::from_millis(10)))
            .unwrap();
    }
    assert_eq!(h.writables(sconn), 1, "on_writable once per refusal");
    assert_eq!(h.writables(oconn), 0);
    assert_eq!(reactor.buffered_bytes(sconn).unwrap(), 0, "queue released");
    // Sends succeed again.
    reactor.send_frame(sconn, b"again").unwrap();
    slow.set_nonblocking(false).unwrap();
    assert_eq!(read_frame(&mut slow), b"again");
    assert!(!h.is_closed(sconn) && !h.is_closed(oconn));
    assert!(reactor.stats(sconn).unwrap().send_would_block >= 2);
}

/// `QueueFull` raised by frames coalesced inside one callback (the queue
/// itself still empty) must still be followed by `on_writable`.
#[test]
fn queue_full_inside_a_callback_is_followed_by_on_writable() {
    let _t = util::guard();
    let cfg = FrameConfig::new().with_max_frame_len(MAX64K);
    let o = opts(cfg, |o| o.max_send_queue = 256 * 1024);
    let (mut reactor, _l, addr) = server(&o);
    let mut h = Rec::default();
    let (mut c, conn) = accept_one(&mut reactor, &mut h, addr);
    // A big receive buffer: the kernel takes the whole burst at once.
    util::force_rcvbuf(&c, 8 << 20);
    let refused = std::rc::Rc::new(std::cell::Cell::new(0usize));
    let sent = std::rc::Rc::new(std::cell::Cell::new(0usize));
    let (r2, s2) = (refused.clone(), sent.clone());
    h.hook = Some(Box::new(move |cx, conn, frame| {
        if frame != b"burst" {
            return;
        }
        let chunk = [7u8; 8 * 1024];
        for _ in 0..100 {
            match cx.send_frame(conn, &chunk) {
                Ok(()) => s2.set(s2.get() + 1),
                Err(Error::WouldBlock) => {
                    r2.set(r2.get() + 1);
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }));
    c.write_all(&encode(&cfg, b"burst")).unwrap();
    util::run_until(&mut reactor, &mut h, |_, h| h.frame_count(conn) == 1, 100);
    assert_eq!(
        refused.get(),
        1,
        "256 KiB of 8 KiB frames must hit the bound"
    );
    assert!(sent.get() >= 20, "{} frames accepted", sent.get());
    // Read what was sent; on_writable must follow (the refusal promised it).
    let mut got = 0;
    let want = sent.get() * (4 + 8 * 1024);
    let mut buf = vec![0u8; 64 * 1024];
    while got < want {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0);
        got += n;
    }
    let mut on_writable = false;
    for _ in 0..20 {
        reactor
            .run_once(&mut h, Some(Duration::from_millis(10)))
            .unwrap();
        if h.writables(conn) > 0 {
            on_writable = true;
            break;
        }
    }
    assert!(
        on_writable,
        "QueueFull was returned but on_writable never came (queue empty, nothing armed)"
    );
    assert_eq!(h.writables(conn), 1);
}

// ---- close reasons ----------------------------------------------------------

#[test]
fn reset_gives_one_close_with_reset() {
    let _t = util::guard();
    let (mut reactor, _l, addr) = server(&TcpOptions::default());
    let mut h = Rec::echo();
    let (mut c, conn) = accept_one(&mut reactor, &mut h, addr);
    echo_check(&mut reactor, &mut h, &mut c, conn, b"hello");
    set_linger_zero(&c);
    drop(c);
    util::run_until(&mut reactor, &mut h, |_, h| h.is_closed(conn), 100);
    for _ in 0..3 {
        reactor
            .run_once(&mut h, Some(Duration::from_millis(10)))
            .unwrap();
    }
    let closes = h.closes(conn);
    assert_eq!(closes.len(), 1);
    assert!(
        matches!(closes[0], CloseReason::Reset),
        "a reset reported as {:?}",
        closes[0]
    );
    assert!(h.events_after_close(conn).is_empty());
    assert!(!reactor.contains(conn));
    assert!(matches!(
        reactor.send_frame(conn, b"x"),
        Err(Error::StaleId)
    ));
}

#[test]
fn reset_with_unread_data_gives_one_close_with_reset() {
    let _t = util::guard();
    let (mut reactor, _l, addr) = server(&TcpOptions::default());
    let mut h = Rec::default();
    let (c, conn) = accept_one(&mut reactor, &mut h, addr);
    // The server has sent data the client never reads; then the reset.
    reactor.send_frame(conn, &[1u8; 1000]).unwrap();
    set_linger_zero(&c);
    drop(c);
    util::run_until(&mut reactor, &mut h, |_, h| h.is_closed(conn), 100);
    reactor
        .run_once(&mut h, Some(Duration::from_millis(10)))
        .unwrap();
    let closes = h.closes(conn);
    assert_eq!(closes.len(), 1);
    assert!(matches!(closes[0], CloseReason::Reset), "{:?}", closes[0]);
    assert!(h.events_after_close(conn).is_empty());
}

#[test]
fn normal_close_gives_one_end_of_stream() {
    let _t = util::guard();
    let (mut reactor, _l, addr) = server(&TcpOptions::default());
    let mut h = Rec::echo();
    let (mut c, conn) = accept_one(&mut reactor, &mut h, addr);
    echo_check(&mut reactor, &mut h, &mut c, conn, b"bye");
    drop(c);
    util::run_until(&mut reactor, &mut h, |_, h| h.is_closed(conn), 100);
    for _ in 0..3 {
        reactor
            .run_once(&mut h, Some(Duration::from_millis(10)))
            .unwrap();
    }
    let closes = h.closes(conn);
    assert_eq!(closes.len(), 1);
    assert!(
        matches!(closes[0], CloseReason::EndOfStream),
        "{:?}",
        closes[0]
    );
    assert!(h.events_after_close(conn).is_empty());
    assert_eq!(h.close_count(), 1);
}

/// The client writes five frames and the start of a sixth, then shuts down
/// its sending side: the five are delivered, the partial one discarded,
/// then one `EndOfStream`. With `fin_with_data`, the FIN is already there
/// when the reactor first reads (one readiness edge for data and FIN).
fn half_close(fin_with_data: bool) {
    let cfg = FrameConfig::new();
    let (mut reactor, _l, addr) = server(&TcpOptions::new(cfg));
    let mut h = Rec::echo();
    let (mut c, conn) = accept_one(&mut reactor, &mut h, addr);
    let mut wire = Vec::new();
    for i in 0..5u8 {
        cfg.encode_into(&util::pattern(100 * i as usize, i), &mut wire)
            .unwrap();
    }
    // And a trailing partial frame, which is discarded.
    let partial = encode(&cfg, b"never complete");
    wire.extend_from_slice(&partial[..8]);
    c.write_all(&wire).unwrap();
    if fin_with_data {
        c.shutdown(Shutdown::Write).unwrap();
    } else {
        util::run_until(&mut reactor, &mut h, |_, h| h.frame_count(conn) == 5, 100);
        c.shutdown(Shutdown::Write).unwrap();
    }
    util::run_until(&mut reactor, &mut h, |_, h| h.frame_count(conn) == 5, 100);
    let frames = h.frames(conn);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(*f, &util::pattern(100 * i, i as u8)[..]);
    }
    util::run_until(&mut reactor, &mut h, |_, h| h.is_closed(conn), 40);
    let closes = h.closes(conn);
    assert_eq!(closes.len(), 1);
    assert!(
        matches!(closes[0], CloseReason::EndOfStream),
        "{:?}",
        closes[0]
    );
    // The close comes after every frame.
    assert!(matches!(h.events.last(), Some(Ev::Close { .. })));
    assert_eq!(h.frame_count(conn), 5);
    // The half-closed peer could still read: the echoes of the frames
    // that were flushed before the close.
    let _ = read_until_close(&mut c);
}

#[test]
fn half_close_delivers_complete_frames_then_end_of_stream() {
    let _t = util::guard();
    half_close(false);
}

#[test]
fn half_close_with_fin_in_the_same_edge_as_the_data() {
    let _t = util::guard();
    half_close(true);
}

#[test]
fn close_right_after_a_frame_gives_end_of_stream() {
    let _t = util::guard();
    let (mut reactor, _l, addr) = server(&TcpOptions::default());
    let mut h = Rec::default();
    let (mut c, conn) = accept_one(&mut reactor, &mut h, addr);
    c.write_all(&encode(&FrameConfig::new(), b"last words"))
        .unwrap();
    drop(c);
    util::run_until(&mut reactor, &mut h, |_, h| h.is_closed(conn), 40);
    assert_eq!(h.frames(conn), [b"last words"]);
    assert!(matches!(h.closes(conn)[0], CloseReason::EndOfStream));
}

#[test]
fn reset_right_after_a_frame_gives_one_close() {
    let _t = util::guard();
    let (mut reactor, _l, addr) = server(&TcpOptions::default());
    let mut h = Rec::default();
    let (mut c, conn) = accept_one(&mut reactor, &mut h, addr);
    c.write_all(&encode(&FrameConfig::new(), b"last words"))
        .unwrap();
    set_linger_zero(&c);
    drop(c);
    util::run_until(&mut reactor, &mut h, |_, h| h.is_closed(conn), 40);
    let closes = h.closes(conn);
    assert_eq!(closes.len(), 1);
    assert!(matches!(closes[0], CloseReason::Reset), "{:?}", closes[0]);
    assert!(h.frames(conn).len() <= 1);
}

#[test]
fn close_inside_callback_and_between_passes() {
    let _t = util::guard();
    let (mut reactor, _l, addr) = server(&TcpOptions::default());
    let mut h = Rec::with_hook(|cx, conn, frame| {
        if frame == b"close me" {
            cx.close(conn).unwrap();
            // The id is dead at once.
            assert!(matches!(cx.send_frame(conn, b"x"), Err(Error::StaleId)));
            assert!(matches!(cx.close(conn), Err(Error::StaleId)));
        }
    });
    let (mut a, aconn) = accept_one(&mut reactor, &mut h, addr);
    let (mut b, bconn) = accept_one(&mut reactor, &mut h, addr);
    let cfg = FrameConfig::new();
    // A frame after the closing one is never delivered.
    let mut wire = encode(&cfg, b"close me");
    wire.extend(encode(&cfg, b"after"));
    a.write_all(&wire).unwrap();
    util::run_until(&mut reactor, &mut h, |_, h| h.is_closed(aconn), 100);
    assert_eq!(h.frames(aconn), [b"close me"]);
    let closes = h.closes(aconn);
    assert_eq!(closes.len(), 1);
    assert!(matches!(closes[0], CloseReason::Local), "{:?}", closes[0]);
    assert_peer_sees_close(&mut a);
    // Between passes: closed at once, no callback.
    let n = h.events.len();
    reactor.close(bconn).unwrap();
    assert!(!reactor.contains(bconn));
    for _ in 0..3 {
        reactor
            .run_once(&mut h, Some(Duration::from_millis(10)))
            .unwrap();
    }
    assert_eq!(h.events.len(), n, "{:?}", &h.events[n..]);
    assert_peer_sees_close(&mut b);
    assert!(h.events_after_close(aconn).is_empty());
}

// ---- many connections --------------------------------------------------------

#[test]
fn thousand_concurrent_connections_are_served() {
    let _t = util::guard();
    const N: usize = 1000;
    let cfg = FrameConfig::new();
    // Every client comes from 127.0.0.1: lift the per-source limit.
    let opts = TcpOptions::new(cfg).max_connections_per_source(None);
    let (mut reactor, l, addr) = server(&opts);
    let mut h = Rec::echo();
    let mut clients = Vec::with_capacity(N);
    for i in 0..N {
        clients.push(client(addr));
        if i % 100 == 99 {
            reactor.run_once(&mut h, Some(Duration::ZERO)).unwrap();
        }
    }
    util::run_until(&mut reactor, &mut h, |_, h| h.accepts().len() >= N, 200);
    assert_eq!(reactor.socket_count(), N + 1);
    // Map each accepted connection to its client by address.
    let by_peer: std::collections::HashMap<SocketAddr, SocketId> = h
        .events
        .iter()
        .filter_map(|e| match e {
            Ev::Accept {
                listener,
                conn,
                peer,
            } => {
                assert_eq!(*listener, l);
                Some((peer.as_inet().unwrap(), *conn))
            }
            _ => None,
        })
        .collect();
    assert_eq!(by_peer.len(), N);
    for (i, c) in clients.iter_mut().enumerate() {
        let mut p = format!("client {i} ").into_bytes();
        p.extend(util::pattern(i % 300, i as u8));
        c.write_all(&encode(&cfg, &p)).unwrap();
    }
    util::run_until(&mut reactor, &mut h, |_, h| h.all_frames() >= N, 400);
    assert!(h.send_errors.is_empty(), "{:?}", &h.send_errors[..1]);
    assert!(h.errors().is_empty(), "{:?}", h.errors());
    for (i, c) in clients.iter_mut().enumerate() {
        let mut p = format!("client {i} ").into_bytes();
        p.extend(util::pattern(i % 300, i as u8));
        assert_eq!(read_frame(c), p, "client {i}");
        let conn = by_peer[&c.local_addr().unwrap()];
        assert_eq!(h.frames(conn), [&p[..]], "client {i}");
    }
    drop(clients);
    util::run_until(&mut reactor, &mut h, |_, h| h.close_count() >= N, 400);
    assert_eq!(h.close_count(), N);
    assert_eq!(reactor.socket_count(), 1);
    let st = reactor.reactor_stats();
    assert_eq!(st.totals.messages_in, N as u64);
    assert_eq!(st.totals.messages_out, N as u64);
    assert_eq!(st.closed_sockets, N as u64);
}

// ---- outgoing connections ---------------------------------------------------

#[test]
fn connect_tcp_to_a_reactor_listener_then_frames_both_ways() {
    let _t = util::guard();
    let cfg = FrameConfig::new();
    let (mut reactor, _l, addr) = server(&TcpOptions::new(cfg));
    let mut h = Rec::echo();
    let c = reactor.connect_tcp(addr, cfg).unwrap();
    assert_eq!(reactor.kind(c).unwrap(), SocketKind::Tcp);
    // Sent before the connect completes: queued, delivered after it.
    reactor.send_frame(c, b"early 1").unwrap();
    reactor
        .send_frame_vectored(
            c,
            &[
                IoSlice::new(b"early"),
                IoSlice::new(b" "),
                IoSlice::new(b"2"),
            ],
        )
        .unwrap();
    util::run_until(
        &mut reactor,
        &mut h,
        |_, h| h.connects(c) == 1 && h.accepts().len() == 1,
        100,
    );
    let s = h.accepts()[0];
    // on_connect comes before any frame on the connection.
    let first_c = h.events.iter().find(|e| e.sock() == c).unwrap();
    assert!(matches!(first_c, Ev::Connect(_)), "{first_c:?}");
    util::run_until(&mut reactor, &mut h, |_, h| h.frame_count(c) >= 2, 100);
    assert_eq!(h.frames(s), [&b"early 1"[..], b"early 2"]);
    assert_eq!(h.frames(c), [&b"early 1"[..], b"early 2"], "echoes");
    // Both ways, after the connect.
    reactor.send_frame(s, b"from server").unwrap();
    reactor.send_frame(c, b"from client").unwrap();
    util::run_until(&mut reactor, &mut h, |_, h| h.frame_count(c) >= 4, 100);
    assert_eq!(h.frames(s)[2], b"from client");
    let got_c = h.frames(c);
    assert!(got_c[2..].contains(&&b"from server"[..]), "{got_c:?}");
    assert!(got_c[2..].contains(&&b"from client"[..]), "{got_c:?}");
    // peer_addr on both ends.
    let c_local = reactor.peer_addr(s).unwrap().as_inet().unwrap();
    assert_eq!(reactor.peer_addr(c).unwrap().as_inet().unwrap(), addr);
    assert_eq!(c_local.ip(), addr.ip());
    assert_eq!(h.connects(c), 1);
    assert!(h.send_errors.is_empty(), "{:?}", h.send_errors);
    // Closing one end: the other sees end of stream.
    reactor.close(c).unwrap();
    util::run_until(&mut reactor, &mut h, |_, h| h.is_closed(s), 100);
    assert!(matches!(h.closes(s)[0], CloseReason::EndOfStream));
    assert!(h.closes(c).is_empty(), "close between passes: no callback");
}

#[test]
fn connect_tcp_to_a_plain_listener_with_data_queued() {
    let _t = util::guard();
    let cfg = FrameConfig::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut reactor = Reactor::new().unwrap();
    let mut h = Rec::default();
    let c = reactor.connect_tcp(addr, cfg).unwrap();
    reactor.send_frame(c, b"queued").unwrap();
    util::run_until(&mut reactor, &mut h, |_, h| h.connects(c) == 1, 100);
    let (mut peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(read_frame(&mut peer), b"queued");
    peer.write_all(&encode(&cfg, b"reply")).unwrap();
    util::run_until(&mut reactor, &mut h, |_, h| h.frame_count(c) == 1, 100);
    assert_eq!(h.frames(c), [b"reply"]);
}

#[test]
fn connect_tcp_to_a_closed_port_gives_one_close_with_error() {
    let _t = util::guard();
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut reactor = Reactor::new().unwrap();
    let mut h = Rec::default();
    let c = match reactor.connect_tcp(addr, FrameConfig::new()) {
        Ok(c) => c,
        Err(e) => {
            // Refused synchronously is acceptable too.
            assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
            return;
        }
    };
    // Queued before the connect fails: dropped with the connection.
    reactor.send_frame(c, b"lost").unwrap();
    util::run_until(&mut reactor, &mut h, |_, h| h.is_closed(c), 100);
    for _ in 0..3 {
        reactor
            .run_once(&mut h, Some(Duration::from_millis(10)))
            .unwrap();
    }
    let closes = h.closes(c);
    assert_eq!(closes.len(), 1);
    match closes[0] {
        CloseReason::Error(e) => assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED), "{e}"),
        other => panic!("expected Error(ECONNREFUSED), got {other:?}"),
    }
    assert_eq!(h.connects(c), 0, "no on_connect for a failed connect");
    assert_eq!(h.events.len(), 1, "{:?}", h.events);
    assert!(matches!(reactor.send_frame(c, b"x"), Err(Error::StaleId)));
    assert_eq!(reactor.socket_count(), 0);
}

// ---- slow-loris ----------------------------------------------------------------

#[test]
fn slow_loris_is_closed_by_the_frame_idle_timeout() {
    let _t = util::guard();
    let cfg = FrameConfig::new();
    let o = opts(cfg, |o| {
        o.frame_idle_timeout = Some(Duration::from_millis(150))
    });
    let (mut reactor, _l, addr) = server(&o);
    let mut h = Rec::echo();
    let (mut loris, lconn) = accept_one(&mut reactor, &mut h, addr);
    let (mut normal, nconn) = accept_one(&mut reactor, &mut h, addr);
    let (mut slow, sconn) = accept_one(&mut reactor, &mut h, addr);
    for s in [&loris, &normal, &slow] {
        s.set_nodelay(true).unwrap();
    }
    // The loris declares 100 bytes and sends one every 20 ms.
    loris.write_all(&100u32.to_be_bytes()).unwrap();
    let slow_frame = encode(&cfg, &util::pattern(60, 5));
    let mut loris_bytes = 0;
    let mut closed_at = None;
    // 30 steps of 20 ms: the slow client sends one frame per 100 ms, each
    // in two halves 40 ms apart — every frame completes well within the
    // timeout, though the connection as a whole outlives it.
    for step in 0..30usize {
        if !h.is_closed(lconn) {
            let _ = loris.write_all(&[0x55]);
            loris_bytes += 1;
        } else if closed_at.is_none() {
            closed_at = Some(step);
        }
        match step % 5 {
            0 => slow.write_all(&slow_frame[..30]).unwrap(),
            2 => slow.write_all(&slow_frame[30..]).unwrap(),
            _ => {}
        }
        let p = format!("normal {step}");
        normal.write_all(&encode(&cfg, p.as_bytes())).unwrap();
        run_for(&mut reactor, &mut h, Duration::from_millis(20));
        util::run_until(
            &mut reactor,
            &mut h,
            |_, h| h.frame_count(nconn) > step,
            100,
        );
        assert_eq!(read_frame(&mut normal), p.as_bytes());
    }
    let closes = h.closes(lconn);
    assert_eq!(closes.len(), 1, "the slow-loris was not closed");
    assert!(
        matches!(closes[0], CloseReason::FrameTimeout),
        "{:?}",
        closes[0]
    );
    assert!(loris_bytes < 100, "the loris completed its frame");
    assert!(h.frames(lconn).is_empty());
    eprintln!("loris closed after {closed_at:?} steps, {loris_bytes} body bytes");
    assert_peer_sees_close(&mut loris);
    // The others were not affected.
    assert!(!h.is_closed(nconn) && !h.is_closed(sconn));
    assert_eq!(h.frame_count(nconn), 30);
    let got = h.frames(sconn);
    assert_eq!(got.len(), 6, "slow complete frames");
    assert!(got.iter().all(|f| *f == &util::pattern(60, 5)[..]));
    assert!(reactor.contains(sconn) && reactor.contains(nconn));
    assert_eq!(h.close_count(), 1);
}

// ---- connection cap -----------------------------------------------------------

#[test]
fn max_connections_pauses_accepting_without_spinning() {
    let _t = util::guard();
    let cfg = FrameConfig::new();
    let o = opts(cfg, |o| o.max_connections = Some(5));
    let (mut reactor, l, addr) = server(&o);
    let mut h = Rec::echo();
    let mut clients: Vec<(TcpStream, SocketId)> = (0..5)
        .map(|_| accept_one(&mut reactor, &mut h, addr))
        .collect();
    // The 6th: the kernel completes the handshake, the reactor does not
    // accept it; its early frame waits.
    let mut sixth = client(addr);
    sixth.write_all(&encode(&cfg, b"sixth")).unwrap();
    for i in 0..4 {
        let n = reactor
            .run_once(&mut h, Some(Duration::from_millis(50)))
            .unwrap();
        assert_eq!(n, 0, "call {i}: callbacks at the cap (spinning?)");
    }
    assert_eq!(h.accepts().len(), 5);
    // Existing connections are served at the cap.
    let (c0, conn0) = &mut clients[0];
    echo_check(&mut reactor, &mut h, c0, *conn0, b"still served");
    // One peer leaves: the 6th is accepted and its frame delivered.
    let (c1, conn1) = clients.remove(1);
    drop(c1);
    util::run_until(&mut reactor, &mut h, |_, h| h.accepts().len() == 6, 100);
    assert!(matches!(h.closes(conn1)[0], CloseReason::EndOfStream));
    let conn6 = h.accepts()[5];
    util::run_until(&mut reactor, &mut h, |_, h| h.frame_count(conn6) == 1, 100);
    assert_eq!(read_frame(&mut sixth), b"sixth");
    // At the cap again: a 7th waits until the host closes one between passes.
    let mut seventh = client(addr);
    for _ in 0..2 {
        let n = reactor
            .run_once(&mut h, Some(Duration::from_millis(50)))
            .unwrap();
        assert_eq!(n, 0);
    }
    assert_eq!(h.accepts().len(), 6);
    let (c2, conn2) = clients.remove(1);
    reactor.close(conn2).unwrap();
    util::run_until(&mut reactor, &mut h, |_, h| h.accepts().len() == 7, 100);
    let conn7 = h.accepts()[6];
    echo_check(&mut reactor, &mut h, &mut seventh, conn7, b"seventh");
    drop(c2);
    assert!(reactor.contains(l));
}

// ---- send_frame errors -------------------------------------------------------

#[test]
fn send_frame_errors_are_typed_and_send_nothing() {
    let _t = util::guard();
    let cfg = FrameConfig::new().with_max_frame_len(1000);
    let (mut reactor, l, addr) = server(&TcpOptions::new(cfg));
    let mut h = Rec::default();
    let (mut c, conn) = accept_one(&mut reactor, &mut h, addr);
    // Over the max: typed error, nothing sent, nothing counted.
    match reactor.send_frame(conn, &[1u8; 1001]) {
        Err(Error::TooLarge {
            len: 1001,
            max: Some(1000),
        }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let parts = [IoSlice::new(&[1u8; 600]), IoSlice::new(&[2u8; 401])];
    match reactor.send_frame_vectored(conn, &parts) {
        Err(Error::TooLarge {
            len: 1001,
            max: Some(1000),
        }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(reactor.stats(conn).unwrap().messages_out, 0);
    // Exactly max is fine; it is the first thing on the wire.
    reactor.send_frame(conn, &[3u8; 1000]).unwrap();
    assert_eq!(read_frame(&mut c), vec![3u8; 1000]);
    // The same inside a callback.
    let errs = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let e2 = errs.clone();
    h.hook = Some(Box::new(move |cx, conn, _| {
        e2.borrow_mut().push(cx.send_frame(conn, &[0u8; 1001]));
        cx.send_frame(conn, b"fine").unwrap();
    }));
    c.write_all(&encode(&cfg, b"go")).unwrap();
    util::run_until(&mut reactor, &mut h, |_, h| h.frame_count(conn) == 1, 100);
    assert!(matches!(errs.borrow()[0], Err(Error::TooLarge { .. })));
    assert_eq!(read_frame(&mut c), b"fine");
    // Wrong kinds.
    let udp = reactor.bind_udp("127.0.0.1:0").unwrap();
    match reactor.send_frame(udp, b"x") {
        Err(Error::WrongKind {
            op: "send_frame",
            kind: SocketKind::Udp,
        }) => {}
        other => panic!("expected WrongKind(Udp), got {other:?}"),
    }
    assert!(matches!(
        reactor.send_frame(l, b"x"),
        Err(Error::WrongKind {
            kind: SocketKind::TcpListener,
            ..
        })
    ));
    assert!(matches!(reactor.peer_addr(udp), Err(Error::NotConnected)));
    assert!(matches!(reactor.peer_addr(l), Err(Error::WrongKind { .. })));
    assert_eq!(
        reactor.peer_addr(conn).unwrap().as_inet(),
        Some(c.local_addr().unwrap())
    );
    // A closed id, also after its slot is reused.
    reactor.close(conn).unwrap();
    assert!(matches!(
        reactor.send_frame(conn, b"x"),
        Err(Error::StaleId)
    ));
    assert!(matches!(
        reactor.send_frame_vectored(conn, &[IoSlice::new(b"x")]),
        Err(Error::StaleId)
    ));
    assert!(matches!(reactor.peer_addr(conn), Err(Error::StaleId)));
    let (_c2, conn2) = accept_one(&mut reactor, &mut h, addr);
    assert_ne!(conn2, conn);
    assert!(matches!(
        reactor.send_frame(conn, b"x"),
        Err(Error::StaleId)
    ));
    assert_peer_sees_close(&mut c);
    assert_eq!(reactor.stats(conn2).unwrap().messages_out, 0);
}

// ---- other frame formats ---------------------------------------------------------

#[test]
fn u16_little_endian_length_including_header() {
    let _t = util::guard();
    let cfg = FrameConfig::new()
        .with_length_width(LengthWidth::U16)
        .little_endian()
        .with_length_includes_header(true);
    assert_eq!(cfg.max_frame_len(), 65533);
    let (mut reactor, _l, addr) = server(&TcpOptions::new(cfg));
    let mut h = Rec::echo();
    let (mut c, conn) = accept_one(&mut reactor, &mut h, addr);
    // Hand-encoded by the client: the length counts the 2-byte header.
    let big = util::pattern(300, 4);
    let mut wire = vec![7u8, 0];
    wire.extend_from_slice(b"hello");
    wire.extend_from_slice(&[2, 0]); // empty frame
    wire.extend_from_slice(&[0x2e, 0x01]); // 302 = 300 + 2
    wire.extend_from_slice(&big);
    c.write_all(&wire).unwrap();
    util::run_until(&mut reactor, &mut h, |_, h| h.frame_count(conn) == 3, 100);
    assert_eq!(h.frames(conn), [&b"hello"[..], b"", &big[..]]);
    // The replies use the same format: identical bytes on the wire.
    let mut back = vec![0u8; wire.len()];
    c.read_exact(&mut back).unwrap();
    assert!(back == wire, "reply bytes {:?}..", &back[..12]);
    // A server-initiated frame, checked byte by byte.
    reactor.send_frame(conn, b"abc").unwrap();
    let mut b = [0u8; 5];
    c.read_exact(&mut b).unwrap();
    assert_eq!(b, [5, 0, b'a', b'b', b'c']);
    // Largest frame of the format.
    let max = util::pattern(65533, 6);
    let mut wire = vec![0xff, 0xff];
    wire.extend_from_slice(&max);
    c.write_all(&wire).unwrap();
    util::run_until(&mut reactor, &mut h, |_, h| h.frame_count(conn) == 4, 100);
    assert!(h.frames(conn)[3] == &max[..]);
    let mut back = vec![0u8; wire.len()];
    c.read_exact(&mut back).unwrap();
    assert!(back == wire);
    // A length smaller than the header is an invalid frame: closed.
    c.write_all(&[1, 0]).unwrap();
    util::run_until(&mut reactor, &mut h, |_, h| h.is_closed(conn), 100);
    match h.closes(conn)[0] {
        CloseReason::Frame(FrameError::InvalidLength { len, header_len }) => {
            assert_eq!((*len, *header_len), (1, 2));
        }
        other => panic!("expected Frame(InvalidLength), got {other:?}"),
    }
}

// ---- coalescing -------------------------------------------------------------

#[test]
fn frames_sent_in_one_callback_are_coalesced() {
    let _t = util::guard();
    let cfg = FrameConfig::new();
    let (mut reactor, _l, addr) = server(&TcpOptions::new(cfg));
    let mut h = Rec::default();
    let payload = |i: usize| {
        let mut p = (i as u32).to_be_bytes().to_vec();
        p.extend(util::pattern(i % 200, i as u8));
        p
    };
    h.hook = Some(Box::new(move |cx, conn, frame| {
        if frame == b"burst" {
            for i in 0..100 {
                cx.send_frame(conn, &payload(i)).unwrap();
            }
            // Vectored, with more parts than one writev slot set holds.
            let parts: Vec<IoSlice<'_>> = (0..40).map(|_| IoSlice::new(b"ab")).collect();
            cx.send_frame_vectored(conn, &parts).unwrap();
            // A large frame after small ones keeps its place.
            cx.send_frame(conn, &vec![9u8; 40 * 1024]).unwrap();
            cx.send_frame(conn, b"last").unwrap();
        }
    }));
    let (mut c, conn) = accept_one(&mut reactor, &mut h, addr);
    c.write_all(&encode(&cfg, b"burst")).unwrap();
    util::run_until(&mut reactor, &mut h, |_, h| h.frame_count(conn) == 1, 100);
    let mut expected = Vec::new();
    for i in 0..100 {
        let mut p = (i as u32).to_be_bytes().to_vec();
        p.extend(util::pattern(i % 200, i as u8));
        cfg.encode_into(&p, &mut expected).unwrap();
    }
    cfg.encode_into(&b"ab".repeat(40), &mut expected).unwrap();
    cfg.encode_into(&vec![9u8; 40 * 1024], &mut expected)
        .unwrap();
    cfg.encode_into(b"last", &mut expected).unwrap();
    let small_part = expected.len() - (4 + 40 * 1024) - 8;
    // Read everything; the 100 small frames should come in very few reads.
    let mut got = Vec::new();
    let mut reads_for_small = 0;
    let mut buf = vec![0u8; 256 * 1024];
    for _ in 0..1000 {
        if got.len() >= expected.len() {
            break;
        }
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed early");
        if got.len() < small_part {
            reads_for_small += 1;
        }
        got.extend_from_slice(&buf[..n]);
        reactor.run_once(&mut h, Some(Duration::ZERO)).unwrap();
    }
    assert_eq!(got.len(), expected.len());
    assert!(
        got == expected,
        "coalesced frames differ from what was sent"
    );
    eprintln!("100 small frames arrived in {reads_for_small} read(s)");
    assert!(
        reads_for_small <= 5,
        "{reads_for_small} reads for 100 frames sent in one pass"
    );
    let st = reactor.stats(conn).unwrap();
    assert_eq!(st.messages_out, 103);
}

// ---- counters ------------------------------------------------------------------

#[test]
fn stats_count_frames_and_payload_bytes() {
    let _t = util::guard();
    let cfg = FrameConfig::new();
    let (mut reactor, _l, addr) = server(&TcpOptions::new(cfg));
    let mut h = Rec::echo();
    let (mut c, conn) = accept_one(&mut reactor, &mut h, addr);
    for p in [&b"0123456789"[..], b"", b"abc"] {
        echo_check(&mut reactor, &mut h, &mut c, conn, p);
    }
    let st = reactor.stats(conn).unwrap();
    assert_eq!(st.messages_in, 3);
    assert_eq!(st.messages_out, 3);
    assert_eq!(st.bytes_out, 13);
    assert_eq!(
        st.bytes_in, st.bytes_out,
        "bytes_in is documented as payload bytes delivered: {st}"
    );
}

// ---- send, then close -----------------------------------------------------------

/// A reply sent, then the connection closed, in one callback ("error
/// message, then hang up"): `send_frame` returned `Ok`, so the reply must go
/// out before the close — as it does between passes.
#[test]
fn frame_sent_before_close_in_the_same_callback_goes_out() {
    let _t = util::guard();
    let cfg = FrameConfig::new();
    let (mut reactor, _l, addr) = server(&TcpOptions::new(cfg));
    let mut h = Rec::with_hook(|cx, conn, frame| {
        if frame == b"quit" {
            cx.send_frame(conn, b"bye").unwrap();
            cx.close(conn).unwrap();
        }
    });
    // Between passes: sent at once, then closed.
    let (mut a, aconn) = accept_one(&mut reactor, &mut h, addr);
    reactor.send_frame(aconn, b"bye").unwrap();
    reactor.close(aconn).unwrap();
    assert_eq!(read_until_close(&mut a), encode(&cfg, b"bye"));
    // Inside a callback.
    let (mut b, bconn) = accept_one(&mut reactor, &mut h, addr);
    b.write_all(&encode(&cfg, b"quit")).unwrap();
    util::run_until(&mut reactor, &mut h, |_, h| h.is_closed(bconn), 100);
    assert!(matches!(h.closes(bconn)[0], CloseReason::Local));
    assert_eq!(
        read_until_close(&mut b),
        encode(&cfg, b"bye"),
        "the reply sent before close() was dropped"
    );
}

// ---- other ways in: IPv6, adopted streams, greetings ----------------------------

#[test]
fn ipv6_listener_with_a_greeting_sent_from_on_accept() {
    let _t = util::guard();
    if !util::ipv6_loopback("ipv6_listener_with_a_greeting_sent_from_on_accept") {
        return;
    }
    let mut reactor = Reactor::new().unwrap();
    let l = reactor.listen_tcp("[::1]:0", FrameConfig::new()).unwrap();
    let addr = reactor.local_addr(l).unwrap().as_inet().unwrap();
    assert!(addr.is_ipv6());
    let mut h = Rec::echo();
    h.greet = Some(b"welcome".to_vec());
    let (mut c, conn) = accept_one(&mut reactor, &mut h, addr);
    // The greeting comes first, before any echo.
    assert_eq!(read_frame(&mut c), b"welcome");
    echo_check(&mut reactor, &mut h, &mut c, conn, b"over v6");
    assert_eq!(
        reactor.peer_addr(conn).unwrap().as_inet(),
        Some(c.local_addr().unwrap())
    );
}

#[test]
fn add_tcp_stream_adopts_a_connected_stream() {
    let _t = util::guard();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut peer = client(listener.local_addr().unwrap());
    let (mine, _) = listener.accept().unwrap();
    drop(listener);
    let cfg = FrameConfig::new()
        .with_length_width(LengthWidth::U8)
        .with_max_frame_len(100);
    let o = opts(cfg, |o| o.max_send_queue = 0);
    let mut reactor = Reactor::new().unwrap();
    let mut h = Rec::default();
    let conn = reactor.add_tcp_with(mine, &o).unwrap();
    assert_eq!(reactor.kind(conn).unwrap(), SocketKind::Tcp);
    assert_eq!(
        reactor.peer_addr(conn).unwrap().as_inet(),
        Some(peer.local_addr().unwrap())
    );
    // The bound is raised to one maximum-size frame: that one fits.
    reactor.send_frame(conn, &[1u8; 100]).unwrap();
    let mut b = [0u8; 101];
    peer.read_exact(&mut b).unwrap();
    assert_eq!(b[0], 100);
    assert!(b[1..].iter().all(|&x| x == 1));
    // Made non-blocking: an idle run_once returns.
    let n = reactor
        .run_once(&mut h, Some(Duration::from_millis(20)))
        .unwrap();
    assert_eq!(n, 0);
    peer.write_all(&[3, b'a', b'b', b'c', 0]).unwrap();
    util::run_until(&mut reactor, &mut h, |_, h| h.frame_count(conn) == 2, 100);
    assert_eq!(h.frames(conn), [&b"abc"[..], b""]);
    // 101 is over this connection's max: closed.
    peer.write_all(&[101]).unwrap();
    util::run_until(&mut reactor, &mut h, |_, h| h.is_closed(conn), 100);
    assert!(matches!(
        h.closes(conn)[0],
        CloseReason::Frame(FrameError::TooLarge { len: 101, max: 100 })
    ));
}

// ---- fairness: one flooding connection, one quiet one --------------------------

#[test]
fn a_flooding_connection_does_not_starve_a_quiet_one() {
    let _t = util::guard();
    let cfg = FrameConfig::new();
    let mut reactor = Reactor::with_config(util::config(|c| c.read_budget = 2)).unwrap();
    let l = reactor.listen_tcp("127.0.0.1:0", cfg).unwrap();
    let addr = reactor.local_addr(l).unwrap().as_inet().unwrap();
    let mut h = Rec::default();
    let (mut flood, fconn) = accept_one(&mut reactor, &mut h, addr);
    let (mut quiet, qconn) = accept_one(&mut reactor, &mut h, addr);
    util::force_sndbuf(&flood, 4 << 20);
    flood.set_nonblocking(true).unwrap();
    // 4,000 frames of 1,000 bytes, numbered.
    let mut stream = Vec::new();
    for i in 0..4000u32 {
        let mut p = i.to_be_bytes().to_vec();
        p.extend(util::pattern(996, i as u8));
        cfg.encode_into(&p, &mut stream).unwrap();
    }
    let mut off = 0;
    let mut late = 0;
    let mut cut_off = 0;
    for step in 0..60 {
        // Keep the flood going.
        while off < stream.len() {
            match flood.write(&stream[off..(off + 256 * 1024).min(stream.len())]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let before = h.frame_count(qconn);
        quiet
            .write_all(&encode(&cfg, format!("ping {step}").as_bytes()))
            .unwrap();
        reactor.run_once(&mut h, Some(WAIT)).unwrap();
        if h.frame_count(qconn) == before {
            // Allowed once in a while (softirq deferral), never twice.
            late += 1;
            reactor.run_once(&mut h, Some(WAIT)).unwrap();
        }
        assert_eq!(
            h.frame_count(qconn),
            before + 1,
            "step {step}: the quiet connection was not served"
        );
        // The flood was cut off by its budget: served next call at once.
        if reactor.next_deadline().is_some_and(|d| d <= Instant::now()) {
            cut_off += 1;
        }
    }
    assert!(late <= 6, "{late} of 60 pings waited a call");
    assert!(
        cut_off > 0,
        "the flood never hit its read budget: test is void"
    );
    // Then everything of the flood arrives, in order.
    for _ in 0..20_000 {
        if h.frame_count(fconn) >= 4000 {
            break;
        }
        while off < stream.len() {
            match flood.write(&stream[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        reactor
            .run_once(&mut h, Some(Duration::from_millis(5)))
            .unwrap();
    }
    let got = h.frames(fconn);
    assert_eq!(got.len(), 4000);
    for (i, f) in got.iter().enumerate() {
        assert_eq!(&f[..4], &(i as u32).to_be_bytes(), "frame {i} out of order");
        assert!(f[4..] == util::pattern(996, i as u8)[..], "frame {i}");
    }
    assert!(!h.is_closed(fconn) && !h.is_closed(qconn));
}

// ---- out of fds on accept ----------------------------------------------------------

#[test]
fn out_of_fds_on_accept_pauses_then_resumes() {
    let _t = util::guard();
    let cfg = FrameConfig::new();
    let (mut reactor, l, addr) = server(&TcpOptions::new(cfg));
    let mut h = Rec::echo();
    // Three clients wait in the backlog.
    let mut clients: Vec<TcpStream> = (0..3).map(|_| client(addr)).collect();
    {
        // Every fd taken: the next accept fails with EMFILE.
        let limit = util::fds::FdLimit::leave_free(0);
        let n = reactor
            .run_once(&mut h, Some(Duration::from_millis(50)))
            .unwrap();
        assert!(n >= 1, "no callback for the failed accept");
        let errs = h.errors();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].0, l);
        match errs[0].1 {
            Error::Io(e) => assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}"),
            other => panic!("expected Io(EMFILE), got {other:?}"),
        }
        assert!(h.accepts().is_empty());
        // Paused: retries are rare (one per retry interval), never a spin.
        let calls_before = reactor.reactor_stats().run_once_calls;
        run_for(&mut reactor, &mut h, Duration::from_millis(300));
        let calls = reactor.reactor_stats().run_once_calls - calls_before;
        let errors = h.errors().len();
        assert!(errors <= 6, "{errors} accept errors in 300 ms: spinning");
        assert!(calls <= 20, "{calls} run_once calls in 300 ms: spinning");
        assert!(h.accepts().is_empty());
        // Free fds: accepting resumes by itself.
        drop(limit);
    }
    util::run_until(&mut reactor, &mut h, |_, h| h.accepts().len() == 3, 100);
    for c in clients.iter_mut() {
        let conn = by_local(&h, c);
        echo_check(&mut reactor, &mut h, c, conn, b"after EMFILE");
    }
}

/// The accepted connection whose peer is `c`.
fn by_local(h: &Rec, c: &TcpStream) -> SocketId {
    let me = c.local_addr().unwrap();
    h.events
        .iter()
        .find_map(|e| match e {
            Ev::Accept { conn, peer, .. } if peer.as_inet() == Some(me) => Some(*conn),
            _ => None,
        })
        .expect("not accepted")
}

/// Data and FIN queued before the first read, more data than one pass may
/// read (read budget 1): the connection is carried from pass to pass, and
/// the end of stream must still be noticed after the last frame.
#[test]
fn end_of_stream_behind_a_budget_cut_off_is_noticed() {
    let _t = util::guard();
    let cfg = FrameConfig::new();
    let mut reactor = Reactor::with_config(util::config(|c| c.read_budget = 1)).unwrap();
    let l = reactor.listen_tcp("127.0.0.1:0", cfg).unwrap();
    let addr = reactor.local_addr(l).unwrap().as_inet().unwrap();
    let mut h = Rec::default();
    let (mut c, conn) = accept_one(&mut reactor, &mut h, addr);
    let mut wire = Vec::new();
    for i in 0..300u32 {
        let mut p = i.to_be_bytes().to_vec();
        p.extend(util::pattern(1000, i as u8));
        cfg.encode_into(&p, &mut wire).unwrap();
    }
    c.write_all(&wire).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    util::run_until(&mut reactor, &mut h, |_, h| h.is_closed(conn), 40);
    let got = h.frames(conn);
    assert_eq!(got.len(), 300);
    for (i, f) in got.iter().enumerate() {
        assert_eq!(&f[..4], &(i as u32).to_be_bytes());
    }
    assert!(matches!(h.closes(conn)[0], CloseReason::EndOfStream));
    assert!(h.events_after_close(conn).is_empty());
}
