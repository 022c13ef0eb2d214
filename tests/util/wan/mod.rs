//! wan — msgloop reliable-UDP flows, kernel TCP flows and a UDP ping
//! across a [`linkem`](crate::linkem) link, measured at the receiver: the
//! machinery shared by `examples/wan_bench.rs` and `tests/wan.rs`.
//!
//! The including crate must also include the link emulator as
//! `crate::linkem`:
//!
//! ```ignore
//! #[path = "util/linkem/mod.rs"] // "../tests/util/linkem/mod.rs" from examples/
//! mod linkem;
//! #[path = "util/wan/mod.rs"]
//! mod wan;
//! ```
//!
//! # What a msgloop flow is
//!
//! A server thread living in host B ([`spawn_server`]) runs a [`Reactor`]
//! with one [`bind_rudp`](msgloop::Ctx::bind_rudp) socket; a client thread
//! in host A ([`spawn_client`]) runs its own reactor, calls
//! [`connect_rudp`](msgloop::Ctx::connect_rudp) and, once connected, sends
//! DATA messages with `Guarantee::Delivery` as fast as the send queue takes
//! them for [`FlowOpts::duration`] (`Error::WouldBlock` stops it,
//! `on_rudp_writable` resumes it). Beside them, every
//! [`FlowOpts::probe_interval`], it sends a small PROBE message with
//! `Guarantee::None` on the same connection, stamped with
//! [`now_ns`](crate::linkem::now_ns) (`CLOCK_MONOTONIC`, the same clock in
//! both hosts): the receiver's one-way latency, queueing included. A probe
//! that finds the send queue full waits (in order) and goes first at the
//! next `on_rudp_writable`; its stamp stays the time it was meant to go, so
//! the latency includes that wait — what an application would see.
//!
//! | message | guarantee | bytes |
//! |---|---|---|
//! | DATA  | Delivery | `b'D'`, seq (u64 LE), padding up to `msg_len` |
//! | PROBE | None     | `b'P'`, seq, send time ns (u64 LE), padding up to `probe_len` |
//!
//! The server checks that DATA arrives exactly once and in order (the next
//! seq every time) and counts payload bytes per [`BIN_NS`] time bin, so
//! that shares can be taken over part of a run.
//!
//! The end of a flow is either abrupt ([`FlowOpts::drain`] `None`: at the
//! end of `duration` the client stops and drops its reactor — what was
//! still queued is abandoned, which keeps runs short at low goodput) or a
//! drain (`Some(limit)`: the client calls `close_rudp`, which delivers
//! everything queued before closing, and waits up to `limit` for
//! `on_rudp_closed`; then the server's count must equal the client's).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use msgloop::rudp::{ConnectionStats, Guarantee, RudpCloseReason, RudpConfig};
use msgloop::socket2::{Domain, Protocol, SockAddr, Socket, Type};
use msgloop::{Ctx, Error, Handler, PeerId, Reactor, TimerId};

use crate::linkem::{now_ns, Host, Impairments, Link, LinkConfig};

/// Width of the time bins in which receivers count bytes.
pub const BIN_NS: u64 = 100_000_000;
const DATA: u8 = b'D';
const PROBE: u8 = b'P';
/// Tag and sequence number.
const DATA_HEADER: usize = 9;
/// Tag, sequence number and send time.
const PROBE_HEADER: usize = 17;
/// Statistics are refreshed this often on the client.
const TICK: Duration = Duration::from_millis(100);

// ---- links -----------------------------------------------------------------

/// One link of the matrix: symmetric rate and delay, random loss on the
/// data direction (A→B) only, a drop-tail queue of one bandwidth-delay
/// product (rate × RTT) in each direction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkSpec {
    /// Short name (`clean50`, `loss50_1`, ...).
    pub name: &'static str,
    /// Bottleneck rate, Mbit/s of IP packets, each direction.
    pub rate_mbit: f64,
    /// Round-trip propagation delay, ms (half of it each way).
    pub rtt_ms: f64,
    /// Random loss probability on A→B (0.01 = 1 %).
    pub loss: f64,
}

/// The WAN matrix.
pub const MATRIX: [LinkSpec; 6] = [
    LinkSpec::new("clean50", 50.0, 50.0, 0.0),
    LinkSpec::new("loss50_0.1", 50.0, 50.0, 0.001),
    LinkSpec::new("loss50_1", 50.0, 50.0, 0.01),
    LinkSpec::new("loss50_3", 50.0, 50.0, 0.03),
    LinkSpec::new("long10_1", 10.0, 200.0, 0.01),
    LinkSpec::new("fast200_0.5", 200.0, 10.0, 0.005),
];

impl LinkSpec {
    /// A link spec.
    pub const fn new(name: &'static str, rate_mbit: f64, rtt_ms: f64, loss: f64) -> LinkSpec {
        LinkSpec {
            name,
            rate_mbit,
            rtt_ms,
            loss,
        }
    }

    /// The matrix entry called `name`.
    pub fn by_name(name: &str) -> Option<LinkSpec> {
        MATRIX.iter().copied().find(|s| s.name == name)
    }

    /// One-way propagation delay, ms.
    pub fn one_way_ms(&self) -> f64 {
        self.rtt_ms / 2.0
    }

    /// The emulator configuration: the queue holds one BDP (`rtt_ms` of
    /// the rate) in each direction; the loss applies to A→B.
    pub fn config(&self, rt_priority: Option<u8>, seed: u64) -> LinkConfig {
        let base = Impairments::none()
            .rate_mbit(self.rate_mbit)
            .delay_ms(self.one_way_ms())
            .queue_ms(self.rtt_ms);
        let data = if self.loss > 0.0 {
            base.clone().loss(self.loss)
        } else {
            base.clone()
        };
        LinkConfig::asymmetric(data, base)
            .rt_priority(rt_priority)
            .seed(seed)
    }

    /// The queue of one BDP in 1,500-byte packets (for the record).
    pub fn bdp_packets(&self) -> f64 {
        self.rate_mbit * 1e6 * self.rtt_ms / 1e3 / 8.0 / 1500.0
    }
}

// ---- helpers ---------------------------------------------------------------

/// The `q` quantile (0..=1) of `sorted` (nearest rank), 0 if empty.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// The median of `xs` (mean of the two middle values), NaN if empty.
pub fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn sleep_until(t_ns: u64) {
    let now = now_ns();
    if t_ns > now {
        std::thread::sleep(Duration::from_nanos(t_ns - now));
    }
}

fn u64_at(msg: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(msg.get(at..at + 8)?.try_into().ok()?))
}

/// Adds `n` bytes received at `t_ns` to `bins` (bins of [`BIN_NS`] from
/// `t0_ns`; bytes before `t0_ns` go to bin 0).
fn add_to_bins(bins: &mut Vec<u64>, t0_ns: u64, t_ns: u64, n: u64) {
    let i = (t_ns.saturating_sub(t0_ns) / BIN_NS) as usize;
    if i >= bins.len() {
        bins.resize(i + 1, 0);
    }
    bins[i] += n;
}

/// Mbit/s of the bytes in `bins` between `from` and `to` (offsets from the
/// bins' origin, rounded to whole bins).
pub fn bins_mbit(bins: &[u64], from: Duration, to: Duration) -> f64 {
    let a = (from.as_nanos() as u64 / BIN_NS) as usize;
    let b = (to.as_nanos() as u64).div_ceil(BIN_NS) as usize;
    if b <= a {
        return 0.0;
    }
    let bytes: u64 = bins.iter().skip(a).take(b - a).sum();
    bytes as f64 * 8.0 / ((b - a) as u64 * BIN_NS) as f64 * 1e3
}

// ---- msgloop server ----------------------------------------------------------

/// What the server saw of one peer.
#[derive(Clone, Debug, Default)]
pub struct PeerRecord {
    /// The client's address.
    pub addr: Option<SocketAddr>,
    /// DATA messages received.
    pub msgs: u64,
    /// Their bytes (whole messages: the application's payload).
    pub bytes: u64,
    /// Bytes of the first DATA message (excluded from goodput, as in
    /// `linkem::tcp`: goodput counts what arrived after the first).
    pub first_len: u64,
    /// When the first DATA message arrived ([`now_ns`]).
    pub first_ns: u64,
    /// When the last one arrived.
    pub last_ns: u64,
    /// DATA messages that were not the next in sequence (a gap, a
    /// duplicate, a reordering): must stay 0.
    pub order_errors: u64,
    /// Messages that were neither DATA with Delivery nor PROBE with None.
    pub invalid: u64,
    /// DATA bytes per [`BIN_NS`] bin from the server's `t0_ns`.
    pub bins: Vec<u64>,
    /// One-way delays of the PROBE messages received, ns.
    pub probe_delays: Vec<u64>,
    /// How the connection closed, if it did while the server ran.
    pub closed: Option<RudpCloseReason>,
    next_seq: u64,
}

impl PeerRecord {
    /// Receiver goodput, bits/s: DATA bytes after the first message over
    /// the time from the first to the last.
    pub fn goodput_bps(&self) -> f64 {
        let span = self.last_ns.saturating_sub(self.first_ns);
        if span == 0 {
            0.0
        } else {
            (self.bytes - self.first_len) as f64 * 8e9 / span as f64
        }
    }

    /// From the first DATA message to the last.
    pub fn span(&self) -> Duration {
        Duration::from_nanos(self.last_ns.saturating_sub(self.first_ns))
    }

    /// Probe delays, sorted.
    pub fn probe_delays_sorted(&self) -> Vec<u64> {
        let mut v = self.probe_delays.clone();
        v.sort_unstable();
        v
    }
}

/// The server's result: one record per peer, in order of first contact.
#[derive(Clone, Debug, Default)]
pub struct ServerResult {
    /// The peers.
    pub peers: Vec<(PeerId, PeerRecord)>,
    /// Errors reported to `on_error`.
    pub errors: Vec<String>,
}

struct ServerApp {
    t0_ns: u64,
    res: ServerResult,
}

impl ServerApp {
    fn peer(&mut self, cx: &Ctx, peer: PeerId) -> &mut PeerRecord {
        let i = match self.res.peers.iter().position(|(p, _)| *p == peer) {
            Some(i) => i,
            None => {
                let rec = PeerRecord {
                    addr: cx.rudp_peer_addr(peer).ok(),
                    ..PeerRecord::default()
                };
                self.res.peers.push((peer, rec));
                self.res.peers.len() - 1
            }
        };
        &mut self.res.peers[i].1
    }
}

impl Handler for ServerApp {
    fn on_rudp_connected(&mut self, cx: &mut Ctx, peer: PeerId) {
        self.peer(cx, peer);
    }

    fn on_rudp(&mut self, cx: &mut Ctx, peer: PeerId, msg: &[u8], g: Guarantee) {
        let now = now_ns();
        let t0 = self.t0_ns;
        let rec = self.peer(cx, peer);
        match (msg.first(), g) {
            (Some(&DATA), Guarantee::Delivery) if msg.len() >= DATA_HEADER => {
                let seq = u64_at(msg, 1).unwrap_or(u64::MAX);
                if seq == rec.next_seq {
                    rec.next_seq += 1;
                } else {
                    rec.order_errors += 1;
                    rec.next_seq = rec.next_seq.max(seq.saturating_add(1));
                }
                if rec.msgs == 0 {
                    rec.first_ns = now;
                    rec.first_len = msg.len() as u64;
                }
                rec.last_ns = now;
                rec.msgs += 1;
                rec.bytes += msg.len() as u64;
                add_to_bins(&mut rec.bins, t0, now, msg.len() as u64);
            }
            (Some(&PROBE), Guarantee::None) if msg.len() >= PROBE_HEADER => {
                let sent = u64_at(msg, 9).unwrap_or(now);
                rec.probe_delays.push(now.saturating_sub(sent));
            }
            _ => rec.invalid += 1,
        }
    }

    fn on_rudp_closed(&mut self, cx: &mut Ctx, peer: PeerId, reason: RudpCloseReason) {
        self.peer(cx, peer).closed = Some(reason);
    }

    fn on_error(&mut self, _cx: &mut Ctx, sock: msgloop::SocketId, error: Error) {
        self.res.errors.push(format!("{sock}: {error}"));
    }
}

/// A running msgloop server in host B ([`spawn_server`]).
pub struct Server {
    /// The address clients connect to.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    join: JoinHandle<io::Result<ServerResult>>,
}

impl Server {
    /// Stops the server (it was running its reactor until now) and
    /// returns what it saw.
    pub fn stop(self) -> io::Result<ServerResult> {
        self.stop.store(true, Ordering::Release);
        self.join
            .join()
            .map_err(|_| io::Error::other("msgloop server panicked"))?
    }
}

/// Starts a msgloop reliable-UDP server on `host` (port chosen by the
/// kernel), counting received bytes in bins from `t0_ns`.
pub fn spawn_server(host: &Host, config: RudpConfig, t0_ns: u64) -> io::Result<Server> {
    let ip = host.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let (tx, rx) = mpsc::channel();
    let join = host.spawn("wan-server", move || -> io::Result<ServerResult> {
        let setup = (|| -> Result<Reactor, Error> {
            let mut reactor = Reactor::new()?;
            let sock = reactor.bind_rudp((ip, 0), config)?;
            let addr = reactor.local_addr(sock)?.as_inet();
            let _ = tx.send(addr.ok_or_else(|| io::Error::other("no IP address")));
            Ok(reactor)
        })();
        let mut reactor = match setup {
            Ok(r) => r,
            Err(e) => {
                let e = io::Error::other(format!("server: {e}"));
                let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                return Err(e);
            }
        };
        let mut app = ServerApp {
            t0_ns,
            res: ServerResult::default(),
        };
        while !stop2.load(Ordering::Acquire) {
            reactor.run_once(&mut app, Some(Duration::from_millis(20)))?;
        }
        Ok(app.res)
    })?;
    let addr = rx
        .recv()
        .map_err(|_| io::Error::other("msgloop server died before binding"))??;
    Ok(Server { addr, stop, join })
}

// ---- msgloop client ----------------------------------------------------------

/// How a client sends.
#[derive(Clone, Debug)]
pub struct FlowOpts {
    /// How long DATA is sent, from the handshake's completion.
    pub duration: Duration,
    /// DATA message size, bytes (at least 9).
    pub msg_len: usize,
    /// PROBE message size, bytes (at least 17).
    pub probe_len: usize,
    /// A PROBE this often during `duration`; `None`: no probes.
    pub probe_interval: Option<Duration>,
    /// `None`: abrupt end. `Some(limit)`: graceful close after `duration`,
    /// waiting up to `limit` for everything queued to be delivered.
    pub drain: Option<Duration>,
    /// Start (connect) at this [`now_ns`] time; `None`: at once.
    pub start_at_ns: Option<u64>,
    /// The connection's configuration.
    pub rudp: RudpConfig,
}

impl Default for FlowOpts {
    fn default() -> FlowOpts {
        FlowOpts {
            duration: Duration::from_secs(10),
            msg_len: 1024,
            probe_len: 64,
            probe_interval: Some(Duration::from_millis(10)),
            drain: None,
            start_at_ns: None,
            rudp: RudpConfig::default(),
        }
    }
}

/// What the client saw.
#[derive(Clone, Debug, Default)]
pub struct ClientResult {
    /// DATA messages queued (accepted by `send_rudp`).
    pub sent: u64,
    /// When the handshake completed ([`now_ns`]), if it did.
    pub connected_ns: Option<u64>,
    /// When the client stopped queueing DATA.
    pub send_end_ns: u64,
    /// The connection's statistics, last read while it was open.
    pub stats: Option<ConnectionStats>,
    /// How the connection closed, if it did.
    pub closed: Option<RudpCloseReason>,
    /// Drain mode: the graceful close completed within its limit.
    pub drained: bool,
    /// How long the drain took (drain mode).
    pub drain_time: Duration,
    /// A send failed for another reason than backpressure, or the reactor
    /// failed.
    pub error: Option<String>,
    /// PROBE messages sent (accepted).
    pub probes_sent: u64,
    /// PROBE messages that found the send queue full and waited.
    pub probes_waited: u64,
    /// Times `send_rudp` said `WouldBlock` for DATA.
    pub would_block: u64,
}

struct ClientApp {
    opts: FlowOpts,
    peer: PeerId,
    msg: Vec<u8>,
    pending_probes: VecDeque<Vec<u8>>,
    probe_seq: u64,
    sending: bool,
    closing: bool,
    end_timer: Option<TimerId>,
    probe_timer: Option<TimerId>,
    tick_timer: Option<TimerId>,
    drain_timer: Option<TimerId>,
    res: ClientResult,
    stop: bool,
}

impl ClientApp {
    fn refresh_stats(&mut self, cx: &Ctx) {
        if let Ok(s) = cx.rudp_peer_stats(self.peer) {
            self.res.stats = Some(s);
        }
    }

    fn fail(&mut self, what: String) {
        self.res.error.get_or_insert(what);
        self.stop = true;
    }

    fn flush_probes(&mut self, cx: &mut Ctx) {
        while let Some(p) = self.pending_probes.front() {
            match cx.send_rudp(self.peer, p, Guarantee::None) {
                Ok(()) => {
                    self.res.probes_sent += 1;
                    self.pending_probes.pop_front();
                }
                Err(Error::WouldBlock) => break,
                Err(e) => {
                    self.fail(format!("send_rudp(PROBE): {e}"));
                    return;
                }
            }
        }
    }

    fn pump(&mut self, cx: &mut Ctx) {
        while self.sending {
            self.msg[1..DATA_HEADER].copy_from_slice(&self.res.sent.to_le_bytes());
            match cx.send_rudp(self.peer, &self.msg, Guarantee::Delivery) {
                Ok(()) => self.res.sent += 1,
                Err(Error::WouldBlock) => {
                    self.res.would_block += 1;
                    break;
                }
                Err(e) => {
                    self.fail(format!("send_rudp(DATA): {e}"));
                    break;
                }
            }
        }
    }

    fn end_sending(&mut self, cx: &mut Ctx) {
        self.sending = false;
        self.res.send_end_ns = now_ns();
        self.refresh_stats(cx);
        if let Some(t) = self.probe_timer.take() {
            cx.cancel_timer(t);
        }
        // Probes still waiting for room are never sent: once the
        // connection is closing, a send is refused (`Error::Closed`).
        self.pending_probes.clear();
        match self.opts.drain {
            None => self.stop = true,
            Some(limit) => {
                self.closing = true;
                if let Err(e) = cx.close_rudp(self.peer) {
                    self.fail(format!("close_rudp: {e}"));
                    return;
                }
                self.drain_timer = Some(cx.set_timer(limit));
            }
        }
    }
}

impl Handler for ClientApp {
    fn on_rudp_connected(&mut self, cx: &mut Ctx, _peer: PeerId) {
        self.res.connected_ns = Some(now_ns());
        self.sending = true;
        self.end_timer = Some(cx.set_timer(self.opts.duration));
        self.tick_timer = Some(cx.set_timer(TICK));
        if let Some(i) = self.opts.probe_interval {
            self.probe_timer = Some(cx.set_timer(i));
        }
        self.pump(cx);
    }

    fn on_rudp_writable(&mut self, cx: &mut Ctx, _peer: PeerId) {
        if self.closing {
            return;
        }
        self.flush_probes(cx);
        self.pump(cx);
    }

    fn on_rudp(&mut self, _cx: &mut Ctx, _peer: PeerId, _msg: &[u8], _g: Guarantee) {}

    fn on_rudp_closed(&mut self, _cx: &mut Ctx, _peer: PeerId, reason: RudpCloseReason) {
        self.res.closed = Some(reason);
        if self.closing && reason == RudpCloseReason::Local {
            self.res.drained = true;
            self.res.drain_time = Duration::from_nanos(now_ns() - self.res.send_end_ns);
        } else {
            self.res.error.get_or_insert(format!(
                "connection closed ({reason:?}) after {} DATA messages",
                self.res.sent
            ));
        }
        self.stop = true;
    }

    fn on_timer(&mut self, cx: &mut Ctx, timer: TimerId) {
        if Some(timer) == self.end_timer {
            self.end_timer = None;
            self.end_sending(cx);
        } else if Some(timer) == self.tick_timer {
            self.refresh_stats(cx);
            self.tick_timer = Some(cx.set_timer(TICK));
        } else if Some(timer) == self.probe_timer {
            let interval = self.opts.probe_interval.unwrap_or(TICK);
            self.probe_timer = Some(cx.set_timer(interval));
            let mut p = vec![0u8; self.opts.probe_len.max(PROBE_HEADER)];
            p[0] = PROBE;
            p[1..9].copy_from_slice(&self.probe_seq.to_le_bytes());
            p[9..17].copy_from_slice(&now_ns().to_le_bytes());
            self.probe_seq += 1;
            self.pending_probes.push_back(p);
            self.flush_probes(cx);
            if !self.pending_probes.is_empty() {
                self.res.probes_waited += 1;
            }
        } else if Some(timer) == self.drain_timer {
            self.drain_timer = None;
            self.fail(format!(
                "drain: not closed {:?} after the last DATA was queued",
                self.opts.drain.unwrap_or_default()
            ));
        }
    }

    fn on_error(&mut self, _cx: &mut Ctx, sock: msgloop::SocketId, error: Error) {
        self.res.error.get_or_insert(format!("{sock}: {error}"));
    }
}

/// Starts a msgloop client on `host` sending to `server` as `opts` says.
/// The thread ends with the flow (see [`FlowOpts::drain`]); a handshake
/// that does not complete within 10 s is an error.
pub fn spawn_client(
    host: &Host,
    server: SocketAddr,
    opts: FlowOpts,
) -> io::Result<JoinHandle<ClientResult>> {
    host.spawn("wan-client", move || {
        if let Some(t) = opts.start_at_ns {
            sleep_until(t);
        }
        let mut res = ClientResult::default();
        let mut reactor = match Reactor::new() {
            Ok(r) => r,
            Err(e) => {
                res.error = Some(format!("Reactor::new: {e}"));
                return res;
            }
        };
        let peer = match reactor.connect_rudp(server, opts.rudp.clone()) {
            Ok(p) => p,
            Err(e) => {
                res.error = Some(format!("connect_rudp {server}: {e}"));
                return res;
            }
        };
        let mut msg = vec![0x5a; opts.msg_len.max(DATA_HEADER)];
        msg[0] = DATA;
        let hard_limit = now_ns()
            + (Duration::from_secs(10) + opts.duration + opts.drain.unwrap_or_default()).as_nanos()
                as u64;
        let mut app = ClientApp {
            opts,
            peer,
            msg,
            pending_probes: VecDeque::new(),
            probe_seq: 0,
            sending: false,
            closing: false,
            end_timer: None,
            probe_timer: None,
            tick_timer: None,
            drain_timer: None,
            res,
            stop: false,
        };
        while !app.stop {
            if let Err(e) = reactor.run_once(&mut app, Some(Duration::from_millis(50))) {
                app.fail(format!("run_once: {e}"));
            }
            if now_ns() > hard_limit && !app.stop {
                let what = if app.res.connected_ns.is_none() {
                    "no handshake"
                } else {
                    "flow did not end"
                };
                app.fail(format!("{what} within the time limit"));
            }
        }
        if app.res.send_end_ns == 0 {
            app.res.send_end_ns = now_ns();
        }
        app.res
    })
}

// ---- one msgloop flow ----------------------------------------------------------

/// One msgloop flow A→B with its server, and what both ends saw.
#[derive(Clone, Debug)]
pub struct MsgloopRun {
    /// The client.
    pub client: ClientResult,
    /// The server's record of the client's peer (default if it never
    /// connected).
    pub server: PeerRecord,
    /// Server-side errors (`on_error`), and more than one peer.
    pub server_errors: Vec<String>,
    /// The UDP ping beside the flow, if asked for.
    pub ping: Option<PingResult>,
}

impl MsgloopRun {
    /// Chunks retransmitted / chunks sent for the first time (client).
    pub fn retx_ratio(&self) -> f64 {
        self.client.stats.as_ref().map_or(f64::NAN, |s| {
            s.chunks_retransmitted as f64 / s.chunks_sent.max(1) as f64
        })
    }

    /// Everything that says the flow misbehaved: client errors, a close
    /// other than the client's own graceful one, DATA out of order or
    /// duplicated, unexpected messages, server errors. Empty if none.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(e) = &self.client.error {
            p.push(format!("client: {e}"));
        }
        if self.server.order_errors > 0 {
            p.push(format!(
                "{} DATA messages out of order or duplicated",
                self.server.order_errors
            ));
        }
        if self.server.invalid > 0 {
            p.push(format!("{} unexpected messages", self.server.invalid));
        }
        if self.server.msgs > self.client.sent {
            p.push(format!(
                "server got {} DATA messages, client sent {}",
                self.server.msgs, self.client.sent
            ));
        }
        match self.server.closed {
            None | Some(RudpCloseReason::ClosedByPeer) => {}
            Some(r) => p.push(format!("server side closed: {r:?}")),
        }
        p.extend(self.server_errors.iter().map(|e| format!("server: {e}")));
        p
    }
}

/// Runs one msgloop flow from A to B on `link` (a server in B, a client
/// in A) and waits for it to end; with `ping` (payload bytes, interval),
/// a [`UdpPing`] runs beside it, from the client's start to its end.
pub fn msgloop_flow(
    link: &Link,
    opts: FlowOpts,
    ping: Option<(usize, Duration)>,
) -> io::Result<MsgloopRun> {
    let server = spawn_server(link.b(), opts.rudp.clone(), now_ns())?;
    let pinger = match ping.map(|(len, every)| UdpPing::start(link, len, every)) {
        Some(Err(e)) => {
            let _ = server.stop();
            return Err(e);
        }
        Some(Ok(p)) => Some(p),
        None => None,
    };
    let client = spawn_client(link.a(), server.addr, opts.clone()).and_then(|c| {
        c.join()
            .map_err(|_| io::Error::other("msgloop client panicked"))
    });
    // In-flight data still arrives after an abrupt end (the ping's wait for
    // its stragglers covers it); the goodput is measured up to the last
    // message, whenever it came.
    let ping = match pinger.map(UdpPing::finish) {
        Some(p) => Some(p?),
        None => {
            std::thread::sleep(Duration::from_millis(300));
            None
        }
    };
    let mut res = server.stop()?;
    let client = client?;
    let mut server_errors = std::mem::take(&mut res.errors);
    if res.peers.len() > 1 {
        server_errors.push(format!("{} peers connected, expected 1", res.peers.len()));
    }
    let server = res
        .peers
        .into_iter()
        .next()
        .map(|(_, r)| r)
        .unwrap_or_default();
    Ok(MsgloopRun {
        client,
        server,
        server_errors,
        ping,
    })
}

/// A kernel TCP bulk transfer ([`crate::linkem::tcp::bulk`], A→B) with a
/// [`UdpPing`] (payload bytes, interval) beside it.
pub fn tcp_bulk_with_ping(
    link: &Link,
    cc: &str,
    amount: crate::linkem::tcp::Amount,
    timeout: Duration,
    ping: (usize, Duration),
) -> io::Result<(crate::linkem::tcp::TcpRun, PingResult)> {
    let pinger = UdpPing::start(link, ping.0, ping.1)?;
    let run = crate::linkem::tcp::bulk(link, crate::linkem::Dir::AtoB, cc, amount, timeout);
    let ping = pinger.finish()?;
    Ok((run?, ping))
}

// ---- UDP ping alongside ---------------------------------------------------------

/// A UDP ping A→B running beside a transfer ([`UdpPing::start`]): small
/// datagrams stamped with [`now_ns`], one every `interval`, through the
/// same bottleneck queue — the queueing delay the transfer causes, seen by
/// another flow.
pub struct UdpPing {
    stop: Arc<AtomicBool>,
    sender: JoinHandle<io::Result<u64>>,
    receiver: JoinHandle<Vec<u64>>,
}

/// The result of a [`UdpPing`].
#[derive(Clone, Debug, Default)]
pub struct PingResult {
    /// Datagrams sent.
    pub sent: u64,
    /// One-way delays of those received, ns, sorted.
    pub delays: Vec<u64>,
}

impl UdpPing {
    /// Starts pinging from A to B on `link`.
    pub fn start(link: &Link, payload_len: usize, interval: Duration) -> io::Result<UdpPing> {
        let rx = crate::linkem::probe::udp_socket(link.b())?;
        let tx = crate::linkem::probe::udp_socket(link.a())?;
        let dst = rx.local_addr()?;
        rx.set_read_timeout(Some(Duration::from_millis(5)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (stop_rx, stop_tx) = (stop.clone(), stop.clone());
        let receiver = std::thread::Builder::new()
            .name("wan-ping-rx".into())
            .spawn(move || {
                let mut delays = Vec::new();
                let mut buf = [0u8; 2048];
                let mut stopped_at = None;
                loop {
                    if let Ok(n) = rx.recv(&mut buf) {
                        if n >= 8 {
                            let t = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
                            delays.push(now_ns().saturating_sub(t));
                        }
                    }
                    if stop_rx.load(Ordering::Acquire) {
                        // Stragglers: the longest queue in the matrix is
                        // 200 ms, its delay 100 ms.
                        let t = *stopped_at.get_or_insert_with(now_ns);
                        if now_ns() - t > 600_000_000 {
                            break;
                        }
                    }
                }
                delays
            })?;
        let sender = std::thread::Builder::new()
            .name("wan-ping-tx".into())
            .spawn(move || -> io::Result<u64> {
                let mut buf = vec![0u8; payload_len.max(8)];
                let step = interval.as_nanos() as u64;
                let start = now_ns();
                let mut sent = 0u64;
                while !stop_tx.load(Ordering::Acquire) {
                    sleep_until(start + sent * step);
                    buf[..8].copy_from_slice(&now_ns().to_le_bytes());
                    tx.send_to(&buf, dst)?;
                    sent += 1;
                }
                Ok(sent)
            })?;
        Ok(UdpPing {
            stop,
            sender,
            receiver,
        })
    }

    /// Stops sending, waits for stragglers, returns the delays.
    pub fn finish(self) -> io::Result<PingResult> {
        self.stop.store(true, Ordering::Release);
        let sent = self
            .sender
            .join()
            .map_err(|_| io::Error::other("ping sender panicked"))??;
        let mut delays = self
            .receiver
            .join()
            .map_err(|_| io::Error::other("ping receiver panicked"))?;
        delays.sort_unstable();
        Ok(PingResult { sent, delays })
    }
}

// ---- kernel TCP flow with time bins ------------------------------------------------

/// A TCP flow measured in bins ([`tcp_flow`]).
#[derive(Clone, Debug, Default)]
pub struct TcpFlow {
    /// Payload bytes received.
    pub bytes: u64,
    /// Bytes per [`BIN_NS`] bin from `t0_ns`.
    pub bins: Vec<u64>,
    /// First and last read, [`now_ns`].
    pub first_ns: u64,
    /// See `first_ns`.
    pub last_ns: u64,
}

/// A kernel TCP flow A→B with congestion control `cc`, starting at
/// `start_at_ns` and writing for `duration`, the receiver counting bytes
/// in bins from `t0_ns` (for coexistence runs; `linkem::tcp::bulk` is the
/// single-flow baseline).
pub fn tcp_flow(
    link: &Link,
    cc: &str,
    t0_ns: u64,
    start_at_ns: u64,
    duration: Duration,
) -> io::Result<TcpFlow> {
    let rx_addr = link.b().addr();
    let listener = link.b().enter(|| TcpListener::bind((rx_addr, 0)))?;
    let dst: SocketAddr = listener.local_addr()?;
    let sock = link
        .a()
        .enter(|| Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)))?;
    sock.set_tcp_congestion(cc.as_bytes())?;
    let limit = Duration::from_secs(30) + duration * 3;
    let receiver = std::thread::Builder::new()
        .name("wan-tcp-rx".into())
        .spawn(move || -> io::Result<TcpFlow> {
            let (mut s, _) = listener.accept()?;
            s.set_read_timeout(Some(limit))?;
            let mut buf = vec![0u8; 1 << 18];
            let mut f = TcpFlow::default();
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                let now = now_ns();
                if f.bytes == 0 {
                    f.first_ns = now;
                }
                f.last_ns = now;
                f.bytes += n as u64;
                add_to_bins(&mut f.bins, t0_ns, now, n as u64);
            }
            Ok(f)
        })?;
    sleep_until(start_at_ns);
    let sent = (|| -> io::Result<()> {
        sock.connect_timeout(&SockAddr::from(dst), Duration::from_secs(5))?;
        let mut s: TcpStream = sock.into();
        s.set_write_timeout(Some(limit))?;
        let buf = vec![0x5au8; 1 << 16];
        let end = now_ns() + duration.as_nanos() as u64;
        while now_ns() < end {
            s.write_all(&buf)?;
        }
        s.shutdown(std::net::Shutdown::Write)
    })();
    if sent.is_err() {
        // Unblock the receiver if it still waits in accept.
        let _ = link
            .b()
            .enter(|| TcpStream::connect_timeout(&dst, Duration::from_millis(100)));
    }
    let got = receiver
        .join()
        .map_err(|_| io::Error::other("TCP receiver panicked"))?;
    sent?;
    got
}
