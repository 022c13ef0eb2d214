//! linkem — a link emulator for tests and benchmarks: two network
//! namespaces (hosts A and B) joined by an emulated wide-area link with
//! delay, jitter, random and bursty loss, a rate-limited bottleneck with a
//! drop-tail queue, and reordering, set per direction.
//!
//! ```text
//!  host A (netns)                 this process                 host B (netns)
//!  10.77.0.1  ── lkNa (TUN) ──▶ [ forwarding thread ] ──▶ lkNb (TUN) ── 10.77.0.2
//!                          ◀──   A→B and B→A queues   ◀──
//! ```
//!
//! ```ignore
//! #[path = "util/linkem/mod.rs"]   // from tests/; "../tests/util/linkem/mod.rs" from examples/
//! mod linkem;
//! use linkem::{Impairments, Link, LinkConfig};
//!
//! let link = Link::new(LinkConfig::symmetric(
//!     Impairments::none().rate_mbit(50.0).delay_ms(25.0).queue_ms(50.0).loss(0.01),
//! ))?;
//! let sock = link.a().enter(|| std::net::UdpSocket::bind("0.0.0.0:0"))?; // a socket of host A
//! sock.send_to(b"hello", (link.b().addr(), 9))?;                        // crosses the link
//! println!("{}", link.stats());
//! ```
//!
//! # Namespaces and devices
//!
//! Each host is an anonymous network namespace ([`Netns`]): created with
//! `unshare(2)` on a short-lived thread and held by an open file, not
//! named with `ip netns add` — so nothing is registered under `/run/netns`
//! and nothing survives the process, not even a `SIGKILL`. In each host a
//! TUN device (`lk<pid>-<n>a` / `…b`, unique per process and link) is
//! created directly inside the namespace (no move needed), point to point
//! without ARP: A has `10.77.0.1 peer 10.77.0.2`, B the reverse. The
//! addresses are the same for every link: each link's hosts are private
//! namespaces, they cannot collide. IPv6 is disabled in the hosts (no
//! router solicitations crossing the link) and `tcp_no_metrics_save` is set
//! (one TCP transfer does not inherit the previous one's ssthresh).
//!
//! The forwarding thread lives in this process's own namespace; it only
//! reads and writes the two TUN file descriptors (see [`emulator`] for the
//! model and the scheduler). Dropping the [`Link`] stops it, closes the
//! devices (a non-persistent TUN device disappears with its fd) and then
//! the namespaces. A socket created in a host and still open keeps that
//! host's namespace (not the devices) alive until it is closed.
//!
//! # Running code in a host
//!
//! [`Host::enter`] runs a closure on a thread that joined the host's
//! namespace and returns its result: sockets made there belong to the
//! host for good and can be used from any thread. [`Host::spawn`] starts a
//! thread living there, [`Netns::run`] a program (`ip`, `ss`, …).
//!
//! # API at a glance
//!
//! - [`Link::new`]`(`[`LinkConfig`]`)` — hosts + emulator; [`Link::a`],
//!   [`Link::b`], [`Link::sender`]/[`Link::receiver`]`(`[`Dir`]`)`.
//! - [`Host`]: [`Host::addr`], [`Host::enter`], [`Host::spawn`],
//!   [`Host::netns`], [`Host::tun_tx_dropped`].
//! - [`Impairments`] per direction (builder: `delay_ms`, `jitter_ms`,
//!   `loss`, `gilbert_elliott`, `rate_mbit`, `queue_ms`/`queue_packets`,
//!   `reorder`); [`Link::set_impairments`] changes them live.
//! - [`Link::stats`] → [`LinkStats`] (per-direction [`DirStats`],
//!   [`Lateness`], CPU), [`Link::reset_stats`], [`Link::realtime`].
//! - [`probe`]: [`probe::udp_probe`] (one-way delays, loss, reordering),
//!   [`probe::udp_echo`], [`probe::ceiling`].
//! - [`tcp`]: [`tcp::bulk`] — kernel TCP with a chosen congestion control.
//! - [`require`] / [`unavailable`] — for tests.
//!
//! # Performance (2-core VM, Linux 6.18, `PREEMPT_NONE`)
//!
//! - Ceiling, UDP blast of 1,228-byte packets through an unimpaired link:
//!   140–190k packets/s (1.4–1.8 Gbit/s) one way, the sender included.
//! - Paced UDP with a 5 ms delay (every release timer-driven): 2 × 60k
//!   packets/s (2 × 590 Mbit/s) delivered whole; 2 × 20k costs the
//!   forwarding thread ~25–45 % of a core (it also runs the receiving
//!   hosts' network stack, as it writes into their devices).
//! - Kernel TCP at 200 Mbit/s: 191.7 Mbit/s goodput (of 193 possible with
//!   1,448/1,500-byte segments).
//! - Lateness (release time minus scheduled time): p50 15–40 µs (timer
//!   wake-up latency of the VM). Up to 2 × 20k packets/s, p99 is
//!   40–130 µs under `SCHED_FIFO` ([`LinkConfig::rt_priority`]), but
//!   0.1–13 ms at normal priority when other processes load the cores; the
//!   maximum is 0.5–2.5 ms even under `SCHED_FIFO` (probably the
//!   non-preemptible kernel finishing another task's system call first).
//!   Benchmarks should ask for `rt_priority`.
//! - Not measured by lateness: a descheduled thread also reads arrivals
//!   late, which looks like a burst to the bottleneck model.
//!
//! # Requirements
//!
//! Root (`CAP_SYS_ADMIN` and `CAP_NET_ADMIN`), `/dev/net/tun`, `ip`
//! (iproute2), and `chrt` (util-linux) for [`LinkConfig::rt_priority`].
//! [`require`] checks them and, in a test, skips with a printed reason — or
//! fails under `CI=true`.
#![allow(dead_code, unused_imports)]

use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

pub mod emulator;
mod netns;
pub mod probe;
pub mod tcp;

pub use emulator::{
    fmt_ns, now_ns, Dir, DirStats, GilbertElliott, Impairments, Lateness, LinkStats, Queue,
    Realtime, Reorder,
};
pub use netns::{held_by_this_process, Netns};

use emulator::Emulator;

/// Host A's address.
pub const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Host B's address.
pub const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// How to build a [`Link`].
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// What happens to packets from A to B.
    pub a_to_b: Impairments,
    /// What happens to packets from B to A.
    pub b_to_a: Impairments,
    /// Seed of the emulator's PRNG (loss, jitter, reordering decisions).
    pub seed: u64,
    /// Run the forwarding thread under `SCHED_FIFO` at this priority
    /// (1–99, via `chrt`); `None`: normal priority. Whether it took effect
    /// is [`Link::realtime`].
    pub rt_priority: Option<u8>,
    /// MTU of both TUN devices, bytes (default 1500: TCP segments carry
    /// 1,448 bytes of payload with timestamps).
    pub mtu: u16,
    /// `txqueuelen` of the TUN devices: packets a host can hand to its
    /// device before the emulator reads them; beyond it the kernel drops
    /// them ([`Host::tun_tx_dropped`]). Default 10,000, so that the
    /// emulator's queue, not this one, is the bottleneck queue.
    pub txqueuelen: u32,
}

impl Default for LinkConfig {
    fn default() -> LinkConfig {
        LinkConfig::symmetric(Impairments::none())
    }
}

impl LinkConfig {
    /// The same impairments in both directions.
    pub fn symmetric(imp: Impairments) -> LinkConfig {
        LinkConfig::asymmetric(imp.clone(), imp)
    }

    /// `a_to_b` from A to B, `b_to_a` from B to A.
    pub fn asymmetric(a_to_b: Impairments, b_to_a: Impairments) -> LinkConfig {
        LinkConfig {
            a_to_b,
            b_to_a,
            seed: 1,
            rt_priority: None,
            mtu: 1500,
            txqueuelen: 10_000,
        }
    }

    /// Sets [`LinkConfig::seed`].
    pub fn seed(mut self, seed: u64) -> LinkConfig {
        self.seed = seed;
        self
    }

    /// Sets [`LinkConfig::rt_priority`].
    pub fn rt_priority(mut self, prio: Option<u8>) -> LinkConfig {
        self.rt_priority = prio;
        self
    }
}

/// One end of the link: a network namespace with a TUN device and an
/// address.
#[derive(Debug)]
pub struct Host {
    ns: Netns,
    addr: Ipv4Addr,
    device: String,
}

impl Host {
    /// This host's address (the other host routes it through the link).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The name of this host's TUN device (inside its namespace).
    pub fn device(&self) -> &str {
        &self.device
    }

    /// This host's namespace (for [`Netns::run`], [`Netns::sysctl`],
    /// [`Netns::proc_net`], …).
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Runs `f` on a thread inside this host and returns its result (see
    /// [`Netns::enter`]): the way to create this host's sockets.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.ns.enter(f)
    }

    /// Spawns a thread named `name` living inside this host (see
    /// [`Netns::spawn`]; join it before the link is dropped).
    pub fn spawn<R: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> io::Result<JoinHandle<R>> {
        self.ns.spawn(name, f)
    }

    /// Packets the host's kernel dropped because its TUN device's queue
    /// (`txqueuelen`) was full: the emulator did not read fast enough.
    pub fn tun_tx_dropped(&self) -> io::Result<u64> {
        let dev = self.ns.proc_net("dev")?;
        let prefix = format!("{}:", self.device);
        for line in dev.lines() {
            if let Some(rest) = line.trim_start().strip_prefix(&prefix) {
                // rx: bytes packets errs drop fifo frame compressed
                // multicast, then tx: bytes packets errs drop …
                let f: Vec<&str> = rest.split_whitespace().collect();
                return f
                    .get(11)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| io::Error::other(format!("cannot parse: {line}")));
            }
        }
        Err(io::Error::other(format!(
            "{} not in /proc/net/dev",
            self.device
        )))
    }
}

/// Two hosts and the emulator between them. Dropping it tears everything
/// down (see the module documentation).
pub struct Link {
    // Dropped first: the forwarding thread stops and closes the devices
    // before the namespaces go.
    emulator: Emulator,
    a: Host,
    b: Host,
}

static LINK_SEQ: AtomicUsize = AtomicUsize::new(0);

impl Link {
    /// Creates the hosts and starts the emulator.
    pub fn new(config: LinkConfig) -> io::Result<Link> {
        config.a_to_b.validate()?;
        config.b_to_a.validate()?;
        let n = LINK_SEQ.fetch_add(1, Ordering::Relaxed) % 10_000;
        let pid = std::process::id() % 10_000_000;
        let (a, dev_a) = setup_host("a", ADDR_A, ADDR_B, &format!("lk{pid}-{n}a"), &config)?;
        let (b, dev_b) = setup_host("b", ADDR_B, ADDR_A, &format!("lk{pid}-{n}b"), &config)?;
        let emulator = Emulator::start(
            [dev_a, dev_b],
            [config.a_to_b, config.b_to_a],
            config.seed,
            config.rt_priority,
            config.mtu,
        )?;
        Ok(Link { emulator, a, b })
    }

    /// Host A.
    pub fn a(&self) -> &Host {
        &self.a
    }

    /// Host B.
    pub fn b(&self) -> &Host {
        &self.b
    }

    /// The host that sends in direction `d` (A for A→B).
    pub fn sender(&self, d: Dir) -> &Host {
        match d {
            Dir::AtoB => &self.a,
            Dir::BtoA => &self.b,
        }
    }

    /// The host that receives in direction `d` (B for A→B).
    pub fn receiver(&self, d: Dir) -> &Host {
        self.sender(d.reverse())
    }

    /// A snapshot of the emulator's counters.
    pub fn stats(&self) -> LinkStats {
        self.emulator.stats()
    }

    /// Zeroes the counters (and the lateness histograms).
    pub fn reset_stats(&self) {
        self.emulator.reset_stats()
    }

    /// The impairments of direction `d` now.
    pub fn impairments(&self, d: Dir) -> Impairments {
        self.emulator.impairments(d)
    }

    /// Changes the impairments of direction `d`, effective for the packets
    /// that arrive from now on (packets in flight keep their fate). The
    /// bottleneck's state (queue, serialization) carries over.
    pub fn set_impairments(&self, d: Dir, imp: Impairments) -> io::Result<()> {
        self.emulator.set_impairments(d, imp)
    }

    /// Whether the forwarding thread got the real-time priority asked for.
    pub fn realtime(&self) -> &Realtime {
        self.emulator.realtime()
    }
}

fn setup_host(
    label: &str,
    addr: Ipv4Addr,
    peer: Ipv4Addr,
    device: &str,
    config: &LinkConfig,
) -> io::Result<(Host, tun::Device)> {
    let ns = Netns::new(label)?;
    // Without IPv6 nothing but the tests' traffic crosses the link.
    let _ = ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
    let _ = ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
    ns.sysctl("net.ipv4.tcp_no_metrics_save", "1")?;
    ns.run("ip", &["link", "set", "dev", "lo", "up"])?;
    let dev = ns
        .enter(|| {
            let mut c = tun::Configuration::default();
            c.tun_name(device)
                .layer(tun::Layer::L3)
                .platform_config(|p| {
                    // Addresses, MTU and state are set with `ip` below.
                    p.ensure_root_privileges(false);
                });
            tun::create(&c)
        })
        .map_err(|e| io::Error::other(format!("create TUN device {device}: {e}")))?;
    let (a, p) = (format!("{addr}/32"), format!("{peer}/32"));
    ns.run("ip", &["addr", "add", &a, "peer", &p, "dev", device])?;
    let (mtu, qlen) = (config.mtu.to_string(), config.txqueuelen.to_string());
    ns.run(
        "ip",
        &[
            "link",
            "set",
            "dev",
            device,
            "mtu",
            &mtu,
            "txqueuelen",
            &qlen,
            "up",
        ],
    )?;
    Ok((
        Host {
            ns,
            addr,
            device: device.to_string(),
        },
        dev,
    ))
}

/// Why links cannot be made here (not root, no `/dev/net/tun`, no `ip`),
/// or `None` if they can.
pub fn unavailable() -> Option<String> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun does not exist (no TUN driver)".into());
    }
    if let Err(e) = std::process::Command::new("ip").arg("-V").output() {
        return Some(format!("`ip` cannot be run ({e}): install iproute2"));
    }
    if let Err(e) = Netns::new("probe") {
        return Some(format!(
            "cannot create a network namespace ({e}): not root?"
        ));
    }
    None
}

/// For a test that needs links: `true` if they can be made here.
/// Otherwise prints `SKIPPED <test_name>: <why>` (to stdout, as the other
/// tests do, and to the uncaptured stderr) and returns `false` —
/// except under `CI=true`, where it fails the test instead (CI must run
/// it).
pub fn require(test_name: &str) -> bool {
    match unavailable() {
        None => true,
        Some(why) => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            assert!(!ci, "CI=true: {test_name} cannot run: {why}");
            println!("SKIPPED {test_name}: {why}");
            // The test harness captures `println!`, and a passing test's
            // output is not shown: say it on the real stderr too.
            let _ = writeln!(io::stderr(), "SKIPPED {test_name}: {why}");
            false
        }
    }
}
