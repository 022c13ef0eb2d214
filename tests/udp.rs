//! UDP through the `Reactor`: echo round trips, flood fairness, typed send
//! errors.

mod util;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use msgloop::{Error, MsgBuf, PeerAddr, Reactor, RecvMsg, RecvResult};
use util::{Event, Recorder};

fn client(ip: &str) -> UdpSocket {
    let c = UdpSocket::bind(format!("{ip}:0")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c
}

/// Sends each size to the reactor's echo socket and checks the reply.
fn echo_sizes(ip: &str) {
    let mut reactor = Reactor::new().unwrap();
    let server = reactor.bind_udp(format!("{ip}:0")).unwrap();
    let addr = reactor.local_addr(server).unwrap().as_inet().unwrap();
    let c = client(ip);
    let caddr = c.local_addr().unwrap();
    let mut h = Recorder::echo();
    let mut total = 0u64;
    for (i, &size) in [0usize, 1, 1472, 65_507, 0].iter().enumerate() {
        let payload = util::pattern(size, i as u8);
        assert_eq!(c.send_to(&payload, addr).unwrap(), size);
        util::run_until(&mut reactor, &mut h, |_, h| h.datagram_count() > i, 100);
        match &h.events[h.events.len() - 1] {
            Event::Datagram { sock, data, from } => {
                assert_eq!(*sock, server);
                assert!(
                    data[..] == payload[..],
                    "size {size}: server got other bytes"
                );
                assert_eq!(*from, PeerAddr::Inet(caddr));
            }
            other => panic!("size {size}: unexpected {other:?}"),
        }
        assert!(h.echo_errors.is_empty(), "{:?}", h.echo_errors);
        let mut buf = MsgBuf::with_capacity(msgloop::MAX_UDP_PAYLOAD);
        assert_eq!(c.recv_msg(&mut buf).unwrap(), RecvResult::Fit(addr));
        assert!(buf.filled() == &payload[..], "size {size}: echo differs");
        total += size as u64;
    }
    let st = reactor.stats(server).unwrap();
    assert_eq!(st.messages_in, 5);
    assert_eq!(st.messages_out, 5);
    assert_eq!(st.bytes_in, total);
    assert_eq!(st.bytes_out, total);
    assert_eq!(st.dropped_over_quota, 0);
}

#[test]
fn echo_round_trips_ipv4() {
    let _g = util::serial();
    let _fds = util::FdCheck::new();
    echo_sizes("127.0.0.1");
}

#[test]
fn echo_round_trips_ipv6() {
    let _g = util::serial();
    let _fds = util::FdCheck::new();
    if let Err(e) = UdpSocket::bind("[::1]:0") {
        eprintln!("skipping: cannot bind [::1]:0: {e}");
        return;
    }
    echo_sizes("[::1]");
}

/// A socket2 UDP socket bound on loopback, and a duplicate of its fd to
/// inspect it after the reactor adopts the original.
fn udp_socket2() -> (socket2::Socket, socket2::Socket) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let dup = s.try_clone().unwrap();
    (s, dup)
}

const FLOOD: usize = 1000;
const FLOOD_LEN: usize = 1000;

/// A flooded socket (1,000 datagrams queued before the first call) and a
/// quiet one that gets one datagram before every call: the flood is read
/// at most `read_budget` per call, the quiet socket is served on every call.
#[test]
fn flooded_socket_does_not_starve_others() {
    let _g = util::serial();
    let _fds = util::FdCheck::new();
    let mut reactor = Reactor::new().unwrap();
    let budget = reactor.config().read_budget;
    assert_eq!(budget, 64, "default read budget");

    let (a_sock, a_dup) = udp_socket2();
    let opts = util::opts(|o| o.recv_buffer_size = Some(8 << 20));
    let a = reactor.add_udp_with(a_sock, &opts).unwrap();
    let rcv = util::rcvbuf(&a_dup);
    drop(a_dup);
    // Linux charges ~2-3 KiB of buffer per 1 KB datagram on loopback.
    assert!(
        rcv >= FLOOD * 4096,
        "socket A's receive buffer is {rcv} B, too small to queue {FLOOD} datagrams of \
         {FLOOD_LEN} B (SO_RCVBUFFORCE refused? run as root / with CAP_NET_ADMIN)"
    );
    let b = reactor.bind_udp("127.0.0.1:0").unwrap();
    let a_addr = reactor.local_addr(a).unwrap().as_inet().unwrap();
    let b_addr = reactor.local_addr(b).unwrap().as_inet().unwrap();

    let c = client("127.0.0.1");
    for i in 0..FLOOD as u32 {
        let mut p = util::pattern(FLOOD_LEN, i as u8);
        p[..4].copy_from_slice(&i.to_be_bytes());
        c.send_to(&p, a_addr).unwrap();
        if i % 100 == 99 {
            // Let loopback's receive processing keep up (its backlog queue
            // holds ~1,000 packets); nothing is read from A meanwhile.
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    let mut h = Recorder::default();
    let mut calls = 0u32;
    let mut a_seen = 0usize;
    while a_seen < FLOOD {
        calls += 1;
        assert!(
            calls <= 200,
            "only {a_seen} of {FLOOD} delivered after 200 calls"
        );
        c.send_to(&calls.to_be_bytes(), b_addr).unwrap();
        let before = h.events.len();
        reactor
            .run_once(&mut h, Some(Duration::from_secs(5)))
            .unwrap();
        let this_call = &h.events[before..];
        let mut a_now = 0;
        let mut b_now = Vec::new();
        for e in this_call {
            match e {
                Event::Datagram { sock, data, .. } if *sock == a => {
                    let seq = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
                    assert_eq!(seq, a_seen + a_now, "flood delivered in order, none lost");
                    assert_eq!(data.len(), FLOOD_LEN);
                    a_now += 1;
                }
                Event::Datagram { sock, data, .. } if *sock == b => b_now.push(data.clone()),
                other => panic!("call {calls}: unexpected {other:?}"),
            }
        }
        assert!(
            a_now <= budget,
            "call {calls}: {a_now} datagrams from A, budget is {budget}"
        );
        assert_eq!(
            b_now,
            vec![calls.to_be_bytes().to_vec()],
            "call {calls}: B must be served on every call"
        );
        a_seen += a_now;
    }
    let min_calls = FLOOD.div_ceil(budget) as u32;
    assert!(
        calls >= min_calls,
        "{FLOOD} datagrams in {calls} calls: budget not applied"
    );
    assert_eq!(reactor.stats(a).unwrap().messages_in, FLOOD as u64);
    assert_eq!(reactor.stats(b).unwrap().messages_in, u64::from(calls));
}

/// After a budget cut-off, the next call serves the rest without a new
/// readiness edge and without waiting for its timeout.
#[test]
fn carried_socket_is_served_without_new_edge() {
    let _g = util::serial();
    let _fds = util::FdCheck::new();
    let config = util::config(|o| o.read_budget = 10);
    let mut reactor = Reactor::with_config(config).unwrap();
    let a = reactor.bind_udp("127.0.0.1:0").unwrap();
    let a_addr = reactor.local_addr(a).unwrap().as_inet().unwrap();
    let c = client("127.0.0.1");
    for i in 0..25u8 {
        c.send_to(&[i; 16], a_addr).unwrap();
    }
    let mut h = Recorder::default();
    assert_eq!(
        reactor
            .run_once(&mut h, Some(Duration::from_secs(5)))
            .unwrap(),
        10
    );
    // Data is left: the reactor has work to do now.
    let d = reactor
        .next_deadline()
        .expect("a carried socket is due now");
    assert!(d <= std::time::Instant::now());
    // No new datagram arrives: a long timeout must not be waited out (the
    // count proves the carried socket was served, not just timed out).
    assert_eq!(
        reactor
            .run_once(&mut h, Some(Duration::from_secs(10)))
            .unwrap(),
        10
    );
    assert_eq!(
        reactor
            .run_once(&mut h, Some(Duration::from_secs(10)))
            .unwrap(),
        5
    );
    let got: Vec<u8> = h.datagrams(a).iter().map(|d| d[0]).collect();
    assert_eq!(got, (0..25).collect::<Vec<u8>>());
    assert_eq!(reactor.next_deadline(), None, "drained: nothing due");
    assert_eq!(
        reactor
            .run_once(&mut h, Some(Duration::from_millis(20)))
            .unwrap(),
        0
    );
}

/// Echo one datagram through `server` to prove the reactor still works.
fn assert_serves(reactor: &mut Reactor, h: &mut Recorder, server: msgloop::SocketId) {
    let addr = reactor.local_addr(server).unwrap().as_inet().unwrap();
    let c = client("127.0.0.1");
    c.send_to(b"still here", addr).unwrap();
    let n = h.datagrams(server).len();
    let was_echo = std::mem::replace(&mut h.echo, true);
    util::run_until(reactor, h, |_, h| h.datagrams(server).len() > n, 100);
    h.echo = was_echo;
    let mut buf = [0u8; 64];
    let (len, from) = c.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..len], b"still here");
    assert_eq!(from, addr);
}

#[test]
fn oversized_send_is_message_too_large() {
    let _g = util::serial();
    let _fds = util::FdCheck::new();
    let mut reactor = Reactor::new().unwrap();
    let s = reactor.bind_udp("127.0.0.1:0").unwrap();
    let other = reactor.bind_udp("127.0.0.1:0").unwrap();
    let c = client("127.0.0.1");
    let to = c.local_addr().unwrap();
    match reactor.send_to(s, &vec![0u8; 65_508], to) {
        Err(Error::TooLarge { len, .. }) => assert_eq!(len, 65_508),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(reactor.stats(s).unwrap().send_errors, 1);
    assert_eq!(reactor.stats(s).unwrap().messages_out, 0);
    // The largest payload goes, on the same socket.
    reactor.send_to(s, &vec![7u8; 65_507], to).unwrap();
    let mut buf = MsgBuf::with_capacity(65_535);
    assert!(c.recv_msg(&mut buf).unwrap().is_message());
    assert_eq!(buf.len(), 65_507);
    let mut h = Recorder::default();
    assert_serves(&mut reactor, &mut h, other);
    assert_serves(&mut reactor, &mut h, s);
}

#[test]
fn connected_udp_to_closed_port_is_connection_refused() {
    let _g = util::serial();
    let _fds = util::FdCheck::new();
    let mut reactor = Reactor::new().unwrap();
    let other = reactor.bind_udp("127.0.0.1:0").unwrap();
    let s = reactor.bind_udp("127.0.0.1:0").unwrap();
    let closed = {
        let t = UdpSocket::bind("127.0.0.1:0").unwrap();
        t.local_addr().unwrap()
    };
    reactor.connect(s, closed).unwrap();
    reactor.send(s, b"anyone?").unwrap();
    let mut h = Recorder::default();
    let mut via = None;
    for _ in 0..100 {
        reactor.run_once(&mut h, Some(util::STEP)).unwrap();
        if let Some((sock, e)) = h.errors().first() {
            assert_eq!(*sock, s);
            assert!(
                matches!(e, Error::ConnectionRefused),
                "on_error got {e:?}, expected ConnectionRefused"
            );
            via = Some("on_error");
            break;
        }
        match reactor.send(s, b"anyone?") {
            Ok(_) => {}
            Err(Error::ConnectionRefused) => {
                via = Some("send");
                break;
            }
            Err(e) => panic!("expected ConnectionRefused, got {e:?}"),
        }
    }
    let via = via.expect("ConnectionRefused never surfaced (neither send nor on_error)");
    eprintln!("ConnectionRefused reported via {via}");
    assert!(
        reactor.contains(s),
        "an ICMP error does not close the socket"
    );
    assert_serves(&mut reactor, &mut h, other);
    // The refused socket itself is still usable once connected elsewhere.
    let peer = client("127.0.0.1");
    reactor.connect(s, peer.local_addr().unwrap()).unwrap();
    // A late ICMP error may still be pending on the socket: tolerate one.
    let mut sent = false;
    for _ in 0..3 {
        match reactor.send(s, b"hello") {
            Ok(()) => {
                sent = true;
                break;
            }
            Err(Error::ConnectionRefused) => continue,
            other => panic!("send after reconnect: {other:?}"),
        }
    }
    assert!(sent);
    let mut buf = [0u8; 16];
    let (n, _) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello");
}

#[test]
fn send_without_destination_is_not_connected() {
    let _g = util::serial();
    let _fds = util::FdCheck::new();
    let mut reactor = Reactor::new().unwrap();
    let s = reactor.bind_udp("127.0.0.1:0").unwrap();
    match reactor.send(s, b"x") {
        Err(Error::NotConnected) => {}
        other => panic!("expected NotConnected, got {other:?}"),
    }
    let mut h = Recorder::default();
    assert_serves(&mut reactor, &mut h, s);
}

/// A datagram over the socket's quota is consumed, counted and reported;
/// the next one is delivered.
fn quota_in_reactor(max: usize, size: usize) {
    let mut reactor = Reactor::new().unwrap();
    let opts = util::opts(|o| o.max_message_len = Some(max));
    let s = reactor.bind_udp_with("127.0.0.1:0", &opts).unwrap();
    let addr = reactor.local_addr(s).unwrap().as_inet().unwrap();
    let c = client("127.0.0.1");
    c.send_to(&vec![1u8; size], addr).unwrap();
    c.send_to(b"small", addr).unwrap();
    let mut h = Recorder::default();
    util::run_until(&mut reactor, &mut h, |_, h| h.datagram_count() >= 1, 100);
    let errors = h.errors();
    assert_eq!(errors.len(), 1, "{:?}", h.events);
    match errors[0] {
        (sock, Error::QuotaExceeded(q)) => {
            assert_eq!(sock, s);
            assert_eq!(q.size, size);
            assert_eq!(q.quota, max);
        }
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
    assert_eq!(h.datagrams(s), vec![&b"small"[..]]);
    let st = reactor.stats(s).unwrap();
    assert_eq!(st.dropped_over_quota, 1);
    assert_eq!(st.messages_in, 1);
}

#[test]
fn quota_at_udp_maximum_is_enforced() {
    let _g = util::serial();
    let _fds = util::FdCheck::new();
    // A quota above the UDP maximum is clamped to it; a maximum datagram
    // fits exactly.
    let mut reactor = Reactor::new().unwrap();
    let opts = util::opts(|o| o.max_message_len = Some(1 << 20));
    let s = reactor.bind_udp_with("127.0.0.1:0", &opts).unwrap();
    let addr = reactor.local_addr(s).unwrap().as_inet().unwrap();
    let c = client("127.0.0.1");
    c.send_to(&vec![3u8; 65_507], addr).unwrap();
    let mut h = Recorder::default();
    util::run_until(&mut reactor, &mut h, |_, h| h.datagram_count() >= 1, 100);
    assert_eq!(h.datagrams(s)[0].len(), 65_507);
    assert!(h.errors().is_empty());
}

#[test]
fn small_quota_is_enforced_in_reactor() {
    let _g = util::serial();
    let _fds = util::FdCheck::new();
    quota_in_reactor(1000, 2000);
}

/// IPv4 and IPv6 sockets in one reactor, replies to each family.
#[test]
fn mixed_families_in_one_reactor() {
    let _g = util::serial();
    let _fds = util::FdCheck::new();
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipping: cannot bind [::1]:0");
        return;
    }
    let mut reactor = Reactor::new().unwrap();
    let v4 = reactor.bind_udp("127.0.0.1:0").unwrap();
    let v6 = reactor.bind_udp("[::1]:0").unwrap();
    let c4 = client("127.0.0.1");
    let c6 = client("[::1]");
    c4.send_to(b"four", reactor.local_addr(v4).unwrap().as_inet().unwrap())
        .unwrap();
    c6.send_to(b"six", reactor.local_addr(v6).unwrap().as_inet().unwrap())
        .unwrap();
    let mut h = Recorder::echo();
    util::run_until(&mut reactor, &mut h, |_, h| h.datagram_count() >= 2, 100);
    let mut buf = [0u8; 16];
    let n = c4.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"four");
    let n = c6.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"six");
}
