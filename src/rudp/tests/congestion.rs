//! Congestion control and pacing over the simulator's bottlenecks: a rate
//! limit, a drop-tail queue of one bandwidth-delay product, propagation
//! delay and random loss, as the WAN link emulator sets them up — here in
//! virtual time, deterministic. Nodes wake as the reactor does (timers
//! rounded up to whole milliseconds, sends at the end of a pass).
//!
//! `cargo test --lib rudp::tests::congestion -- --nocapture` prints the
//! figures; `RUDP_CC_TRACE=1` adds a line per simulated second per run.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::rudp::sim::{LinkConfig, Sim};
use crate::rudp::{
    CongestionControl, Connection, ConnectionHandle, ConnectionStats, Endpoint, Event, Guarantee,
    RudpConfig, SendError,
};

const STEPS: u64 = 20_000_000;
/// 50 Mbit/s, 25 ms each way: the WAN bench's middle link.
const RATE: f64 = 50.0;
const ONE_WAY: Duration = Duration::from_millis(25);

/// One sending flow of a run.
#[derive(Debug, Clone, Copy)]
struct Flow {
    cc: CongestionControl,
    /// When it connects, from the start of the run.
    start: Duration,
}

/// A run: `flows` bulk Delivery senders, node `i` to node `n + i`, their
/// forward directions through one bottleneck `link`, acks back over a
/// plain link of the same propagation delay.
struct Run {
    link: LinkConfig,
    flows: Vec<Flow>,
    /// Length of the run.
    secs: u64,
    /// Goodput and queueing delay are measured from here to the end.
    measure_from: u64,
    seed: u64,
    /// Flow 0 also sends a small unreliable message this often, stamped
    /// with its sending time (one-way delay under load).
    stamp_every: Option<Duration>,
}

#[derive(Debug)]
struct Outcome {
    /// Delivery payload per flow over the measurement window, Mbit/s.
    goodput: Vec<f64>,
    /// Queueing delay at the bottleneck over the window: p50, p90.
    queue_p50: Duration,
    queue_p90: Duration,
    /// Datagrams the bottleneck queue dropped (whole run).
    queue_drops: u64,
    /// One-way delays of the stamped unreliable messages: p50, count.
    stamped_p50: Option<Duration>,
    stamped: usize,
    /// Senders' connection statistics at the end.
    stats: Vec<ConnectionStats>,
}

fn quantile(v: &mut [Duration], q: f64) -> Option<Duration> {
    v.sort_unstable();
    let i = ((v.len().checked_sub(1)?) as f64 * q).round() as usize;
    v.get(i).copied()
}

fn run(r: &Run) -> Outcome {
    let n = r.flows.len();
    let mut sim = Sim::new(2 * n, RudpConfig::default(), LinkConfig::default(), r.seed);
    sim.timer_granularity = Duration::from_millis(1);
    let back = LinkConfig {
        latency: r.link.latency,
        ..LinkConfig::default()
    };
    let mut dirs = Vec::new();
    for i in 0..n {
        sim.links.insert((i, n + i), r.link);
        sim.links.insert((n + i, i), back);
        dirs.push((i, n + i));
    }
    sim.share_bottleneck(&dirs);
    let msg_len = RudpConfig::frag_payload(RudpConfig::default().mtu);
    let t0 = sim.now;
    let end = t0 + Duration::from_secs(r.secs);
    let measure_from = t0 + Duration::from_secs(r.measure_from);
    let trace = std::env::var("RUDP_CC_TRACE").is_ok();
    let mut peers: Vec<Option<ConnectionHandle>> = vec![None; n];
    let mut next_seq = vec![0u64; n];
    let mut expect = vec![0u64; n];
    let mut bytes = vec![0u64; n];
    let mut bytes_at_measure = None;
    let mut last_report = (t0, vec![0u64; n]);
    let mut queue_skip = 0;
    let mut next_stamp = measure_from;
    let mut stamps = Vec::new();
    let mut payload = vec![0u8; msg_len];
    sim.run_until(STEPS, Duration::from_secs(r.secs + 1), |s| {
        let now = s.now;
        for (i, f) in r.flows.iter().enumerate() {
            if peers[i].is_none() && now >= t0 + f.start {
                let cfg = RudpConfig::default().congestion(f.cc);
                s.nodes[i].ep = Endpoint::new(cfg, r.seed.wrapping_mul(31).wrapping_add(i as u64));
                let to = s.nodes[n + i].addr;
                peers[i] = Some(s.nodes[i].ep.connect(now, to).expect("room"));
                s.wake(i);
            }
            let Some(p) = peers[i] else { continue };
            if i == 0 && r.stamp_every.is_some() && now >= next_stamp {
                let stamp = (now - t0).as_nanos() as u64;
                let _ = s.nodes[0].ep.send(p, &stamp.to_be_bytes(), Guarantee::None);
                next_stamp += r.stamp_every.unwrap_or_default();
                s.wake(0);
            }
            loop {
                payload[..8].copy_from_slice(&next_seq[i].to_be_bytes());
                match s.nodes[i].ep.send(p, &payload, Guarantee::Delivery) {
                    Ok(()) => next_seq[i] += 1,
                    Err(SendError::QueueFull) => break,
                    Err(e) => panic!("send: {e}"),
                }
            }
            s.nodes[i].events.clear();
            for (_, e) in s.take_events(n + i) {
                let Event::Message { data, guarantee } = e else {
                    continue;
                };
                let head = u64::from_be_bytes(data[..8].try_into().expect("8 bytes"));
                match guarantee {
                    Guarantee::Delivery => {
                        assert_eq!(head, expect[i], "flow {i}: Delivery out of order");
                        expect[i] += 1;
                        bytes[i] += data.len() as u64;
                    }
                    _ => stamps.push((now - t0).saturating_sub(Duration::from_nanos(head))),
                }
            }
        }
        if bytes_at_measure.is_none() && now >= measure_from {
            bytes_at_measure = Some(bytes.clone());
            queue_skip = s.bottlenecks[0].stats.queue_delays_us.len();
            stamps.clear();
        }
        if trace && now >= last_report.0 + Duration::from_secs(1) {
            let mut line = format!("  t={:5.1}s", (now - t0).as_secs_f64());
            for i in 0..n {
                let mbit = (bytes[i] - last_report.1[i]) as f64 * 8e-6;
                if let Some(st) = peers[i].and_then(|p| s.nodes[i].ep.peer_stats(p)) {
                    line += &format!(
                        " | {mbit:5.1} Mbit/s {:15} cwnd {:4} pace {:5.1} srtt {:5.1} ms lost {}",
                        st.congestion_state,
                        st.cwnd,
                        st.pacing_rate as f64 * 8e-6,
                        st.srtt.as_secs_f64() * 1e3,
                        st.packets_lost
                    );
                }
            }
            println!("{line}");
            last_report = (now, bytes.clone());
        }
        now >= end
    })
    .unwrap_or_else(|e| panic!("run: {e:?}"));
    let b = &sim.bottlenecks[0].stats;
    let span = (r.secs - r.measure_from) as f64;
    let before = bytes_at_measure.unwrap_or_else(|| vec![0; n]);
    Outcome {
        goodput: (0..n)
            .map(|i| (bytes[i] - before[i]) as f64 * 8e-6 / span)
            .collect(),
        queue_p50: b.queue_delay_quantile(queue_skip, 0.5),
        queue_p90: b.queue_delay_quantile(queue_skip, 0.9),
        queue_drops: b.dropped,
        stamped: stamps.len(),
        stamped_p50: quantile(&mut stamps, 0.5),
        stats: (0..n)
            .map(|i| {
                peers[i]
                    .and_then(|p| sim.nodes[i].ep.peer_stats(p))
                    .unwrap_or_default()
            })
            .collect(),
    }
}

fn one_flow(cc: CongestionControl, loss: f64, secs: u64, seed: u64) -> Outcome {
    run(&Run {
        link: LinkConfig::bottleneck(RATE, ONE_WAY, loss),
        flows: vec![Flow {
            cc,
            start: Duration::ZERO,
        }],
        secs,
        measure_from: 2,
        seed,
        stamp_every: None,
    })
}

/// Reno's throughput under random loss `p`: MSS / RTT × 1.22 / √p, Mbit/s.
fn reno_formula(p: f64) -> f64 {
    1200.0 * 8.0 / (2.0 * ONE_WAY.as_secs_f64()) * 1.22 / p.sqrt() / 1e6
}

/// A clean 50 Mbit/s, 50 ms link with a one-BDP queue: BBR fills it (≥ 90%
/// of the rate in payload) and keeps little standing queue, so a small
/// unreliable message sent during the transfer arrives about the
/// propagation delay after it was sent.
#[test]
fn bbr_fills_a_clean_link_with_little_queue() {
    let o = run(&Run {
        link: LinkConfig::bottleneck(RATE, ONE_WAY, 0.0),
        flows: vec![Flow {
            cc: CongestionControl::Bbr,
            start: Duration::ZERO,
        }],
        secs: 10,
        measure_from: 2,
        seed: 1,
        stamp_every: Some(Duration::from_millis(20)),
    });
    let g = o.goodput[0];
    let owd = o.stamped_p50.expect("stamped messages arrived");
    println!(
        "clean {RATE} Mbit/s, 50 ms, 1-BDP queue: goodput {g:.1} Mbit/s ({:.1}% of the rate); \
         bottleneck queueing delay p50 {:?} p90 {:?}; {} queue drops (Startup); \
         one-way delay of {} small unreliable messages p50 {owd:?} (propagation {ONE_WAY:?}); \
         pacing rate {:.1} Mbit/s, cwnd {} packets, {}",
        g / RATE * 100.0,
        o.queue_p50,
        o.queue_p90,
        o.queue_drops,
        o.stamped,
        o.stats[0].pacing_rate as f64 * 8e-6,
        o.stats[0].cwnd,
        o.stats[0].congestion_state,
    );
    assert!(g >= 0.9 * RATE, "goodput {g:.1} Mbit/s");
    assert!(o.queue_p50 <= Duration::from_millis(5), "{:?}", o.queue_p50);
    assert!(o.stamped >= 300, "{} stamped messages", o.stamped);
    assert!(
        owd <= ONE_WAY + Duration::from_millis(10),
        "one-way delay p50 {owd:?}"
    );
    assert_eq!(o.stats[0].chunks_retransmitted, o.stats[0].packets_lost);
}

/// Random loss on an unloaded path (no standing queue) does not slow BBR
/// down: at 1% and 3% it keeps most of the link, far above what Reno's
/// formula allows — and what the AIMD controller gets.
#[test]
fn bbr_keeps_its_rate_under_random_loss() {
    for (p, seed) in [(0.01, 2), (0.03, 3)] {
        let bbr = one_flow(CongestionControl::Bbr, p, 8, seed);
        let aimd = one_flow(CongestionControl::Aimd, p, 8, seed);
        let (b, a, reno) = (bbr.goodput[0], aimd.goodput[0], reno_formula(p));
        println!(
            "{:.0}% random loss, {RATE} Mbit/s, 50 ms: BBR {b:.1} Mbit/s, AIMD {a:.1} Mbit/s, \
             Reno formula {reno:.2} Mbit/s; BBR queueing delay p50 {:?}, {} lost, {} retransmitted",
            p * 100.0,
            bbr.queue_p50,
            bbr.stats[0].packets_lost,
            bbr.stats[0].chunks_retransmitted,
        );
        assert!(b >= 0.75 * RATE, "BBR {b:.1} Mbit/s at {p}");
        assert!(b >= 10.0 * reno, "BBR {b:.1} Mbit/s vs Reno {reno:.2}");
        assert!(a <= 3.0 * reno, "AIMD {a:.1} Mbit/s is not loss-based?");
    }
}

/// Two BBR flows on one bottleneck, the second a second later: within 20%
/// of each other over the last 40 s, the link still full. (They share it
/// through the AIMD of their bounds, on Reno's time scale: over 12 seeds
/// the worst ratio of this window was 0.86.)
#[test]
fn two_bbr_flows_converge() {
    let bbr = |start| Flow {
        cc: CongestionControl::Bbr,
        start: Duration::from_secs(start),
    };
    let o = run(&Run {
        link: LinkConfig::bottleneck(RATE, ONE_WAY, 0.0),
        flows: vec![bbr(0), bbr(1)],
        secs: 80,
        measure_from: 40,
        seed: 4,
        stamp_every: None,
    });
    let (a, b) = (o.goodput[0], o.goodput[1]);
    let ratio = a.min(b) / a.max(b);
    println!(
        "two BBR flows, {RATE} Mbit/s, 50 ms: {a:.1} and {b:.1} Mbit/s (ratio {ratio:.2}, \
         total {:.1}); queueing delay p50 {:?}",
        a + b,
        o.queue_p50
    );
    assert!(ratio >= 0.8, "{a:.1} vs {b:.1} Mbit/s");
    assert!(a + b >= 0.85 * RATE, "total {:.1}", a + b);
}

/// BBR sharing a one-BDP queue with the loss-based AIMD controller (Reno's
/// halving, a stand-in for TCP): the queue overflows, the loss is
/// congestive, and BBR's bounds leave the other flow a fair part instead
/// of taking the link (the WAN target against TCP CUBIC is at most 2/3).
#[test]
fn bbr_leaves_room_to_a_loss_based_flow() {
    let o = run(&Run {
        link: LinkConfig::bottleneck(RATE, ONE_WAY, 0.0),
        flows: vec![
            Flow {
                cc: CongestionControl::Bbr,
                start: Duration::ZERO,
            },
            Flow {
                cc: CongestionControl::Aimd,
                start: Duration::ZERO,
            },
        ],
        secs: 40,
        measure_from: 10,
        seed: 5,
        stamp_every: None,
    });
    let (b, a) = (o.goodput[0], o.goodput[1]);
    let share = b / (a + b);
    println!(
        "BBR with AIMD, {RATE} Mbit/s, 50 ms, 1-BDP queue: BBR {b:.1}, AIMD {a:.1} Mbit/s \
         (BBR's share {share:.2}); queue drops {}",
        o.queue_drops
    );
    assert!(share <= 0.72, "BBR took {share:.2} of the link");
    assert!(share >= 0.3, "BBR starved: {share:.2}");
}

/// The AIMD controller is still there, paced, and correct: it fills a
/// clean link (a one-BDP queue is what Reno needs) and delivers exactly
/// once, in order (checked by `run`).
#[test]
fn aimd_is_still_available() {
    let o = one_flow(CongestionControl::Aimd, 0.0, 10, 6);
    let g = o.goodput[0];
    println!(
        "AIMD, clean {RATE} Mbit/s, 50 ms: {g:.1} Mbit/s, queueing delay p50 {:?}, \
         {} queue drops, state {}",
        o.queue_p50, o.queue_drops, o.stats[0].congestion_state
    );
    assert!(g >= 0.8 * RATE, "AIMD {g:.1} Mbit/s");
    assert!(o.stats[0].pacing_rate > 0);
}

/// The other WAN links: 10 Mbit/s with 200 ms and 1% loss, 200 Mbit/s with
/// 10 ms and 0.5% loss.
#[test]
fn bbr_on_long_and_fast_paths() {
    for (rate, one_way, p, secs) in [(10.0, 100, 0.01, 20), (200.0, 5, 0.005, 6)] {
        let one_way = Duration::from_millis(one_way);
        let o = run(&Run {
            link: LinkConfig::bottleneck(rate, one_way, p),
            flows: vec![Flow {
                cc: CongestionControl::Bbr,
                start: Duration::ZERO,
            }],
            secs,
            measure_from: secs / 3,
            seed: 7,
            stamp_every: None,
        });
        let g = o.goodput[0];
        let reno = 1200.0 * 8.0 / (2.0 * one_way.as_secs_f64()) * 1.22 / p.sqrt() / 1e6;
        println!(
            "{rate} Mbit/s, {:?} RTT, {:.1}% loss: BBR {g:.1} Mbit/s ({:.1}% of the rate; Reno \
             formula {reno:.2}); queueing delay p50 {:?}",
            2 * one_way,
            p * 100.0,
            g / rate * 100.0,
            o.queue_p50
        );
        assert!(g >= 0.8 * rate, "{g:.1} Mbit/s on {rate}");
    }
}

// -- pacing ------------------------------------------------------------------

/// Client and server connections, handshake done over a perfect link at
/// `now`: the client connection and the server endpoint.
fn connected_pair(now: Instant) -> (Connection, Endpoint, SocketAddr) {
    let cfg = RudpConfig::default();
    let mut server = Endpoint::new(cfg.clone(), 9);
    let mut client = Connection::connect(cfg, 77, now, 5);
    let from: SocketAddr = "10.0.0.1:1000".parse().expect("addr");
    let mut buf = vec![0u8; 2048];
    for _ in 0..4 {
        while let Some(n) = client.poll_transmit(now, &mut buf) {
            let _ = server.handle_datagram(now, from, &buf[..n]);
        }
        while let Some(t) = server.poll_transmit(now, &mut buf) {
            let _ = client.handle_datagram(now, &buf[..t.len]);
        }
    }
    assert!(client.is_established());
    (client, server, from)
}

/// Datagrams the connection writes at `now`.
fn drain(c: &mut Connection, now: Instant) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 2048];
    let mut out = Vec::new();
    while let Some(n) = c.poll_transmit(now, &mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

/// After its first round trip a connection has room in its window but an
/// empty pacer: `poll_transmit` says `None`, `poll_timeout` is the pacing
/// deadline (strictly later, a train's worth of time), and from then on
/// data leaves at the pacing rate, not at once.
#[test]
fn the_pacer_holds_data_back_until_its_deadline() {
    let t0 = Instant::now();
    let (mut c, mut server, from) = connected_pair(t0);
    for i in 0..2000u32 {
        c.send(&[i as u8; 1024], Guarantee::Delivery)
            .expect("queue room");
    }
    let first = drain(&mut c, t0);
    // The initial window (ten packets, and an ack) goes at once.
    assert!(
        (10..=11).contains(&first.len()),
        "{} datagrams",
        first.len()
    );
    // 50 ms each way: the server acks, the acks come back.
    let t1 = t0 + Duration::from_millis(50);
    for d in &first {
        let _ = server.handle_datagram(t1, from, d);
    }
    let mut buf = vec![0u8; 2048];
    let mut acks = Vec::new();
    while let Some(t) = server.poll_transmit(t1, &mut buf) {
        acks.push(buf[..t.len].to_vec());
    }
    let t2 = t0 + Duration::from_millis(100);
    for a in &acks {
        c.handle_datagram(t2, a).expect("ack");
    }
    let burst = drain(&mut c, t2);
    let st = c.stats();
    assert!(
        st.bytes_in_flight + 1200 <= st.cwnd_bytes,
        "the window is open: {st:?}"
    );
    assert!(st.pacing_delays >= 1, "{st:?}");
    let at = c.poll_timeout().expect("a deadline");
    assert!(
        at > t2 && at <= t2 + Duration::from_millis(20),
        "pacing deadline {:?} after the ack",
        at - t2
    );
    // Waking at each deadline until the window is full (no acks come
    // back here): the pacer spreads what the window allows at its rate,
    // in trains of several datagrams.
    let rate = st.pacing_rate as f64;
    let mut now = t2;
    let (mut bytes, mut wakeups) = (0u64, 0u32);
    loop {
        let st = c.stats();
        if st.bytes_in_flight + 1200 > st.cwnd_bytes {
            break;
        }
        let at = c.poll_timeout().expect("a deadline");
        assert!(at > now);
        now = at;
        c.handle_timeout(now);
        let sent = drain(&mut c, now);
        bytes += sent.iter().map(|d| d.len() as u64).sum::<u64>();
        wakeups += 1;
        assert!(wakeups < 1000, "no progress");
    }
    let elapsed = (now - t2).as_secs_f64();
    println!(
        "after the first ack: {} datagrams at once, then {bytes} bytes over {elapsed:.3} s in {wakeups} wake-ups, pacing at {rate} B/s",
        burst.len()
    );
    assert!(burst.len() <= 3, "{} datagrams at once", burst.len());
    assert!(bytes >= 10 * 1000, "{bytes} bytes");
    // No faster than the rate (less one burst of 2 datagrams, which the
    // bucket may hold).
    assert!(
        elapsed >= (bytes as f64 - 2.0 * 1200.0) / rate,
        "{bytes} bytes in {elapsed:.3} s at {rate} B/s"
    );
    assert!(
        elapsed <= 1.5 * bytes as f64 / rate + 0.01,
        "{elapsed:.3} s"
    );
}

/// An endpoint visits its connections in turn: one whose pacer says wait
/// is skipped, not waited for, and the endpoint's `poll_timeout` includes
/// its pacing deadline.
#[test]
fn a_paced_connection_does_not_hold_up_the_others() {
    let link = LinkConfig {
        latency: Duration::from_millis(25),
        ..LinkConfig::default()
    };
    let mut sim = Sim::new(3, RudpConfig::default(), link, 11);
    let now = sim.now;
    let (to_a, to_b) = (sim.nodes[1].addr, sim.nodes[2].addr);
    let a = sim.nodes[0].ep.connect(now, to_a).expect("room");
    let b = sim.nodes[0].ep.connect(now, to_b).expect("room");
    let mut up = 0;
    sim.run_until(STEPS, Duration::from_secs(5), |s| {
        up += s
            .take_events(0)
            .iter()
            .filter(|(_, e)| *e == Event::Connected)
            .count();
        up == 2
    })
    .expect("both connect");
    // A bulk transfer on `a` until its pacer holds it back with room in
    // its window.
    let mut found = false;
    for _ in 0..100_000 {
        while s_send(&mut sim, a) {}
        sim.step();
        let ep = &sim.nodes[0].ep;
        let st = ep.peer_stats(a).expect("a");
        let deadline = ep.connection(a).and_then(Connection::poll_timeout);
        if st.pacing_delays > 0
            && st.bytes_in_flight + 1200 <= st.cwnd_bytes
            && deadline.is_some_and(|d| d > sim.now)
        {
            found = true;
            break;
        }
    }
    assert!(found, "the pacer never held `a` back");
    let now = sim.now;
    let ep = &mut sim.nodes[0].ep;
    let a_deadline = ep
        .connection(a)
        .and_then(Connection::poll_timeout)
        .expect("a deadline");
    // `a` first in line (one more message), then `b` with one message.
    let _ = ep.send(a, &[1u8; 1000], Guarantee::Delivery);
    ep.send(b, b"hello", Guarantee::Delivery).expect("send");
    let mut buf = vec![0u8; 2048];
    let t = ep.poll_transmit(now, &mut buf).expect("b's datagram");
    assert_eq!(t.dest, to_b, "the paced connection went first");
    assert!(ep.poll_timeout().is_some_and(|t| t <= a_deadline));
}

/// Queues bulk data on `peer` of node 0; false once the queue is full.
fn s_send(sim: &mut Sim, peer: ConnectionHandle) -> bool {
    sim.nodes[0]
        .ep
        .send(peer, &[7u8; 1100], Guarantee::Delivery)
        .is_ok()
}
