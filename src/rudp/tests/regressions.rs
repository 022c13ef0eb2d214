//! Regressions: the failures of earlier reliable-UDP libraries (rudp 0.2.1,
//! laminar, KCP), and peer misbehaviour that must be a typed error, never a
//! panic or a corrupted stream. More prior-art regressions live in
//! `sim.rs` (first packet lost, quiet-link loss, one-way acks, packing).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::rudp::sim::{LinkConfig, Sim};
use crate::rudp::wire::{AckRepr, ChunkRepr, Chunks, CloseCode, PacketRepr, PacketType, VERSION};
use crate::rudp::{
    Connection, ConnectionHandle, Event, EventRef, Guarantee, RudpCloseReason, RudpConfig,
    RudpError, SendError,
};

const STEPS: u64 = 2_000_000;
const INIT: u32 = 1000;

fn cfg() -> RudpConfig {
    RudpConfig {
        initial_sequence: Some(INIT),
        // Some cases queue a few MiB up front, without a writable loop.
        max_send_queue_bytes: 8 << 20,
        ..RudpConfig::default()
    }
}

fn emit(p: &PacketRepr<'_>) -> Vec<u8> {
    let mut b = vec![0u8; p.buffer_len()];
    p.emit(&mut b).unwrap();
    b
}

/// A connected pair with some traffic done; returns (sim, client peer id,
/// connection id, server address).
fn connected(link: LinkConfig, seed: u64) -> (Sim, ConnectionHandle, u32, SocketAddr) {
    let (mut sim, peer) = Sim::pair(cfg(), link, seed);
    for i in 0..50u32 {
        sim.nodes[0]
            .ep
            .send(peer, &i.to_be_bytes(), Guarantee::Delivery)
            .unwrap();
    }
    let mut n = 0;
    sim.run_until(STEPS, Duration::from_secs(30), |s| {
        n += s
            .take_events(1)
            .iter()
            .filter(|(_, e)| matches!(e, Event::Message { .. }))
            .count();
        n >= 50
    })
    .unwrap();
    let cid = sim.nodes[0].ep.connection(peer).unwrap().conn_id();
    let server = sim.nodes[1].addr;
    (sim, peer, cid, server)
}

/// Sends `n` more messages client → server over the (lossy) link and checks
/// they arrive exactly once in order, i.e. the stream was not disturbed.
fn stream_still_works(sim: &mut Sim, peer: ConnectionHandle, n: u32) {
    sim.take_events(1);
    for i in 0..n {
        sim.nodes[0]
            .ep
            .send(peer, &(1_000_000 + i).to_be_bytes(), Guarantee::Delivery)
            .unwrap();
    }
    let mut got = Vec::new();
    sim.run_until(STEPS, Duration::from_secs(60), |s| {
        for (_, e) in s.take_events(1) {
            if let Event::Message { data, .. } = e {
                got.push(data);
            }
        }
        got.len() as u32 >= n
    })
    .unwrap();
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.as_slice(), &(1_000_000 + i as u32).to_be_bytes()[..]);
    }
}

fn ack(cid: u32, largest: u32, cum_seq: u32) -> Vec<u8> {
    emit(&PacketRepr::Ack {
        conn_id: cid,
        ack: AckRepr {
            largest,
            bitmap: u64::MAX,
            delay: 0,
            cum_seq,
        },
    })
}

#[test]
fn violating_acks_are_typed_errors_and_change_nothing() {
    let link = LinkConfig {
        loss: 0.1,
        latency: Duration::from_millis(20),
        ..LinkConfig::default()
    };
    let (mut sim, peer, cid, server) = connected(link, 31);
    let sent = sim.nodes[0].ep.peer_stats(peer).unwrap().packets_sent as u32;
    let next_pn = INIT.wrapping_add(sent);
    // Queue data so there is something in flight to protect.
    for i in 0..20u32 {
        sim.nodes[0]
            .ep
            .send(peer, &(500 + i).to_be_bytes(), Guarantee::Delivery)
            .unwrap();
    }
    let mut buf = vec![0u8; 1500];
    let now = sim.now;
    while let Some(t) = sim.nodes[0].ep.poll_transmit(now, &mut buf) {
        sim.inject(sim.nodes[0].addr, 1, &buf[..t.len]); // deliver normally
        let _ = t;
    }
    let before = sim.nodes[0].ep.connection(peer).unwrap().send_queue_len();
    let cases = [
        (ack(cid, next_pn + 100, INIT), "ack for a packet never sent"),
        (ack(cid, INIT - 5, INIT), "ack older than any packet sent"),
        (
            ack(cid, INIT, INIT + 100_000),
            "cumulative ack beyond the messages sent",
        ),
        (
            ack(cid, INIT, INIT - 3),
            "cumulative ack before the first message",
        ),
    ];
    for (d, what) in &cases {
        let r = sim.nodes[0].ep.handle_datagram(now, server, d);
        assert_eq!(r, Err(RudpError::ProtocolViolation(what)));
    }
    assert_eq!(
        sim.nodes[0].ep.connection(peer).unwrap().send_queue_len(),
        before
    );
    let st = sim.nodes[0].ep.peer_stats(peer).unwrap();
    assert_eq!(st.protocol_violations, 4);
    assert_eq!(sim.nodes[0].ep.stats().protocol_violations, 4);
    // The retransmit queue is intact: the 20 queued messages arrive, in
    // order, and so does everything after them.
    let mut got = Vec::new();
    sim.run_until(STEPS, Duration::from_secs(60), |s| {
        for (_, e) in s.take_events(1) {
            if let Event::Message { data, .. } = e {
                got.push(data);
            }
        }
        got.len() >= 20
    })
    .unwrap();
    let want: Vec<Vec<u8>> = (0..20u32)
        .map(|i| (500 + i).to_be_bytes().to_vec())
        .collect();
    assert_eq!(got, want);
    stream_still_works(&mut sim, peer, 300);
}

#[test]
fn violating_data_is_rejected_without_state_change() {
    let (mut sim, peer, cid, _) = connected(LinkConfig::default(), 32);
    let client = sim.nodes[0].addr;
    let mut chunk_buf = vec![0u8; 2000];
    // Delivery far beyond the receive window.
    let mut bad = Vec::new();
    for (seq, frag, len) in [
        (INIT + 1_000_000, None, 4),
        // A non-last fragment of the wrong size.
        (
            INIT + 60,
            Some(crate::rudp::wire::FragInfo { index: 0, count: 3 }),
            10,
        ),
        // Too many fragments for max_message_len.
        (
            INIT + 61,
            Some(crate::rudp::wire::FragInfo {
                index: 1,
                count: 60_000,
            }),
            1155,
        ),
    ] {
        let payload = vec![7u8; len];
        let c = ChunkRepr {
            guarantee: Guarantee::Delivery,
            seq,
            frag,
            set: None,
            payload: &payload,
        };
        let n = c.emit(&mut chunk_buf).unwrap();
        bad.push(emit(&PacketRepr::Data {
            conn_id: cid,
            pn: INIT + 10_000 + bad.len() as u32,
            ack: None,
            chunks: Chunks::new_checked(&chunk_buf[..n]).unwrap(),
        }));
    }
    let now = sim.now;
    for d in &bad {
        let r = sim.nodes[1].ep.handle_datagram(now, client, d);
        assert!(matches!(r, Err(RudpError::ProtocolViolation(_))), "{r:?}");
    }
    let sp = sim.nodes[1].ep.peers().next().unwrap();
    let st = sim.nodes[1].ep.peer_stats(sp).unwrap();
    assert_eq!(st.protocol_violations, 3);
    // The rejected packet numbers were not recorded: no ack for them, and
    // the real stream (whose packet numbers are far below) is unaffected.
    stream_still_works(&mut sim, peer, 500);
}

#[test]
fn malformed_datagrams_from_the_peer_are_counted_not_fatal() {
    let (mut sim, peer, cid, server) = connected(LinkConfig::default(), 33);
    let good = ack(cid, INIT, INIT);
    let now = sim.now;
    let mut errors = 0;
    for cut in 0..good.len() {
        if sim.nodes[0]
            .ep
            .handle_datagram(now, server, &good[..cut])
            .is_err()
        {
            errors += 1;
        }
    }
    assert_eq!(errors, good.len());
    let mut v = good.clone();
    v[0] = VERSION + 1;
    assert!(matches!(
        sim.nodes[0].ep.handle_datagram(now, server, &v),
        Err(RudpError::Wire(_))
    ));
    let mut t = good.clone();
    t[1] = 0x55;
    assert!(matches!(
        sim.nodes[0].ep.handle_datagram(now, server, &t),
        Err(RudpError::Wire(_))
    ));
    assert!(sim.nodes[0].ep.stats().malformed >= good.len() as u64);
    assert!(sim.nodes[0].ep.connection(peer).unwrap().is_established());
    stream_still_works(&mut sim, peer, 100);
}

#[test]
fn repeated_violations_close_the_connection() {
    let (mut sim, peer, cid, server) = connected(LinkConfig::default(), 34);
    let now = sim.now;
    let limit = RudpConfig::default().max_protocol_violations;
    for _ in 0..limit {
        let _ = sim.nodes[0]
            .ep
            .handle_datagram(now, server, &ack(cid, INIT + 1_000_000, INIT));
    }
    let mut buf = [0u8; 1500];
    let mut sent_close = false;
    while let Some(t) = sim.nodes[0].ep.poll_transmit(now, &mut buf) {
        if let Ok(PacketRepr::Close { reason, .. }) = PacketRepr::parse(&buf[..t.len]) {
            assert_eq!(reason, CloseCode::ProtocolViolation);
            sent_close = true;
        }
    }
    assert!(sent_close);
    let evs: Vec<_> = std::iter::from_fn(|| sim.nodes[0].ep.poll_event()).collect();
    assert!(
        evs.iter().any(|(p, e)| *p == peer
            && matches!(e, Event::Closed(RudpCloseReason::ProtocolViolation(_)))),
        "{evs:?}"
    );
    assert!(sim.nodes[0].ep.connection(peer).is_none());
}

/// rudp 0.2.1 put the header at the end and told control packets apart by
/// length. Here the header comes first, and the type byte alone decides:
/// a DATA packet exactly as long as an ACK is still DATA.
#[test]
fn regression_header_first_type_explicit() {
    let payload = [9u8; 7];
    let c = ChunkRepr {
        guarantee: Guarantee::None,
        seq: 1,
        frag: None,
        set: None,
        payload: &payload,
    };
    let mut cb = vec![0u8; c.buffer_len()];
    c.emit(&mut cb).unwrap();
    let d = emit(&PacketRepr::Data {
        conn_id: 5,
        pn: 1,
        ack: None,
        chunks: Chunks::new_checked(&cb).unwrap(),
    });
    let a = ack(5, 1, 1);
    assert_eq!(d.len(), a.len(), "same length on purpose");
    assert_eq!(
        PacketRepr::parse(&d).unwrap().packet_type(),
        PacketType::Data
    );
    assert_eq!(
        PacketRepr::parse(&a).unwrap().packet_type(),
        PacketType::Ack
    );
    assert_eq!((d[0], d[1]), (VERSION, PacketType::Data as u8));
}

/// rudp 0.2.1 released "ordered" messages in hash-map order and overwrote
/// payloads inside a shared buffer. Under heavy reordering every message
/// keeps its own bytes and its place, through both event APIs.
#[test]
fn regression_payloads_intact_and_ordered_under_reordering() {
    let link = LinkConfig {
        reorder: 0.5,
        reorder_delay: Duration::from_millis(30),
        latency: Duration::from_millis(5),
        duplicate: 0.05,
        ..LinkConfig::default()
    };
    let (mut sim, peer) = Sim::pair(cfg(), link, 35);
    let n = 3000u32;
    let body = |i: u32| -> Vec<u8> {
        let len = 1 + (i as usize * 37) % 2000;
        (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
    };
    for i in 0..n {
        sim.nodes[0]
            .ep
            .send(peer, &body(i), Guarantee::Delivery)
            .unwrap();
    }
    sim.nodes[1].collect_events = false;
    let mut k = 0u32;
    let mut owned = false;
    for _ in 0..STEPS {
        // Alternate the borrowed and the owned event API.
        if owned {
            while let Some((_, e)) = sim.nodes[1].ep.poll_event() {
                if let Event::Message { data, .. } = e {
                    assert_eq!(data, body(k), "message {k}");
                    k += 1;
                }
            }
        } else {
            while let Some((_, e)) = sim.nodes[1].ep.poll_event_ref() {
                if let EventRef::Message { data, .. } = e {
                    assert_eq!(data, body(k).as_slice(), "message {k}");
                    k += 1;
                }
            }
        }
        owned = !owned;
        if k >= n || !sim.step() {
            break;
        }
    }
    assert_eq!(k, n);
}

/// KCP's send queue is unbounded. Ours refuses past its bound, even when
/// the application never lets anything be sent.
#[test]
fn regression_send_queue_is_bounded() {
    let cfg = RudpConfig {
        max_send_queue_bytes: 1 << 20,
        max_send_queue_messages: 1000,
        ..RudpConfig::default()
    };
    let mut c = Connection::connect(cfg, 7, Instant::now(), 1);
    let mut queued = 0;
    loop {
        match c.send(&[0u8; 100], Guarantee::Delivery) {
            Ok(()) => queued += 1,
            Err(SendError::QueueFull) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(queued <= 1000);
    }
    assert_eq!(queued, 1000);
    let mut c = Connection::connect(
        RudpConfig {
            max_send_queue_bytes: 1 << 20,
            ..RudpConfig::default()
        },
        7,
        Instant::now(),
        1,
    );
    let big = vec![0u8; 100_000];
    let mut n = 0;
    while c.send(&big, Guarantee::Order).is_ok() {
        n += 1;
        assert!(n <= 11);
    }
    assert_eq!(c.send_queue_len().0, 1_000_000);
}

/// A Connection's timer contract: spurious, repeated and backwards calls
/// are no-ops; the deadline never lies in the past after handling it.
#[test]
fn timers_tolerate_spurious_repeated_and_backwards_calls() {
    let t0 = Instant::now() + Duration::from_secs(10);
    let mut c = Connection::connect(RudpConfig::default(), 9, t0, 3);
    let mut buf = [0u8; 1500];
    assert!(c.poll_transmit(t0, &mut buf).is_some()); // INITIAL
    assert!(c.poll_transmit(t0, &mut buf).is_none());
    c.handle_timeout(t0); // spurious
    assert!(c.poll_transmit(t0, &mut buf).is_none());
    c.handle_timeout(t0 - Duration::from_secs(5)); // clock went backwards
    let d = c.poll_timeout().unwrap();
    c.handle_timeout(d);
    let d2 = c.poll_timeout().unwrap();
    assert!(d2 > d, "deadline did not move forward");
    c.handle_timeout(d); // same instant again: nothing due
    assert_eq!(c.poll_timeout(), Some(d2));
    assert!(c.poll_transmit(d, &mut buf).is_some()); // retransmitted INITIAL
    assert!(c.poll_transmit(d, &mut buf).is_none());
    // A datagram "from the past" does not panic either.
    let _ = c.handle_datagram(t0 - Duration::from_secs(9), &buf[..10]);
}

/// Whether `d` is a DATA packet carrying a Delivery chunk with sequence `seq`.
fn carries_seq(d: &[u8], seq: u32) -> bool {
    match PacketRepr::parse(d) {
        Ok(PacketRepr::Data { chunks, .. }) => chunks
            .iter()
            .any(|c| c.guarantee == Guarantee::Delivery && c.seq == seq),
        _ => false,
    }
}

/// The last packet of a burst is lost and nothing follows it: no later ack
/// can reveal the loss. A tail-loss probe (after ~2 RTT, plus the peer's
/// ack delay) repairs it well before the 50 ms minimum RTO, and the
/// connection keeps its congestion window (no RTO collapse).
#[test]
fn regression_lost_tail_is_probed_before_the_rto() {
    let link = LinkConfig {
        latency: Duration::from_millis(1),
        ..LinkConfig::default()
    };
    let (mut sim, peer, _, _) = connected(link, 71);
    // Warm the RTT estimate, then lose the first transmission of the last
    // message of a burst.
    stream_still_works(&mut sim, peer, 20);
    let last = INIT + 50 + 20 + 9;
    let mut dropped = false;
    sim.drop_filter = Some(Box::new(move |from, _, d| {
        if from == 0 && !dropped && carries_seq(d, last) {
            dropped = true;
            return true;
        }
        false
    }));
    let t0 = sim.now;
    for i in 0..10u32 {
        sim.nodes[0]
            .ep
            .send(peer, &i.to_be_bytes(), Guarantee::Delivery)
            .unwrap();
    }
    let mut got = 0;
    sim.run_until(STEPS, Duration::from_secs(10), |s| {
        got += messages_of(s, 1);
        got >= 10
    })
    .unwrap();
    let took = sim.now - t0;
    let st = sim.nodes[0].ep.peer_stats(peer).unwrap();
    assert!(st.tail_probes >= 1, "no tail-loss probe: {st:?}");
    assert_eq!(st.rto_count, 0, "waited for the RTO: {st:?}");
    assert!(
        took < Duration::from_millis(30),
        "tail repaired after {took:?} of virtual time (min RTO 50 ms)"
    );
}

fn messages_of(sim: &mut Sim, node: usize) -> u32 {
    sim.take_events(node)
        .iter()
        .filter(|(_, e)| matches!(e, Event::Message { .. }))
        .count() as u32
}

/// Pure reordering, no loss: the first reordered packets are declared lost
/// (packet threshold 3), then found spurious when acked after all; the
/// congestion-window cuts they caused are undone and the reordering
/// tolerance widens, so retransmissions stay far below one per reordered
/// datagram and the window reaches its cap instead of being halved.
/// (Flights stay under 64 packets here; see `docs/rudp.md` §12 for
/// reordering deeper than the receiver's 128-packet duplicate window.)
#[test]
fn regression_spurious_losses_widen_tolerance_and_undo_the_cut() {
    let link = LinkConfig {
        reorder: 0.05,
        latency: Duration::from_millis(10),
        reorder_delay: Duration::from_millis(15),
        ..LinkConfig::default()
    };
    let config = RudpConfig {
        max_in_flight: 48,
        ..cfg()
    };
    let (mut sim, peer) = Sim::pair(config, link, 72);
    let n = 3000u32;
    let mut next = 0u32;
    let mut got = 0u32;
    sim.run_until(STEPS, Duration::from_secs(120), |s| {
        while next < n
            && s.nodes[0]
                .ep
                .send(peer, &[7u8; 1000], Guarantee::Delivery)
                .is_ok()
        {
            next += 1;
        }
        got += messages_of(s, 1);
        got >= n
    })
    .unwrap();
    let st = sim.nodes[0].ep.peer_stats(peer).unwrap();
    let reordered = sim.net.reordered;
    assert!(st.spurious_losses > 0, "{st:?}");
    assert!(st.cwnd_undos > 0, "{st:?}");
    assert!(
        st.reorder_threshold > 3 || st.reorder_window > Duration::ZERO,
        "{st:?}"
    );
    assert!(
        st.chunks_retransmitted * 4 < reordered,
        "{} retransmissions for {reordered} reordered datagrams: {st:?}",
        st.chunks_retransmitted
    );
    assert_eq!(st.peak_in_flight, 48, "window stuck small: {st:?}");
}

/// More than 64 packets arrive between two chances to send an ack (one
/// large batch), with a hole from a lost packet in front of them: the
/// receiver must still name every one of them in some ack (the bitmap
/// holds 64), else the sender resends all those it never heard of.
#[test]
fn regression_batches_over_64_packets_are_all_acked() {
    let link = LinkConfig {
        latency: Duration::from_millis(20),
        ..LinkConfig::default()
    };
    let (mut sim, peer, _, _) = connected(link, 73);
    // Grow the window first so that one flight carries > 64 packets.
    let warm = 3000u32;
    let (mut next, mut got) = (0u32, 0u32);
    sim.run_until(STEPS, Duration::from_secs(60), |s| {
        while next < warm
            && s.nodes[0]
                .ep
                .send(peer, &[8u8; 1000], Guarantee::Delivery)
                .is_ok()
        {
            next += 1;
        }
        got += messages_of(s, 1);
        got >= warm
    })
    .unwrap();
    let first = INIT + 50 + warm;
    let mut dropped = false;
    sim.drop_filter = Some(Box::new(move |from, _, d| {
        if from == 0 && !dropped && carries_seq(d, first) {
            dropped = true;
            return true;
        }
        false
    }));
    let before = sim.nodes[0].ep.peer_stats(peer).unwrap();
    assert!(before.cwnd > 100, "window did not grow: {before:?}");
    let n = 1500u32;
    for _ in 0..n {
        sim.nodes[0]
            .ep
            .send(peer, &[9u8; 1000], Guarantee::Delivery)
            .unwrap();
    }
    let mut got = 0;
    sim.run_until(STEPS, Duration::from_secs(60), |s| {
        got += messages_of(s, 1);
        got >= n
    })
    .unwrap();
    let st = sim.nodes[0].ep.peer_stats(peer).unwrap();
    let retx = st.chunks_retransmitted - before.chunks_retransmitted;
    assert!(retx <= 2, "{retx} chunks resent for one lost packet");
}
