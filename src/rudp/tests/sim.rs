//! Two-peer and N-peer simulations of the rudp protocol core (virtual time,
//! seeded, deterministic). Run with `--release`.

use std::time::Duration;

use crate::rudp::sim::{LinkConfig, Sim};
use crate::rudp::wire::{PacketRepr, PacketType};
use crate::rudp::{ConnectionHandle, Event, Guarantee, RudpCloseReason, RudpConfig, SendError};

const STEPS: u64 = 2_000_000;

fn messages(sim: &mut Sim, node: usize) -> Vec<(Guarantee, Vec<u8>)> {
    sim.take_events(node)
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::Message { data, guarantee } => Some((guarantee, data)),
            _ => None,
        })
        .collect()
}

fn msg(i: u32, len: usize) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; len.max(4)];
    v[..4].copy_from_slice(&i.to_be_bytes());
    v.truncate(len.max(4));
    v
}

fn id_of(m: &[u8]) -> u32 {
    u32::from_be_bytes([m[0], m[1], m[2], m[3]])
}

fn ptype(d: &[u8]) -> Option<PacketType> {
    PacketRepr::parse(d).ok().map(|p| p.packet_type())
}

/// Sends `n` reliable messages from node 0, respecting backpressure, and
/// returns what node 1 received (all events kept in order).
fn pump_reliable(
    sim: &mut Sim,
    peer: ConnectionHandle,
    n: u32,
    len: usize,
    max_time: Duration,
) -> Vec<Vec<u8>> {
    let mut next = 0u32;
    let mut got = Vec::new();
    sim.run_until(STEPS, max_time, |s| {
        while next < n {
            match s.nodes[0]
                .ep
                .send(peer, &msg(next, len), Guarantee::Delivery)
            {
                Ok(()) => next += 1,
                Err(SendError::QueueFull) => break,
                Err(e) => panic!("send failed: {e}"),
            }
        }
        s.nodes[0]
            .events
            .retain(|(_, e)| !matches!(e, Event::Writable));
        for (g, d) in messages(s, 1) {
            assert_eq!(g, Guarantee::Delivery);
            got.push(d);
        }
        got.len() as u32 >= n
    })
    .unwrap_or_else(|e| panic!("run failed: {e:?}; got {} of {n}", got.len()));
    got
}

fn assert_in_order(got: &[Vec<u8>], n: u32) {
    assert_eq!(got.len() as u32, n, "count");
    for (i, m) in got.iter().enumerate() {
        assert_eq!(id_of(m), i as u32, "message {i} out of order or duplicated");
    }
}

#[test]
fn smoke_delivery_both_directions() {
    let (mut sim, peer) = Sim::pair(RudpConfig::default(), LinkConfig::default(), 1);
    for i in 0..100u32 {
        sim.nodes[0]
            .ep
            .send(peer, &msg(i, 10), Guarantee::Delivery)
            .unwrap();
    }
    let mut got = Vec::new();
    let mut server_peer = None;
    sim.run_until(STEPS, Duration::from_secs(10), |s| {
        for (p, e) in s.take_events(1) {
            match e {
                Event::Connected => server_peer = Some(p),
                Event::Message { data, .. } => got.push(data),
                _ => {}
            }
        }
        got.len() >= 100
    })
    .unwrap();
    assert_in_order(&got, 100);
    // And back.
    let sp = server_peer.expect("server saw Connected");
    sim.nodes[1]
        .ep
        .send(sp, b"pong", Guarantee::Delivery)
        .unwrap();
    let mut back = Vec::new();
    sim.run_until(STEPS, Duration::from_secs(10), |s| {
        back.extend(messages(s, 0));
        !back.is_empty()
    })
    .unwrap();
    assert_eq!(back, vec![(Guarantee::Delivery, b"pong".to_vec())]);
}

/// rudp 0.2.1: the initial ack value made the sender forget message 1, so
/// losing it stalled the stream forever. Here the first DATA datagram (and,
/// separately, the first INITIAL) is dropped and everything still arrives.
#[test]
fn regression_first_packet_lost() {
    for drop_type in [
        PacketType::Data,
        PacketType::Initial,
        PacketType::Echo,
        PacketType::Accept,
    ] {
        let (mut sim, peer) = Sim::pair(RudpConfig::default(), LinkConfig::default(), 2);
        let mut dropped = false;
        sim.drop_filter = Some(Box::new(move |_, _, d| {
            if !dropped && ptype(d) == Some(drop_type) {
                dropped = true;
                return true;
            }
            false
        }));
        for i in 0..3u32 {
            sim.nodes[0]
                .ep
                .send(peer, &msg(i, 8), Guarantee::Delivery)
                .unwrap();
        }
        let got = pump_reliable(&mut sim, peer, 0, 8, Duration::from_secs(1));
        assert!(got.is_empty());
        let mut got = Vec::new();
        sim.run_until(STEPS, Duration::from_secs(30), |s| {
            got.extend(messages(s, 1).into_iter().map(|(_, d)| d));
            got.len() >= 3
        })
        .unwrap_or_else(|e| panic!("{drop_type:?} dropped: {e:?}"));
        assert_in_order(&got, 3);
        assert_eq!(sim.net.dropped, 1, "{drop_type:?}");
    }
}

/// laminar resent only once acks ran 32 packets ahead: a lost packet on a
/// quiet link was never resent. Here one message, its only DATA lost, no
/// other traffic: it arrives after one retransmission timeout.
#[test]
fn regression_lost_packet_on_quiet_link_is_resent() {
    let (mut sim, peer) = Sim::pair(RudpConfig::default(), LinkConfig::default(), 3);
    sim.run_for(Duration::from_millis(100), STEPS).unwrap();
    let mut dropped = false;
    sim.drop_filter = Some(Box::new(move |from, _, d| {
        if from == 0 && !dropped && ptype(d) == Some(PacketType::Data) {
            dropped = true;
            return true;
        }
        false
    }));
    let t0 = sim.now;
    sim.nodes[0]
        .ep
        .send(peer, b"only", Guarantee::Delivery)
        .unwrap();
    let mut got = Vec::new();
    sim.run_until(STEPS, Duration::from_secs(5), |s| {
        got.extend(messages(s, 1));
        !got.is_empty()
    })
    .unwrap();
    assert_eq!(got, vec![(Guarantee::Delivery, b"only".to_vec())]);
    let took = sim.now - t0;
    assert!(took < Duration::from_secs(1), "resent only after {took:?}");
    let st = sim.nodes[0].ep.peer_stats(peer).unwrap();
    assert_eq!(st.chunks_retransmitted, 1);
}

/// laminar acked only reliable traffic in the reverse direction: a one-way
/// flow was never acked. Here the server sends nothing, yet the client's
/// queue drains (everything acked) and nothing is retransmitted.
#[test]
fn regression_one_way_flow_is_acked() {
    let (mut sim, peer) = Sim::pair(RudpConfig::default(), LinkConfig::default(), 4);
    let got = pump_reliable(&mut sim, peer, 5000, 100, Duration::from_secs(30));
    assert_in_order(&got, 5000);
    sim.run_for(Duration::from_millis(200), STEPS).unwrap();
    let st = sim.nodes[0].ep.peer_stats(peer).unwrap();
    assert_eq!(
        sim.nodes[0].ep.connection(peer).unwrap().send_queue_len(),
        (0, 0)
    );
    assert_eq!(st.in_flight, 0);
    assert_eq!(st.chunks_retransmitted, 0, "{st:?}");
    assert_eq!(st.packets_lost, 0);
}

/// Backpressure: a burst far larger than the send queue gets `QueueFull`,
/// then `Writable`, and every message arrives exactly once in order.
#[test]
fn burst_larger_than_window() {
    let cfg = RudpConfig {
        max_send_queue_messages: 256,
        max_send_queue_bytes: 64 * 1024,
        max_in_flight: 16,
        ..RudpConfig::default()
    };
    let link = LinkConfig {
        latency: Duration::from_millis(10),
        ..LinkConfig::default()
    };
    let (mut sim, peer) = Sim::pair(cfg, link, 5);
    let n = 20_000u32;
    let mut next = 0u32;
    let mut full = 0u32;
    let mut writable = 0u32;
    let mut waiting = false;
    let mut got = Vec::new();
    sim.run_until(STEPS, Duration::from_secs(120), |s| {
        for (_, e) in s.take_events(0) {
            if e == Event::Writable {
                assert!(waiting, "Writable without a failed send");
                waiting = false;
                writable += 1;
            }
        }
        while next < n && !waiting {
            match s.nodes[0]
                .ep
                .send(peer, &msg(next, 64), Guarantee::Delivery)
            {
                Ok(()) => next += 1,
                Err(SendError::QueueFull) => {
                    full += 1;
                    waiting = true;
                }
                Err(e) => panic!("{e}"),
            }
        }
        let st = s.nodes[0].ep.peer_stats(peer).unwrap();
        assert!(st.in_flight <= 16);
        let (bytes, msgs) = s.nodes[0].ep.connection(peer).unwrap().send_queue_len();
        assert!(bytes <= 64 * 1024 && msgs <= 256);
        got.extend(messages(s, 1).into_iter().map(|(_, d)| d));
        got.len() as u32 >= n
    })
    .unwrap();
    assert_in_order(&got, n);
    assert!(
        full > 10 && writable >= full - 1,
        "full {full} writable {writable}"
    );
}

/// Sequence numbers (packet numbers and message numbers) start just below
/// the wrap; 70,000 messages cross it.
#[test]
fn sequence_wrap_70000_messages() {
    let cfg = RudpConfig {
        initial_sequence: Some(u32::MAX - 35_000),
        ..RudpConfig::default()
    };
    let link = LinkConfig {
        loss: 0.02,
        reorder: 0.02,
        duplicate: 0.01,
        latency: Duration::from_millis(5),
        ..LinkConfig::default()
    };
    let (mut sim, peer) = Sim::pair(cfg, link, 6);
    let got = pump_reliable(&mut sim, peer, 70_000, 16, Duration::from_secs(600));
    assert_in_order(&got, 70_000);
    let st = sim.nodes[0].ep.peer_stats(peer).unwrap();
    assert!(st.packets_sent > 35_000 / 70, "{st:?}");
}

/// Duplicated and very late datagrams never cause a second delivery.
#[test]
fn duplicate_and_stale_datagrams() {
    let link = LinkConfig {
        duplicate: 0.3,
        reorder: 0.2,
        reorder_delay: Duration::from_millis(400),
        latency: Duration::from_millis(2),
        ..LinkConfig::default()
    };
    let (mut sim, peer) = Sim::pair(RudpConfig::default(), link, 7);
    let got = pump_reliable(&mut sim, peer, 20_000, 64, Duration::from_secs(120));
    assert_in_order(&got, 20_000);
    // Run on so late copies land, and check nothing more is delivered.
    sim.run_for(Duration::from_secs(1), STEPS).unwrap();
    assert!(messages(&mut sim, 1).is_empty());
    let server_peer = sim.nodes[1].ep.peers().next().unwrap();
    let st = sim.nodes[1].ep.peer_stats(server_peer).unwrap();
    assert!(st.duplicate_packets > 0, "{st:?}");
    assert!(st.stale_packets + st.duplicate_chunks > 0, "{st:?}");
}

/// Messages of awkward sizes, fragmented and packed, under loss.
#[test]
fn fragmentation_sizes_under_loss() {
    let link = LinkConfig {
        loss: 0.1,
        reorder: 0.05,
        latency: Duration::from_millis(20),
        ..LinkConfig::default()
    };
    let (mut sim, peer) = Sim::pair(RudpConfig::default(), link, 8);
    let frag = 1200 - 45;
    let sizes = [
        0usize,
        1,
        4,
        frag - 1,
        frag,
        frag + 1,
        2 * frag,
        2 * frag + 1,
        5000,
        65_536,
        1 << 20,
    ];
    let mut sent = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let m: Vec<u8> = (0..len).map(|j| (j * 7 + i) as u8).collect();
        sim.nodes[0].ep.send(peer, &m, Guarantee::Delivery).unwrap();
        sent.push(m);
    }
    let too_big = vec![0u8; (1 << 20) + 1];
    assert!(matches!(
        sim.nodes[0].ep.send(peer, &too_big, Guarantee::Delivery),
        Err(SendError::TooLarge { .. })
    ));
    let mut got = Vec::new();
    sim.run_until(STEPS, Duration::from_secs(300), |s| {
        got.extend(messages(s, 1).into_iter().map(|(_, d)| d));
        got.len() >= sizes.len()
    })
    .unwrap();
    assert_eq!(got, sent);
}

/// Small messages are packed: 64-byte messages need few datagrams, and
/// rudp 0.2.1's 24x-more-datagrams-than-messages is far away.
#[test]
fn regression_small_messages_are_packed() {
    let (mut sim, peer) = Sim::pair(RudpConfig::default(), LinkConfig::default(), 9);
    sim.run_for(Duration::from_millis(50), STEPS).unwrap();
    let before = sim.nodes[0].sent + sim.nodes[1].sent;
    let got = pump_reliable(&mut sim, peer, 16_000, 64, Duration::from_secs(60));
    assert_in_order(&got, 16_000);
    let data_dgrams = sim.nodes[0].ep.peer_stats(peer).unwrap().packets_sent;
    let total = sim.nodes[0].sent + sim.nodes[1].sent - before;
    println!("16000 x 64 B: {data_dgrams} data datagrams, {total} datagrams in total");
    assert!(data_dgrams <= 16_000 / 14, "{data_dgrams} data datagrams");
    assert!(total <= 16_000 / 10, "{total} datagrams");
}

/// A peer that vanishes (100% loss) is detected within the idle timeout;
/// the retransmission backoff is capped and memory is freed.
#[test]
fn vanished_peer_times_out() {
    let cfg = RudpConfig::default();
    let idle = cfg.idle_timeout;
    let (mut sim, peer) = Sim::pair(cfg, LinkConfig::default(), 10);
    sim.run_for(Duration::from_millis(100), STEPS).unwrap();
    sim.take_events(0);
    sim.take_events(1);
    sim.drop_filter = Some(Box::new(|_, _, _| true));
    let t0 = sim.now;
    for i in 0..50u32 {
        sim.nodes[0]
            .ep
            .send(peer, &msg(i, 500), Guarantee::Delivery)
            .unwrap();
    }
    let mut closed = [None, None];
    sim.run_until(STEPS, Duration::from_secs(60), |s| {
        for (n, slot) in closed.iter_mut().enumerate() {
            for (_, e) in s.take_events(n) {
                if let Event::Closed(r) = e {
                    *slot = Some((r, s.now));
                }
            }
        }
        closed.iter().all(Option::is_some)
    })
    .unwrap();
    for c in closed {
        let (r, at) = c.unwrap();
        assert_eq!(r, RudpCloseReason::Timeout);
        assert!(
            at - t0 <= idle + Duration::from_millis(10),
            "closed after {:?}",
            at - t0
        );
    }
    assert!(sim.nodes[0].ep.is_empty() && sim.nodes[1].ep.is_empty());
    assert!(sim.nodes[0].ep.connection(peer).is_none());
    assert_eq!(
        sim.nodes[0].ep.send(peer, b"x", Guarantee::Delivery),
        Err(SendError::UnknownPeer)
    );
    // Nothing left to do: the simulation goes idle.
    assert!(sim
        .run_until(1000, Duration::from_secs(100), |_| false)
        .is_err());
    assert_eq!(sim.nodes[0].ep.poll_timeout(), None);
}

/// Heartbeats keep an idle connection alive far past the idle timeout.
#[test]
fn heartbeats_keep_idle_connection_alive() {
    let (mut sim, peer) = Sim::pair(RudpConfig::default(), LinkConfig::default(), 11);
    sim.run_for(Duration::from_secs(60), STEPS).unwrap();
    let ev: Vec<_> = sim.take_events(0);
    assert!(
        ev.iter().all(|(_, e)| !matches!(e, Event::Closed(_))),
        "{ev:?}"
    );
    let st = sim.nodes[0].ep.peer_stats(peer).unwrap();
    assert!(
        st.pings_sent >= 50 && st.pings_sent <= 70,
        "{}",
        st.pings_sent
    );
}

/// Graceful close: queued reliable data is delivered before the CLOSE, and
/// both sides report the right reason.
#[test]
fn graceful_close_flushes() {
    let link = LinkConfig {
        loss: 0.2,
        latency: Duration::from_millis(30),
        ..LinkConfig::default()
    };
    let (mut sim, peer) = Sim::pair(RudpConfig::default(), link, 12);
    for i in 0..200u32 {
        sim.nodes[0]
            .ep
            .send(peer, &msg(i, 300), Guarantee::Delivery)
            .unwrap();
    }
    sim.nodes[0].ep.close(peer);
    assert_eq!(
        sim.nodes[0].ep.send(peer, b"late", Guarantee::Delivery),
        Err(SendError::Closed)
    );
    let mut got = Vec::new();
    let mut client_closed = None;
    let mut server_closed = None;
    sim.run_until(STEPS, Duration::from_secs(120), |s| {
        for (_, e) in s.take_events(0) {
            if let Event::Closed(r) = e {
                client_closed = Some(r);
            }
        }
        for (_, e) in s.take_events(1) {
            match e {
                Event::Message { data, .. } => got.push(data),
                Event::Closed(r) => server_closed = Some(r),
                _ => {}
            }
        }
        client_closed.is_some() && server_closed.is_some()
    })
    .unwrap();
    assert_in_order(&got, 200);
    assert_eq!(client_closed, Some(RudpCloseReason::Local));
    // The CLOSE itself may be lost; then the server times out instead.
    assert!(matches!(
        server_closed,
        Some(RudpCloseReason::ClosedByPeer | RudpCloseReason::Timeout)
    ));
}

/// A connection closed while a send waits for room reports no `Writable`
/// (it takes no more sends), neither one queued before the close nor one
/// its draining queue would owe; it still flushes and closes.
#[test]
fn no_writable_after_close() {
    let cfg = RudpConfig {
        max_send_queue_messages: 64,
        ..RudpConfig::default()
    };
    let link = LinkConfig {
        latency: Duration::from_millis(10),
        ..LinkConfig::default()
    };
    let (mut sim, peer) = Sim::pair(cfg, link, 21);
    // The client's events stay in its endpoint until the close.
    sim.nodes[0].collect_events = false;
    let mut sent = 0u32;
    loop {
        match sim.nodes[0]
            .ep
            .send(peer, &msg(sent, 100), Guarantee::Delivery)
        {
            Ok(()) => sent += 1,
            Err(SendError::QueueFull) => break,
            Err(e) => panic!("{e}"),
        }
    }
    // Half the queue drains and `Writable` is queued, not yet polled.
    sim.run_until(STEPS, Duration::from_secs(10), |s| {
        s.nodes[0]
            .ep
            .connection(peer)
            .is_some_and(|c| c.send_queue_len().1 * 2 <= 64)
    })
    .unwrap();
    sim.nodes[0].ep.close(peer);
    sim.nodes[0].collect_events = true;
    let mut got = 0u32;
    let mut closed = None;
    sim.run_until(STEPS, Duration::from_secs(60), |s| {
        for (_, e) in s.take_events(0) {
            match e {
                Event::Writable => panic!("Writable after close"),
                Event::Closed(r) => closed = Some(r),
                _ => {}
            }
        }
        got += messages(s, 1).len() as u32;
        closed.is_some()
    })
    .unwrap();
    assert_eq!(closed, Some(RudpCloseReason::Local));
    assert_eq!(got, sent);
}

/// Many clients to one server over lossy links.
#[test]
fn n_peer_star() {
    let link = LinkConfig {
        loss: 0.05,
        duplicate: 0.01,
        reorder: 0.05,
        latency: Duration::from_millis(15),
        jitter: Duration::from_millis(5),
        ..LinkConfig::default()
    };
    let n = 9;
    let mut sim = Sim::new(n, RudpConfig::default(), link, 13);
    let server = sim.nodes[0].addr;
    let now = sim.now;
    let peers: Vec<_> = (1..n)
        .map(|i| sim.nodes[i].ep.connect(now, server).unwrap())
        .collect();
    for (k, &p) in peers.iter().enumerate() {
        for i in 0..300u32 {
            sim.nodes[k + 1]
                .ep
                .send(p, &msg(i, 40 + k), Guarantee::Delivery)
                .unwrap();
        }
    }
    let mut per_peer: std::collections::HashMap<_, Vec<Vec<u8>>> = Default::default();
    sim.run_until(STEPS, Duration::from_secs(120), |s| {
        for (p, e) in s.take_events(0) {
            if let Event::Message { data, .. } = e {
                per_peer.entry(p).or_default().push(data);
            }
        }
        per_peer.len() == n - 1 && per_peer.values().all(|v| v.len() >= 300)
    })
    .unwrap();
    for v in per_peer.values() {
        assert_in_order(v, 300);
        let len = v[0].len();
        assert!(
            v.iter().all(|m| m.len() == len),
            "messages of two clients mixed"
        );
    }
    assert_eq!(sim.nodes[0].ep.len(), n - 1);
}

fn has_set_member(d: &[u8], index: u16) -> bool {
    match PacketRepr::parse(d) {
        Ok(PacketRepr::Data { chunks, .. }) => chunks
            .iter()
            .any(|c| c.set.is_some_and(|s| s.index == index)),
        _ => false,
    }
}

/// A set with a lost member (member 0 of a 4-set, first transmission):
/// members are delivered as they arrive, in any order among themselves,
/// but the set stays ordered with respect to the messages around it.
#[test]
fn regression_set_with_a_lost_member() {
    let link = LinkConfig {
        latency: Duration::from_millis(10),
        ..LinkConfig::default()
    };
    let (mut sim, peer) = Sim::pair(RudpConfig::default(), link, 40);
    sim.run_for(Duration::from_millis(100), STEPS).unwrap();
    let mut dropped = false;
    sim.drop_filter = Some(Box::new(move |from, _, d| {
        if from == 0 && !dropped && has_set_member(d, 0) {
            dropped = true;
            return true;
        }
        false
    }));
    let big = |tag: u8| vec![tag; 1000];
    let ep = &mut sim.nodes[0].ep;
    ep.send(peer, &big(b'A'), Guarantee::Delivery).unwrap();
    let (s0, s1, s2, s3) = (big(b'0'), big(b'1'), big(b'2'), big(b'3'));
    ep.send_set(peer, &[&s0, &s1, &s2, &s3]).unwrap();
    ep.send(peer, &big(b'B'), Guarantee::Delivery).unwrap();
    let mut got = Vec::new();
    sim.run_until(STEPS, Duration::from_secs(10), |s| {
        got.extend(messages(s, 1).into_iter().map(|(_, d)| d[0]));
        got.len() >= 6
    })
    .unwrap();
    assert_eq!(
        got,
        b"A123".iter().chain(b"0B").copied().collect::<Vec<u8>>()
    );
}

/// Random sets and single messages under loss, duplication and reordering:
/// every message exactly once; groups (a set, or a single message) are
/// delivered in order and each completely before the next starts.
#[test]
fn sets_under_loss_keep_group_order() {
    let link = LinkConfig {
        loss: 0.1,
        duplicate: 0.02,
        reorder: 0.1,
        latency: Duration::from_millis(20),
        ..LinkConfig::default()
    };
    let (mut sim, peer) = Sim::pair(RudpConfig::default(), link, 41);
    let mut rng = crate::rudp::rng::Rng::new(99);
    let mut groups: Vec<u32> = Vec::new(); // group size per group
    let mut id = 0u32;
    for _ in 0..400 {
        let size = if rng.chance(0.4) {
            1 + rng.below(6) as u32
        } else {
            1
        };
        let msgs: Vec<Vec<u8>> = (0..size)
            .map(|k| {
                let mut m = msg(id + k, 4 + rng.below(1500) as usize);
                m[..4].copy_from_slice(&(id + k).to_be_bytes());
                m
            })
            .collect();
        let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
        if size == 1 {
            sim.nodes[0]
                .ep
                .send(peer, refs[0], Guarantee::Delivery)
                .unwrap();
        } else {
            sim.nodes[0].ep.send_set(peer, &refs).unwrap();
        }
        groups.push(size);
        id += size;
    }
    let total = id;
    let mut group_of = Vec::new();
    for (g, &size) in groups.iter().enumerate() {
        group_of.extend(std::iter::repeat_n(g, size as usize));
    }
    let mut got = Vec::new();
    sim.run_until(STEPS, Duration::from_secs(120), |s| {
        got.extend(messages(s, 1).into_iter().map(|(_, d)| id_of(&d)));
        got.len() as u32 >= total
    })
    .unwrap();
    let mut seen = vec![false; total as usize];
    let mut done_in_group = vec![0u32; groups.len()];
    let mut current = 0usize;
    let mut reordered_within_set = false;
    for (pos, &m) in got.iter().enumerate() {
        assert!(!seen[m as usize], "message {m} delivered twice");
        seen[m as usize] = true;
        let g = group_of[m as usize];
        while current < groups.len() && done_in_group[current] == groups[current] {
            current += 1;
        }
        assert_eq!(
            g, current,
            "message {m} (group {g}) delivered while group {current} incomplete"
        );
        if pos > 0 && group_of[got[pos - 1] as usize] == g && got[pos - 1] > m {
            reordered_within_set = true;
        }
        done_in_group[g] += 1;
    }
    assert_eq!(got.len() as u32, total);
    assert!(
        reordered_within_set,
        "loss should have reordered some set members"
    );
}

/// `send_set` is all or nothing, and checks sizes.
#[test]
fn send_set_limits() {
    let cfg = RudpConfig {
        max_send_queue_messages: 16,
        ..RudpConfig::default()
    };
    let (mut sim, peer) = Sim::pair(cfg, LinkConfig::default(), 42);
    let ep = &mut sim.nodes[0].ep;
    let small: Vec<&[u8]> = vec![b"x"; 17];
    assert_eq!(ep.send_set(peer, &small), Err(SendError::QueueFull));
    assert_eq!(ep.connection(peer).unwrap().send_queue_len(), (0, 0));
    assert_eq!(ep.send_set(peer, &[]), Ok(()));
    let huge = vec![0u8; (1 << 20) + 1];
    assert!(matches!(
        ep.send_set(peer, &[b"ok", &huge]),
        Err(SendError::TooLarge { .. })
    ));
    assert_eq!(ep.connection(peer).unwrap().send_queue_len(), (0, 0));
    assert_eq!(ep.send_set(peer, &small[..16]), Ok(()));
}
