//! wan_bench — msgloop's reliable UDP against kernel TCP (BBR and CUBIC)
//! across emulated wide-area links.
//!
//! ```text
//! cargo run --release --example wan_bench                      # the matrix, 3 rounds (~11 min)
//! cargo run --release --example wan_bench -- --rounds 1        # quick (~3.5 min)
//! cargo run --release --example wan_bench -- --links clean50,loss50_1 --verbose
//! cargo run --release --example wan_bench -- --links none --coexist   # coexistence only (~3.5 min)
//! cargo run --release --example wan_bench -- --help            # flags and link names
//! ```
//!
//! Needs root — network namespaces and TUN devices (as root, no `sudo`;
//! otherwise build first and run the binary,
//! `target/release/examples/wan_bench`, with `sudo`) — `/dev/net/tun`,
//! `ip` (iproute2) and `chrt` (util-linux, for the emulator's real-time
//! priority): the link emulator of `tests/util/linkem` (see its module
//! docs). Nothing is left behind: the namespaces and devices go with the
//! process, even on Ctrl-C or `SIGKILL`. The kernel must offer the
//! `bbr` congestion control (`modprobe tcp_bbr` if
//! `net.ipv4.tcp_available_congestion_control` lacks it). Two cores are
//! enough, but figures measured while the machine does other work (a
//! build) are noisy: compare runs made on a quiet machine.
//!
//! # The links
//!
//! Hosts A (10.77.0.1) and B (10.77.0.2) are network namespaces joined by
//! the emulator. Each link has the same rate and one-way delay (RTT/2) in
//! both directions, a drop-tail queue of one bandwidth-delay product
//! (rate × RTT) in each, and random loss on the data direction A→B only.
//!
//! | link | rate Mbit/s | RTT ms | loss A→B |
//! |---|---|---|---|
//! | clean50 | 50 | 50 | 0 |
//! | loss50_0.1 | 50 | 50 | 0.1 % |
//! | loss50_1 | 50 | 50 | 1 % |
//! | loss50_3 | 50 | 50 | 3 % |
//! | long10_1 | 10 | 200 | 1 % |
//! | fast200_0.5 | 200 | 10 | 0.5 % |
//!
//! # What runs
//!
//! First the emulator's own ceiling (an unimpaired link under a UDP blast,
//! `linkem::probe::ceiling`), once. Then, per link, `--rounds` rounds of
//! three transfers A→B, in this order, each for `--duration` seconds of
//! sending, each on a fresh instance of the link whose loss generator is
//! seeded with `--seed` + round − 1 — so the three transfers of a round,
//! and the same round in another build's run, meet the same loss
//! decisions packet by packet (the n-th packet A→B is lost in all or in
//! none):
//!
//! - **msgloop**: one reliable-UDP connection (`connect_rudp` in A to a
//!   `bind_rudp` server in B, default `RudpConfig`, 4 MiB socket buffers)
//!   sending 1 KiB messages with `Guarantee::Delivery` as fast as the send
//!   queue takes them. On the same connection, 64-byte `Guarantee::None`
//!   probes, 100 per second, stamped with `CLOCK_MONOTONIC` (one clock for
//!   both hosts): their one-way latency. At the end of the duration the
//!   client stops abruptly (what is still queued is abandoned: at 1 Mbit/s
//!   draining the 2 MiB send queue would take 16 s more).
//! - **bbr**, **cubic**: `linkem::tcp::bulk`, one kernel TCP connection
//!   writing for the same duration (`tcp=same-time`). With `--same-bytes`
//!   (`tcp=same-bytes`) it moves exactly the bytes msgloop delivered in
//!   that round instead — but where msgloop is slow that is 1–3 MB, which
//!   TCP moves in 0.7–2 s, mostly in start-up: BBR then shows 28, 16 and
//!   5 Mbit/s on loss50_1, loss50_3 and long10_1 instead of its steady
//!   47, 44 and 8. Equal time is the default for that reason.
//!
//! Beside every transfer a UDP ping (64 bytes, 100 per second, A→B, a flow
//! of its own) measures the queueing delay the transfer causes at the
//! bottleneck.
//!
//! Goodput is always measured at the receiver: payload bits after the
//! first message (or read) over the time from the first to the last.
//!
//! # Output
//!
//! Lines starting with `#` are comments (settings, warnings, problems,
//! per-second series); every other line is a record of `key=value` pairs,
//! its first key saying what it is: `ceiling_mbit=` once at the start,
//! `link=` once per link (the medians over the rounds), `run link=` per
//! transfer with `--verbose` (the same keys and more), `coexist=`. Keys
//! prefixed `msgloop_`, `bbr_`, `cubic_` are of that transfer:
//!
//! | key | meaning |
//! |---|---|
//! | `link`, `rate_mbit`, `rtt_ms`, `loss_pct`, `queue_ms` | the link (queue: one BDP, in time at the rate) |
//! | `secs`, `tcp`, `rounds` | sending time of each transfer; `same-time` or `same-bytes` (see above); rounds (medians over them) |
//! | `idle_rtt_ms` | RTT of a UDP echo over the idle link (should be `rtt_ms` + a fraction of a ms) |
//! | `*_mbit` | receiver goodput, Mbit/s (10^6) of payload |
//! | `msgloop_vs_bbr` | `msgloop_mbit / bbr_mbit` |
//! | `*_pct_link` | goodput as % of the link rate (the rate counts whole IP packets: TCP's payload can reach 96.5 % of it, 1,448 of 1,500 bytes; msgloop's a little less, its 1,200-byte datagrams being 1,228-byte packets with its own headers inside) |
//! | `msgloop_lat_p50_ms`, `msgloop_lat_p99_ms` | one-way latency of the `Guarantee::None` probes on the msgloop connection: from when the application meant to send (a probe that finds the send queue full waits and keeps its stamp) to `on_rudp` at the receiver |
//! | `msgloop_probes_pct` | % of those probes received (they are unreliable; random loss takes its share) |
//! | `*_ping_p50_ms`, `*_ping_p99_ms` | one-way latency of the separate UDP ping beside the transfer |
//! | `base_owd_ms` | the link's one-way propagation delay: latency minus this is queueing (and scheduling) |
//! | `*_retx_pct` | retransmissions: msgloop chunks retransmitted / chunks sent (`rudp_peer_stats`); TCP segments retransmitted / segments sent (the sending host's `RetransSegs`/`OutSegs`) |
//! | `*_qdrop` | packets A→B the emulator dropped because its queue was full |
//! | `*_ldrop` | packets A→B it dropped as the configured random loss |
//! | `emu_late_p99_us`, `emu_late_max_ms` | how late the emulator released packets (worst run): p99 is normally 40–200 µs; a run above 1 ms gets a `# WARNING` line — its timing, not the link, may have shaped that run (seen in ~1 run in 20 while other builds ran) |
//! | `emu_tun_drops`, `emu_errors` | packets lost at the TUN devices (the emulator read too slowly) and device read/write errors, all runs: must be 0 |
//! | `msgloop_problems` | msgloop runs in which DATA arrived out of order or twice, a send failed, or the connection closed: must be 0 (details on a `# PROBLEM` line) |
//!
//! Verbose `run` lines add `bytes`, `span_s` (first to last message), the
//! emulator's `emu_cpu_pct`; for msgloop the connection's statistics at
//! the end (`srtt_ms`, `min_rtt_ms`, `cwnd` in packets, `rto` timeouts
//! fired, `packets_sent`, `lost` packets declared lost and `lost_pct`,
//! `chunks_sent`, `retx` chunks retransmitted, `tail_probes`, `spurious`
//! losses), `msgs` received, `sent` queued, `probes_waited` (probes that
//! found the send queue full), `would_block` (times the send queue was
//! full); for TCP `retx` and `segments`.
//!
//! A run with `--links clean50 --rounds 1 --verbose` (shortened), then the
//! lines of `--links none --coexist`:
//!
//! ```text
//! # wan_bench: msgloop 0.1.0 | 10 s per transfer, 1 round(s), 1024-byte messages, probes 64 B every 10 ms | tcp sends for the same time | ...
//! ceiling_mbit=3353 ceiling_pps=341276 bound=sender(at-least) late_p99_us=27 # the emulator's own limit: ...
//! run link=clean50 ... round=1 alg=msgloop msgloop_mbit=45.54 msgloop_pct_link=91.1 msgloop_lat_p50_ms=27.5 ... srtt_ms=51.5 min_rtt_ms=50.2 cwnd=531 rto=0 ...
//! run link=clean50 ... round=1 alg=bbr bbr_mbit=46.19 ...
//! run link=clean50 ... round=1 alg=cubic cubic_mbit=47.36 ...
//! link=clean50 rate_mbit=50 rtt_ms=50 loss_pct=0.0 queue_ms=50 secs=10 tcp=same-time rounds=1 idle_rtt_ms=50.5 base_owd_ms=25.0
//!   msgloop_vs_bbr=0.986 msgloop_mbit=45.54 msgloop_pct_link=91.1 msgloop_lat_p50_ms=27.5 msgloop_lat_p99_ms=75.0
//!   msgloop_probes_pct=100.0 msgloop_ping_p50_ms=27.4 msgloop_ping_p99_ms=75.0 msgloop_retx_pct=0.32 msgloop_qdrop=181
//!   msgloop_ldrop=0 bbr_mbit=46.19 bbr_pct_link=92.4 bbr_ping_p50_ms=27.2 bbr_ping_p99_ms=74.9 bbr_retx_pct=1.04 ...
//!   cubic_mbit=47.36 ... emu_late_p99_us=45 emu_late_max_ms=3.65 emu_tun_drops=0 emu_errors=0 msgloop_problems=0
//! # done in 36 s, load average 0.49
//! ...
//! run coexist=msgloop+msgloop link=clean50 secs=30 window_s=10-30 round=1 flow1_mbit=21.37 flow2_mbit=25.92 ratio=0.825 ...
//! run coexist=msgloop+msgloop link=clean50 secs=30 window_s=10-30 round=2 flow1_mbit=25.47 flow2_mbit=21.42 ratio=0.841 ...
//! run coexist=msgloop+msgloop link=clean50 secs=30 window_s=10-30 round=3 flow1_mbit=20.52 flow2_mbit=26.01 ratio=0.789 ...
//! coexist=msgloop+msgloop link=clean50 secs=30 window_s=10-30 rounds=3 flow1_mbit=21.37 flow2_mbit=25.92 ratio=0.825 target=ratio>=0.8 pass=yes
//! run coexist=msgloop+cubic link=clean50 secs=30 window_s=10-30 round=1 msgloop_mbit=25.51 cubic_mbit=22.51 msgloop_share=0.531 ...
//! ...
//! coexist=msgloop+cubic link=clean50 secs=30 window_s=10-30 rounds=3 msgloop_mbit=24.56 cubic_mbit=23.47 msgloop_share=0.511 target=msgloop_share<=0.67 pass=yes
//! ```
//!
//! (A link line is one line; it is wrapped here.) To compare two builds,
//! run each on a quiet machine with the same `--seed` and compare the link
//! lines; `--rounds 3` or more, as single runs of a loss-driven controller
//! vary by tens of percent (a handful of losses per run at 0.1 %).
//!
//! `--coexist` adds, on clean50, over `--coexist-secs` (default 30) with
//! shares taken over the last two thirds (after convergence), `--rounds`
//! times each (a `run coexist=` line per round, then a `coexist=` line of
//! medians; the target is judged on the median):
//!
//! - `coexist=msgloop+msgloop`: two msgloop clients in A (two threads,
//!   two sockets, started together) to one server in B: `flow1_mbit`,
//!   `flow2_mbit`, `ratio` (smaller / larger; target ≥ 0.8, `pass`);
//! - `coexist=msgloop+cubic`: one msgloop flow and one kernel TCP CUBIC
//!   flow together: `msgloop_mbit`, `cubic_mbit`, `msgloop_share` (of the
//!   sum; target ≤ 0.67, `pass`).
//!
//! Each `run coexist=` line also gives `*_all_mbit` (the whole run), the
//! emulator's queue drops and lateness, and `problems` (must be 0);
//! `--verbose` adds the per-second series.
//!
//! # Duration
//!
//! Per link and round: 3 × (`--duration` + ~1.5 s of link set-up, ping
//! stragglers and TCP's send-buffer drain). The matrix (6 links) with the defaults (10 s, 3 rounds): ~11
//! minutes; `--rounds 1`: ~3.5 minutes; `--coexist` adds 2 × rounds ×
//! (`--coexist-secs` + ~3 s), ~3.5 minutes with the defaults; plus the 2-s
//! ceiling at the start.
//!
//! # Flags
//!
//! `--links a,b,...` (default: all; `none`: no matrix), `--rounds N` [3],
//! `--duration SECS` [10], `--verbose`, `--coexist`, `--coexist-secs SECS`
//! [30], `--same-bytes`, `--msg-size BYTES` [1024], `--rt PRIO` [20; 0:
//! normal priority], `--seed N` [1; round r uses N + r − 1],
//! `--ceiling-secs SECS` [2; 0 skips].
//! Exit status 0; 1 on an error or a msgloop problem; 2 on bad arguments.

#[path = "../tests/util/linkem/mod.rs"]
mod linkem;
#[path = "../tests/util/wan/mod.rs"]
mod wan;

use std::fmt::Write as _;
use std::io;
use std::process::exit;
use std::time::Duration;

use linkem::tcp::Amount;
use linkem::{now_ns, Link, LinkConfig, LinkStats};
use wan::{median, quantile, FlowOpts, LinkSpec, MATRIX};

/// The probes' and the ping's size and interval.
const PROBE_LEN: usize = 64;
const PROBE_EVERY: Duration = Duration::from_millis(10);

struct Args {
    links: Vec<LinkSpec>,
    rounds: usize,
    duration: Duration,
    verbose: bool,
    coexist: bool,
    coexist_secs: Duration,
    same_bytes: bool,
    msg_len: usize,
    rt: Option<u8>,
    seed: u64,
    ceiling_secs: f64,
}

const USAGE: &str =
    "usage: wan_bench [--links NAME,...|none] [--rounds N] [--duration SECS] [--verbose]\n\
         \x20                [--coexist] [--coexist-secs SECS] [--same-bytes] [--msg-size BYTES]\n\
         \x20                [--rt PRIO] [--seed N] [--ceiling-secs SECS]\n\
         links: clean50, loss50_0.1, loss50_1, loss50_3, long10_1, fast200_0.5\n\
         The output keys, the links and the durations are explained at the top of\n\
         examples/wan_bench.rs.";

fn usage(msg: &str) -> ! {
    eprintln!("wan_bench: {msg}");
    eprintln!("{USAGE}");
    exit(2)
}

fn num<T: std::str::FromStr>(flag: &str, v: Option<String>) -> T {
    let v = v.unwrap_or_else(|| usage(&format!("{flag} needs a value")));
    v.parse()
        .unwrap_or_else(|_| usage(&format!("{flag}: cannot parse {v:?}")))
}

fn parse() -> Args {
    let mut a = Args {
        links: MATRIX.to_vec(),
        rounds: 3,
        duration: Duration::from_secs(10),
        verbose: false,
        coexist: false,
        coexist_secs: Duration::from_secs(30),
        same_bytes: false,
        msg_len: 1024,
        rt: Some(20),
        seed: 1,
        ceiling_secs: 2.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--links" => {
                let v: String = num(&flag, it.next());
                a.links = if v == "none" {
                    Vec::new()
                } else {
                    v.split(',')
                        .filter(|s| !s.is_empty())
                        .map(|n| {
                            LinkSpec::by_name(n)
                                .unwrap_or_else(|| usage(&format!("no link called {n:?}")))
                        })
                        .collect()
                };
            }
            "--rounds" => a.rounds = num(&flag, it.next()),
            "--duration" => a.duration = Duration::from_secs_f64(num(&flag, it.next())),
            "--verbose" | "-v" => a.verbose = true,
            "--coexist" => a.coexist = true,
            "--coexist-secs" => a.coexist_secs = Duration::from_secs_f64(num(&flag, it.next())),
            "--same-bytes" => a.same_bytes = true,
            "--msg-size" => a.msg_len = num(&flag, it.next()),
            "--rt" => {
                let p: u8 = num(&flag, it.next());
                a.rt = (p > 0).then_some(p);
            }
            "--seed" => a.seed = num(&flag, it.next()),
            "--ceiling-secs" => a.ceiling_secs = num(&flag, it.next()),
            "-h" | "--help" => {
                println!("{USAGE}");
                exit(0)
            }
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    if a.rounds == 0 || a.duration < Duration::from_secs(1) || a.msg_len < 9 {
        usage("--rounds must be at least 1, --duration at least 1 s, --msg-size at least 9");
    }
    if a.coexist && a.coexist_secs < Duration::from_secs(3) {
        usage("--coexist-secs must be at least 3");
    }
    a
}

fn main() {
    let args = parse();
    if let Some(why) = linkem::unavailable() {
        eprintln!("wan_bench: cannot set up a link here: {why}");
        exit(1);
    }
    match run(&args) {
        Ok(0) => {}
        Ok(problems) => {
            eprintln!("wan_bench: {problems} msgloop run(s) had problems (see # PROBLEM lines)");
            exit(1);
        }
        Err(e) => {
            eprintln!("wan_bench: {e}");
            exit(1);
        }
    }
}

// ---- one transfer -------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Alg {
    Msgloop,
    Bbr,
    Cubic,
}

impl Alg {
    const ALL: [Alg; 3] = [Alg::Msgloop, Alg::Bbr, Alg::Cubic];

    fn name(self) -> &'static str {
        match self {
            Alg::Msgloop => "msgloop",
            Alg::Bbr => "bbr",
            Alg::Cubic => "cubic",
        }
    }
}

/// One transfer's figures; NaN where a figure does not apply.
#[derive(Clone, Debug)]
struct Sample {
    mbit: f64,
    bytes: u64,
    span_s: f64,
    retx_pct: f64,
    lat_p50_ms: f64,
    lat_p99_ms: f64,
    probes_pct: f64,
    ping_p50_ms: f64,
    ping_p99_ms: f64,
    qdrop: u64,
    ldrop: u64,
    tun_drops: u64,
    emu_errors: u64,
    late_p99_us: f64,
    late_max_ms: f64,
    emu_cpu_pct: f64,
    /// Verbose-only details.
    extra: String,
    problems: Vec<String>,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl Sample {
    fn new(mbit: f64, bytes: u64, span: Duration, emu: &LinkStats, tun: u64) -> Sample {
        let late = emu.lateness();
        Sample {
            mbit,
            bytes,
            span_s: span.as_secs_f64(),
            retx_pct: f64::NAN,
            lat_p50_ms: f64::NAN,
            lat_p99_ms: f64::NAN,
            probes_pct: f64::NAN,
            ping_p50_ms: f64::NAN,
            ping_p99_ms: f64::NAN,
            qdrop: emu.a_to_b.dropped_queue,
            ldrop: emu.a_to_b.dropped_loss,
            tun_drops: tun,
            emu_errors: emu.a_to_b.read_errors
                + emu.a_to_b.write_errors
                + emu.b_to_a.read_errors
                + emu.b_to_a.write_errors,
            late_p99_us: late.p99().as_nanos() as f64 / 1e3,
            late_max_ms: late.max().as_nanos() as f64 / 1e6,
            emu_cpu_pct: 100.0 * emu.cpu_share(),
            extra: String::new(),
            problems: Vec::new(),
        }
    }

    fn set_ping(&mut self, p: &wan::PingResult) {
        self.ping_p50_ms = ms(quantile(&p.delays, 0.5));
        self.ping_p99_ms = ms(quantile(&p.delays, 0.99));
    }
}

/// Drops counted at both TUN devices so far.
fn tun_drops(link: &Link) -> io::Result<u64> {
    Ok(link.a().tun_tx_dropped()? + link.b().tun_tx_dropped()?)
}

fn run_msgloop(link: &Link, args: &Args) -> io::Result<Sample> {
    let tun0 = tun_drops(link)?;
    link.reset_stats();
    let opts = FlowOpts {
        duration: args.duration,
        msg_len: args.msg_len,
        probe_len: PROBE_LEN,
        probe_interval: Some(PROBE_EVERY),
        ..FlowOpts::default()
    };
    let r = wan::msgloop_flow(link, opts, Some((PROBE_LEN, PROBE_EVERY)))?;
    let emu = link.stats();
    let mut s = Sample::new(
        r.server.goodput_bps() / 1e6,
        r.server.bytes,
        r.server.span(),
        &emu,
        tun_drops(link)? - tun0,
    );
    s.retx_pct = 100.0 * r.retx_ratio();
    let probes = r.server.probe_delays_sorted();
    s.lat_p50_ms = ms(quantile(&probes, 0.5));
    s.lat_p99_ms = ms(quantile(&probes, 0.99));
    s.probes_pct = 100.0 * probes.len() as f64 / r.client.probes_sent.max(1) as f64;
    if let Some(p) = &r.ping {
        s.set_ping(p);
    }
    if let Some(st) = &r.client.stats {
        let _ = write!(
            s.extra,
            " srtt_ms={:.1} min_rtt_ms={:.1} cwnd={} rto={} packets_sent={} lost={} lost_pct={:.2} chunks_sent={} retx={} tail_probes={} spurious={}",
            st.srtt.as_secs_f64() * 1e3,
            st.min_rtt.as_secs_f64() * 1e3,
            st.cwnd,
            st.rto_count,
            st.packets_sent,
            st.packets_lost,
            100.0 * st.packets_lost as f64 / st.packets_sent.max(1) as f64,
            st.chunks_sent,
            st.chunks_retransmitted,
            st.tail_probes,
            st.spurious_losses
        );
    }
    let _ = write!(
        s.extra,
        " msgs={} sent={} probes_waited={} would_block={}",
        r.server.msgs, r.client.sent, r.client.probes_waited, r.client.would_block
    );
    s.problems = r.problems();
    if r.server.msgs == 0 {
        s.problems.push("no DATA received".into());
    }
    Ok(s)
}

fn run_tcp(link: &Link, args: &Args, cc: &str, same_bytes: Option<u64>) -> io::Result<Sample> {
    let tun0 = tun_drops(link)?;
    link.reset_stats();
    let amount = match same_bytes {
        Some(b) => Amount::Bytes(b.max(1)),
        None => Amount::For(args.duration),
    };
    let timeout = args.duration * 6 + Duration::from_secs(30);
    let (r, ping) = wan::tcp_bulk_with_ping(link, cc, amount, timeout, (PROBE_LEN, PROBE_EVERY))?;
    let emu = link.stats();
    let mut s = Sample::new(r.mbit(), r.bytes, r.duration, &emu, tun_drops(link)? - tun0);
    s.retx_pct = 100.0 * r.retransmits as f64 / r.segments_out.max(1) as f64;
    s.set_ping(&ping);
    let _ = write!(
        s.extra,
        " retx={} segments={}",
        r.retransmits, r.segments_out
    );
    Ok(s)
}

// ---- output -------------------------------------------------------------------

/// `key=value`, with `digits` decimals; `na` for NaN.
fn kv(out: &mut String, key: &str, v: f64, digits: usize) {
    if v.is_nan() {
        let _ = write!(out, " {key}=na");
    } else {
        let _ = write!(out, " {key}={v:.digits$}");
    }
}

fn link_keys(out: &mut String, spec: &LinkSpec, args: &Args) {
    let _ = write!(out, "link={}", spec.name);
    kv(out, "rate_mbit", spec.rate_mbit, 0);
    kv(out, "rtt_ms", spec.rtt_ms, 0);
    kv(out, "loss_pct", spec.loss * 100.0, 1);
    kv(out, "queue_ms", spec.rtt_ms, 0);
    kv(out, "secs", args.duration.as_secs_f64(), 0);
    out.push_str(if args.same_bytes {
        " tcp=same-bytes"
    } else {
        " tcp=same-time"
    });
}

/// The keys of one transfer (medians if several samples).
fn alg_keys(out: &mut String, alg: Alg, spec: &LinkSpec, samples: &[&Sample]) {
    let p = alg.name();
    let med = |f: fn(&Sample) -> f64| median(&samples.iter().map(|s| f(s)).collect::<Vec<_>>());
    let mbit = med(|s| s.mbit);
    kv(out, &format!("{p}_mbit"), mbit, 2);
    kv(
        out,
        &format!("{p}_pct_link"),
        100.0 * mbit / spec.rate_mbit,
        1,
    );
    if alg == Alg::Msgloop {
        kv(out, "msgloop_lat_p50_ms", med(|s| s.lat_p50_ms), 1);
        kv(out, "msgloop_lat_p99_ms", med(|s| s.lat_p99_ms), 1);
        kv(out, "msgloop_probes_pct", med(|s| s.probes_pct), 1);
    }
    kv(out, &format!("{p}_ping_p50_ms"), med(|s| s.ping_p50_ms), 1);
    kv(out, &format!("{p}_ping_p99_ms"), med(|s| s.ping_p99_ms), 1);
    kv(out, &format!("{p}_retx_pct"), med(|s| s.retx_pct), 2);
    kv(out, &format!("{p}_qdrop"), med(|s| s.qdrop as f64), 0);
    kv(out, &format!("{p}_ldrop"), med(|s| s.ldrop as f64), 0);
}

/// The emulator's health over `samples`: worst lateness, total drops.
fn emu_keys(out: &mut String, samples: &[&Sample]) {
    let worst = |f: fn(&Sample) -> f64| samples.iter().map(|s| f(s)).fold(0.0, f64::max);
    kv(out, "emu_late_p99_us", worst(|s| s.late_p99_us), 0);
    kv(out, "emu_late_max_ms", worst(|s| s.late_max_ms), 2);
    let _ = write!(
        out,
        " emu_tun_drops={} emu_errors={}",
        samples.iter().map(|s| s.tun_drops).sum::<u64>(),
        samples.iter().map(|s| s.emu_errors).sum::<u64>()
    );
}

// ---- the matrix ------------------------------------------------------------------

/// The 1-minute load average, for the record (figures taken while other
/// work runs are noisy).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

fn run(args: &Args) -> io::Result<usize> {
    let started = now_ns();
    println!(
        "# wan_bench: msgloop {} | {} s per transfer, {} round(s), {}-byte messages, probes {} B every {} ms | tcp {} | emulator {} | {} cores, load average {} (others' work makes figures noisy)",
        env!("CARGO_PKG_VERSION"),
        args.duration.as_secs_f64(),
        args.rounds,
        args.msg_len,
        PROBE_LEN,
        PROBE_EVERY.as_millis(),
        if args.same_bytes {
            "moves msgloop's bytes"
        } else {
            "sends for the same time"
        },
        args.rt
            .map_or("normal priority".to_string(), |p| format!("SCHED_FIFO {p} asked")),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(),
    );
    let ceiling = if args.ceiling_secs > 0.0 {
        let c = linkem::probe::ceiling(
            &LinkConfig::default().rt_priority(args.rt),
            1200,
            Duration::from_secs_f64(args.ceiling_secs),
        )?;
        println!(
            "ceiling_mbit={:.0} ceiling_pps={:.0} bound={} late_p99_us={:.0} # the emulator's own limit: a UDP blast of 1,228-byte packets through an unimpaired link",
            c.mbit_ip,
            c.pps,
            if c.emulator_bound() { "emulator" } else { "sender(at-least)" },
            c.lateness.p99().as_nanos() as f64 / 1e3
        );
        Some(c.mbit_ip)
    } else {
        None
    };
    let mut problems = 0;
    for spec in &args.links {
        problems += run_link(args, spec, ceiling)?;
    }
    if args.coexist {
        problems += coexist(args, ceiling)?;
    }
    println!(
        "# done in {:.0} s, load average {}",
        (now_ns() - started) as f64 / 1e9,
        loadavg()
    );
    Ok(problems)
}

fn warn_ceiling(ceiling: Option<f64>, rate_mbit: f64, what: &str) {
    if let Some(c) = ceiling {
        if c < 2.0 * rate_mbit {
            println!(
                "# WARNING: {what}: the rate, {rate_mbit} Mbit/s, is within 2x of the emulator's ceiling ({c:.0} Mbit/s): the emulator may shape the result"
            );
        }
    }
}

fn run_link(args: &Args, spec: &LinkSpec, ceiling: Option<f64>) -> io::Result<usize> {
    warn_ceiling(ceiling, spec.rate_mbit, spec.name);
    let idle_rtt = {
        let link = Link::new(spec.config(args.rt, args.seed))?;
        if let linkem::Realtime::Failed(why) = link.realtime() {
            println!("# WARNING: {}: emulator not real-time: {why}", spec.name);
        }
        let echoes = linkem::probe::udp_echo(
            &link,
            3,
            64,
            Duration::from_millis(10),
            Duration::from_secs(2),
        )?;
        echoes.iter().map(|e| e.rtt_ns()).min().map_or(f64::NAN, ms)
    };
    let mut samples: Vec<(Alg, Sample)> = Vec::new();
    let mut problems = 0;
    for round in 1..=args.rounds {
        let mut ml_bytes = None;
        for alg in Alg::ALL {
            // A fresh link per transfer, seeded per round: the three
            // transfers of a round (and the same round of another build)
            // meet the same loss decisions, packet by packet, and empty
            // queues.
            let link = Link::new(spec.config(args.rt, args.seed + round as u64 - 1))?;
            std::thread::sleep(Duration::from_millis(100));
            let link = &link;
            let s = match alg {
                Alg::Msgloop => run_msgloop(link, args)?,
                Alg::Bbr => run_tcp(link, args, "bbr", ml_bytes)?,
                Alg::Cubic => run_tcp(link, args, "cubic", ml_bytes)?,
            };
            if alg == Alg::Msgloop && args.same_bytes {
                ml_bytes = Some(s.bytes);
            }
            if s.late_p99_us > 1000.0 || s.tun_drops + s.emu_errors > 0 {
                println!(
                    "# WARNING: link={} round={round} {}: emulator late p99 {:.1} ms (max {:.1} ms), tun drops {}, errors {}: this run is suspect (a busy machine?)",
                    spec.name,
                    alg.name(),
                    s.late_p99_us / 1e3,
                    s.late_max_ms,
                    s.tun_drops,
                    s.emu_errors
                );
            }
            if !s.problems.is_empty() {
                problems += 1;
                println!(
                    "# PROBLEM link={} round={round} {}: {}",
                    spec.name,
                    alg.name(),
                    s.problems.join("; ")
                );
            }
            if args.verbose {
                let mut line = String::from("run ");
                link_keys(&mut line, spec, args);
                let _ = write!(line, " round={round} alg={}", alg.name());
                alg_keys(&mut line, alg, spec, &[&s]);
                let _ = write!(line, " bytes={}", s.bytes);
                kv(&mut line, "span_s", s.span_s, 2);
                emu_keys(&mut line, &[&s]);
                kv(&mut line, "emu_cpu_pct", s.emu_cpu_pct, 0);
                line.push_str(&s.extra);
                println!("{line}");
            }
            samples.push((alg, s));
        }
    }
    let mut line = String::new();
    link_keys(&mut line, spec, args);
    let _ = write!(line, " rounds={}", args.rounds);
    kv(&mut line, "idle_rtt_ms", idle_rtt, 1);
    kv(&mut line, "base_owd_ms", spec.one_way_ms(), 1);
    let of = |a: Alg| -> Vec<&Sample> {
        samples
            .iter()
            .filter(|(x, _)| *x == a)
            .map(|(_, s)| s)
            .collect()
    };
    let med_mbit = |a: Alg| median(&of(a).iter().map(|s| s.mbit).collect::<Vec<_>>());
    kv(
        &mut line,
        "msgloop_vs_bbr",
        med_mbit(Alg::Msgloop) / med_mbit(Alg::Bbr),
        3,
    );
    for alg in Alg::ALL {
        alg_keys(&mut line, alg, spec, &of(alg));
    }
    let all: Vec<&Sample> = samples.iter().map(|(_, s)| s).collect();
    emu_keys(&mut line, &all);
    let _ = write!(line, " msgloop_problems={problems}");
    println!("{line}");
    Ok(problems)
}

// ---- coexistence ------------------------------------------------------------------

/// Per-second Mbit/s of `bins`, for the verbose series.
fn series(bins: &[u64]) -> String {
    let per_s = (1_000_000_000 / wan::BIN_NS) as usize;
    bins.chunks(per_s)
        .map(|c| format!("{:.1}", c.iter().sum::<u64>() as f64 * 8.0 / 1e6))
        .collect::<Vec<_>>()
        .join(",")
}

fn coexist(args: &Args, ceiling: Option<f64>) -> io::Result<usize> {
    let spec = LinkSpec::by_name("clean50").expect("in the matrix");
    warn_ceiling(ceiling, spec.rate_mbit, "coexist");
    let two = Pairing {
        what: "msgloop+msgloop",
        keys: ["flow1_mbit", "flow2_mbit"],
        metric: "ratio",
        of: |a, b| a.min(b) / a.max(b),
        target: "ratio>=0.8",
        pass: |r| r >= 0.8,
        run: coexist_two_msgloop,
    };
    let cubic = Pairing {
        what: "msgloop+cubic",
        keys: ["msgloop_mbit", "cubic_mbit"],
        metric: "msgloop_share",
        of: |a, b| a / (a + b),
        target: "msgloop_share<=0.67",
        pass: |s| s <= 0.67,
        run: coexist_msgloop_cubic,
    };
    Ok(two.rounds(args, &spec)? + cubic.rounds(args, &spec)?)
}

/// One round of a coexistence pairing: the two flows' Mbit/s over the
/// window, the rest of its line, and what went wrong.
type Round = ((f64, f64, String), Vec<String>);

/// Two flows sharing a link, and how their shares are judged.
struct Pairing {
    what: &'static str,
    keys: [&'static str; 2],
    metric: &'static str,
    of: fn(f64, f64) -> f64,
    target: &'static str,
    pass: fn(f64) -> bool,
    run: fn(&Args, &LinkSpec, usize) -> io::Result<Round>,
}

impl Pairing {
    /// Runs `--rounds` rounds (the link seeded per round, as the matrix's):
    /// a `run coexist=` line per round, then the medians, the target
    /// judged on the median. Returns the rounds with problems.
    fn rounds(&self, args: &Args, spec: &LinkSpec) -> io::Result<usize> {
        let d = args.coexist_secs;
        let head = format!(
            "coexist={} link={} secs={:.0} window_s={:.0}-{:.0}",
            self.what,
            spec.name,
            d.as_secs_f64(),
            (d / 3).as_secs_f64(),
            d.as_secs_f64()
        );
        let mut problems = 0;
        let mut rows = Vec::new();
        for round in 1..=args.rounds {
            let ((a, b, rest), errs) = (self.run)(args, spec, round)?;
            let m = (self.of)(a, b);
            let mut line = format!("run {head} round={round}");
            kv(&mut line, self.keys[0], a, 2);
            kv(&mut line, self.keys[1], b, 2);
            kv(&mut line, self.metric, m, 3);
            let _ = write!(line, " {rest} problems={}", errs.len());
            println!("{line}");
            if !errs.is_empty() {
                problems += 1;
                println!(
                    "# PROBLEM coexist={} round={round}: {}",
                    self.what,
                    errs.join("; ")
                );
            }
            rows.push([a, b, m]);
        }
        let med = |i: usize| wan::median(&rows.iter().map(|r| r[i]).collect::<Vec<_>>());
        let mut line = format!("{head} rounds={}", args.rounds);
        kv(&mut line, self.keys[0], med(0), 2);
        kv(&mut line, self.keys[1], med(1), 2);
        kv(&mut line, self.metric, med(2), 3);
        let _ = write!(
            line,
            " target={} pass={}",
            self.target,
            if (self.pass)(med(2)) { "yes" } else { "no" }
        );
        println!("{line}");
        Ok(problems)
    }
}

/// Flow options for a coexistence run of `d` starting at `t0`.
fn coexist_opts(args: &Args, t0: u64) -> FlowOpts {
    FlowOpts {
        duration: args.coexist_secs,
        msg_len: args.msg_len,
        probe_interval: None,
        start_at_ns: Some(t0),
        ..FlowOpts::default()
    }
}

/// A fresh link for coexistence round `round`, with a msgloop server on
/// its B side; the flows start at the returned instant.
fn coexist_link(
    args: &Args,
    spec: &LinkSpec,
    round: usize,
) -> io::Result<(Link, wan::Server, u64)> {
    let link = Link::new(spec.config(args.rt, args.seed + round as u64 - 1))?;
    link.reset_stats();
    let t0 = now_ns() + 300_000_000;
    let server = wan::spawn_server(link.b(), FlowOpts::default().rudp, t0)?;
    Ok((link, server, t0))
}

/// One round of two msgloop flows sharing the link: each flow's Mbit/s
/// over the window, the rest of its line, and what went wrong.
fn coexist_two_msgloop(args: &Args, spec: &LinkSpec, round: usize) -> io::Result<Round> {
    let d = args.coexist_secs;
    let (from, to) = (d / 3, d);
    let (link, server, t0) = coexist_link(args, spec, round)?;
    let c1 = wan::spawn_client(link.a(), server.addr, coexist_opts(args, t0))?;
    let c2 = wan::spawn_client(link.a(), server.addr, coexist_opts(args, t0))?;
    let r1 = c1.join().map_err(|_| io::Error::other("client panicked"))?;
    let r2 = c2.join().map_err(|_| io::Error::other("client panicked"))?;
    std::thread::sleep(Duration::from_millis(300));
    let res = server.stop()?;
    let emu = link.stats();
    let recs: Vec<&wan::PeerRecord> = res.peers.iter().map(|(_, r)| r).collect();
    let share = |i: usize, a, b| recs.get(i).map_or(0.0, |r| wan::bins_mbit(&r.bins, a, b));
    let mut errs: Vec<String> = [&r1, &r2].iter().filter_map(|r| r.error.clone()).collect();
    errs.extend(
        recs.iter()
            .filter(|r| r.order_errors > 0)
            .map(|r| format!("{} DATA out of order or duplicated", r.order_errors)),
    );
    errs.extend(res.errors.iter().cloned());
    if recs.len() != 2 {
        errs.push(format!(
            "{} peers reached the server, expected 2",
            recs.len()
        ));
    }
    let mut rest = String::new();
    kv(&mut rest, "flow1_all_mbit", share(0, Duration::ZERO, d), 2);
    kv(&mut rest, "flow2_all_mbit", share(1, Duration::ZERO, d), 2);
    let _ = write!(
        rest,
        " qdrop={} emu_late_p99_us={:.0}",
        emu.a_to_b.dropped_queue,
        emu.lateness().p99().as_nanos() as f64 / 1e3,
    );
    if args.verbose {
        for (i, r) in recs.iter().enumerate() {
            println!("# flow{} Mbit/s per second: {}", i + 1, series(&r.bins));
        }
    }
    Ok((
        (
            share(0, from, to),
            share(1, from, to),
            rest.trim_start().to_string(),
        ),
        errs,
    ))
}

/// One round of a msgloop flow and a kernel TCP CUBIC flow sharing the
/// link: msgloop's and CUBIC's Mbit/s over the window, the rest of the
/// line, and what went wrong.
fn coexist_msgloop_cubic(args: &Args, spec: &LinkSpec, round: usize) -> io::Result<Round> {
    let d = args.coexist_secs;
    let (from, to) = (d / 3, d);
    let (link, server, t0) = coexist_link(args, spec, round)?;
    let c = wan::spawn_client(link.a(), server.addr, coexist_opts(args, t0))?;
    let tcp = wan::tcp_flow(&link, "cubic", t0, t0, d);
    let r = c.join().map_err(|_| io::Error::other("client panicked"))?;
    std::thread::sleep(Duration::from_millis(300));
    let res = server.stop()?;
    let tcp = tcp?;
    let emu = link.stats();
    let rec = res
        .peers
        .first()
        .map(|(_, r)| r.clone())
        .unwrap_or_default();
    let mut errs: Vec<String> = r.error.iter().cloned().collect();
    if rec.order_errors > 0 {
        errs.push(format!(
            "{} DATA out of order or duplicated",
            rec.order_errors
        ));
    }
    errs.extend(res.errors.iter().cloned());
    let mut rest = String::new();
    kv(
        &mut rest,
        "msgloop_all_mbit",
        wan::bins_mbit(&rec.bins, Duration::ZERO, d),
        2,
    );
    kv(
        &mut rest,
        "cubic_all_mbit",
        wan::bins_mbit(&tcp.bins, Duration::ZERO, d),
        2,
    );
    let _ = write!(
        rest,
        " qdrop={} emu_late_p99_us={:.0}",
        emu.a_to_b.dropped_queue,
        emu.lateness().p99().as_nanos() as f64 / 1e3,
    );
    if args.verbose {
        println!("# msgloop Mbit/s per second: {}", series(&rec.bins));
        println!("# cubic Mbit/s per second: {}", series(&tcp.bins));
    }
    Ok((
        (
            wan::bins_mbit(&rec.bins, from, to),
            wan::bins_mbit(&tcp.bins, from, to),
            rest.trim_start().to_string(),
        ),
        errs,
    ))
}
