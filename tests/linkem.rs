//! The link emulator (tests/util/linkem) does what it is configured to do,
//! within tolerances, and leaves nothing behind.
//!
//! These tests need root, `/dev/net/tun` and `ip`; without them each one
//! is skipped with `SKIPPED …` on stderr (`util::skip`) — and fails under
//! `CI=true`. (The model's own unit tests,
//! `linkem::emulator::model_tests`, run anywhere.) They run one at a time:
//! timing on two cores is fragile enough.

#[path = "util/linkem/mod.rs"]
mod linkem;
mod util;

use std::sync::MutexGuard;
use std::time::Duration;

use linkem::probe::{udp_echo, udp_probe};
use linkem::tcp::{bulk, Amount};
use linkem::{Dir, Impairments, Link, LinkConfig};

/// The lock that runs these tests one at a time, or `None` (with the
/// reason reported by `util::skip`) if links cannot be made here.
fn setup(test: &str) -> Option<MutexGuard<'static, ()>> {
    let g = util::serial();
    match linkem::unavailable() {
        None => Some(g),
        Some(why) => {
            util::skip(test, why);
            None
        }
    }
}

const MS: u64 = 1_000_000;

/// The emulator's real-time priority in the tests that check timing: on a
/// loaded two-core machine a normal-priority emulator thread is sometimes
/// descheduled for milliseconds. (Where `chrt` fails the link still works,
/// at normal priority.)
const RT: Option<u8> = Some(20);

#[test]
fn one_way_delay_matches_config() {
    let Some(_g) = setup("one_way_delay_matches_config") else {
        return;
    };
    let link = Link::new(
        LinkConfig::asymmetric(
            Impairments::none().delay_ms(15.0),
            Impairments::none().delay_ms(35.0),
        )
        .rt_priority(RT),
    )
    .unwrap();
    let echoes = udp_echo(
        &link,
        40,
        100,
        Duration::from_millis(5),
        Duration::from_secs(1),
    )
    .unwrap();
    assert_eq!(echoes.len(), 40, "every echo came back");
    let quantiles = |f: fn(&linkem::probe::Echo) -> u64| {
        let mut v: Vec<u64> = echoes.iter().map(f).collect();
        v.sort_unstable();
        (v[0], v[v.len() / 2])
    };
    let (ab_min, ab_med) = quantiles(|e| e.a_to_b_ns);
    let (ba_min, ba_med) = quantiles(|e| e.b_to_a_ns);
    println!(
        "A→B min {} median {}; B→A min {} median {}; {}",
        linkem::fmt_ns(ab_min),
        linkem::fmt_ns(ab_med),
        linkem::fmt_ns(ba_min),
        linkem::fmt_ns(ba_med),
        link.stats()
    );
    // Never early; late by the stack's and the scheduler's latency only.
    assert!(
        ab_min >= 15 * MS && ab_med < 18 * MS,
        "A→B {ab_min} {ab_med}"
    );
    assert!(
        ba_min >= 35 * MS && ba_med < 38 * MS,
        "B→A {ba_min} {ba_med}"
    );
}

#[test]
fn rate_limit_gives_tcp_goodput_near_the_rate() {
    let Some(_g) = setup("rate_limit_gives_tcp_goodput_near_the_rate") else {
        return;
    };
    let link = Link::new(
        LinkConfig::symmetric(
            Impairments::none()
                .rate_mbit(20.0)
                .delay_ms(5.0)
                .queue_ms(30.0),
        )
        .rt_priority(RT),
    )
    .unwrap();
    let run = bulk(
        &link,
        Dir::AtoB,
        "cubic",
        Amount::Bytes(5_000_000),
        Duration::from_secs(20),
    )
    .unwrap();
    let s = link.stats();
    println!("{run}\n{s}");
    assert_eq!(run.bytes, 5_000_000);
    // Full-size segments: 1,448 bytes of payload per 1,500-byte packet.
    let ceiling = 20e6 * 1448.0 / 1500.0;
    let ratio = run.goodput_bps / ceiling;
    assert!(
        (0.85..=1.02).contains(&ratio),
        "goodput {:.2} Mbit/s is {ratio:.3} of the {:.2} Mbit/s the link carries",
        run.mbit(),
        ceiling / 1e6
    );
    assert_eq!(s.a_to_b.dropped_loss, 0);
    assert_eq!(s.a_to_b.write_errors + s.a_to_b.read_errors, 0);
}

#[test]
fn random_loss_ratio_within_bound() {
    let Some(_g) = setup("random_loss_ratio_within_bound") else {
        return;
    };
    let p = 0.1;
    let link = Link::new(LinkConfig::asymmetric(
        Impairments::none().loss(p),
        Impairments::none(),
    ))
    .unwrap();
    let n = 5000;
    let probe = udp_probe(
        &link,
        Dir::AtoB,
        n,
        200,
        Duration::from_micros(20),
        Duration::from_millis(100),
    )
    .unwrap();
    let s = link.stats();
    println!("{probe}\n{s}");
    // Five standard deviations of a binomial(n, p).
    let sigma = (n as f64 * p * (1.0 - p)).sqrt() / n as f64;
    let lost = probe.loss_ratio();
    assert!(
        (lost - p).abs() < 5.0 * sigma,
        "loss {lost:.4}, configured {p} ± {:.4}",
        5.0 * sigma
    );
    // Everything the emulator did not drop arrived, and nothing else
    // was dropped.
    assert_eq!(s.a_to_b.packets_in, n);
    assert_eq!(s.a_to_b.dropped_loss, n - probe.received());
    assert_eq!(s.a_to_b.forwarded, probe.received());
    assert_eq!(s.a_to_b.dropped_queue, 0);
}

#[test]
fn gilbert_elliott_loss_comes_in_bursts() {
    let Some(_g) = setup("gilbert_elliott_loss_comes_in_bursts") else {
        return;
    };
    // Mean loss 0.01 / (0.01 + 0.25) = 3.85 %, bursts of 4 on average.
    let imp = Impairments::none().gilbert_elliott(0.01, 0.25, 1.0, 0.0);
    let expected = imp.gilbert_elliott.unwrap().mean_loss();
    let link = Link::new(LinkConfig::asymmetric(imp, Impairments::none())).unwrap();
    let probe = udp_probe(
        &link,
        Dir::AtoB,
        20_000,
        100,
        Duration::from_micros(10),
        Duration::from_millis(100),
    )
    .unwrap();
    let bursts = probe.loss_bursts();
    let mean_burst = bursts.iter().sum::<u64>() as f64 / bursts.len().max(1) as f64;
    println!(
        "{probe}; {} bursts, mean length {mean_burst:.2}; {}",
        bursts.len(),
        link.stats()
    );
    // About 200 bursts: their count and lengths vary by ~10 %.
    let lost = probe.loss_ratio();
    assert!(
        (lost - expected).abs() < 0.35 * expected,
        "loss {lost:.4}, expected {expected:.4}"
    );
    assert!((2.8..=5.5).contains(&mean_burst), "mean burst {mean_burst}");
}

#[test]
fn queue_drops_when_overfilled() {
    let Some(_g) = setup("queue_drops_when_overfilled") else {
        return;
    };
    // 5 Mbit/s: a 1,228-byte packet takes 1.96 ms; 300 sent within a few
    // ms find a queue of 20.
    let link = Link::new(
        LinkConfig::symmetric(Impairments::none().rate_mbit(5.0).queue_packets(20)).rt_priority(RT),
    )
    .unwrap();
    let probe = udp_probe(
        &link,
        Dir::AtoB,
        300,
        1200,
        Duration::ZERO,
        Duration::from_millis(300),
    )
    .unwrap();
    let s = link.stats();
    println!("{probe}\n{s}");
    let d = &s.a_to_b;
    assert_eq!(d.packets_in, 300);
    assert_eq!(d.max_queue, 20);
    assert!(d.dropped_queue >= 200, "{d}");
    assert_eq!(d.forwarded + d.dropped_queue, 300);
    assert_eq!(probe.received(), d.forwarded);

    // Sized in time: 20 ms at 5 Mbit/s, so about 10 packets wait and one
    // is on the wire when the burst arrives; each 1.96 ms another gets in.
    link.set_impairments(Dir::AtoB, Impairments::none().rate_mbit(5.0).queue_ms(20.0))
        .unwrap();
    link.reset_stats();
    let probe = udp_probe(
        &link,
        Dir::AtoB,
        300,
        1200,
        Duration::ZERO,
        Duration::from_millis(300),
    )
    .unwrap();
    let s = link.stats();
    println!("{probe}\n{s}");
    let tx_ns = 1228.0 * 8.0 / 5e6 * 1e9;
    let room = 12 + (probe.send_time.as_nanos() as f64 / tx_ns).ceil() as u64;
    assert!(s.a_to_b.dropped_queue >= 200, "{s}");
    assert!(
        (10..=room).contains(&s.a_to_b.forwarded),
        "{} forwarded, expected 10..={room}",
        s.a_to_b.forwarded
    );
    // No packet waits longer than 20 ms, plus its own 1.96 ms on the
    // wire, plus the receiver's latency (generous: a loaded machine delays
    // some receptions by 10 ms; a 300-packet queue would show 600 ms).
    let max = probe.delay_quantile(1.0);
    assert!(max < Duration::from_millis(20 + 2 + 15), "{max:?}");
}

#[test]
fn jitter_keeps_order_and_reorder_reorders() {
    let Some(_g) = setup("jitter_keeps_order_and_reorder_reorders") else {
        return;
    };
    let link = Link::new(
        LinkConfig::asymmetric(
            Impairments::none().delay_ms(10.0).jitter_ms(3.0),
            Impairments::none(),
        )
        .rt_priority(RT),
    )
    .unwrap();
    let probe = udp_probe(
        &link,
        Dir::AtoB,
        500,
        100,
        Duration::from_micros(500),
        Duration::from_millis(100),
    )
    .unwrap();
    println!("jitter, dense: {probe}");
    // Packets closer together than the jitter's spread: no reordering (the
    // later ones are held to keep the order).
    assert_eq!(probe.received(), 500);
    assert_eq!(probe.reordered(), 0);
    assert_eq!(link.stats().a_to_b.reordered, 0);
    assert!(probe.delay_quantile(0.0) >= Duration::from_millis(7));

    // Sparse packets: the delays spread uniformly over 10 ± 2 ms. (The
    // receiver's own latency only adds, and on a loaded machine it adds
    // milliseconds to some packets: check the fastest ones and the spread.)
    link.set_impairments(Dir::AtoB, Impairments::none().delay_ms(10.0).jitter_ms(2.0))
        .unwrap();
    let probe = udp_probe(
        &link,
        Dir::AtoB,
        150,
        100,
        Duration::from_millis(5),
        Duration::from_millis(100),
    )
    .unwrap();
    println!("jitter, sparse: {probe}");
    assert_eq!(probe.received(), 150);
    let min = probe.delay_quantile(0.0);
    assert!(min >= Duration::from_millis(8), "early: {min:?}");
    assert!(min < Duration::from_micros(8600), "none near 8 ms: {min:?}");
    assert!(probe.delay_quantile(0.9) > Duration::from_millis(11));

    link.set_impairments(
        Dir::AtoB,
        Impairments::none().delay_ms(5.0).reorder(0.1, 4.0),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    link.reset_stats();
    let probe = udp_probe(
        &link,
        Dir::AtoB,
        1000,
        100,
        Duration::from_micros(500),
        Duration::from_millis(100),
    )
    .unwrap();
    let s = link.stats();
    println!("reorder: {probe}\n{s}");
    assert_eq!(probe.received(), 1000);
    let r = probe.reordered();
    assert!((50..=150).contains(&r), "{r} of 1000 reordered");
    // The emulator saw the same reordering as the receiver.
    assert!(s.a_to_b.reordered.abs_diff(r) <= 2, "{s}");
}

#[test]
fn same_seed_same_losses() {
    let Some(_g) = setup("same_seed_same_losses") else {
        return;
    };
    let lost = |seed| {
        let link = Link::new(
            LinkConfig::asymmetric(Impairments::none().loss(0.2), Impairments::none()).seed(seed),
        )
        .unwrap();
        let p = udp_probe(
            &link,
            Dir::AtoB,
            1000,
            100,
            Duration::from_micros(20),
            Duration::from_millis(100),
        )
        .unwrap();
        let mut got: Vec<u64> = p.arrivals.iter().map(|a| a.seq).collect();
        got.sort_unstable();
        got
    };
    let (a, b, c) = (lost(42), lost(42), lost(43));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn teardown_leaves_nothing_behind() {
    let Some(_g) = setup("teardown_leaves_nothing_behind") else {
        return;
    };
    let ip_link = || {
        let out = std::process::Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let linkem_threads = || {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
            .filter(|c| c.trim() == "linkem")
            .count()
    };
    let prefix = format!("lk{}-", std::process::id() % 10_000_000);
    let (ns_a, ns_b, dev_a) = {
        let link = Link::new(LinkConfig::symmetric(Impairments::none().delay_ms(1.0))).unwrap();
        let e = udp_echo(&link, 3, 64, Duration::ZERO, Duration::from_secs(1)).unwrap();
        assert_eq!(e.len(), 3);
        // The device lives in host A, nowhere else.
        let inside = link
            .a()
            .netns()
            .command(std::process::Command::new("ip").args(["-o", "link"]));
        assert!(String::from_utf8_lossy(&inside.unwrap().stdout).contains(link.a().device()));
        assert!(!ip_link().contains(&prefix));
        assert_eq!(linkem_threads(), 1);
        (
            link.a().netns().inode(),
            link.b().netns().inode(),
            link.a().device().to_string(),
        )
    };
    assert!(
        !linkem::held_by_this_process(ns_a),
        "host A's netns is held"
    );
    assert!(
        !linkem::held_by_this_process(ns_b),
        "host B's netns is held"
    );
    assert_eq!(linkem_threads(), 0, "the forwarding thread is gone");
    assert!(!ip_link().contains(&dev_a));

    // The same after a panic while the link is up.
    let r = std::panic::catch_unwind(|| {
        let link = Link::new(LinkConfig::default()).unwrap();
        let inode = link.a().netns().inode();
        link.b().enter(|| {
            if inode > 0 {
                panic!("boom {inode}");
            }
        });
    });
    let msg = r.unwrap_err();
    let msg = msg.downcast_ref::<String>().unwrap();
    let inode: u64 = msg.strip_prefix("boom ").unwrap().parse().unwrap();
    assert!(!linkem::held_by_this_process(inode));
    assert_eq!(linkem_threads(), 0);
}

#[test]
fn ceiling_self_test() {
    let Some(_g) = setup("ceiling_self_test") else {
        return;
    };
    // Figures only: what the emulator sustains depends on the machine and
    // its load. It must forward something and lose nothing it read.
    let c =
        linkem::probe::ceiling(&LinkConfig::default(), 1200, Duration::from_millis(500)).unwrap();
    println!("{c}");
    assert!(c.forwarded > 0);
    assert_eq!(c.forwarded, c.emulator_in);
}
