//! Unix datagram sockets through the `Reactor`: echo, backpressure, socket
//! files, abstract names, quotas; fd passing, on a plain pair
//! (`UnixDatagramExt`) and through the reactor (`pass_fds`).

mod util;

use std::fs::File;
use std::io::{self, IoSlice, Read, Seek, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use msgloop::net::UnixDatagramExt;
use msgloop::{
    AncillaryBuf, CloseReason, Ctx, Datagram, DgramOptions, Error, Handler, MsgBuf, PeerAddr,
    Reactor, RecvMsg, RecvResult, SendAncillary, SocketId, UCred, UnixAddr,
};
use util::fds::{borrowed, dev_null, file_id, own_ucred, tempfile};
use util::{Event, Recorder, RemoveOnDrop};

fn bound_client(name: &str) -> (UnixDatagram, RemoveOnDrop) {
    let path = util::temp_path(name);
    let c = UnixDatagram::bind(&path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (c, RemoveOnDrop(path))
}

fn adopt(s: UnixDatagram) -> socket2::Socket {
    socket2::Socket::from(OwnedFd::from(s))
}

fn is_addr_in_use(e: &Error) -> bool {
    e.kind() == std::io::ErrorKind::AddrInUse
}

#[test]
fn echo_round_trips_with_large_messages() {
    let _t = util::guard();
    let path = util::temp_path("echo.sock");
    let mut reactor = Reactor::new().unwrap();
    let opts = util::opts(|o| {
        o.send_buffer_size = Some(1 << 20);
        o.unlink_on_close = true;
    });
    let server = reactor
        .bind_unix_datagram_with(UnixAddr::from_pathname(&path).unwrap(), &opts)
        .unwrap();
    assert_eq!(
        reactor
            .local_addr(server)
            .unwrap()
            .as_unix()
            .unwrap()
            .as_pathname(),
        Some(path.as_path())
    );
    let (c, cpath) = bound_client("echo-client.sock");
    util::force_sndbuf(&c, 1 << 20);
    let mut h = Recorder::echo();
    for (i, &size) in [0usize, 200_000, 1, 0, 200_000].iter().enumerate() {
        let payload = util::pattern(size, i as u8);
        assert_eq!(c.send_to(&payload, &path).unwrap(), size);
        util::run_until(&mut reactor, &mut h, |_, h| h.datagram_count() > i, 100);
        match h.events.last().unwrap() {
            Event::Datagram { sock, data, from } => {
                assert_eq!(*sock, server);
                assert!(
                    data[..] == payload[..],
                    "size {size}: server got other bytes"
                );
                assert_eq!(
                    from.as_unix().and_then(|u| u.as_pathname()),
                    Some(cpath.0.as_path())
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(h.echo_errors.is_empty(), "echo failed: {:?}", h.echo_errors);
        let mut storage = [0u8; 1024];
        let mut buf = MsgBuf::from(&mut storage[..]);
        let r = c.recv_msg(&mut buf).unwrap();
        assert_eq!(r.addr().and_then(|a| a.as_pathname()), Some(path.as_path()));
        assert!(buf.filled() == &payload[..], "size {size}: echo differs");
    }
    let st = reactor.stats(server).unwrap();
    assert_eq!(st.messages_in, 5);
    assert_eq!(st.messages_out, 5);
    assert_eq!(st.bytes_in, 400_001);
    drop(reactor);
    assert!(
        !path.exists(),
        "the socket file is removed when the reactor is dropped"
    );
}

/// A connected pair whose far end is not read: sends fail with
/// `WouldBlock`, and `on_writable` comes exactly once after the peer drains.
#[test]
fn full_peer_is_would_block_then_writable_once() {
    let _t = util::guard();
    let mut reactor = Reactor::new().unwrap();
    let udp = reactor.bind_udp("127.0.0.1:0").unwrap();
    let (ours, theirs) = UnixDatagram::pair().unwrap();
    theirs.set_nonblocking(true).unwrap();
    let s = reactor.add_unix_datagram(adopt(ours)).unwrap();

    let mut sent = 0;
    let blocked = loop {
        match reactor.send(s, &[sent as u8; 512]) {
            Ok(()) => sent += 1,
            Err(Error::WouldBlock) => break true,
            other => panic!("after {sent} sends: {other:?}"),
        }
        if sent > 100_000 {
            break false;
        }
    };
    assert!(blocked, "the peer's queue never filled");
    assert!(sent > 0);
    // Still full: every further send is refused, nothing queued.
    assert!(matches!(reactor.send(s, b"x"), Err(Error::WouldBlock)));
    let st = reactor.stats(s).unwrap();
    assert_eq!(st.messages_out, sent as u64);
    assert_eq!(st.send_would_block, 2);
    assert_eq!(st.send_errors, 0);

    let mut h = Recorder::default();
    reactor
        .run_once(&mut h, Some(Duration::from_millis(20)))
        .unwrap();
    assert_eq!(
        h.writable_count(s),
        0,
        "not writable while the peer is full"
    );

    // The reactor serves another socket meanwhile.
    let udp_addr = reactor.local_addr(udp).unwrap().as_inet().unwrap();
    let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    c.send_to(b"ping", udp_addr).unwrap();
    util::run_until(&mut reactor, &mut h, |_, h| h.datagram_count() == 1, 100);
    assert_eq!(h.writable_count(s), 0);

    // Drain the peer.
    let mut buf = [0u8; 1024];
    let mut read = 0;
    while let Ok(n) = theirs.recv(&mut buf) {
        assert_eq!(n, 512);
        assert!(buf[..n].iter().all(|&b| b == read as u8));
        read += 1;
    }
    assert_eq!(
        read, sent,
        "every accepted datagram arrived, none of the refused"
    );
    util::run_until(&mut reactor, &mut h, |_, h| h.writable_count(s) >= 1, 100);
    for _ in 0..5 {
        reactor
            .run_once(&mut h, Some(Duration::from_millis(10)))
            .unwrap();
    }
    assert_eq!(
        h.writable_count(s),
        1,
        "on_writable exactly once per WouldBlock"
    );
    reactor.send(s, b"again").unwrap();
    let n = theirs.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"again");
}

#[test]
fn send_to_missing_or_dead_peer_is_typed() {
    let _t = util::guard();
    let mut reactor = Reactor::new().unwrap();
    let s = reactor.unbound_unix_datagram().unwrap();
    // No such file.
    let missing = util::temp_path("missing.sock");
    match reactor.send_to(s, b"x", missing.as_path()) {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // A socket file nobody is bound to any more.
    let dead = util::temp_path("dead.sock");
    let _rm = RemoveOnDrop(dead.clone());
    drop(UnixDatagram::bind(&dead).unwrap());
    assert!(matches!(
        reactor.send_to(s, b"x", dead.as_path()),
        Err(Error::ConnectionRefused)
    ));
    // Unnamed destination.
    let (c, _rm2) = bound_client("typed.sock");
    let (a, b) = UnixDatagram::pair().unwrap();
    let pair_end = reactor.add_unix_datagram(adopt(a)).unwrap();
    b.send(b"from an unnamed peer").unwrap();
    let mut h = Recorder::echo();
    util::run_until(&mut reactor, &mut h, |_, h| h.datagram_count() == 1, 100);
    // The echo reply goes to the sender's address, which is unnamed.
    assert_eq!(h.echo_errors.len(), 1);
    assert_eq!(h.echo_errors[0].kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(reactor.stats(s).unwrap().send_errors, 2);
    // The reactor goes on: the same socket reaches a live peer.
    reactor
        .send_to(s, b"ok", c.local_addr().unwrap().as_pathname().unwrap())
        .unwrap();
    let mut buf = [0u8; 8];
    let n = c.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ok");
    assert!(reactor.contains(pair_end));
}

#[test]
fn binding_over_an_existing_path_fails() {
    let _t = util::guard();
    let path = util::temp_path("taken.sock");
    let _rm = RemoveOnDrop(path.clone());
    let live = UnixDatagram::bind(&path).unwrap();
    live.set_nonblocking(true).unwrap();
    let mut reactor = Reactor::new().unwrap();
    match reactor.bind_unix_datagram(&path) {
        Err(e) => assert!(is_addr_in_use(&e), "expected AddrInUse, got {e:?}"),
        Ok(id) => panic!("bound over a live socket: {id:?}"),
    }
    assert_eq!(reactor.socket_count(), 0);
    // The live socket still owns its path.
    let c = UnixDatagram::unbound().unwrap();
    c.send_to(b"still mine", &path).unwrap();
    let mut buf = [0u8; 16];
    let n = live.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"still mine");

    // A stale socket file also blocks a plain bind.
    let stale = util::temp_path("stale.sock");
    let _rm2 = RemoveOnDrop(stale.clone());
    drop(UnixDatagram::bind(&stale).unwrap());
    assert!(stale.exists());
    match reactor.bind_unix_datagram(&stale) {
        Err(e) => assert!(is_addr_in_use(&e), "expected AddrInUse, got {e:?}"),
        Ok(id) => panic!("bound over a stale file without unlink_stale: {id:?}"),
    }
}

#[test]
fn unlink_stale_replaces_a_stale_socket_file_only() {
    let _t = util::guard();
    let stale = util::temp_path("stale.sock");
    let _rm = RemoveOnDrop(stale.clone());
    drop(UnixDatagram::bind(&stale).unwrap());
    let mut reactor = Reactor::new().unwrap();
    let opts = util::opts(|o| o.unlink_stale = true);
    let s = reactor
        .bind_unix_datagram_with(UnixAddr::from_pathname(&stale).unwrap(), &opts)
        .unwrap();
    let c = UnixDatagram::unbound().unwrap();
    c.send_to(b"hello", &stale).unwrap();
    let mut h = Recorder::default();
    util::run_until(&mut reactor, &mut h, |_, h| h.datagram_count() == 1, 100);
    assert_eq!(h.datagrams(s), vec![&b"hello"[..]]);

    // A regular file is never removed.
    let file = util::temp_path("regular.file");
    let _rm2 = RemoveOnDrop(file.clone());
    std::fs::write(&file, b"precious").unwrap();
    match reactor.bind_unix_datagram_with(UnixAddr::from_pathname(&file).unwrap(), &opts) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e:?}"),
        Ok(id) => panic!("bound over a regular file: {id:?}"),
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
    assert_eq!(reactor.socket_count(), 1);
}

#[test]
fn unlink_stale_does_not_steal_a_live_socket() {
    let _t = util::guard();
    let path = util::temp_path("live.sock");
    let _rm = RemoveOnDrop(path.clone());
    let live = UnixDatagram::bind(&path).unwrap();
    let mut reactor = Reactor::new().unwrap();
    let opts = util::opts(|o| o.unlink_stale = true);
    let r = reactor.bind_unix_datagram_with(UnixAddr::from_pathname(&path).unwrap(), &opts);
    assert!(
        matches!(&r, Err(e) if is_addr_in_use(e)),
        "a live socket's path must not be taken over: {r:?}"
    );
    let c = UnixDatagram::unbound().unwrap();
    c.send_to(b"to live", &path).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(live.recv(&mut buf).unwrap(), 7);
}

#[test]
fn socket_file_is_removed_on_close_and_drop() {
    let _t = util::guard();
    let mut reactor = Reactor::new().unwrap();

    // Closed between calls.
    let p1 = util::temp_path("close.sock");
    let _rm1 = RemoveOnDrop(p1.clone());
    let s1 = reactor.bind_unix_datagram(&p1).unwrap();
    assert!(p1.exists());
    reactor.close(s1).unwrap();
    assert!(!p1.exists(), "removed on close");

    // Closed inside a callback.
    let p2 = util::temp_path("close-cb.sock");
    let _rm2 = RemoveOnDrop(p2.clone());
    let s2 = reactor.bind_unix_datagram(&p2).unwrap();
    struct Closer(Option<SocketId>);
    impl msgloop::Handler for Closer {
        fn on_datagram(
            &mut self,
            cx: &mut msgloop::Ctx,
            sock: SocketId,
            _m: msgloop::Datagram<'_>,
        ) {
            cx.close(sock).unwrap();
            self.0 = Some(sock);
        }
    }
    UnixDatagram::unbound()
        .unwrap()
        .send_to(b"bye", &p2)
        .unwrap();
    let mut closer = Closer(None);
    util::run_until(&mut reactor, &mut closer, |_, h| h.0.is_some(), 100);
    assert_eq!(closer.0, Some(s2));
    assert!(!p2.exists(), "removed on close from a callback");

    // A file that replaced ours is left alone.
    let p3 = util::temp_path("replaced.sock");
    let _rm3 = RemoveOnDrop(p3.clone());
    let s3 = reactor.bind_unix_datagram(&p3).unwrap();
    std::fs::remove_file(&p3).unwrap();
    let newcomer = UnixDatagram::bind(&p3).unwrap();
    reactor.close(s3).unwrap();
    assert!(p3.exists(), "another socket's file must not be removed");
    drop(newcomer);

    // With unlink_on_close(false) the file stays (the default is the same
    // in every form: removed).
    let p4 = util::temp_path("keep.sock");
    let _rm4 = RemoveOnDrop(p4.clone());
    let s4 = reactor
        .bind_unix_datagram_with(&p4, &DgramOptions::new().unlink_on_close(false))
        .unwrap();
    reactor.close(s4).unwrap();
    assert!(p4.exists(), "kept with unlink_on_close(false)");
    let p4b = util::temp_path("default.sock");
    let s4b = reactor
        .bind_unix_datagram_with(&p4b, &DgramOptions::default())
        .unwrap();
    reactor.close(s4b).unwrap();
    assert!(!p4b.exists(), "removed by default in the _with form too");

    // Dropped with the reactor.
    let p5 = util::temp_path("drop.sock");
    let _rm5 = RemoveOnDrop(p5.clone());
    reactor.bind_unix_datagram(&p5).unwrap();
    let p6 = util::temp_path("drop2.sock");
    let _rm6 = RemoveOnDrop(p6.clone());
    reactor.bind_unix_datagram(&p6).unwrap();
    assert!(p5.exists() && p6.exists());
    drop(reactor);
    assert!(
        !p5.exists() && !p6.exists(),
        "removed when the reactor is dropped"
    );
}

fn abstract_name(tag: &str) -> Vec<u8> {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("msgloop-test-{}-{n}-{tag}", std::process::id()).into_bytes()
}

#[test]
fn abstract_names_bind_receive_and_reply() {
    let _t = util::guard();
    let server_name = abstract_name("server");
    let client_name = abstract_name("client");
    let server_addr = UnixAddr::from_abstract_name(&server_name).unwrap();
    let client_addr = UnixAddr::from_abstract_name(&client_name).unwrap();

    let mut reactor = Reactor::new().unwrap();
    let s = reactor
        .bind_unix_datagram_with(&server_addr, &DgramOptions::default())
        .unwrap();
    let local = reactor.local_addr(s).unwrap();
    assert_eq!(
        local.as_unix().and_then(|u| u.as_abstract_name()),
        Some(&server_name[..])
    );
    // Binding the same abstract name twice fails.
    let again = reactor.bind_unix_datagram_with(&server_addr, &DgramOptions::default());
    assert!(matches!(&again, Err(e) if is_addr_in_use(e)), "{again:?}");

    let c = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::DGRAM, None).unwrap();
    c.bind(client_addr.as_sock_addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let c: UnixDatagram = c.into();
    let sc = socket2::SockRef::from(&c);
    sc.send_to(b"abstract hello", server_addr.as_sock_addr())
        .unwrap();

    let mut h = Recorder::echo();
    util::run_until(&mut reactor, &mut h, |_, h| h.datagram_count() == 1, 100);
    match &h.events[0] {
        Event::Datagram { sock, data, from } => {
            assert_eq!(*sock, s);
            assert_eq!(&data[..], b"abstract hello");
            assert_eq!(*from, PeerAddr::Unix(client_addr.clone()));
            assert_eq!(
                from.as_unix().and_then(|u| u.as_abstract_name()),
                Some(&client_name[..])
            );
            assert_eq!(
                from.to_string(),
                format!("@{}", String::from_utf8_lossy(&client_name))
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(h.echo_errors.is_empty(), "{:?}", h.echo_errors);
    let mut buf = MsgBuf::with_capacity(64);
    match c.recv_msg(&mut buf).unwrap() {
        RecvResult::Fit(from) => assert_eq!(from, server_addr),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(buf.filled(), b"abstract hello");
    // Closing frees the name at once.
    reactor.close(s).unwrap();
    let s2 = reactor
        .bind_unix_datagram_with(&server_addr, &DgramOptions::default())
        .unwrap();
    assert!(reactor.contains(s2));
}

/// The default Unix quota (1 MiB): a larger message is consumed, counted
/// and reported; the next is delivered.
#[test]
fn over_quota_message_is_reported_and_skipped() {
    let _t = util::guard();
    let mut reactor = Reactor::new().unwrap();
    let quota = reactor.config().unix_max_message_len;
    assert_eq!(quota, 1 << 20);
    let (a, b) = UnixDatagram::pair().unwrap();
    let got = util::force_sndbuf(&a, 4 << 20);
    assert!(
        got > 2 * quota,
        "sender's SO_SNDBUF {got} too small for the test"
    );
    let s = reactor.add_unix_datagram(adopt(b)).unwrap();
    a.send(&vec![1u8; quota]).unwrap();
    a.send(&vec![2u8; quota + 1]).unwrap();
    a.send(b"after").unwrap();
    let mut h = Recorder::default();
    util::run_until(&mut reactor, &mut h, |_, h| h.datagram_count() >= 2, 100);
    assert_eq!(h.events.len(), 3, "{:?}", h.events);
    let d = h.datagrams(s);
    assert_eq!(d[0].len(), quota, "exactly the quota is delivered");
    assert!(d[0].iter().all(|&x| x == 1));
    assert_eq!(d[1], b"after");
    match h.errors()[..] {
        [(sock, Error::QuotaExceeded(q))] => {
            assert_eq!(sock, s);
            assert_eq!(q.size, quota + 1);
            assert_eq!(q.quota, quota);
        }
        ref other => panic!("expected one QuotaExceeded, got {other:?}"),
    }
    assert!(
        matches!(h.events[1], Event::Error { .. }),
        "reported in order"
    );
    let st = reactor.stats(s).unwrap();
    assert_eq!(st.dropped_over_quota, 1);
    assert_eq!(st.messages_in, 2);
}

#[test]
fn small_unix_quota_is_enforced() {
    let _t = util::guard();
    let config = util::config(|o| o.unix_max_message_len = 1000);
    let mut reactor = Reactor::with_config(config).unwrap();
    let (a, b) = UnixDatagram::pair().unwrap();
    let s = reactor.add_unix_datagram(adopt(b)).unwrap();
    a.send(&[1u8; 2000]).unwrap();
    a.send(b"after").unwrap();
    let mut h = Recorder::default();
    util::run_until(&mut reactor, &mut h, |_, h| h.datagram_count() >= 1, 100);
    match h.errors()[..] {
        [(sock, Error::QuotaExceeded(q))] => {
            assert_eq!(sock, s);
            assert_eq!(q.size, 2000);
            assert_eq!(q.quota, 1000);
        }
        ref other => panic!("expected one QuotaExceeded, got {other:?} ({:?})", h.events),
    }
    assert_eq!(h.datagrams(s), vec![&b"after"[..]]);
}

/// A Unix path as a destination (`&Path`) and an unbound reactor socket
/// connected to a server.
#[test]
fn connected_unbound_socket_round_trip() {
    let _t = util::guard();
    let mut reactor = Reactor::new().unwrap();
    let path = util::temp_path("srv.sock");
    let server = reactor.bind_unix_datagram(&path).unwrap();
    let client = reactor.unbound_unix_datagram().unwrap();
    reactor.connect(client, path.as_path()).unwrap();
    reactor.send(client, b"via connect").unwrap();
    reactor
        .send_to(client, b"via path", Path::new(&path))
        .unwrap();
    let mut h = Recorder::default();
    util::run_until(&mut reactor, &mut h, |_, h| h.datagram_count() == 2, 100);
    assert_eq!(
        h.datagrams(server),
        vec![&b"via connect"[..], &b"via path"[..]]
    );
    for e in &h.events {
        if let Event::Datagram { from, .. } = e {
            assert!(from.as_unix().unwrap().is_unnamed());
        }
    }
    drop(reactor);
    assert!(!path.exists());
}

// ---- fd passing: at the socket layer, then through the reactor ---------------

/// One callback of [`FdRec`], in order.
#[derive(Debug)]
enum FdEv {
    Datagram {
        sock: SocketId,
        data: Vec<u8>,
        creds: Option<UCred>,
        fds: usize,
    },
    /// Any other callback (none is expected), described for the failure
    /// message.
    Other(#[allow(dead_code)] String),
}

/// Records every callback, with each datagram's credentials and number of
/// passed fds. With `reply_fds`, takes a datagram's fds, sends them back to
/// the sender with `send_to_with_fds`, and keeps them in `kept`.
#[derive(Default)]
struct FdRec {
    events: Vec<FdEv>,
    reply_fds: bool,
    kept: Vec<OwnedFd>,
    send_errors: Vec<(SocketId, Error)>,
}

impl Handler for FdRec {
    fn on_datagram(&mut self, cx: &mut Ctx, sock: SocketId, mut msg: Datagram<'_>) {
        self.events.push(FdEv::Datagram {
            sock,
            data: msg.data().to_vec(),
            creds: msg.credentials(),
            fds: msg.fds().len(),
        });
        if self.reply_fds {
            let from = msg.from();
            let fds = msg.take_fds();
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
            let to = from.as_unix().expect("a Unix sender");
            if let Err(e) = cx.send_to_with_fds(sock, b"back", &borrowed, to) {
                self.send_errors.push((sock, e));
            }
            self.kept.extend(fds);
        }
    }

    fn on_writable(&mut self, _cx: &mut Ctx, sock: SocketId) {
        self.events
            .push(FdEv::Other(format!("on_writable({sock:?})")));
    }

    fn on_close(&mut self, cx: &mut Ctx, sock: SocketId, reason: CloseReason) {
        assert!(!cx.contains(sock), "{sock:?} still open in on_close");
        self.events
            .push(FdEv::Other(format!("on_close({sock:?}, {reason:?})")));
    }

    fn on_error(&mut self, _cx: &mut Ctx, sock: SocketId, error: Error) {
        self.events
            .push(FdEv::Other(format!("on_error({sock:?}, {error:?})")));
    }
}

#[test]
fn fd_passing_over_a_unix_datagram_pair() {
    let _t = util::guard();
    let (a, b) = UnixDatagram::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    socket2::SockRef::from(&b).set_passcred(true).unwrap();
    let mut file = tempfile();
    file.write_all(b"passed over a datagram").unwrap();
    let files = dev_null(4);
    let mut fds = vec![file.as_fd()];
    fds.extend(borrowed(&files));
    let baseline = util::open_fds();

    let mut buf = MsgBuf::with_capacity(4);
    let mut anc = AncillaryBuf::new();
    a.send_with_ancillary(
        &[IoSlice::new(b"five fds")],
        &SendAncillary::new().with_fds(&fds),
    )
    .unwrap();
    let (r, mut got) = b.recv_with_ancillary(&mut buf, &mut anc).unwrap();
    assert!(matches!(r, RecvResult::Spilled(ref from) if from.is_unnamed()));
    assert_eq!(buf.filled(), b"five fds");
    assert_eq!(got.credentials(), Some(own_ucred()));
    let mut taken = got.take_fds();
    assert_eq!(taken.len(), 5);
    assert_eq!(util::open_fds(), baseline + 5);
    let mut first = File::from(taken.remove(0));
    let mut text = String::new();
    first.rewind().unwrap();
    first.read_to_string(&mut text).unwrap();
    assert_eq!(text, "passed over a datagram");
    drop((first, taken));
    assert_eq!(util::open_fds(), baseline);

    // A 0-byte datagram is an empty message, never end of stream, also
    // without SO_PASSCRED.
    socket2::SockRef::from(&b).set_passcred(false).unwrap();
    a.send_with_ancillary(&[], &SendAncillary::new().with_fds(&fds[..1]))
        .unwrap();
    let (r, got) = b.recv_with_ancillary(&mut buf, &mut anc).unwrap();
    assert!(matches!(r, RecvResult::Fit(_)));
    assert!(buf.filled().is_empty());
    assert_eq!(got.fds().len(), 1);
    assert_eq!(got.credentials(), None);
    drop(got);

    // To a bound path, with mio's UnixDatagram on the receiving side.
    let path = util::temp_path("dgram");
    let rx = mio::net::UnixDatagram::bind(&path).unwrap();
    let _rm = RemoveOnDrop(path.clone());
    let to = UnixAddr::from_pathname(&path).unwrap();
    a.send_to_with_ancillary(
        &[IoSlice::new(b"to a path")],
        &SendAncillary::new().with_fds(&fds),
        &to,
    )
    .unwrap();
    let (_, got) = rx.recv_with_ancillary(&mut buf, &mut anc).unwrap();
    assert_eq!(buf.filled(), b"to a path");
    assert_eq!(got.fds().len(), 5);
    drop(got);
    assert_eq!(
        rx.recv_with_ancillary(&mut buf, &mut anc)
            .unwrap_err()
            .kind(),
        io::ErrorKind::WouldBlock
    );
    assert_eq!(util::open_fds(), baseline + 1 /* rx */);
}

#[test]
fn unix_datagram_fds_pass_both_ways_with_pass_fds() {
    let _t = util::guard();
    let spath = util::temp_path("dg-server");
    let cpath = util::temp_path("dg-client");
    let saddr = UnixAddr::from_pathname(&spath).unwrap();
    let mut r = Reactor::new().unwrap();
    let opts = util::opts(|o| {
        o.pass_fds = true;
        o.unlink_on_close = true;
    });
    let sock = r.bind_unix_datagram_with(&saddr, &opts).unwrap();
    let client = UnixDatagram::bind(&cpath).unwrap();
    let _rm = RemoveOnDrop(cpath.clone());
    client.set_nonblocking(true).unwrap();
    let mut h = FdRec {
        reply_fds: true,
        ..FdRec::default()
    };
    let file = tempfile();
    let id = file_id(file.as_fd());
    let baseline = util::open_fds();

    let fds = [file.as_fd()];
    let anc = SendAncillary::new().with_fds(&fds);
    client
        .send_to_with_ancillary(&[IoSlice::new(b"an "), IoSlice::new(b"fd")], &anc, &saddr)
        .unwrap();
    util::run_until(&mut r, &mut h, |_, h| !h.events.is_empty(), 100);
    match &h.events[..] {
        [FdEv::Datagram {
            sock: s,
            data,
            creds,
            fds,
        }] => {
            assert_eq!(*s, sock);
            assert_eq!(&data[..], b"an fd");
            assert_eq!(*fds, 1);
            assert_eq!(*creds, Some(own_ucred()), "pass_fds turns on SO_PASSCRED");
        }
        e => panic!("{e:?}"),
    }
    assert!(h.send_errors.is_empty(), "{:?}", h.send_errors);
    assert_eq!(h.kept.len(), 1);
    assert_eq!(file_id(h.kept[0].as_fd()), id, "the same file arrived");
    assert_eq!(util::open_fds(), baseline + 1);

    // The handler sent it back with send_to_with_fds.
    let mut buf = MsgBuf::with_capacity(16);
    let (res, mut back) = client
        .recv_with_ancillary(&mut buf, &mut AncillaryBuf::new())
        .unwrap();
    assert!(matches!(&res, RecvResult::Fit(a) if *a == saddr), "{res:?}");
    assert_eq!(buf.filled(), b"back");
    let got = back.take_fds();
    assert_eq!(got.len(), 1);
    assert_eq!(file_id(got[0].as_fd()), id);
    drop(got);
    h.kept.clear();
    assert_eq!(util::open_fds(), baseline);

    // Fds the handler does not take are closed and counted.
    h.reply_fds = false;
    let three = [file.as_fd(), file.as_fd(), file.as_fd()];
    client
        .send_to_with_ancillary(
            &[IoSlice::new(b"3")],
            &SendAncillary::new().with_fds(&three),
            &saddr,
        )
        .unwrap();
    util::run_until(&mut r, &mut h, |_, h| h.events.len() == 2, 100);
    assert!(matches!(&h.events[1], FdEv::Datagram { fds: 3, .. }));
    assert_eq!(util::open_fds(), baseline);
    assert_eq!(r.stats(sock).unwrap().fds_closed_unclaimed, 3);

    // From outside a callback, with an explicit destination.
    let caddr = UnixAddr::from_pathname(&cpath).unwrap();
    r.send_to_with_fds(sock, b"direct", &[file.as_fd()], &caddr)
        .unwrap();
    let (_, mut direct) = client
        .recv_with_ancillary(&mut buf, &mut AncillaryBuf::new())
        .unwrap();
    assert_eq!(buf.filled(), b"direct");
    assert_eq!(file_id(direct.take_fds()[0].as_fd()), id);
    assert_eq!(util::open_fds(), baseline);

    // Wrong kinds are typed errors.
    assert!(matches!(
        r.send_seqpacket(sock, b"x"),
        Err(Error::WrongKind { .. })
    ));
    drop(r);
    assert!(!spath.exists(), "unlink_on_close removed the file");
}

#[test]
fn unix_datagram_without_pass_fds_discards_passed_fds() {
    let _t = util::guard();
    let spath = util::temp_path("dg-plain");
    let saddr = UnixAddr::from_pathname(&spath).unwrap();
    let mut r = Reactor::new().unwrap();
    let sock = r.bind_unix_datagram(&spath).unwrap();
    let client = UnixDatagram::unbound().unwrap();
    let mut h = FdRec::default();
    let files = dev_null(5);
    let baseline = util::open_fds();

    for i in 0..10u8 {
        client
            .send_to_with_ancillary(
                &[IoSlice::new(&[i])],
                &SendAncillary::new().with_fds(&borrowed(&files)),
                &saddr,
            )
            .unwrap();
    }
    util::run_until(&mut r, &mut h, |_, h| h.events.len() == 10, 100);
    for (i, e) in h.events.iter().enumerate() {
        match e {
            FdEv::Datagram {
                data, fds, creds, ..
            } => {
                assert_eq!(&data[..], &[i as u8]);
                assert_eq!(*fds, 0, "no fds without pass_fds");
                assert_eq!(*creds, None);
            }
            e => panic!("{e:?}"),
        }
    }
    assert_eq!(util::open_fds(), baseline, "the kernel discarded them");
    assert_eq!(r.stats(sock).unwrap().fds_closed_unclaimed, 0);
    // A reactor-managed datagram socket without pass_fds can still send fds.
    let other = UnixDatagram::pair().unwrap();
    let adopted = r
        .add_unix_datagram(msgloop::socket2::Socket::from(OwnedFd::from(other.0)))
        .unwrap();
    r.send_with_fds(adopted, b"f", &[files[0].as_fd()]).unwrap();
    let mut buf = MsgBuf::with_capacity(8);
    let (_, mut anc) = other
        .1
        .recv_with_ancillary(&mut buf, &mut AncillaryBuf::new())
        .unwrap();
    assert_eq!(anc.take_fds().len(), 1);
    assert_eq!(util::open_fds(), baseline + 2, "the pair");
}
