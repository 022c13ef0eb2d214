//! The loss × RTT matrix: loss {0,1,5,10,20,30}% × RTT {0,50,300} ms, with
//! 1% duplication and 5% reordering on the lossy rows. Virtual time; run with
//! `cargo test --release --lib rudp::tests::loss_matrix -- --nocapture` to
//! see the table (`RUDP_CC=aimd` for the AIMD controller instead of BBR).

use std::collections::HashMap;
use std::time::Duration;

use crate::rudp::sim::{LinkConfig, Sim};
use crate::rudp::{CongestionControl, Event, Guarantee, RudpConfig, SendError};

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
    rtos: u64,
    spurious: u64,
    undos: u64,
    probes: u64,
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
        ..LinkConfig::default()
    }
}

/// Phase 1: `n` reliable 1 KiB messages, with backpressure. Phase 2: a mix
/// of Delivery, Order and None messages, checked for their semantics.
///
/// Returns `None` when the handshake itself failed (at 30% loss each way it
/// does, rarely, within the 10 s handshake timeout: every attempt needs an
/// ECHO and an ACCEPT through).
fn run_cell(loss: f64, rtt_ms: u64, seed: u64) -> Option<Row> {
    // `RUDP_CC=aimd` runs the matrix with the AIMD controller.
    let mut cfg = RudpConfig::default();
    if std::env::var("RUDP_CC").as_deref() == Ok("aimd") {
        cfg.congestion = CongestionControl::Aimd;
    }
    let (mut sim, peer) = Sim::pair(cfg, link(loss, rtt_ms), seed);
    // Handshake first (both ends), so phase 1 measures the transfer only.
    let mut up = [false; 2];
    let hs = sim.run_until(STEPS, Duration::from_secs(60), |s| {
        for (i, u) in up.iter_mut().enumerate() {
            *u |= s.take_events(i).iter().any(|(_, e)| *e == Event::Connected);
        }
        up == [true, true]
    });
    if hs.is_err() {
        return None;
    }
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

    Some(Row {
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
        rtos: st.rto_count,
        spurious: st.spurious_losses,
        undos: st.cwnd_undos,
        probes: st.tail_probes,
    })
}

/// Sums (messages, seconds, counters) and means (ratios) of several runs of
/// one cell.
fn mean(runs: &[Row]) -> Row {
    let k = runs.len() as f64;
    let avg = |f: fn(&Row) -> f64| runs.iter().map(f).sum::<f64>() / k;
    let sum = |f: fn(&Row) -> u64| runs.iter().map(f).sum::<u64>();
    let msgs: u32 = runs.iter().map(|r| r.reliable_msgs).sum();
    let secs: f64 = runs.iter().map(|r| r.secs).sum();
    Row {
        loss: runs[0].loss,
        rtt_ms: runs[0].rtt_ms,
        reliable_msgs: msgs,
        secs,
        goodput_kib_s: if secs > 0.0 {
            f64::from(msgs) / secs
        } else {
            f64::INFINITY
        },
        sender_dgrams_per_msg: avg(|r| r.sender_dgrams_per_msg),
        total_dgrams_per_msg: avg(|r| r.total_dgrams_per_msg),
        retx_per_msg: avg(|r| r.retx_per_msg),
        order_delivered: runs.iter().map(|r| r.order_delivered).sum(),
        none_delivered: runs.iter().map(|r| r.none_delivered).sum(),
        peak_in_flight: runs.iter().map(|r| r.peak_in_flight).max().unwrap_or(0),
        srtt_ms: avg(|r| r.srtt_ms),
        rtos: sum(|r| r.rtos),
        spurious: sum(|r| r.spurious),
        undos: sum(|r| r.undos),
        probes: sum(|r| r.probes),
    }
}

#[test]
fn loss_matrix() {
    // `RUDP_MATRIX_SEEDS=N` runs every cell with N seeds (default 1) and
    // prints sums and means: single runs are noisy at high loss.
    let seeds: u64 = std::env::var("RUDP_MATRIX_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut rows = Vec::new();
    let mut all = Vec::new();
    for (li, &loss) in [0.0, 0.01, 0.05, 0.10, 0.20, 0.30].iter().enumerate() {
        for (ri, &rtt) in [0u64, 50, 300].iter().enumerate() {
            let base = 1000 + (li * 10 + ri) as u64;
            let runs: Vec<Row> = (0..3 * seeds)
                .filter_map(|k| run_cell(loss, rtt, base + 7919 * k))
                .take(seeds as usize)
                .collect();
            assert_eq!(runs.len() as u64, seeds, "handshakes kept failing");
            rows.push(mean(&runs));
            all.extend(runs);
        }
    }
    println!(
        "{:>5} {:>5} {:>5} {:>8} {:>10} {:>9} {:>9} {:>8} {:>6} {:>6} {:>5} {:>7} {:>4} {:>5} {:>5} {:>5}",
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
        "srtt",
        "rto",
        "spur",
        "undo",
        "tlp"
    );
    for r in &rows {
        println!(
            "{:>5.0} {:>5} {:>5} {:>8.2} {:>10.1} {:>9.3} {:>9.3} {:>8.3} {:>6} {:>6} {:>5} {:>7.1} {:>4} {:>5} {:>5} {:>5}",
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
            r.srtt_ms,
            r.rtos,
            r.spurious,
            r.undos,
            r.probes
        );
    }
    for r in &all {
        if r.loss == 0.0 {
            assert!(
                r.sender_dgrams_per_msg <= 1.1,
                "rtt {}: {} datagrams per 1 KiB message",
                r.rtt_ms,
                r.sender_dgrams_per_msg
            );
            assert_eq!(r.retx_per_msg, 0.0, "retransmissions on a perfect link");
        }
        // Bounded retransmissions: 1.5 times the expected number of
        // transmissions lost (x = p / (1 - p) per message), plus slack for
        // spurious ones. Reordering (5% of datagrams on the lossy rows) is
        // learnt (adaptive packet threshold and time window, spurious-loss
        // detection), so it costs far less than one retransmission per
        // reordered datagram: 4 per 100 messages, 8 with RTT 0, where the
        // reordering delay (1–11 ms) dwarfs the RTT. (Before adaptive
        // reordering the bound was 2x + 0.07; measured over 30 seeds per
        // cell with RUDP_MATRIX_SEEDS=30 the largest excess over x is
        // 0.075 at RTT 0 and 0.19 at 30% loss.)
        let slack = match (r.loss > 0.0, r.rtt_ms) {
            (false, _) => 0.0,
            (true, 0) => 0.08,
            (true, _) => 0.04,
        };
        let bound = r.loss / (1.0 - r.loss) * 1.5 + slack;
        assert!(
            r.retx_per_msg <= bound,
            "loss {} rtt {}: {} retransmissions per message (bound {bound})",
            r.loss,
            r.rtt_ms,
            r.retx_per_msg
        );
    }
}
