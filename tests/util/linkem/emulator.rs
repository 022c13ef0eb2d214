//! The forwarding thread: reads IP packets from the two TUN devices,
//! decides each packet's fate and release time, and writes it to the other
//! device when that time comes.
//!
//! # Model, per direction
//!
//! A packet read at time `t` (its *arrival*) goes through, in order:
//!
//! 1. **Random loss**: dropped with probability [`Impairments::loss`].
//! 2. **Gilbert–Elliott loss** ([`GilbertElliott`]): a two-state chain
//!    stepped once per packet; the packet is lost with the loss probability
//!    of the current state, then the chain moves (good → bad with `p`,
//!    bad → good with `r`).
//! 3. **Bottleneck** ([`Impairments::rate_bps`]): a link that serializes
//!    one packet at a time; a packet of `L` bytes (its IP length — no link
//!    framing is added) occupies it for `L·8/rate` s. Packets waiting for
//!    the link wait in a drop-tail FIFO ([`Queue`]); an arrival that finds
//!    it full is dropped (`dropped_queue`). Without a rate there is no
//!    bottleneck and no queue.
//! 4. **Propagation**: the packet is released `delay` after its
//!    serialization ends (after its arrival without a rate), plus a jitter
//!    drawn uniformly from `[-jitter, +jitter]` (never before the
//!    serialization ended). Unless [`Impairments::jitter_reorders`], a
//!    packet is never released before the one that arrived before it (its
//!    release is raised to that one's): jitter then bunches packets rather
//!    than reorders them. (So packets closer together than the jitter's
//!    spread see delays skewed towards `delay + jitter`; sparse ones see
//!    the uniform spread.)
//! 5. **Reordering** ([`Reorder`]): with its probability, a packet is held
//!    `extra_delay` longer than step 4 says and is exempt from the FIFO
//!    rule, so later packets may overtake it.
//!
//! Losses happen on arrival, so a lost packet takes no bottleneck time.
//!
//! # Scheduling
//!
//! Packets wait in a binary heap ordered by release time. The thread
//! sleeps in `epoll` (through mio) on the two TUN fds and a `timerfd` armed
//! with an absolute `CLOCK_MONOTONIC` deadline: the next release, with
//! nanosecond resolution (an `epoll` timeout has only milliseconds). A
//! packet is never released early; how late it is released is recorded
//! ([`Lateness`]).
//!
//! The PRNG (SplitMix64, one stream per direction seeded from
//! [`super::LinkConfig::seed`]) is drawn only by the features that are
//! enabled, so the same traffic with the same configuration meets the same
//! fate.

use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

/// Nanoseconds of `CLOCK_MONOTONIC`: the emulator's clock, and the same in
/// every namespace of the machine (so a timestamp written by a sender in
/// one host can be compared with a receiver's clock in the other).
pub fn now_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("clock_gettime(CLOCK_MONOTONIC)");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// A direction of the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// From host A to host B.
    AtoB,
    /// From host B to host A.
    BtoA,
}

impl Dir {
    /// Both directions, A→B first.
    pub const BOTH: [Dir; 2] = [Dir::AtoB, Dir::BtoA];

    fn index(self) -> usize {
        match self {
            Dir::AtoB => 0,
            Dir::BtoA => 1,
        }
    }

    /// The other direction.
    pub fn reverse(self) -> Dir {
        match self {
            Dir::AtoB => Dir::BtoA,
            Dir::BtoA => Dir::AtoB,
        }
    }
}

impl fmt::Display for Dir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dir::AtoB => "A→B",
            Dir::BtoA => "B→A",
        })
    }
}

/// The capacity of the bottleneck's drop-tail queue (packets waiting for
/// the link; the one being serialized is not in it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Queue {
    /// At most this many packets wait.
    Packets(usize),
    /// A packet is accepted only if it would start its serialization at
    /// most this long after its arrival: a queue of `time × rate` bits.
    Time(Duration),
}

/// Bursty loss: the Gilbert–Elliott two-state model, stepped once per
/// packet. The mean loss ratio is
/// `(p·loss_bad + r·loss_good) / (p + r)`; a stay in the bad state lasts
/// `1/r` packets on average.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GilbertElliott {
    /// Probability, per packet, of moving from the good to the bad state.
    pub p: f64,
    /// Probability, per packet, of moving from the bad to the good state.
    pub r: f64,
    /// Loss probability of a packet in the bad state (1.0 in the classic
    /// Gilbert model).
    pub loss_bad: f64,
    /// Loss probability of a packet in the good state (usually 0).
    pub loss_good: f64,
}

impl GilbertElliott {
    /// The long-run fraction of packets lost.
    pub fn mean_loss(&self) -> f64 {
        if self.p + self.r == 0.0 {
            return self.loss_good;
        }
        (self.p * self.loss_bad + self.r * self.loss_good) / (self.p + self.r)
    }
}

/// Reordering: some packets are held longer and overtaken.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reorder {
    /// Probability, per packet, of being held back.
    pub probability: f64,
    /// How much longer a held-back packet waits than it otherwise would.
    pub extra_delay: Duration,
}

/// What one direction of the link does to packets. `Default` (=
/// [`Impairments::none`]) forwards everything at once; the builder methods
/// change one field each:
///
/// ```ignore
/// let wan = Impairments::none().rate_mbit(50.0).delay_ms(25.0).queue_ms(50.0).loss(0.01);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Impairments {
    /// One-way propagation delay, added after serialization.
    pub delay: Duration,
    /// Jitter: each packet's delay varies uniformly within `±jitter`.
    pub jitter: Duration,
    /// Whether jitter may reorder packets (`false`: a packet is never
    /// released before the one that arrived before it).
    pub jitter_reorders: bool,
    /// Random (Bernoulli) loss probability per packet, 0.0 to 1.0.
    pub loss: f64,
    /// Bursty loss, on top of `loss`.
    pub gilbert_elliott: Option<GilbertElliott>,
    /// Bottleneck rate in bits per second of IP packet bytes; `None`:
    /// unlimited (no serialization time, no queue).
    pub rate_bps: Option<u64>,
    /// The bottleneck's queue; ignored without `rate_bps`. Default: 1,000
    /// packets (like netem's default limit).
    pub queue: Queue,
    /// Reordering.
    pub reorder: Option<Reorder>,
}

impl Default for Impairments {
    fn default() -> Impairments {
        Impairments::none()
    }
}

impl Impairments {
    /// No impairment at all.
    pub fn none() -> Impairments {
        Impairments {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            jitter_reorders: false,
            loss: 0.0,
            gilbert_elliott: None,
            rate_bps: None,
            queue: Queue::Packets(1000),
            reorder: None,
        }
    }

    /// Sets the one-way delay, in milliseconds.
    pub fn delay_ms(mut self, ms: f64) -> Impairments {
        self.delay = Duration::from_secs_f64(ms / 1e3);
        self
    }

    /// Sets the jitter (± milliseconds), without reordering.
    pub fn jitter_ms(mut self, ms: f64) -> Impairments {
        self.jitter = Duration::from_secs_f64(ms / 1e3);
        self
    }

    /// Sets the random loss probability (0.0 to 1.0).
    pub fn loss(mut self, p: f64) -> Impairments {
        self.loss = p;
        self
    }

    /// Sets bursty loss (see [`GilbertElliott`] for the parameters).
    pub fn gilbert_elliott(mut self, p: f64, r: f64, loss_bad: f64, loss_good: f64) -> Impairments {
        self.gilbert_elliott = Some(GilbertElliott {
            p,
            r,
            loss_bad,
            loss_good,
        });
        self
    }

    /// Sets the bottleneck rate in megabits (10^6 bits) per second.
    pub fn rate_mbit(mut self, mbit: f64) -> Impairments {
        self.rate_bps = Some((mbit * 1e6).round() as u64);
        self
    }

    /// Sets the queue to hold at most `n` waiting packets.
    pub fn queue_packets(mut self, n: usize) -> Impairments {
        self.queue = Queue::Packets(n);
        self
    }

    /// Sets the queue to hold at most `ms` milliseconds of data at the rate.
    pub fn queue_ms(mut self, ms: f64) -> Impairments {
        self.queue = Queue::Time(Duration::from_secs_f64(ms / 1e3));
        self
    }

    /// Holds back a fraction `probability` of the packets by `extra_ms`
    /// more milliseconds.
    pub fn reorder(mut self, probability: f64, extra_ms: f64) -> Impairments {
        self.reorder = Some(Reorder {
            probability,
            extra_delay: Duration::from_secs_f64(extra_ms / 1e3),
        });
        self
    }

    /// Checks that probabilities are within 0..=1 and the rate is not 0.
    pub fn validate(&self) -> io::Result<()> {
        let mut probs = vec![("loss", self.loss)];
        if let Some(ge) = &self.gilbert_elliott {
            probs.extend([
                ("gilbert_elliott.p", ge.p),
                ("gilbert_elliott.r", ge.r),
                ("gilbert_elliott.loss_bad", ge.loss_bad),
                ("gilbert_elliott.loss_good", ge.loss_good),
            ]);
        }
        if let Some(r) = &self.reorder {
            probs.push(("reorder.probability", r.probability));
        }
        for (name, p) in probs {
            if !(0.0..=1.0).contains(&p) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{name} = {p} is not a probability"),
                ));
            }
        }
        if self.rate_bps == Some(0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "rate_bps must be positive (None: unlimited)",
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Impairments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(r) = self.rate_bps {
            parts.push(format!("rate {:.3} Mbit/s", r as f64 / 1e6));
            parts.push(match self.queue {
                Queue::Packets(n) => format!("queue {n} pkts"),
                Queue::Time(d) => format!("queue {}", fmt_ns(d.as_nanos() as u64)),
            });
        }
        if !self.delay.is_zero() {
            parts.push(format!("delay {}", fmt_ns(self.delay.as_nanos() as u64)));
        }
        if !self.jitter.is_zero() {
            parts.push(format!(
                "jitter ±{}{}",
                fmt_ns(self.jitter.as_nanos() as u64),
                if self.jitter_reorders {
                    " (reorders)"
                } else {
                    ""
                }
            ));
        }
        if self.loss > 0.0 {
            parts.push(format!("loss {}", self.loss));
        }
        if let Some(g) = &self.gilbert_elliott {
            parts.push(format!(
                "GE p {} r {} bad {} good {}",
                g.p, g.r, g.loss_bad, g.loss_good
            ));
        }
        if let Some(r) = &self.reorder {
            parts.push(format!(
                "reorder {} +{}",
                r.probability,
                fmt_ns(r.extra_delay.as_nanos() as u64)
            ));
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// A histogram of durations (log-linear buckets, 1/16 relative precision,
/// exact below 32 ns), with the exact maximum and sum.
#[derive(Clone, Debug)]
pub struct Lateness {
    buckets: Vec<u64>,
    count: u64,
    sum_ns: u64,
    max_ns: u64,
}

const SUB: u32 = 16;

impl Default for Lateness {
    fn default() -> Lateness {
        Lateness {
            buckets: vec![0; 64 * SUB as usize],
            count: 0,
            sum_ns: 0,
            max_ns: 0,
        }
    }
}

impl Lateness {
    fn bucket(ns: u64) -> usize {
        if ns < 2 * SUB as u64 {
            return ns as usize;
        }
        let e = 63 - ns.leading_zeros(); // >= 5
        let sub = (ns >> (e - 4)) & (SUB as u64 - 1);
        ((e - 3) * SUB) as usize + sub as usize
    }

    fn bucket_high(idx: usize) -> u64 {
        if idx < 2 * SUB as usize {
            return idx as u64;
        }
        let e = idx as u32 / SUB + 3;
        let sub = idx as u64 % SUB as u64;
        ((SUB as u64 + sub) << (e - 4)) + (1u64 << (e - 4)) - 1
    }

    /// Adds one sample, in nanoseconds.
    pub fn record(&mut self, ns: u64) {
        self.buckets[Self::bucket(ns)] += 1;
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Adds all of `other`'s samples.
    pub fn merge(&mut self, other: &Lateness) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// The number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile (0.0 to 1.0): the upper bound of the bucket holding
    /// it (at most 1/16 above the true value), never above the maximum.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_nanos(Self::bucket_high(i).min(self.max_ns));
            }
        }
        self.max()
    }

    /// The median.
    pub fn p50(&self) -> Duration {
        self.quantile(0.5)
    }

    /// The 99th percentile.
    pub fn p99(&self) -> Duration {
        self.quantile(0.99)
    }

    /// The largest sample.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns)
    }

    /// The mean.
    pub fn mean(&self) -> Duration {
        Duration::from_nanos(self.sum_ns.checked_div(self.count).unwrap_or(0))
    }
}

impl fmt::Display for Lateness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {} p99 {} max {} (n {})",
            fmt_ns(self.p50().as_nanos() as u64),
            fmt_ns(self.p99().as_nanos() as u64),
            fmt_ns(self.max_ns),
            self.count
        )
    }
}

/// Formats nanoseconds with a unit that fits ("850ns", "12.5µs", "3.2ms").
pub fn fmt_ns(ns: u64) -> String {
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.1}µs", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2}ms", ns as f64 / 1e6)
    } else {
        format!("{:.3}s", ns as f64 / 1e9)
    }
}

/// The counters of one direction. Every packet read is counted in
/// `packets_in` and ends up in exactly one of `forwarded`, `dropped_loss`,
/// `dropped_queue`, `write_errors` — or is still in flight
/// ([`DirStats::in_flight`]).
#[derive(Clone, Debug, Default)]
pub struct DirStats {
    /// Packets read from the sending host's TUN device.
    pub packets_in: u64,
    /// Their bytes (IP packets, headers included).
    pub bytes_in: u64,
    /// Packets written to the receiving host's TUN device.
    pub forwarded: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// Packets dropped by random or Gilbert–Elliott loss.
    pub dropped_loss: u64,
    /// Packets dropped because the bottleneck queue was full (or, without
    /// a rate, because 131,072 packets were already in flight).
    pub dropped_queue: u64,
    /// Packets released after a packet that arrived later than they did.
    pub reordered: u64,
    /// The most packets ever waiting in the bottleneck queue at once.
    pub max_queue: usize,
    /// Failed reads of the sending TUN device (other than "would block").
    pub read_errors: u64,
    /// Failed writes to the receiving TUN device (the packet is lost).
    pub write_errors: u64,
    /// How late packets were released: actual minus scheduled time.
    pub lateness: Lateness,
}

impl DirStats {
    /// Packets read but not yet forwarded nor dropped.
    pub fn in_flight(&self) -> u64 {
        self.packets_in
            - self.forwarded
            - self.dropped_loss
            - self.dropped_queue
            - self.write_errors
    }

    /// `dropped_loss / packets_in` (0 before any packet).
    pub fn loss_ratio(&self) -> f64 {
        if self.packets_in == 0 {
            0.0
        } else {
            self.dropped_loss as f64 / self.packets_in as f64
        }
    }
}

impl fmt::Display for DirStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "in {} fwd {} ({:.1} MB) loss {} queue {} reord {}",
            self.packets_in,
            self.forwarded,
            self.bytes_out as f64 / 1e6,
            self.dropped_loss,
            self.dropped_queue,
            self.reordered
        )?;
        if self.read_errors + self.write_errors > 0 {
            write!(f, " errors r{} w{}", self.read_errors, self.write_errors)?;
        }
        Ok(())
    }
}

/// A snapshot of the emulator's counters ([`super::Link::stats`]).
#[derive(Clone, Debug, Default)]
pub struct LinkStats {
    /// Host A to host B.
    pub a_to_b: DirStats,
    /// Host B to host A.
    pub b_to_a: DirStats,
    /// Time covered: since the link started or the last reset.
    pub elapsed: Duration,
    /// How many times the forwarding thread woke up.
    pub wakeups: u64,
    /// CPU time the forwarding thread used (from
    /// `/proc/self/task/<tid>/schedstat`; zero where that is missing).
    pub cpu: Duration,
}

impl LinkStats {
    /// The counters of direction `d`.
    pub fn dir(&self, d: Dir) -> &DirStats {
        match d {
            Dir::AtoB => &self.a_to_b,
            Dir::BtoA => &self.b_to_a,
        }
    }

    fn dir_mut(&mut self, d: usize) -> &mut DirStats {
        if d == 0 {
            &mut self.a_to_b
        } else {
            &mut self.b_to_a
        }
    }

    /// The forwarding thread's CPU use: `cpu / elapsed` (1.0 = a core).
    pub fn cpu_share(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.cpu.as_secs_f64() / self.elapsed.as_secs_f64()
        }
    }

    /// The lateness of both directions together.
    pub fn lateness(&self) -> Lateness {
        let mut l = self.a_to_b.lateness.clone();
        l.merge(&self.b_to_a.lateness);
        l
    }
}

impl fmt::Display for LinkStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "A→B {} | B→A {} | late {} | {:.1} s, cpu {:.0}%",
            self.a_to_b,
            self.b_to_a,
            self.lateness(),
            self.elapsed.as_secs_f64(),
            100.0 * self.cpu_share()
        )
    }
}

/// Whether the forwarding thread runs with real-time priority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Realtime {
    /// Not asked for ([`super::LinkConfig::rt_priority`] is `None`).
    Off,
    /// `SCHED_FIFO` at this priority, checked in `/proc`.
    Fifo(u8),
    /// Asked for, but not in effect; why.
    Failed(String),
}

impl fmt::Display for Realtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Realtime::Off => f.write_str("normal priority"),
            Realtime::Fifo(p) => write!(f, "SCHED_FIFO {p}"),
            Realtime::Failed(why) => write!(f, "real-time priority failed: {why}"),
        }
    }
}

/// Packets in flight per direction beyond which arrivals are dropped.
const MAX_IN_FLIGHT: usize = 1 << 17;
/// Packets read from one device before the other is served and due
/// packets are released.
const READ_BATCH: usize = 16;

const TOKEN_DEV: [Token; 2] = [Token(0), Token(1)];
const TOKEN_TIMER: Token = Token(2);
const TOKEN_WAKE: Token = Token(3);

/// SplitMix64.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }
}

/// The state of one direction.
struct DirState {
    imp: Impairments,
    rng: Rng,
    ge_bad: bool,
    next_seq: u64,
    /// When the bottleneck finishes serializing the last accepted packet.
    link_free_at: u64,
    /// Serialization start times of the accepted packets that have not
    /// started yet (the queue).
    waiting: VecDeque<u64>,
    /// The latest release time of a packet subject to FIFO order.
    last_release: u64,
    /// The highest sequence number released so far, plus one.
    released_hwm: u64,
    in_flight: usize,
}

impl DirState {
    fn new(imp: Impairments, seed: u64, dir: u64) -> DirState {
        let mut rng = Rng(seed ^ dir.wrapping_mul(0xA076_1D64_78BD_642F));
        rng.next_u64();
        DirState {
            imp,
            rng,
            ge_bad: false,
            next_seq: 0,
            link_free_at: 0,
            waiting: VecDeque::new(),
            last_release: 0,
            released_hwm: 0,
            in_flight: 0,
        }
    }

    /// Decides the fate of a packet of `len` bytes arriving at `now`:
    /// `Some((seq, release time))`, or `None` if it is dropped (counted in
    /// `st`).
    fn arrive(&mut self, now: u64, len: usize, st: &mut DirStats) -> Option<(u64, u64)> {
        st.packets_in += 1;
        st.bytes_in += len as u64;
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.rng.chance(self.imp.loss) {
            st.dropped_loss += 1;
            return None;
        }
        if let Some(ge) = self.imp.gilbert_elliott {
            let p_loss = if self.ge_bad {
                ge.loss_bad
            } else {
                ge.loss_good
            };
            let lost = self.rng.chance(p_loss);
            if self.ge_bad {
                if self.rng.chance(ge.r) {
                    self.ge_bad = false;
                }
            } else if self.rng.chance(ge.p) {
                self.ge_bad = true;
            }
            if lost {
                st.dropped_loss += 1;
                return None;
            }
        }
        if self.in_flight >= MAX_IN_FLIGHT {
            st.dropped_queue += 1;
            return None;
        }
        let ser_end = match self.imp.rate_bps {
            None => now,
            Some(rate) => {
                while self.waiting.front().is_some_and(|&start| start <= now) {
                    self.waiting.pop_front();
                }
                let backlog = self.link_free_at.saturating_sub(now);
                let full = match self.imp.queue {
                    Queue::Packets(n) => self.waiting.len() >= n,
                    Queue::Time(d) => backlog > d.as_nanos() as u64,
                };
                if full {
                    st.dropped_queue += 1;
                    return None;
                }
                let start = now.max(self.link_free_at);
                let tx = (len as u128 * 8 * 1_000_000_000).div_ceil(rate as u128) as u64;
                self.link_free_at = start + tx;
                if start > now {
                    self.waiting.push_back(start);
                    st.max_queue = st.max_queue.max(self.waiting.len());
                }
                self.link_free_at
            }
        };
        let mut release = ser_end + self.imp.delay.as_nanos() as u64;
        if !self.imp.jitter.is_zero() {
            let j = (self.rng.unit() * 2.0 - 1.0) * self.imp.jitter.as_nanos() as f64;
            release = ((release as i64 + j as i64) as u64).max(ser_end);
        }
        let held = self
            .imp
            .reorder
            .is_some_and(|r| self.rng.chance(r.probability));
        if held {
            release += self.imp.reorder.unwrap().extra_delay.as_nanos() as u64;
        } else if !self.imp.jitter_reorders || self.imp.jitter.is_zero() {
            release = release.max(self.last_release);
            self.last_release = release;
        }
        self.in_flight += 1;
        Some((seq, release))
    }
}

/// A packet waiting for its release.
struct Pending {
    release: u64,
    /// Global arrival order: ties in release time keep it.
    order: u64,
    seq: u64,
    dir: usize,
    len: usize,
    buf: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.release, self.order) == (other.release, other.order)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: BinaryHeap is a max-heap, the earliest must come first.
        (other.release, other.order).cmp(&(self.release, self.order))
    }
}

/// What the forwarding thread and the handle share.
struct State {
    stats: LinkStats,
    started: u64,
    /// The thread's CPU time at `started`, ns.
    cpu_at_start: u64,
    config: [Impairments; 2],
    generation: u64,
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The handle of a running forwarding thread; dropping it stops the thread
/// (and closes the TUN devices, which removes them).
pub(crate) struct Emulator {
    shared: Arc<Shared>,
    waker: Waker,
    thread: Option<JoinHandle<()>>,
    realtime: Realtime,
    /// The forwarding thread's id.
    tid: i32,
}

impl Emulator {
    /// Starts forwarding between `devs[0]` (host A's device) and `devs[1]`
    /// (host B's).
    pub(crate) fn start(
        devs: [tun::Device; 2],
        config: [Impairments; 2],
        seed: u64,
        rt_priority: Option<u8>,
        mtu: u16,
    ) -> io::Result<Emulator> {
        for c in &config {
            c.validate()?;
        }
        let poll = Poll::new()?;
        for (i, d) in devs.iter().enumerate() {
            d.set_nonblock()?;
            poll.registry().register(
                &mut SourceFd(&d.as_raw_fd()),
                TOKEN_DEV[i],
                Interest::READABLE,
            )?;
        }
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        poll.registry().register(
            &mut SourceFd(&std::os::fd::AsFd::as_fd(&timer).as_raw_fd()),
            TOKEN_TIMER,
            Interest::READABLE,
        )?;
        let waker = Waker::new(poll.registry(), TOKEN_WAKE)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                stats: LinkStats::default(),
                started: now_ns(),
                cpu_at_start: 0,
                config: config.clone(),
                generation: 0,
            }),
            stop: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("linkem".into())
            .spawn(move || {
                let rt = set_realtime(rt_priority);
                let _ = tx.send((rt, nix::unistd::gettid().as_raw()));
                let mut fwd = Forwarder {
                    dirs: [
                        DirState::new(config[0].clone(), seed, 0),
                        DirState::new(config[1].clone(), seed, 1),
                    ],
                    heap: BinaryHeap::new(),
                    pool: Vec::new(),
                    order: 0,
                    buf_len: mtu as usize + 64,
                    devs,
                    timer,
                    armed: None,
                };
                fwd.run(poll, &sh);
            })?;
        let (realtime, tid) = rx
            .recv()
            .map_err(|_| io::Error::other("the forwarding thread died at start"))?;
        shared.lock().cpu_at_start = thread_cpu_ns(tid);
        Ok(Emulator {
            shared,
            waker,
            thread: Some(thread),
            realtime,
            tid,
        })
    }

    pub(crate) fn realtime(&self) -> &Realtime {
        &self.realtime
    }

    pub(crate) fn stats(&self) -> LinkStats {
        // Read /proc before locking: the forwarding thread waits for the
        // lock.
        let cpu = thread_cpu_ns(self.tid);
        let st = self.shared.lock();
        let mut s = st.stats.clone();
        s.elapsed = Duration::from_nanos(now_ns().saturating_sub(st.started));
        s.cpu = Duration::from_nanos(cpu.saturating_sub(st.cpu_at_start));
        s
    }

    pub(crate) fn reset_stats(&self) {
        let cpu = thread_cpu_ns(self.tid);
        let mut st = self.shared.lock();
        st.stats = LinkStats::default();
        st.started = now_ns();
        st.cpu_at_start = cpu;
    }

    pub(crate) fn impairments(&self, d: Dir) -> Impairments {
        self.shared.lock().config[d.index()].clone()
    }

    pub(crate) fn set_impairments(&self, d: Dir, imp: Impairments) -> io::Result<()> {
        imp.validate()?;
        let mut st = self.shared.lock();
        st.config[d.index()] = imp;
        st.generation += 1;
        drop(st);
        self.waker.wake()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            // A panic of the forwarding thread was printed already; the
            // devices were closed as it unwound.
            let _ = t.join();
        }
    }
}

struct Forwarder {
    dirs: [DirState; 2],
    heap: BinaryHeap<Pending>,
    pool: Vec<Vec<u8>>,
    order: u64,
    buf_len: usize,
    devs: [tun::Device; 2],
    timer: TimerFd,
    armed: Option<u64>,
}

impl Forwarder {
    fn run(&mut self, mut poll: Poll, shared: &Shared) {
        let mut events = Events::with_capacity(16);
        let mut readable = [true, true];
        let mut generation = 0;
        while !shared.stop.load(Ordering::Relaxed) {
            {
                let mut st = shared.lock();
                if st.generation != generation {
                    generation = st.generation;
                    for (ds, imp) in self.dirs.iter_mut().zip(&st.config) {
                        ds.imp = imp.clone();
                    }
                }
                st.stats.wakeups += 1;
                self.release_due(&mut st.stats);
                for (d, r) in readable.iter_mut().enumerate() {
                    if *r {
                        *r = self.read_batch(d, &mut st.stats);
                        self.release_due(&mut st.stats);
                    }
                }
                self.arm_timer();
            }
            let timeout = if readable.contains(&true) {
                Some(Duration::ZERO)
            } else {
                None
            };
            match poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("linkem: epoll_wait: {e}"),
            }
            for ev in events.iter() {
                match ev.token() {
                    t if t == TOKEN_DEV[0] => readable[0] = true,
                    t if t == TOKEN_DEV[1] => readable[1] = true,
                    _ => {}
                }
            }
        }
    }

    /// Reads up to [`READ_BATCH`] packets from device `d`; whether it may
    /// have more.
    fn read_batch(&mut self, d: usize, stats: &mut LinkStats) -> bool {
        for _ in 0..READ_BATCH {
            let mut buf = self.pool.pop().unwrap_or_else(|| vec![0; self.buf_len]);
            match self.devs[d].recv(&mut buf) {
                Ok(len) => {
                    let now = now_ns();
                    let st = stats.dir_mut(d);
                    match self.dirs[d].arrive(now, len, st) {
                        Some((seq, release)) => {
                            self.order += 1;
                            self.heap.push(Pending {
                                release,
                                order: self.order,
                                seq,
                                dir: d,
                                len,
                                buf,
                            });
                        }
                        None => self.pool.push(buf),
                    }
                }
                Err(e) => {
                    self.pool.push(buf);
                    if e.kind() == io::ErrorKind::WouldBlock {
                        return false;
                    }
                    if e.kind() != io::ErrorKind::Interrupted {
                        stats.dir_mut(d).read_errors += 1;
                        // A device that fails keeps failing (taken down?):
                        // wait for it to signal again.
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Writes every packet whose release time has come.
    fn release_due(&mut self, stats: &mut LinkStats) {
        let mut now = now_ns();
        while self.heap.peek().is_some_and(|p| p.release <= now) {
            let p = self.heap.pop().unwrap();
            let st = stats.dir_mut(p.dir);
            st.lateness.record(now - p.release);
            let ds = &mut self.dirs[p.dir];
            ds.in_flight -= 1;
            if p.seq < ds.released_hwm {
                st.reordered += 1;
            } else {
                ds.released_hwm = p.seq + 1;
            }
            match self.devs[1 - p.dir].send(&p.buf[..p.len]) {
                Ok(_) => {
                    st.forwarded += 1;
                    st.bytes_out += p.len as u64;
                }
                Err(_) => st.write_errors += 1,
            }
            self.pool.push(p.buf);
            now = now_ns();
        }
    }

    fn arm_timer(&mut self) {
        let next = self.heap.peek().map(|p| p.release);
        if let Some(t) = next {
            if self.armed != Some(t) {
                let ts = TimeSpec::from_duration(Duration::from_nanos(t));
                self.timer
                    .set(
                        Expiration::OneShot(ts),
                        TimerSetTimeFlags::TFD_TIMER_ABSTIME,
                    )
                    .expect("timerfd_settime");
                self.armed = Some(t);
            }
        }
    }
}

/// CPU time of thread `tid` of this process, ns (0 if unknown).
fn thread_cpu_ns(tid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Puts the calling thread under `SCHED_FIFO` at `prio` with `chrt` and
/// checks it in `/proc/thread-self/stat`.
fn set_realtime(prio: Option<u8>) -> Realtime {
    let Some(prio) = prio else {
        return Realtime::Off;
    };
    let tid = nix::unistd::gettid();
    let out = Command::new("chrt")
        .args(["-f", "-p", &prio.to_string(), &tid.to_string()])
        .output();
    match out {
        Err(e) => return Realtime::Failed(format!("cannot run chrt: {e}")),
        Ok(o) if !o.status.success() => {
            return Realtime::Failed(format!(
                "chrt -f -p {prio} {tid}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
        Ok(_) => {}
    }
    match sched_of_this_thread() {
        Some((1, p)) if p == u32::from(prio) => Realtime::Fifo(prio),
        Some((policy, p)) => Realtime::Failed(format!("after chrt: policy {policy}, priority {p}")),
        None => Realtime::Failed("cannot read /proc/thread-self/stat".into()),
    }
}

/// (policy, rt_priority) of the calling thread: fields 41 and 40 of
/// `/proc/thread-self/stat`.
fn sched_of_this_thread() -> Option<(u32, u32)> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    Some((f.get(41 - 3)?.parse().ok()?, f.get(40 - 3)?.parse().ok()?))
}

/// The model alone (no devices, no privileges): arrivals fed to a
/// `DirState` by hand.
#[cfg(test)]
mod model_tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn run(imp: Impairments, arrivals: &[(u64, usize)]) -> (Vec<Option<u64>>, DirStats) {
        let mut d = DirState::new(imp, 7, 0);
        let mut st = DirStats::default();
        let out = arrivals
            .iter()
            .map(|&(t, len)| {
                let r = d.arrive(t, len, &mut st).map(|(_, r)| r);
                d.in_flight = 0; // nothing is released here
                r
            })
            .collect();
        (out, st)
    }

    #[test]
    fn serialization_then_delay() {
        // 8 Mbit/s: 1000 bytes take 1 ms. Three back-to-back arrivals.
        let imp = Impairments::none().rate_mbit(8.0).delay_ms(10.0);
        let (out, st) = run(imp, &[(0, 1000), (0, 1000), (0, 1000), (10 * MS, 1000)]);
        assert_eq!(
            out,
            vec![Some(11 * MS), Some(12 * MS), Some(13 * MS), Some(21 * MS)]
        );
        assert_eq!(st.max_queue, 2);
    }

    #[test]
    fn queue_in_packets_drops_tail() {
        let imp = Impairments::none().rate_mbit(8.0).queue_packets(2);
        let arrivals = vec![(0, 1000); 5];
        let (out, st) = run(imp, &arrivals);
        // One in service, two waiting, two dropped.
        assert_eq!(out, vec![Some(MS), Some(2 * MS), Some(3 * MS), None, None]);
        assert_eq!(st.dropped_queue, 2);
        // Once the first two started, there is room again.
        let imp = Impairments::none().rate_mbit(8.0).queue_packets(2);
        let (out, _) = run(imp, &[(0, 1000), (0, 1000), (0, 1000), (MS, 1000)]);
        assert_eq!(out[3], Some(4 * MS));
    }

    #[test]
    fn queue_in_time_bounds_waiting() {
        // 2.5 ms of queue at 8 Mbit/s: a packet may wait at most 2.5 ms
        // (the fourth would wait 3 ms).
        let imp = Impairments::none().rate_mbit(8.0).queue_ms(2.5);
        let (out, st) = run(imp.clone(), &[(0, 1000); 6]);
        assert_eq!(
            out,
            vec![Some(MS), Some(2 * MS), Some(3 * MS), None, None, None]
        );
        assert_eq!(st.dropped_queue, 3);
        // At 0.5 ms the backlog is 2.5 ms: accepted.
        let (out, _) = run(imp, &[(0, 1000), (0, 1000), (0, 1000), (MS / 2, 1000)]);
        assert_eq!(out[3], Some(4 * MS));
    }

    #[test]
    fn random_loss_ratio() {
        let imp = Impairments::none().loss(0.25);
        let (out, st) = run(imp, &vec![(0, 100); 100_000]);
        let lost = out.iter().filter(|o| o.is_none()).count() as f64;
        assert_eq!(lost as u64, st.dropped_loss);
        assert!((lost / 1e5 - 0.25).abs() < 0.01, "{lost}");
    }

    #[test]
    fn gilbert_elliott_mean_and_bursts() {
        let imp = Impairments::none().gilbert_elliott(0.01, 0.2, 1.0, 0.0);
        let ge = imp.gilbert_elliott.unwrap();
        let (out, _) = run(imp, &vec![(0, 100); 200_000]);
        let lost = out.iter().filter(|o| o.is_none()).count() as f64 / 2e5;
        assert!(
            (lost - ge.mean_loss()).abs() < 0.15 * ge.mean_loss(),
            "{lost}"
        );
        let (mut bursts, mut run_len, mut total) = (0, 0, 0);
        for o in &out {
            if o.is_none() {
                run_len += 1;
            } else if run_len > 0 {
                bursts += 1;
                total += run_len;
                run_len = 0;
            }
        }
        let mean_burst = total as f64 / bursts as f64;
        assert!((4.0..6.0).contains(&mean_burst), "mean burst {mean_burst}");
    }

    #[test]
    fn jitter_keeps_order_unless_asked() {
        let arrivals: Vec<(u64, usize)> = (0..10_000).map(|i| (i * MS / 10, 100)).collect();
        let imp = Impairments::none().delay_ms(10.0).jitter_ms(2.0);
        let (out, _) = run(imp.clone(), &arrivals);
        let rel: Vec<u64> = out.iter().map(|o| o.unwrap()).collect();
        assert!(rel.windows(2).all(|w| w[0] <= w[1]));
        for (r, (t, _)) in rel.iter().zip(&arrivals) {
            assert!((8 * MS..=12 * MS).contains(&(r - t)));
        }
        let mut imp = imp;
        imp.jitter_reorders = true;
        let (out, _) = run(imp, &arrivals);
        let rel: Vec<u64> = out.iter().map(|o| o.unwrap()).collect();
        assert!(rel.windows(2).any(|w| w[0] > w[1]));
    }

    #[test]
    fn reorder_holds_back_a_fraction() {
        let arrivals: Vec<(u64, usize)> = (0..10_000).map(|i| (i * MS, 100)).collect();
        let imp = Impairments::none().delay_ms(5.0).reorder(0.1, 3.5);
        let (out, _) = run(imp, &arrivals);
        let held = out
            .iter()
            .zip(&arrivals)
            .filter(|(o, (t, _))| o.unwrap() - t == 8_500_000)
            .count();
        assert!((800..1200).contains(&held), "{held}");
    }

    #[test]
    fn same_seed_same_fate() {
        let imp = Impairments::none().loss(0.3).jitter_ms(1.0);
        let arrivals = vec![(0, 100); 1000];
        assert_eq!(run(imp.clone(), &arrivals).0, run(imp, &arrivals).0);
    }

    #[test]
    fn lateness_quantiles() {
        let mut l = Lateness::default();
        for ns in 1..=1000u64 {
            l.record(ns * 1000);
        }
        let p50 = l.p50().as_nanos() as f64;
        assert!((500_000.0..=500_000.0 * 1.07).contains(&p50), "{p50}");
        assert_eq!(l.max(), Duration::from_micros(1000));
        assert_eq!(l.quantile(1.0), Duration::from_micros(1000));
        for ns in [0u64, 5, 31, 32, 33, 1000, 123_456_789] {
            let b = Lateness::bucket(ns);
            assert!(Lateness::bucket_high(b) >= ns);
            assert!(b == 0 || Lateness::bucket_high(b - 1) < ns, "{ns}");
        }
    }
}
