//! Reliable UDP through the reactor over real loopback sockets.

mod util;

use std::time::{Duration, Instant};

use msgloop::rudp::{Guarantee, RudpCloseReason, RudpConfig};
use msgloop::{Ctx, Error, Handler, PeerId, Reactor};

#[derive(Default)]
struct App {
    client: Option<PeerId>,
    connected: Vec<PeerId>,
    closed: Vec<(PeerId, RudpCloseReason)>,
    received: Vec<(PeerId, Vec<u8>, Guarantee)>,
    writable: u32,
    /// Messages the client still has to send (seq, guarantee), pumped on
    /// connect and on writable.
    to_send: u64,
    sent: u64,
    size: usize,
    echo: bool,
    /// The receiving side panics (once) in the callback for this sequence
    /// number, after recording the message.
    panic_at: Option<u64>,
}

/// Message `seq` of `size` bytes: the sequence number, then bytes derived
/// from it, so that a message delivered with someone else's bytes shows.
fn message(seq: u64, size: usize) -> Vec<u8> {
    let mut msg: Vec<u8> = (0..size.max(8))
        .map(|i| {
            (i as u64)
                .wrapping_mul(31)
                .wrapping_add(seq.wrapping_mul(7)) as u8
        })
        .collect();
    msg[..8].copy_from_slice(&seq.to_le_bytes());
    msg
}

impl App {
    fn pump(&mut self, cx: &mut Ctx) {
        let Some(peer) = self.client else { return };
        while self.sent < self.to_send {
            let msg = message(self.sent, self.size);
            match cx.send_rudp(peer, &msg, Guarantee::Delivery) {
                Ok(()) => self.sent += 1,
                Err(Error::WouldBlock) => break,
                Err(e) => panic!("send: {e}"),
            }
        }
    }
}

impl Handler for App {
    fn on_rudp_connected(&mut self, cx: &mut Ctx, peer: PeerId) {
        self.connected.push(peer);
        if Some(peer) == self.client {
            self.pump(cx);
        }
    }
    fn on_rudp_writable(&mut self, cx: &mut Ctx, _peer: PeerId) {
        self.writable += 1;
        self.pump(cx);
    }
    fn on_rudp(&mut self, cx: &mut Ctx, peer: PeerId, msg: &[u8], g: Guarantee) {
        if self.echo && Some(peer) != self.client {
            cx.send_rudp(peer, msg, g).expect("echo");
        }
        self.received.push((peer, msg.to_vec(), g));
        if Some(peer) != self.client && msg.len() >= 8 {
            let seq = u64::from_le_bytes(msg[..8].try_into().unwrap());
            if self.panic_at == Some(seq) {
                self.panic_at = None;
                panic!("handler bug at message {seq}");
            }
        }
    }
    fn on_rudp_closed(&mut self, _cx: &mut Ctx, peer: PeerId, reason: RudpCloseReason) {
        self.closed.push((peer, reason));
    }
}

fn drive(r: &mut Reactor, app: &mut App, mut done: impl FnMut(&App) -> bool, limit: Duration) {
    let start = Instant::now();
    while !done(app) {
        assert!(
            start.elapsed() < limit,
            "condition not reached within {limit:?}: connected {:?} closed {:?} received {}",
            app.connected,
            app.closed,
            app.received.len()
        );
        r.run_once(app, Some(Duration::from_millis(20)))
            .expect("run_once");
    }
}

#[test]
fn every_guarantee_round_trips_through_an_echo() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let server = r.bind_rudp("127.0.0.1:0", RudpConfig::default()).unwrap();
    let client = r.bind_rudp("127.0.0.1:0", RudpConfig::default()).unwrap();
    let addr = r.local_addr(server).unwrap().as_inet().unwrap();
    let mut app = App {
        echo: true,
        ..App::default()
    };
    let peer = r.connect_rudp_from(client, addr).unwrap();
    app.client = Some(peer);
    drive(
        &mut r,
        &mut app,
        |a| a.connected.len() == 2,
        Duration::from_secs(5),
    );
    for (i, g) in [Guarantee::Delivery, Guarantee::Order, Guarantee::None]
        .into_iter()
        .enumerate()
    {
        r.send_rudp(peer, format!("msg {i}").as_bytes(), g).unwrap();
    }
    r.send_rudp(peer, &[], Guarantee::Delivery).unwrap();
    // A message many datagrams long is fragmented and reassembled.
    let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    r.send_rudp(peer, &big, Guarantee::Delivery).unwrap();
    let back = |a: &App| a.received.iter().filter(|(p, ..)| *p == peer).count();
    drive(&mut r, &mut app, |a| back(a) >= 5, Duration::from_secs(5));
    let echoed: Vec<_> = app.received.iter().filter(|(p, ..)| *p == peer).collect();
    // Reliable messages come back in order; unreliable ones may overtake them.
    let reliable: Vec<&Vec<u8>> = echoed
        .iter()
        .filter(|(_, _, g)| *g == Guarantee::Delivery)
        .map(|(_, m, _)| m)
        .collect();
    assert_eq!(reliable, [&b"msg 0".to_vec(), &Vec::new(), &big]);
    assert!(echoed
        .iter()
        .any(|(_, m, g)| m == b"msg 1" && *g == Guarantee::Order));
    assert!(echoed
        .iter()
        .any(|(_, m, g)| m == b"msg 2" && *g == Guarantee::None));
    assert!(echoed
        .iter()
        .any(|(_, m, g)| m.is_empty() && *g == Guarantee::Delivery));
    assert!(echoed.iter().any(|(_, m, _)| *m == big));
    let stats = r.rudp_peer_stats(peer).unwrap();
    assert!(stats.packets_sent > 0);
}

#[test]
fn a_window_full_of_messages_arrives_exactly_once_in_order() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let server = r.bind_rudp("127.0.0.1:0", RudpConfig::default()).unwrap();
    let client = r.bind_rudp("127.0.0.1:0", RudpConfig::default()).unwrap();
    let addr = r.local_addr(server).unwrap().as_inet().unwrap();
    let mut app = App {
        to_send: 50_000,
        size: 64,
        ..App::default()
    };
    app.client = Some(r.connect_rudp_from(client, addr).unwrap());
    drive(
        &mut r,
        &mut app,
        |a| a.received.len() as u64 >= 50_000,
        Duration::from_secs(20),
    );
    for (i, (_, m, g)) in app.received.iter().enumerate() {
        assert_eq!(*m, message(i as u64, 64), "message {i}");
        assert_eq!(*g, Guarantee::Delivery);
    }
    assert!(
        app.writable > 0,
        "the sender should have hit a full window and resumed"
    );
    let stats = r.rudp_endpoint_stats(server).unwrap();
    let peers = stats.connections as usize;
    assert_eq!(peers, 1);
    assert_eq!(stats.malformed, 0);
}

/// Messages are handed to the handler straight from the receive buffer.
/// A handler that panics in the middle of a batch (the default: the panic
/// leaves `run_once`) must not cost the rest of the batch, nor have it
/// delivered with the bytes of datagrams read later into that buffer.
#[test]
fn a_panic_in_the_middle_of_a_batch_loses_and_corrupts_nothing() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let server = r.bind_rudp("127.0.0.1:0", RudpConfig::default()).unwrap();
    let client = r.bind_rudp("127.0.0.1:0", RudpConfig::default()).unwrap();
    let addr = r.local_addr(server).unwrap().as_inet().unwrap();
    let mut app = App {
        to_send: 3_000,
        size: 1000,
        panic_at: Some(1_234),
        ..App::default()
    };
    app.client = Some(r.connect_rudp_from(client, addr).unwrap());
    let start = Instant::now();
    let mut panics = 0;
    while app.received.len() < 3_000 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            app.received.len()
        );
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            r.run_once(&mut app, Some(Duration::from_millis(20)))
        }));
        match step {
            Ok(res) => {
                res.expect("run_once");
            }
            Err(_) => panics += 1,
        }
    }
    assert_eq!(panics, 1);
    for (i, (_, m, _)) in app.received.iter().enumerate() {
        assert_eq!(*m, message(i as u64, 1000), "message {i}");
    }
    assert_eq!(app.received.len(), 3_000, "nothing twice");
}

/// `connect_rudp` gives the client a socket of its own, connected to the
/// server: strangers' datagrams never reach the endpoint, and the socket
/// refuses peers at other addresses with a typed error.
#[test]
fn connect_rudp_gives_the_client_a_connected_socket_of_its_own() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let s1 = r.bind_rudp("127.0.0.1:0", RudpConfig::default()).unwrap();
    let s2 = r.bind_rudp("127.0.0.1:0", RudpConfig::default()).unwrap();
    let a1 = r.local_addr(s1).unwrap().as_inet().unwrap();
    let a2 = r.local_addr(s2).unwrap().as_inet().unwrap();
    let mut app = App::default();
    let p1 = r.connect_rudp(a1, RudpConfig::default()).unwrap();
    assert!(p1.sock != s1 && p1.sock != s2, "a socket of its own");
    let port = r.local_addr(p1.sock).unwrap().as_inet().unwrap().port();
    drive(
        &mut r,
        &mut app,
        |a| a.connected.len() == 2,
        Duration::from_secs(5),
    );

    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger.send_to(b"junk", ("127.0.0.1", port)).unwrap();
    r.send_rudp(p1, b"one", Guarantee::Delivery).unwrap();
    drive(
        &mut r,
        &mut app,
        |a| a.received.len() == 1,
        Duration::from_secs(5),
    );
    r.run_once(&mut app, Some(Duration::from_millis(20)))
        .unwrap();
    let stats = r.rudp_endpoint_stats(p1.sock).unwrap();
    let peers = stats.connections as usize;
    assert_eq!(
        (stats.malformed, peers),
        (0, 1),
        "the kernel dropped the stranger's datagram"
    );

    match r.connect_rudp_from(p1.sock, a2) {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput),
        other => panic!("{other:?}"),
    }
    // The same socket, unconnected, does see strangers: the junk is counted.
    stranger.send_to(b"junk", a1).unwrap();
    let start = Instant::now();
    while r.rudp_endpoint_stats(s1).unwrap().malformed == 0
        && start.elapsed() < Duration::from_secs(2)
    {
        r.run_once(&mut app, Some(Duration::from_millis(20)))
            .unwrap();
    }
    assert_eq!(r.rudp_endpoint_stats(s1).unwrap().malformed, 1);
}

#[test]
fn closing_a_peer_tells_the_other_side_and_ids_go_stale() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let server = r.bind_rudp("127.0.0.1:0", RudpConfig::default()).unwrap();
    let client = r.bind_rudp("127.0.0.1:0", RudpConfig::default()).unwrap();
    let addr = r.local_addr(server).unwrap().as_inet().unwrap();
    let mut app = App::default();
    let peer = r.connect_rudp_from(client, addr).unwrap();
    app.client = Some(peer);
    drive(
        &mut r,
        &mut app,
        |a| a.connected.len() == 2,
        Duration::from_secs(5),
    );
    r.close_rudp(peer).unwrap();
    drive(
        &mut r,
        &mut app,
        |a| a.closed.len() == 2,
        Duration::from_secs(5),
    );
    assert!(app
        .closed
        .iter()
        .any(|(p, why)| *p == peer && *why == RudpCloseReason::Local));
    assert!(app
        .closed
        .iter()
        .any(|(p, why)| *p != peer && *why == RudpCloseReason::ClosedByPeer));
    assert!(matches!(
        r.send_rudp(peer, b"late", Guarantee::Delivery),
        Err(Error::StaleId)
    ));
}

#[test]
fn a_peer_that_vanishes_is_timed_out() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let cfg = RudpConfig::default()
        .idle_timeout(Duration::from_millis(300))
        .heartbeat_interval(Duration::from_millis(50));
    let server = r.bind_rudp("127.0.0.1:0", cfg.clone()).unwrap();
    let client = r.bind_rudp("127.0.0.1:0", cfg).unwrap();
    let addr = r.local_addr(server).unwrap().as_inet().unwrap();
    let mut app = App::default();
    let peer = r.connect_rudp_from(client, addr).unwrap();
    app.client = Some(peer);
    drive(
        &mut r,
        &mut app,
        |a| a.connected.len() == 2,
        Duration::from_secs(5),
    );
    // The client's socket disappears without a word.
    r.close(client).unwrap();
    drive(
        &mut r,
        &mut app,
        |a| !a.closed.is_empty(),
        Duration::from_secs(5),
    );
    assert_eq!(app.closed[0].1, RudpCloseReason::Timeout);
    assert_eq!(
        r.rudp_endpoint_stats(server).unwrap().connections as usize,
        0,
        "the timed-out peer is freed"
    );
}

#[test]
fn wrong_kind_and_stale_ids_are_typed_errors() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let udp = r.bind_udp("127.0.0.1:0").unwrap();
    assert!(matches!(
        r.connect_rudp_from(udp, "127.0.0.1:9".parse().unwrap()),
        Err(Error::WrongKind { .. })
    ));
    let s = r.bind_rudp("127.0.0.1:0", RudpConfig::default()).unwrap();
    let peer = r
        .connect_rudp_from(s, "127.0.0.1:9".parse().unwrap())
        .unwrap();
    r.close(s).unwrap();
    assert!(matches!(
        r.send_rudp(peer, b"x", Guarantee::Delivery),
        Err(Error::StaleId)
    ));
}

#[test]
fn refusals_for_a_source_show_in_the_socket_counters() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let cfg = RudpConfig::new().max_connections_per_source(1);
    let server = r.bind_rudp("127.0.0.1:0", cfg).unwrap();
    let to = r.local_addr(server).unwrap().as_inet().unwrap();
    let client = r.bind_rudp("127.0.0.1:0", RudpConfig::default()).unwrap();
    let mut app = App::default();
    r.connect_rudp_from(client, to).unwrap();
    drive(
        &mut r,
        &mut app,
        |a| a.connected.len() == 2,
        Duration::from_secs(5),
    );
    // A second connection from the same address: its ECHOs are refused
    // until its handshake times out.
    r.connect_rudp_from(client, to).unwrap();
    let start = Instant::now();
    while r.rudp_endpoint_stats(server).unwrap().refused_per_source == 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "no refusal");
        r.run_once(&mut app, Some(Duration::from_millis(20)))
            .unwrap();
    }
    let ep = r.rudp_endpoint_stats(server).unwrap();
    let s = r.stats(server).unwrap();
    assert!(s.refused_per_source >= 1 && s.refused_per_source == ep.refused_per_source);
    assert_eq!(s.rudp_refused, ep.refused);
    let totals = r.reactor_stats().totals;
    assert_eq!(totals.refused_per_source, s.refused_per_source);
    assert!(totals.to_string().contains("rudp_refused="), "{totals}");
}
