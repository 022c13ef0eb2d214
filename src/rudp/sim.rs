//! Test support: a seeded, deterministic network simulator for endpoints.
//!
//! N [`Endpoint`]s exchange datagrams over simulated links with loss,
//! duplication, reordering, latency and jitter, under a virtual clock.
//! [`Sim::run_until`] is a bounded drive loop (like quinn's
//! `Pair::drive_bounded`): a protocol that livelocks (keeps doing work
//! without time advancing) or never reaches the goal fails the test instead
//! of hanging it.
//!
//! A link may have a *bottleneck*: a rate (`LinkConfig::rate_bps`) at which
//! datagrams serialize, behind a drop-tail queue (`LinkConfig::queue_bytes`),
//! then the propagation delay (`latency`). Directions can share one
//! bottleneck ([`Sim::share_bottleneck`]), so several flows compete for it
//! as they would for a router's queue. With [`Sim::timer_granularity`] the
//! nodes behave like the reactor: a node only sends at the end of a *pass*
//! (after it received datagrams or its timer fired), and it sleeps until its
//! deadline rounded up to the granularity (the reactor waits in whole
//! milliseconds).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::rng::Rng;
use super::{ConnectionHandle, Endpoint, Event, RudpConfig};

/// Impairments of one direction of a link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LinkConfig {
    /// Probability a datagram is dropped.
    pub(crate) loss: f64,
    /// Probability a datagram is delivered twice.
    pub(crate) duplicate: f64,
    /// Probability a datagram is held back by an extra delay (reordering).
    pub(crate) reorder: f64,
    /// One-way base latency.
    pub(crate) latency: Duration,
    /// Uniform extra delay in `0..jitter`.
    pub(crate) jitter: Duration,
    /// Extra delay of a reordered datagram, uniform in `0..reorder_delay`
    /// (plus 1 ms, so it really arrives after later ones).
    pub(crate) reorder_delay: Duration,
    /// Bottleneck rate, bits per second (each datagram counted with
    /// [`WIRE_OVERHEAD`] bytes of IPv4 and UDP headers); 0: unlimited, no
    /// queue.
    pub(crate) rate_bps: u64,
    /// Drop-tail queue of the bottleneck: a datagram that finds this many
    /// bytes (or more) waiting to be serialized is dropped; 0: unlimited.
    pub(crate) queue_bytes: usize,
}

/// Bytes of IPv4 and UDP headers a bottleneck serializes with every datagram.
pub(crate) const WIRE_OVERHEAD: usize = 28;

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder_delay: Duration::from_millis(10),
            rate_bps: 0,
            queue_bytes: 0,
        }
    }
}

impl LinkConfig {
    /// A bottleneck of `mbit_s` Mbit/s with one-way propagation delay
    /// `one_way`, random loss `loss`, and a drop-tail queue of one
    /// bandwidth-delay product (of the round trip `2 × one_way`), as a
    /// link emulator is usually set up.
    pub(crate) fn bottleneck(mbit_s: f64, one_way: Duration, loss: f64) -> Self {
        let rate_bps = (mbit_s * 1e6) as u64;
        let bdp = (rate_bps as f64 / 8.0 * (2 * one_way).as_secs_f64()) as usize;
        LinkConfig {
            loss,
            latency: one_way,
            rate_bps,
            queue_bytes: bdp,
            ..LinkConfig::default()
        }
    }
}

/// Counters and queueing delays of one bottleneck.
#[derive(Debug, Clone, Default)]
pub(crate) struct BottleneckStats {
    /// Datagrams serialized.
    pub(crate) packets: u64,
    /// Bytes serialized (headers of [`WIRE_OVERHEAD`] included).
    pub(crate) bytes: u64,
    /// Datagrams dropped because the queue was full.
    pub(crate) dropped: u64,
    /// Time each datagram waited in the queue before its serialization
    /// started, microseconds, in order of arrival.
    pub(crate) queue_delays_us: Vec<u32>,
}

impl BottleneckStats {
    /// The `q`-quantile (0..=1) of the queueing delays of the datagrams
    /// that arrived after the first `skip` (zero when none did).
    pub(crate) fn queue_delay_quantile(&self, skip: usize, q: f64) -> Duration {
        let mut v: Vec<u32> = self.queue_delays_us.iter().skip(skip).copied().collect();
        if v.is_empty() {
            return Duration::ZERO;
        }
        v.sort_unstable();
        let i = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        Duration::from_micros(u64::from(v[i]))
    }
}

/// A rate-limited link with a drop-tail queue, shared by one or more
/// directions.
#[derive(Debug, Clone)]
pub(crate) struct Bottleneck {
    rate_bps: u64,
    queue_bytes: usize,
    /// When the last datagram accepted finishes serializing.
    busy_until: Instant,
    /// What happened at this bottleneck.
    pub(crate) stats: BottleneckStats,
}

impl Bottleneck {
    fn serialization(&self, len: usize) -> Duration {
        let bits = (len + WIRE_OVERHEAD) as u128 * 8;
        Duration::from_nanos((bits * 1_000_000_000 / u128::from(self.rate_bps.max(1))) as u64)
    }

    /// Bytes waiting at `now` (including the rest of the one on the wire).
    fn backlog(&self, now: Instant) -> usize {
        let left = self.busy_until.saturating_duration_since(now);
        (left.as_nanos() * u128::from(self.rate_bps) / 8_000_000_000) as usize
    }

    /// Queues a datagram of `len` bytes arriving at `now`: when it has
    /// been serialized (it then propagates), or `None` if the queue is full.
    fn enqueue(&mut self, now: Instant, len: usize) -> Option<Instant> {
        if self.queue_bytes > 0 && self.backlog(now) + len > self.queue_bytes {
            self.stats.dropped += 1;
            return None;
        }
        let start = self.busy_until.max(now);
        self.busy_until = start + self.serialization(len);
        let waited = (start - now).as_micros().min(u128::from(u32::MAX)) as u32;
        self.stats.queue_delays_us.push(waited);
        self.stats.packets += 1;
        self.stats.bytes += (len + WIRE_OVERHEAD) as u64;
        Some(self.busy_until)
    }
}

/// Counters of the simulated network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct NetStats {
    /// Datagrams handed to the network.
    pub(crate) sent: u64,
    /// Datagrams delivered (duplicates included).
    pub(crate) delivered: u64,
    /// Datagrams dropped by loss or by the drop filter.
    pub(crate) dropped: u64,
    /// Extra copies created.
    pub(crate) duplicated: u64,
    /// Datagrams given a reordering delay.
    pub(crate) reordered: u64,
    /// Datagrams to an address with no node.
    pub(crate) unroutable: u64,
}

/// One simulated host.
#[derive(Debug)]
pub(crate) struct Node {
    /// Its endpoint.
    pub(crate) ep: Endpoint,
    /// Its address.
    pub(crate) addr: SocketAddr,
    /// Events polled from the endpoint, oldest first.
    pub(crate) events: VecDeque<(ConnectionHandle, Event)>,
    /// Datagrams this node sent.
    pub(crate) sent: u64,
    /// Errors returned by `handle_datagram`.
    pub(crate) errors: u64,
    /// Whether [`Sim::step`] polls this node's events into `events`
    /// (default); when false the test polls the endpoint itself.
    pub(crate) collect_events: bool,
    /// With a timer granularity: the node had a pass in the last step (it
    /// received datagrams or its timers fired), so it sends now.
    active: bool,
    /// With a timer granularity: when the node's last pass was.
    last_pass: Instant,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    order: u64,
    from: SocketAddr,
    to: SocketAddr,
    data: Vec<u8>,
}

/// A filter that may drop datagrams: `(from node, to node, bytes) -> drop?`.
pub(crate) type DropFilter = Box<dyn FnMut(usize, usize, &[u8]) -> bool>;

/// The simulator.
pub(crate) struct Sim {
    /// Virtual now.
    pub(crate) now: Instant,
    /// The hosts.
    pub(crate) nodes: Vec<Node>,
    /// Default impairments.
    pub(crate) link: LinkConfig,
    /// Per-direction overrides, keyed by (from node, to node).
    pub(crate) links: HashMap<(usize, usize), LinkConfig>,
    /// Drop datagrams for which this returns true (applied before loss).
    pub(crate) drop_filter: Option<DropFilter>,
    /// Bottlenecks, by index (see [`Sim::bottleneck`]).
    pub(crate) bottlenecks: Vec<Bottleneck>,
    /// Which bottleneck a direction (from node, to node) goes through, once
    /// it has a rate.
    bottleneck_of: HashMap<(usize, usize), usize>,
    /// Zero (default): a node handles its timers exactly at their deadline
    /// and sends at every step. Otherwise the node behaves like the reactor:
    /// it sends only at the end of a pass and sleeps until its deadline
    /// rounded up to this granularity (or until a datagram arrives).
    pub(crate) timer_granularity: Duration,
    /// Network counters.
    pub(crate) net: NetStats,
    /// When `Some`, datagrams to addresses with no node are kept here as
    /// (from, to, bytes): a test plays those hosts itself (see [`Sim::inject`]).
    pub(crate) captured: Option<Vec<(SocketAddr, SocketAddr, Vec<u8>)>>,
    /// Steps taken so far.
    pub(crate) steps: u64,
    rng: Rng,
    queue: BinaryHeap<Reverse<InFlight>>,
    order: u64,
    by_addr: HashMap<SocketAddr, usize>,
    buf: Vec<u8>,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("nodes", &self.nodes.len())
            .field("link", &self.link)
            .field("net", &self.net)
            .field("in_flight", &self.queue.len())
            .finish()
    }
}

/// Why a bounded run stopped without reaching its goal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SimError {
    /// More steps than allowed (livelock or too slow).
    StepLimit(u64),
    /// Virtual time ran past the limit.
    TimeLimit(Duration),
    /// Nothing left to do (no datagrams, no timers) and the goal not reached.
    Idle,
}

impl Sim {
    /// A simulator with `n` nodes using `cfg`, every link impaired by `link`.
    /// Node `i` listens on 10.0.0.(i+1):(4000+i) (virtual addresses).
    pub(crate) fn new(n: usize, cfg: RudpConfig, link: LinkConfig, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let now = Instant::now();
        let mut nodes = Vec::with_capacity(n);
        let mut by_addr = HashMap::new();
        for i in 0..n {
            let addr = SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::new(10, 0, (i >> 8) as u8, (i & 0xff) as u8 + 1),
                4000 + i as u16,
            ));
            by_addr.insert(addr, i);
            nodes.push(Node {
                ep: Endpoint::new(cfg.clone(), rng.next_u64()),
                addr,
                events: VecDeque::new(),
                sent: 0,
                errors: 0,
                collect_events: true,
                active: true,
                last_pass: now,
            });
        }
        Sim {
            now,
            nodes,
            link,
            links: HashMap::new(),
            drop_filter: None,
            bottlenecks: Vec::new(),
            bottleneck_of: HashMap::new(),
            timer_granularity: Duration::ZERO,
            net: NetStats::default(),
            captured: None,
            steps: 0,
            rng,
            queue: BinaryHeap::new(),
            order: 0,
            by_addr,
            buf: vec![0u8; 65_536],
        }
    }

    /// Two nodes; node 0 connects to node 1. Returns the client's id for the
    /// server (node 0's view).
    pub(crate) fn pair(cfg: RudpConfig, link: LinkConfig, seed: u64) -> (Self, ConnectionHandle) {
        let mut sim = Sim::new(2, cfg, link, seed);
        let server = sim.nodes[1].addr;
        let now = sim.now;
        let peer = sim.nodes[0]
            .ep
            .connect(now, server)
            .expect("a fresh endpoint has room");
        (sim, peer)
    }

    /// Makes the directions `dirs` (from node, to node) go through one
    /// bottleneck, with the rate and queue of the first direction's link
    /// (set the links first). Returns its index in [`Sim::bottlenecks`].
    pub(crate) fn share_bottleneck(&mut self, dirs: &[(usize, usize)]) -> usize {
        let link = dirs
            .first()
            .map_or(self.link, |d| *self.links.get(d).unwrap_or(&self.link));
        let idx = self.new_bottleneck(&link);
        for &d in dirs {
            self.bottleneck_of.insert(d, idx);
        }
        idx
    }

    fn new_bottleneck(&mut self, link: &LinkConfig) -> usize {
        self.bottlenecks.push(Bottleneck {
            rate_bps: link.rate_bps,
            queue_bytes: link.queue_bytes,
            busy_until: self.now,
            stats: BottleneckStats::default(),
        });
        self.bottlenecks.len() - 1
    }

    /// The bottleneck of direction `from` → `to` (created on first use,
    /// `None` when its link has no rate).
    pub(crate) fn bottleneck(&mut self, from: usize, to: usize) -> Option<&mut Bottleneck> {
        let idx = match self.bottleneck_of.get(&(from, to)) {
            Some(&i) => i,
            None => {
                let link = *self.links.get(&(from, to)).unwrap_or(&self.link);
                if link.rate_bps == 0 {
                    return None;
                }
                let i = self.new_bottleneck(&link);
                self.bottleneck_of.insert((from, to), i);
                i
            }
        };
        self.bottlenecks.get_mut(idx)
    }

    /// Injects a datagram as if `from` had sent it to node `to`, arriving now.
    pub(crate) fn inject(&mut self, from: SocketAddr, to: usize, data: &[u8]) {
        let Some(dst) = self.nodes.get(to).map(|n| n.addr) else {
            return;
        };
        self.order += 1;
        self.queue.push(Reverse(InFlight {
            at: self.now,
            order: self.order,
            from,
            to: dst,
            data: data.to_vec(),
        }));
    }

    fn route(&mut self, from: usize, to_addr: SocketAddr, len: usize) {
        self.net.sent += 1;
        let Some(&to) = self.by_addr.get(&to_addr) else {
            self.net.unroutable += 1;
            if let Some(c) = self.captured.as_mut() {
                c.push((self.nodes[from].addr, to_addr, self.buf[..len].to_vec()));
            }
            return;
        };
        let from_addr = self.nodes[from].addr;
        let link = *self.links.get(&(from, to)).unwrap_or(&self.link);
        if let Some(f) = self.drop_filter.as_mut() {
            if f(from, to, &self.buf[..len]) {
                self.net.dropped += 1;
                return;
            }
        }
        if self.rng.chance(link.loss) {
            self.net.dropped += 1;
            return;
        }
        let copies = if self.rng.chance(link.duplicate) {
            self.net.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            // Through the bottleneck's queue and serialization first.
            let mut depart = self.now;
            if let Some(b) = self.bottleneck(from, to) {
                match b.enqueue(depart, len) {
                    Some(t) => depart = t,
                    None => {
                        self.net.dropped += 1;
                        continue;
                    }
                }
            }
            let mut delay = link.latency;
            if !link.jitter.is_zero() {
                delay += link.jitter.mul_f64(self.rng.next_f64());
            }
            if self.rng.chance(link.reorder) {
                self.net.reordered += 1;
                delay += Duration::from_millis(1) + link.reorder_delay.mul_f64(self.rng.next_f64());
            }
            self.order += 1;
            self.queue.push(Reverse(InFlight {
                at: depart + delay,
                order: self.order,
                from: from_addr,
                to: to_addr,
                data: self.buf[..len].to_vec(),
            }));
        }
    }

    /// One step: transmit everything, deliver what is due, fire due timers,
    /// collect events; when none of that did anything, advance the clock to
    /// the next datagram arrival or deadline. Returns false when there is
    /// nothing left to do at all.
    ///
    /// With a [`timer_granularity`](Self::timer_granularity), a node
    /// transmits only in the step after one in which it received datagrams
    /// or handled its timers (the end of its pass), and its timers fire
    /// when a datagram wakes it or when its rounded-up sleep ends.
    pub(crate) fn step(&mut self) -> bool {
        self.step_until(None)
    }

    /// [`step`](Self::step), but an idle step moves the clock no further
    /// than `cap`.
    fn step_until(&mut self, cap: Option<Instant>) -> bool {
        self.steps += 1;
        let now = self.now;
        let exact = self.timer_granularity.is_zero();
        let mut progressed = false;
        for i in 0..self.nodes.len() {
            if !exact && !self.nodes[i].active {
                continue;
            }
            self.nodes[i].active = false;
            loop {
                let mut buf = core::mem::take(&mut self.buf);
                let t = self.nodes[i].ep.poll_transmit(now, &mut buf);
                self.buf = buf;
                let Some(t) = t else { break };
                self.nodes[i].sent += 1;
                progressed = true;
                self.route(i, t.dest, t.len);
            }
        }
        while self.queue.peek().is_some_and(|Reverse(p)| p.at <= now) {
            let Some(Reverse(p)) = self.queue.pop() else {
                break;
            };
            if let Some(&to) = self.by_addr.get(&p.to) {
                self.net.delivered += 1;
                let n = &mut self.nodes[to];
                if n.ep.handle_datagram(now, p.from, &p.data).is_err() {
                    n.errors += 1;
                }
                n.active = true;
                progressed = true;
            }
        }
        let granularity = self.timer_granularity;
        for n in &mut self.nodes {
            let due = n.ep.poll_timeout().is_some_and(|t| {
                t <= now && (exact || n.active || wake_at(n.last_pass, t, granularity) <= now)
            });
            if due {
                n.ep.handle_timeout(now);
                n.active = true;
                progressed = true;
            }
            if n.active {
                n.last_pass = now;
            }
            while n.collect_events {
                let Some(ev) = n.ep.poll_event() else { break };
                n.events.push_back(ev);
                progressed = true;
            }
        }
        if progressed {
            return true;
        }
        let next_packet = self.queue.peek().map(|Reverse(p)| p.at);
        let next_timer = self
            .nodes
            .iter_mut()
            .filter_map(|n| {
                let t = n.ep.poll_timeout()?;
                Some(if exact {
                    t
                } else {
                    wake_at(n.last_pass, t, granularity)
                })
            })
            .min();
        match (next_packet, next_timer) {
            (None, None) => false,
            (a, b) => {
                let t = a.into_iter().chain(b).min().unwrap_or(now);
                let t = cap.map_or(t, |c| t.min(c));
                self.now = self.now.max(t);
                true
            }
        }
    }

    /// Steps until `done(self)` holds, failing after `max_steps` steps or
    /// `max_time` of virtual time, or when the simulation goes idle first.
    pub(crate) fn run_until(
        &mut self,
        max_steps: u64,
        max_time: Duration,
        mut done: impl FnMut(&mut Sim) -> bool,
    ) -> Result<(), SimError> {
        let start = self.now;
        let limit = self.steps + max_steps;
        loop {
            if done(self) {
                return Ok(());
            }
            if self.steps >= limit {
                return Err(SimError::StepLimit(max_steps));
            }
            if self.now.saturating_duration_since(start) > max_time {
                return Err(SimError::TimeLimit(max_time));
            }
            if !self.step() {
                return if done(self) {
                    Ok(())
                } else {
                    Err(SimError::Idle)
                };
            }
        }
    }

    /// Runs for `d` of virtual time (bounded by `max_steps`).
    pub(crate) fn run_for(&mut self, d: Duration, max_steps: u64) -> Result<(), SimError> {
        let end = self.now + d;
        let limit = self.steps + max_steps;
        while self.now < end {
            if self.steps >= limit {
                return Err(SimError::StepLimit(max_steps));
            }
            if !self.step_until(Some(end)) {
                self.now = end;
                break;
            }
        }
        Ok(())
    }

    /// Marks node `i` as having a pass now (with a timer granularity, it
    /// sends at the next step): for a test that queues messages on a node
    /// outside of its passes, as a timer callback of the application would.
    pub(crate) fn wake(&mut self, i: usize) {
        if let Some(n) = self.nodes.get_mut(i) {
            n.active = true;
        }
    }

    /// Removes and returns node `i`'s collected events.
    pub(crate) fn take_events(&mut self, i: usize) -> Vec<(ConnectionHandle, Event)> {
        self.nodes[i].events.drain(..).collect()
    }
}

/// When a node whose last pass was at `last` wakes for a deadline `t`: its
/// sleep is rounded up to a multiple of `granularity`, like the reactor's.
fn wake_at(last: Instant, t: Instant, granularity: Duration) -> Instant {
    let Some(wait) = t.checked_duration_since(last) else {
        return last;
    };
    let g = granularity.as_nanos().max(1);
    let rounded = wait.as_nanos().div_ceil(g) * g;
    last + Duration::from_nanos(rounded.min(u128::from(u64::MAX)) as u64)
}
