//! Endpoint: stateless cookie handshake, limits, peer ids, timers, and
//! hostile input interleaved with a legitimate stream.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::rudp::sim::{LinkConfig, Sim};
use crate::rudp::wire::{PacketRepr, PacketType, Params};
use crate::rudp::{Endpoint, Event, Guarantee, RudpCloseReason, RudpConfig, RudpError, SendError};
use proptest::prelude::*;

const STEPS: u64 = 2_000_000;

fn addr(i: u32) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, (i % 250) as u8 + 1], 10_000 + (i / 250) as u16))
}

fn initial(conn_id: u32, nonce: u64) -> Vec<u8> {
    let p = PacketRepr::Initial { conn_id, nonce };
    let mut b = vec![0u8; p.buffer_len()];
    p.emit(&mut b).unwrap();
    b
}

fn echo(conn_id: u32, cookie: u64) -> Vec<u8> {
    let p = PacketRepr::Echo {
        conn_id,
        cookie,
        params: Params {
            initial_seq: 1,
            recv_window: 1024,
            max_datagram: 1200,
            max_ack_delay_ms: 10,
            max_message_len: 1 << 20,
        },
    };
    let mut b = vec![0u8; p.buffer_len()];
    p.emit(&mut b).unwrap();
    b
}

/// Returns the cookie of the CHALLENGE the server sends to `to`.
fn challenge_for(ep: &mut Endpoint, now: Instant, to: SocketAddr) -> Option<u64> {
    let mut buf = [0u8; 1500];
    let mut cookie = None;
    while let Some(t) = ep.poll_transmit(now, &mut buf) {
        if t.dest == to {
            if let Ok(PacketRepr::Challenge { cookie: c, .. }) = PacketRepr::parse(&buf[..t.len]) {
                cookie = Some(c);
            }
        }
    }
    cookie
}

#[test]
fn initial_flood_creates_no_state_and_no_amplification() {
    let mut server = Endpoint::new(RudpConfig::default(), 77);
    let now = Instant::now();
    let mut buf = [0u8; 1500];
    let (mut in_bytes, mut out_bytes) = (0usize, 0usize);
    for i in 0..10_000u32 {
        let d = initial(i + 1, u64::from(i));
        in_bytes += d.len();
        server.handle_datagram(now, addr(i), &d).unwrap();
        while let Some(t) = server.poll_transmit(now, &mut buf) {
            out_bytes += t.len;
            assert_eq!(
                PacketRepr::parse(&buf[..t.len]).unwrap().packet_type(),
                PacketType::Challenge
            );
        }
    }
    assert_eq!(server.len(), 0);
    assert_eq!(server.half_open(), 0);
    assert_eq!(server.poll_timeout(), None);
    assert!(
        out_bytes <= in_bytes,
        "amplification: {out_bytes} out for {in_bytes} in"
    );
    assert_eq!(server.stats().challenges_sent, 10_000);
}

#[test]
fn forged_and_expired_cookies_are_rejected() {
    let cfg = RudpConfig {
        cookie_lifetime: Duration::from_secs(10),
        ..RudpConfig::default()
    };
    let mut server = Endpoint::new(cfg, 5);
    let now = Instant::now();
    let a = addr(1);
    // Forged cookies.
    for c in [0u64, 1, u64::MAX, 0xdead_beef] {
        assert_eq!(
            server.handle_datagram(now, a, &echo(9, c)),
            Err(RudpError::InvalidCookie)
        );
    }
    // A real cookie is bound to address and connection id.
    server.handle_datagram(now, a, &initial(9, 1)).unwrap();
    let cookie = challenge_for(&mut server, now, a).unwrap();
    assert_eq!(
        server.handle_datagram(now, addr(2), &echo(9, cookie)),
        Err(RudpError::InvalidCookie)
    );
    assert_eq!(
        server.handle_datagram(now, a, &echo(10, cookie)),
        Err(RudpError::InvalidCookie)
    );
    // And expires after two buckets.
    let late = now + Duration::from_secs(25);
    assert_eq!(
        server.handle_datagram(late, a, &echo(9, cookie)),
        Err(RudpError::InvalidCookie)
    );
    assert_eq!(server.len(), 0);
    assert_eq!(server.stats().invalid_cookies, 7);
    // Still valid in the next bucket.
    server
        .handle_datagram(now + Duration::from_secs(12), a, &echo(9, cookie))
        .unwrap();
    assert_eq!(server.len(), 1);
    assert_eq!(server.half_open(), 1);
}

#[test]
fn half_open_cap_and_expiry() {
    let cfg = RudpConfig {
        max_half_open: 4,
        handshake_timeout: Duration::from_secs(2),
        ..RudpConfig::default()
    };
    let mut server = Endpoint::new(cfg, 6);
    let now = Instant::now();
    for i in 0..10u32 {
        let a = addr(100 + i);
        server.handle_datagram(now, a, &initial(i + 1, 0)).unwrap();
        let cookie = challenge_for(&mut server, now, a).unwrap();
        let r = server.handle_datagram(now, a, &echo(i + 1, cookie));
        if i < 4 {
            assert_eq!(r, Ok(()));
        } else {
            assert_eq!(r, Err(RudpError::TooManyConnections));
        }
    }
    assert_eq!((server.len(), server.half_open()), (4, 4));
    assert_eq!(server.stats().refused, 6);
    // Nobody confirms: all four time out after the handshake timeout.
    let mut t = now;
    let mut closed = 0;
    while let Some(d) = server.poll_timeout() {
        assert!(
            d <= now + Duration::from_secs(3),
            "deadline too far: {:?}",
            d - now
        );
        t = t.max(d);
        server.handle_timeout(t);
        let mut buf = [0u8; 1500];
        while server.poll_transmit(t, &mut buf).is_some() {}
        while let Some((_, e)) = server.poll_event() {
            if e == Event::Closed(RudpCloseReason::Timeout) {
                closed += 1;
            }
        }
    }
    assert_eq!(closed, 4);
    assert_eq!((server.len(), server.half_open()), (0, 0));
}

#[test]
fn stale_peer_id_is_rejected_after_slot_reuse() {
    let (mut sim, peer) = Sim::pair(RudpConfig::default(), LinkConfig::default(), 21);
    sim.run_for(Duration::from_millis(50), STEPS).unwrap();
    sim.nodes[0].ep.close(peer);
    sim.run_until(STEPS, Duration::from_secs(5), |s| s.nodes[0].ep.is_empty())
        .unwrap();
    let server = sim.nodes[1].addr;
    let now = sim.now;
    let peer2 = sim.nodes[0].ep.connect(now, server).unwrap();
    assert_eq!(peer2.index(), peer.index(), "slot reused");
    assert_ne!(peer2, peer);
    assert_eq!(
        sim.nodes[0].ep.send(peer, b"old", Guarantee::Delivery),
        Err(SendError::UnknownPeer)
    );
    assert!(sim.nodes[0].ep.connection(peer).is_none());
    sim.nodes[0]
        .ep
        .send(peer2, b"new", Guarantee::Delivery)
        .unwrap();
    let mut got = Vec::new();
    sim.run_until(STEPS, Duration::from_secs(5), |s| {
        for (_, e) in s.take_events(1) {
            if let Event::Message { data, .. } = e {
                got.push(data);
            }
        }
        !got.is_empty()
    })
    .unwrap();
    assert_eq!(got, vec![b"new".to_vec()]);
}

#[test]
fn poll_timeout_is_the_minimum_over_connections() {
    let mut sim = Sim::new(1, RudpConfig::default(), LinkConfig::default(), 22);
    let now = sim.now;
    let mut peers = Vec::new();
    for i in 0..500u32 {
        // Nobody answers: every connection runs its handshake timer.
        let t = now + Duration::from_micros(u64::from(i) * 37);
        peers.push(sim.nodes[0].ep.connect(t, addr(i)).unwrap());
    }
    let ep = &mut sim.nodes[0].ep;
    let mut buf = [0u8; 1500];
    for round in 0..20 {
        let want = peers
            .iter()
            .filter_map(|&p| ep.connection(p).and_then(|c| c.poll_timeout()))
            .min();
        assert_eq!(ep.poll_timeout(), want, "round {round}");
        let Some(t) = want else { break };
        ep.handle_timeout(t);
        // Spurious and repeated calls change nothing.
        ep.handle_timeout(t);
        ep.handle_timeout(t - Duration::from_millis(1));
        while ep.poll_transmit(t, &mut buf).is_some() {}
        while ep.poll_event().is_some() {}
    }
}

#[test]
fn connect_to_silent_server_times_out() {
    let cfg = RudpConfig::default();
    let hs = cfg.handshake_timeout;
    let mut sim = Sim::new(1, cfg, LinkConfig::default(), 23);
    let now = sim.now;
    let peer = sim.nodes[0].ep.connect(now, addr(1)).unwrap();
    sim.nodes[0]
        .ep
        .send(peer, b"queued", Guarantee::Delivery)
        .unwrap();
    let mut closed = None;
    sim.run_until(STEPS, Duration::from_secs(30), |s| {
        for (_, e) in s.take_events(0) {
            if let Event::Closed(r) = e {
                closed = Some((r, s.now));
            }
        }
        closed.is_some()
    })
    .unwrap();
    let (r, at) = closed.unwrap();
    assert_eq!(r, RudpCloseReason::Timeout);
    assert!(at - now <= hs + Duration::from_millis(1));
    // INITIAL retransmissions back off: far fewer than one per 100 ms.
    assert!(sim.net.unroutable < 20, "{} INITIALs", sim.net.unroutable);
    assert!(sim.nodes[0].ep.is_empty());
}

/// Junk of several flavours: random bytes, valid headers with random
/// bodies, and well-formed packets with random fields.
fn junk() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..80),
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..60)).prop_map(|(t, rest)| {
            let ty = [0x01u8, 0x02, 0x03, 0x04, 0x10, 0x11, 0x12, 0x13][t as usize % 8];
            let mut v = vec![1, ty, 0, 0];
            v.extend_from_slice(&rest);
            v
        }),
        (any::<u32>(), any::<u64>(), any::<u32>(), any::<u64>()).prop_map(|(id, c, pn, bm)| {
            let reprs = [
                PacketRepr::Ack {
                    conn_id: id | 1,
                    ack: crate::rudp::wire::AckRepr {
                        largest: pn,
                        bitmap: bm,
                        delay: 0,
                        cum_seq: pn,
                    },
                },
                PacketRepr::Close {
                    conn_id: id | 1,
                    reason: crate::rudp::wire::CloseCode::Normal,
                },
            ];
            let p = reprs[(c % 2) as usize];
            let mut b = vec![0u8; p.buffer_len()];
            p.emit(&mut b).unwrap();
            b
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Arbitrary datagrams (from strangers and from the client's own
    /// address) never panic the server and never disturb a legitimate stream.
    #[test]
    fn hostile_datagrams_never_disturb_a_stream(
        junk in proptest::collection::vec((junk(), any::<bool>()), 1..120),
        seed in any::<u64>(),
    ) {
        let link = LinkConfig { loss: 0.05, latency: Duration::from_millis(5), ..LinkConfig::default() };
        let (mut sim, peer) = Sim::pair(RudpConfig::default(), link, seed);
        let client_addr = sim.nodes[0].addr;
        let n = 200u32;
        for i in 0..n {
            sim.nodes[0].ep.send(peer, &i.to_be_bytes(), Guarantee::Delivery).unwrap();
        }
        let mut k = 0usize;
        let mut got = Vec::new();
        sim.run_until(STEPS, Duration::from_secs(120), |s| {
            if let Some((d, from_client)) = junk.get(k) {
                let from = if *from_client { client_addr } else { addr(k as u32) };
                s.inject(from, 1, d);
                k += 1;
            }
            for (_, e) in s.take_events(1) {
                match e {
                    Event::Message { data, .. } => got.push(data),
                    Event::Closed(r) => panic!("legitimate connection closed: {r:?}"),
                    _ => {}
                }
            }
            got.len() as u32 >= n && k >= junk.len()
        }).unwrap();
        for (i, m) in got.iter().enumerate() {
            prop_assert_eq!(m.as_slice(), &(i as u32).to_be_bytes()[..]);
        }
        prop_assert_eq!(got.len() as u32, n);
        // Junk never created a connection (no valid cookie).
        prop_assert_eq!(sim.nodes[1].ep.len(), 1);
    }

    /// Any bytes at all: handle_datagram returns, never panics.
    #[test]
    fn endpoint_total_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut ep = Endpoint::new(RudpConfig::default(), 1);
        let now = Instant::now();
        let _ = ep.handle_datagram(now, addr(1), &data);
        let mut buf = [0u8; 1500];
        while ep.poll_transmit(now, &mut buf).is_some() {}
        prop_assert_eq!(ep.len(), 0);
    }
}

/// Moves datagrams between `client` (at `c`) and `servers` (at their
/// addresses) until none is left.
fn shuttle(
    now: Instant,
    c: SocketAddr,
    client: &mut Endpoint,
    servers: &mut [(SocketAddr, Endpoint)],
) {
    let mut buf = [0u8; 1500];
    loop {
        let mut moved = false;
        while let Some(t) = client.poll_transmit(now, &mut buf) {
            let (_, s) = servers
                .iter_mut()
                .find(|(a, _)| *a == t.dest)
                .expect("a server");
            let _ = s.handle_datagram(now, c, &buf[..t.len]);
            moved = true;
        }
        for (a, s) in servers.iter_mut() {
            while let Some(t) = s.poll_transmit(now, &mut buf) {
                assert_eq!(t.dest, c);
                let _ = client.handle_datagram(now, *a, &buf[..t.len]);
                moved = true;
            }
        }
        if !moved {
            return;
        }
    }
}

#[test]
fn connections_take_turns_in_runs_of_the_transmit_burst() {
    let now = Instant::now();
    let c = addr(1000);
    let mut client = Endpoint::new(RudpConfig::default(), 5);
    let mut servers: Vec<(SocketAddr, Endpoint)> = (0..3)
        .map(|i| {
            (
                addr(i),
                Endpoint::new(RudpConfig::default(), 100 + u64::from(i)),
            )
        })
        .collect();
    let peers: Vec<_> = servers
        .iter()
        .map(|(a, _)| client.connect(now, *a).expect("connect"))
        .collect();
    shuttle(now, c, &mut client, &mut servers);
    while client.poll_event().is_some() {}
    // Each connection has 10 full datagrams to send (the initial window).
    for &p in &peers {
        for _ in 0..10 {
            client
                .send(p, &[7u8; 1100], Guarantee::Delivery)
                .expect("send");
        }
    }
    client.set_transmit_burst(4);
    let mut buf = [0u8; 1500];
    let mut order = Vec::new();
    while let Some(t) = client.poll_transmit(now, &mut buf) {
        order.push(
            servers
                .iter()
                .position(|(a, _)| *a == t.dest)
                .expect("a server"),
        );
    }
    // Round robin over what each connection had to send, 4 at a time.
    let mut left: Vec<usize> = (0..3)
        .map(|i| order.iter().filter(|&&d| d == i).count())
        .collect();
    assert!(
        left.iter().all(|&n| n > 4),
        "each connection sends more than one run: {left:?}"
    );
    let mut expected = Vec::new();
    while left.iter().any(|&n| n > 0) {
        for (i, n) in left.iter_mut().enumerate() {
            let k = (*n).min(4);
            expected.extend(std::iter::repeat_n(i, k));
            *n -= k;
        }
    }
    assert_eq!(order, expected, "destinations in order");
}
