//! UDP through the `Reactor`: echo round trips, typed send errors, quotas,
//! both address families, `SO_REUSEPORT`. (Read budgets and carry-over,
//! shown with UDP sockets, are in reactor.rs.)

mod util;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use msgloop::{Error, MsgBuf, PeerAddr, Reactor, RecvMsg, RecvResult};
use util::{Event, Recorder};

/// Sends each size to the reactor's echo socket and checks the reply.
fn echo_sizes(ip: &str) {
    let mut reactor = Reactor::new().unwrap();
    let server = reactor.bind_udp(format!("{ip}:0")).unwrap();
    let addr = reactor.local_addr(server).unwrap().as_inet().unwrap();
    let c = util::udp_client(ip);
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
    let _t = util::guard();
    echo_sizes("127.0.0.1");
}

#[test]
fn echo_round_trips_ipv6() {
    let _t = util::guard();
    if !util::ipv6_loopback("echo_round_trips_ipv6") {
        return;
    }
    echo_sizes("[::1]");
}

/// Echo one datagram through `server` to prove the reactor still works.
fn assert_serves(reactor: &mut Reactor, h: &mut Recorder, server: msgloop::SocketId) {
    let addr = reactor.local_addr(server).unwrap().as_inet().unwrap();
    let c = util::udp_client("127.0.0.1");
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
    let _t = util::guard();
    let mut reactor = Reactor::new().unwrap();
    let s = reactor.bind_udp("127.0.0.1:0").unwrap();
    let other = reactor.bind_udp("127.0.0.1:0").unwrap();
    let c = util::udp_client("127.0.0.1");
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
    let _t = util::guard();
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
    let peer = util::udp_client("127.0.0.1");
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
    let _t = util::guard();
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
    let c = util::udp_client("127.0.0.1");
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
    let _t = util::guard();
    // A quota above the UDP maximum is clamped to it; a maximum datagram
    // fits exactly.
    let mut reactor = Reactor::new().unwrap();
    let opts = util::opts(|o| o.max_message_len = Some(1 << 20));
    let s = reactor.bind_udp_with("127.0.0.1:0", &opts).unwrap();
    let addr = reactor.local_addr(s).unwrap().as_inet().unwrap();
    let c = util::udp_client("127.0.0.1");
    c.send_to(&vec![3u8; 65_507], addr).unwrap();
    let mut h = Recorder::default();
    util::run_until(&mut reactor, &mut h, |_, h| h.datagram_count() >= 1, 100);
    assert_eq!(h.datagrams(s)[0].len(), 65_507);
    assert!(h.errors().is_empty());
}

#[test]
fn small_quota_is_enforced_in_reactor() {
    let _t = util::guard();
    quota_in_reactor(1000, 2000);
}

/// Two reactors bind the same port with `SO_REUSEPORT`; the kernel spreads
/// the senders over both.
#[test]
fn reuse_port_lets_two_reactors_share_one_udp_port() {
    let _t = util::guard();
    let opts = msgloop::DgramOptions::default().reuse_port(true);
    let mut a = Reactor::new().unwrap();
    let mut b = Reactor::new().unwrap();
    let sa = a.bind_udp_with("127.0.0.1:0", &opts).unwrap();
    let port = a.local_addr(sa).unwrap().as_inet().unwrap().port();
    let sb = b
        .bind_udp_with(("127.0.0.1", port), &opts)
        .expect("a second socket binds the same port with SO_REUSEPORT");
    assert_eq!(b.local_addr(sb).unwrap().as_inet().unwrap().port(), port);
    // Without the option the port is taken.
    assert!(Reactor::new()
        .unwrap()
        .bind_udp(("127.0.0.1", port))
        .is_err());
    // Many senders (different source ports) are spread over both.
    let (mut ca, mut cb) = (Recorder::default(), Recorder::default());
    let clients: Vec<UdpSocket> = (0..64)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for c in &clients {
        c.send_to(b"hi", ("127.0.0.1", port)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while ca.datagram_count() + cb.datagram_count() < 64 && Instant::now() < deadline {
        a.run_once(&mut ca, Some(Duration::from_millis(5))).unwrap();
        b.run_once(&mut cb, Some(Duration::from_millis(5))).unwrap();
    }
    assert_eq!(ca.datagram_count() + cb.datagram_count(), 64);
    assert!(
        ca.datagram_count() > 0 && cb.datagram_count() > 0,
        "spread: {} / {}",
        ca.datagram_count(),
        cb.datagram_count()
    );
}

/// IPv4 and IPv6 sockets in one reactor, replies to each family.
#[test]
fn mixed_families_in_one_reactor() {
    let _t = util::guard();
    if !util::ipv6_loopback("mixed_families_in_one_reactor") {
        return;
    }
    let mut reactor = Reactor::new().unwrap();
    let v4 = reactor.bind_udp("127.0.0.1:0").unwrap();
    let v6 = reactor.bind_udp("[::1]:0").unwrap();
    let c4 = util::udp_client("127.0.0.1");
    let c6 = util::udp_client("[::1]");
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

// ---- offload, ECN, destination addresses, vectored and batched sends -------

use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};

use msgloop::{Ctx, Datagram, DgramOptions, Ecn, Handler, SocketId, Transmit};

/// A datagram as received: bytes, sender, ECN codepoint, destination.
type Got = (Vec<u8>, SocketAddr, Option<Ecn>, Option<IpAddr>);

/// Records what each datagram said about itself.
#[derive(Default)]
struct Meta {
    got: Vec<Got>,
    /// Answer each datagram from the address it was sent to, with this
    /// codepoint.
    reply: Option<Ecn>,
}

impl Handler for Meta {
    fn on_datagram(&mut self, cx: &mut Ctx, sock: SocketId, msg: Datagram<'_>) {
        let from = msg.from().as_inet().unwrap();
        self.got
            .push((msg.data().to_vec(), from, msg.ecn(), msg.dst_addr()));
        if let Some(ecn) = self.reply {
            let mut t = Transmit::new(msg.data(), from).ecn(ecn);
            if let Some(dst) = msg.dst_addr() {
                t = t.source(dst);
            }
            cx.send_batch(sock, &[t]).unwrap();
        }
    }
}

fn run_until_got(r: &mut Reactor, h: &mut Meta, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.got.len() < n {
        assert!(Instant::now() < deadline, "got {} of {n}", h.got.len());
        r.run_once(h, Some(Duration::from_millis(20))).unwrap();
    }
}

#[test]
fn receive_offload_delivers_each_datagram_of_a_train_the_last_one_shorter() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let offload = DgramOptions::new().offload(true);
    let server = r.bind_udp_with("127.0.0.1:0", &offload).unwrap();
    let to = r.local_addr(server).unwrap().as_inet().unwrap();
    let client = r.bind_udp_with("127.0.0.1:0", &offload).unwrap();
    let sizes = [1000usize, 1000, 1000, 1000, 500, 1000, 1000];
    let payloads: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| util::pattern(n, i as u8))
        .collect();
    let batch: Vec<Transmit<'_>> = payloads.iter().map(|p| Transmit::new(p, to)).collect();
    assert_eq!(r.send_batch(client, &batch).unwrap(), sizes.len());
    let mut h = Meta::default();
    run_until_got(&mut r, &mut h, sizes.len());
    let got: Vec<&[u8]> = h.got.iter().map(|g| &g.0[..]).collect();
    let want: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
    assert_eq!(got, want, "every datagram, whole and in order");
    let (cs, ss) = (r.stats(client).unwrap(), r.stats(server).unwrap());
    eprintln!(
        "trains sent {} received {}",
        cs.trains_sent, ss.trains_received
    );
    if util::kernel_has_offload("receive_offload_delivers_each_datagram_of_a_train") {
        // 4 × 1000 + 500 closes a train; the last two form another.
        assert_eq!(cs.trains_sent, 2);
        assert!(ss.trains_received >= 1);
    }
    assert_eq!(ss.messages_in, sizes.len() as u64);
}

#[test]
fn ecn_codepoints_make_the_round_trip() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let ecn = DgramOptions::new().recv_ecn(true);
    let server = r.bind_udp_with("127.0.0.1:0", &ecn).unwrap();
    let to = r.local_addr(server).unwrap().as_inet().unwrap();
    let client = r.bind_udp_with("127.0.0.1:0", &ecn).unwrap();
    let mut h = Meta {
        reply: Some(Ecn::Ce),
        ..Meta::default()
    };
    r.send_batch(client, &[Transmit::new(b"ect0", to).ecn(Ecn::Ect0)])
        .unwrap();
    r.send_batch(client, &[Transmit::new(b"ect1", to).ecn(Ecn::Ect1)])
        .unwrap();
    r.send_to(client, b"plain", to).unwrap();
    // Three requests at the server, three replies (marked CE) back.
    run_until_got(&mut r, &mut h, 6);
    let at = |data: &[u8]| {
        h.got
            .iter()
            .filter(|g| g.0 == data)
            .map(|g| g.2)
            .collect::<Vec<_>>()
    };
    assert_eq!(at(b"ect0"), [Some(Ecn::Ect0), Some(Ecn::Ce)]);
    assert_eq!(at(b"ect1"), [Some(Ecn::Ect1), Some(Ecn::Ce)]);
    assert_eq!(at(b"plain"), [Some(Ecn::NotEct), Some(Ecn::Ce)]);
}

#[test]
fn a_wildcard_socket_answers_from_the_address_it_was_reached_on() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let opts = DgramOptions::new().recv_dst_addr(true);
    let server = r.bind_udp_with("0.0.0.0:0", &opts).unwrap();
    let port = r.local_addr(server).unwrap().as_inet().unwrap().port();
    let mut h = Meta {
        reply: Some(Ecn::NotEct),
        ..Meta::default()
    };
    for ip in ["127.0.0.1", "127.0.0.2"] {
        let c = util::udp_client("127.0.0.1");
        let target: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        c.send_to(ip.as_bytes(), target).unwrap();
        let before = h.got.len();
        run_until_got(&mut r, &mut h, before + 1);
        assert_eq!(
            h.got[before].3,
            Some(target.ip()),
            "the server saw where the datagram was sent"
        );
        let mut buf = [0u8; 64];
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (n, from) = c.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], ip.as_bytes());
        assert_eq!(from, target, "the reply came from the address reached");
    }
}

#[test]
fn a_datagram_can_be_sent_from_parts() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let s = r.bind_udp("127.0.0.1:0").unwrap();
    let c = util::udp_client("127.0.0.1");
    let to = c.local_addr().unwrap();
    let parts = [IoSlice::new(b"head:"), IoSlice::new(b"payload")];
    r.send_to_vectored(s, &parts, to).unwrap();
    let mut buf = [0u8; 64];
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = c.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"head:payload");
    r.connect(s, to).unwrap();
    r.send_vectored(s, &parts[1..]).unwrap();
    let n = c.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"payload");
    assert_eq!(r.stats(s).unwrap().messages_out, 2);
}
