//! The loss × RTT matrix: loss {0,1,5,10,20,30}% × RTT {0,50,300} ms, with
//! 1% duplication and 5% reordering on the lossy rows. Virtual time; run with
//! `cargo test --release --test rudp_loss_matrix -- --nocapture` to see the
//! table.

use std::collections::HashMap;
use std::time::Duration;

use msgloop::rudp::sim::{LinkConfig, Sim};
use msgloop::rudp::{Event, Guarantee, RudpConfig, SendError};

const STEPS: u64 = 5_000_000;

fn tag(kind: u8, i: u32, len: usize) -> Vec<u8> {
    let mut v = vec![kind; len.max(5)];
    v[1..5].copy_from_slice(&i.to_be_bytes());
    v
}

fn untag(m: &[u8]) -> (u8, u32) {
    (m[0], u32::from_be_bytes([m[1], m[2], m[3], m[4]]))
}

struct Row {
    loss: f64,
    rtt_ms: u64,
    reliable_msgs: u32,
    secs: f64,
    goodput_kib_s: f64,
    sender_dgrams_per_msg: f64,
    total_dgrams_per_msg: f64,
    retx_per_msg: f64,
    order_delivered: u32,
    none_delivered: u32,
    peak_in_flight: u32,
    srtt_ms: f64,
}

fn link(loss: f64, rtt_ms: u64) -> LinkConfig {
    let lossy = loss > 0.0;
    LinkConfig {
        loss,
        duplicate: if lossy { 0.01 } else { 0.0 },
        reorder: if lossy { 0.05 } else { 0.0 },
        latency: Duration::from_millis(rtt_ms / 2),
        jitter: Duration::ZERO,
        reorder_delay: Duration::from_millis(10 + rtt_ms / 4),
    }
}

/// Phase 1: `n` reliable 1 KiB messages, with backpressure. Phase 2: a mix
/// of Delivery, Order and None messages, checked for their semantics.
fn run_cell(loss: f64, rtt_ms: u64, seed: u64) -> Row {
    let (mut sim, peer) = Sim::pair(RudpConfig::default(), link(loss, rtt_ms), seed);
    // Handshake first, so phase 1 measures the transfer only.
    sim.run_until(STEPS, Duration::from_secs(60), |s| {
        s.take_events(1).iter().any(|(_, e)| *e == Event::Connected)
    })
    .expect("handshake");
    let n: u32 = if loss >= 0.2 && rtt_ms >= 300 {
        150
    } else {
        400
    };
    let t0 = sim.now;
    let d0 = (sim.nodes[0].sent, sim.nodes[1].sent);
    let mut next = 0;
    let mut got = 0u32;
    sim.run_until(STEPS, Duration::from_secs(1200), |s| {
        while next < n {
            match s.nodes[0]
                .ep
                .send(peer, &tag(b'D', next, 1024), Guarantee::Delivery)
            {
                Ok(()) => next += 1,
                Err(SendError::QueueFull) => break,
                Err(e) => panic!("{e}"),
            }
        }
        for (_, e) in s.take_events(1) {
            if let Event::Message { data, guarantee } = e {
                assert_eq!(guarantee, Guarantee::Delivery);
                assert_eq!(
                    untag(&data),
                    (b'D', got),
                    "Delivery out of order or duplicated"
                );
                assert_eq!(data.len(), 1024);
                got += 1;
            }
        }
        got >= n
    })
    .unwrap_or_else(|e| panic!("loss {loss} rtt {rtt_ms}: {e:?} after {got} of {n}"));
    let secs = (sim.now - t0).as_secs_f64();
    let st = sim.nodes[0].ep.peer_stats(peer).unwrap();
    let sender_dgrams = sim.nodes[0].sent - d0.0;
    let total_dgrams = sender_dgrams + sim.nodes[1].sent - d0.1;

    // Phase 2: mixed guarantees.
    let (mut order_last, mut order_n, mut none_n, mut rel_n) = (None::<u32>, 0u32, 0u32, 0u32);
    let mut none_seen: HashMap<u32, u32> = HashMap::new();
    let dup_before = sim.net.duplicated;
    let m = 300u32;
    let mut i = 0u32;
    sim.run_until(STEPS, Duration::from_secs(1200), |s| {
        // Paced: a few messages per step, so Order messages really compete.
        for _ in 0..3 {
            if i >= m {
                break;
            }
            let ep = &mut s.nodes[0].ep;
            if ep
                .send(peer, &tag(b'R', i, 200), Guarantee::Delivery)
                .is_err()
            {
                break;
            }
            ep.send(
                peer,
                &tag(b'O', i, 60 + (i as usize % 3) * 700),
                Guarantee::Order,
            )
            .unwrap();
            ep.send(
                peer,
                &tag(b'N', i, 30 + (i as usize % 5) * 600),
                Guarantee::None,
            )
            .unwrap();
            i += 1;
        }
        for (_, e) in s.take_events(1) {
            if let Event::Message { data, guarantee } = e {
                let (kind, id) = untag(&data);
                match guarantee {
                    Guarantee::Delivery => {
                        assert_eq!((kind, id), (b'R', rel_n), "Delivery order");
                        rel_n += 1;
                    }
                    Guarantee::Order => {
                        assert_eq!(kind, b'O');
                        assert!(
                            order_last.is_none_or(|l| id > l),
                            "Order {id} after {order_last:?}"
                        );
                        order_last = Some(id);
                        order_n += 1;
                    }
                    Guarantee::None => {
                        assert_eq!(kind, b'N');
                        *none_seen.entry(id).or_default() += 1;
                        none_n += 1;
                    }
                }
            }
        }
        rel_n >= m
    })
    .unwrap_or_else(|e| panic!("phase 2 loss {loss} rtt {rtt_ms}: {e:?}"));
    // Let stragglers land, then check nothing is duplicated.
    sim.run_for(Duration::from_secs(2), STEPS).unwrap();
    for (_, e) in sim.take_events(1) {
        if let Event::Message { data, guarantee } = e {
            let (_, id) = untag(&data);
            match guarantee {
                Guarantee::None => {
                    *none_seen.entry(id).or_default() += 1;
                    none_n += 1;
                }
                Guarantee::Order => {
                    assert!(order_last.is_none_or(|l| id > l));
                    order_last = Some(id);
                    order_n += 1;
                }
                Guarantee::Delivery => panic!("extra Delivery message {id}"),
            }
        }
    }
    let link_dups = sim.net.duplicated - dup_before;
    assert!(
        none_seen.values().all(|&c| c == 1),
        "a None message was delivered twice"
    );
    assert!(u64::from(none_n) <= u64::from(m) + link_dups);
    assert!(order_n <= m);
    if loss == 0.0 {
        assert_eq!(none_n, m, "None lost on a perfect link");
        assert_eq!(
            order_n, m,
            "Order lost on a perfect link without reordering"
        );
    }

    Row {
        loss,
        rtt_ms,
        reliable_msgs: n,
        secs,
        goodput_kib_s: if secs > 0.0 {
            f64::from(n) / secs
        } else {
            f64::INFINITY
        },
        sender_dgrams_per_msg: sender_dgrams as f64 / f64::from(n),
        total_dgrams_per_msg: total_dgrams as f64 / f64::from(n),
        retx_per_msg: st.chunks_retransmitted as f64 / f64::from(n),
        order_delivered: order_n,
        none_delivered: none_n,
        peak_in_flight: st.peak_in_flight,
        srtt_ms: st.srtt.as_secs_f64() * 1000.0,
    }
}

#[test]
fn loss_matrix() {
    let mut rows = Vec::new();
    for (li, &loss) in [0.0, 0.01, 0.05, 0.10, 0.20, 0.30].iter().enumerate() {
        for (ri, &rtt) in [0u64, 50, 300].iter().enumerate() {
            rows.push(run_cell(loss, rtt, 1000 + (li * 10 + ri) as u64));
        }
    }
    println!(
        "{:>5} {:>5} {:>5} {:>8} {:>10} {:>9} {:>9} {:>8} {:>6} {:>6} {:>5} {:>7}",
        "loss%",
        "rtt",
        "msgs",
        "secs",
        "KiB/s",
        "dgr/msg",
        "all/msg",
        "retx/msg",
        "order",
        "none",
        "peak",
        "srtt"
    );
    for r in &rows {
        println!(
            "{:>5.0} {:>5} {:>5} {:>8.2} {:>10.1} {:>9.3} {:>9.3} {:>8.3} {:>6} {:>6} {:>5} {:>7.1}",
            r.loss * 100.0,
            r.rtt_ms,
            r.reliable_msgs,
            r.secs,
            r.goodput_kib_s,
            r.sender_dgrams_per_msg,
            r.total_dgrams_per_msg,
            r.retx_per_msg,
            r.order_delivered,
            r.none_delivered,
            r.peak_in_flight,
            r.srtt_ms
        );
    }
    for r in &rows {
        if r.loss == 0.0 {
            assert!(
                r.sender_dgrams_per_msg <= 1.1,
                "rtt {}: {} datagrams per 1 KiB message",
                r.rtt_ms,
                r.sender_dgrams_per_msg
            );
            assert_eq!(r.retx_per_msg, 0.0, "retransmissions on a perfect link");
        }
        // Bounded retransmissions: at most twice the expected number of
        // transmissions lost, plus one spurious retransmission per reordered
        // datagram (5% on the lossy rows), plus slack.
        let reorder = if r.loss > 0.0 { 0.05 } else { 0.0 };
        let bound = r.loss / (1.0 - r.loss) * 2.0 + reorder + 0.02;
        assert!(
            r.retx_per_msg <= bound,
            "loss {} rtt {}: {} retransmissions per message (bound {bound})",
            r.loss,
            r.rtt_ms,
            r.retx_per_msg
        );
    }
}
