//! linkem — sets up an emulated wide-area link between two network
//! namespaces, measures the emulator itself, and runs kernel TCP across it.
//!
//! ```text
//! sudo cargo run --release --example linkem -- --rate-mbit 50 --delay-ms 25 --loss 0.01 --queue-ms 50
//! ```
//!
//! Impairments apply to both directions (`--delay-ms` is one-way, so the
//! example above has a 50 ms RTT); `--loss`, `--ge` and `--reorder` apply to
//! A→B only unless `--loss-both` is given (the ACK path stays clean, as in
//! most WAN benchmarks). It prints, in order:
//!
//! 1. the ceiling: packets/s and Mbit/s an unimpaired link forwards under
//!    a UDP blast (`--ceiling-secs`, 0 skips it);
//! 2. paced UDP flows of `--pps` datagrams/s each way for `--paced-secs`
//!    across a link with only the configured delay (at least 1 ms):
//!    delivered fraction, and the emulator's counters and lateness;
//! 3. one TCP bulk transfer A→B per `--cc` entry (default `bbr,cubic`),
//!    each for `--seconds`, with goodput, retransmissions and the
//!    emulator's counters and lateness during it.
//!
//! Flags (defaults in brackets): `--rate-mbit F` [unlimited]
//! `--delay-ms F` [0] `--jitter-ms F` [0] `--loss P` [0]
//! `--ge p,r,loss_bad,loss_good` `--reorder P,EXTRA_MS`
//! `--queue-ms F` | `--queue-pkts N` [1000 pkts] `--loss-both`
//! `--seed N` [1] `--rt PRIO` [normal priority] `--seconds F` [10]
//! `--cc LIST` [bbr,cubic] `--ceiling-secs F` [2] `--pps N` [20000]
//! `--payload N` [1200] `--paced-secs F` [2].
//! Exit status: 0, 1 on an error, 2 on bad arguments.

#[path = "../tests/util/linkem/mod.rs"]
mod linkem;

use std::process::exit;
use std::time::Duration;

use linkem::probe::{ceiling, udp_probe};
use linkem::tcp::{bulk, Amount};
use linkem::{Dir, Impairments, Link, LinkConfig};

struct Args {
    imp: Impairments,
    lossy: Impairments,
    loss_both: bool,
    seed: u64,
    rt: Option<u8>,
    seconds: f64,
    ccs: Vec<String>,
    ceiling_secs: f64,
    pps: u64,
    payload: usize,
    paced_secs: f64,
}

fn usage(msg: &str) -> ! {
    eprintln!("linkem: {msg}");
    eprintln!(
        "usage: linkem [--rate-mbit F] [--delay-ms F] [--jitter-ms F] [--loss P] \
         [--ge p,r,bad,good] [--reorder P,MS] [--queue-ms F | --queue-pkts N] [--loss-both] \
         [--seed N] [--rt PRIO] [--seconds F] [--cc bbr,cubic] [--ceiling-secs F] \
         [--pps N] [--payload N] [--paced-secs F]"
    );
    exit(2)
}

fn num<T: std::str::FromStr>(flag: &str, v: Option<String>) -> T {
    let v = v.unwrap_or_else(|| usage(&format!("{flag} needs a value")));
    v.parse()
        .unwrap_or_else(|_| usage(&format!("{flag}: cannot parse {v:?}")))
}

fn list(flag: &str, v: Option<String>, n: usize) -> Vec<f64> {
    let v = v.unwrap_or_else(|| usage(&format!("{flag} needs a value")));
    let xs: Vec<f64> = v
        .split(',')
        .map(|x| {
            x.parse()
                .unwrap_or_else(|_| usage(&format!("{flag}: cannot parse {x:?}")))
        })
        .collect();
    if xs.len() != n {
        usage(&format!("{flag} takes {n} comma-separated numbers"));
    }
    xs
}

fn parse() -> Args {
    let mut a = Args {
        imp: Impairments::none(),
        lossy: Impairments::none(),
        loss_both: false,
        seed: 1,
        rt: None,
        seconds: 10.0,
        ccs: vec!["bbr".into(), "cubic".into()],
        ceiling_secs: 2.0,
        pps: 20_000,
        payload: 1200,
        paced_secs: 2.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--rate-mbit" => a.imp = a.imp.rate_mbit(num(&flag, it.next())),
            "--delay-ms" => a.imp = a.imp.delay_ms(num(&flag, it.next())),
            "--jitter-ms" => a.imp = a.imp.jitter_ms(num(&flag, it.next())),
            "--queue-ms" => a.imp = a.imp.queue_ms(num(&flag, it.next())),
            "--queue-pkts" => a.imp = a.imp.queue_packets(num(&flag, it.next())),
            "--loss" => a.lossy = a.lossy.loss(num(&flag, it.next())),
            "--ge" => {
                let g = list(&flag, it.next(), 4);
                a.lossy = a.lossy.gilbert_elliott(g[0], g[1], g[2], g[3]);
            }
            "--reorder" => {
                let r = list(&flag, it.next(), 2);
                a.lossy = a.lossy.reorder(r[0], r[1]);
            }
            "--loss-both" => a.loss_both = true,
            "--seed" => a.seed = num(&flag, it.next()),
            "--rt" => a.rt = Some(num(&flag, it.next())),
            "--seconds" => a.seconds = num(&flag, it.next()),
            "--cc" => {
                let v: String = num(&flag, it.next());
                a.ccs = v
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
            }
            "--ceiling-secs" => a.ceiling_secs = num(&flag, it.next()),
            "--pps" => a.pps = num(&flag, it.next()),
            "--payload" => a.payload = num(&flag, it.next()),
            "--paced-secs" => a.paced_secs = num(&flag, it.next()),
            "-h" | "--help" => usage("help"),
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    a
}

fn main() {
    let args = parse();
    if let Some(why) = linkem::unavailable() {
        eprintln!("linkem: cannot set up a link here: {why}");
        exit(1);
    }
    if let Err(e) = run(&args) {
        eprintln!("linkem: {e}");
        exit(1);
    }
}

fn run(args: &Args) -> std::io::Result<()> {
    let with_loss = |mut imp: Impairments| {
        imp.loss = args.lossy.loss;
        imp.gilbert_elliott = args.lossy.gilbert_elliott;
        imp.reorder = args.lossy.reorder;
        imp
    };
    let a_to_b = with_loss(args.imp.clone());
    let b_to_a = if args.loss_both {
        with_loss(args.imp.clone())
    } else {
        args.imp.clone()
    };
    let config = LinkConfig::asymmetric(a_to_b, b_to_a)
        .seed(args.seed)
        .rt_priority(args.rt);
    println!("link A→B: {}", config.a_to_b);
    println!("link B→A: {}", config.b_to_a);

    if args.ceiling_secs > 0.0 {
        let c = ceiling(
            &config,
            args.payload,
            Duration::from_secs_f64(args.ceiling_secs),
        )?;
        println!("{c}");
    }

    if args.paced_secs > 0.0 && args.pps > 0 {
        // The configured delay (at least 1 ms, so that every release is
        // timer-driven), nothing else: can the emulator carry `--pps` each
        // way, and how late does it release packets?
        let delay = Impairments::none().delay_ms((args.imp.delay.as_secs_f64() * 1e3).max(1.0));
        let clean = LinkConfig {
            a_to_b: delay.clone(),
            b_to_a: delay,
            ..config.clone()
        };
        let link = Link::new(clean)?;
        let count = (args.pps as f64 * args.paced_secs) as u64;
        let interval = Duration::from_nanos(1_000_000_000 / args.pps);
        let linger = Duration::from_millis(300) + args.imp.delay;
        let (ab, ba) = std::thread::scope(|s| {
            let ab = s.spawn(|| udp_probe(&link, Dir::AtoB, count, args.payload, interval, linger));
            let ba = s.spawn(|| udp_probe(&link, Dir::BtoA, count, args.payload, interval, linger));
            (ab.join().unwrap(), ba.join().unwrap())
        });
        let s = link.stats();
        for (d, p) in [(Dir::AtoB, ab?), (Dir::BtoA, ba?)] {
            println!(
                "paced {d} {} pkt/s x {} B for {:.1} s (sent at {:.0} pkt/s): delivered {:.4}, delay p50 {} max {}",
                args.pps,
                args.payload,
                p.send_time.as_secs_f64(),
                p.sent as f64 / p.send_time.as_secs_f64(),
                p.received() as f64 / p.sent.max(1) as f64,
                linkem::fmt_ns(p.delay_quantile(0.5).as_nanos() as u64),
                linkem::fmt_ns(p.delay_quantile(1.0).as_nanos() as u64),
            );
        }
        println!(
            "  emulator ({}): {s}; wakeups {}; tun drops A {} B {}",
            link.realtime(),
            s.wakeups,
            link.a().tun_tx_dropped()?,
            link.b().tun_tx_dropped()?
        );
    }

    if !args.ccs.is_empty() {
        let link = Link::new(config)?;
        println!("emulator: {}", link.realtime());
        let idle = linkem::probe::udp_echo(
            &link,
            20,
            64,
            Duration::from_millis(5),
            Duration::from_secs(2),
        )?;
        if let Some(min) = idle.iter().map(|e| e.rtt_ns()).min() {
            println!(
                "idle: RTT min {} ({} of 20 echoes); emulator late {}",
                linkem::fmt_ns(min),
                idle.len(),
                link.stats().lateness()
            );
        }
        for cc in &args.ccs {
            std::thread::sleep(Duration::from_millis(300));
            link.reset_stats();
            let drops = (link.a().tun_tx_dropped()?, link.b().tun_tx_dropped()?);
            let secs = Duration::from_secs_f64(args.seconds);
            let r = bulk(
                &link,
                Dir::AtoB,
                cc,
                Amount::For(secs),
                secs * 3 + Duration::from_secs(30),
            )?;
            let s = link.stats();
            println!("{r}");
            println!(
                "  emulator: {s}; tun drops A {} B {}",
                link.a().tun_tx_dropped()? - drops.0,
                link.b().tun_tx_dropped()? - drops.1
            );
        }
    }
    Ok(())
}
