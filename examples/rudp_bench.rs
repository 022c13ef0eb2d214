//! rudp_bench — reliable-UDP throughput between two processes, with the
//! stream checked end to end.
//!
//! ```text
//! cargo run --release --example rudp_bench -- --server 127.0.0.1:7200
//! cargo run --release --example rudp_bench -- --connect 127.0.0.1:7200 \
//!     --count 100000 --size 64 --guarantee delivery --peers 4
//! ```
//!
//! The client opens `--peers` connections (one socket each, all in one
//! reactor) and sends `--count` messages of `--size` bytes on each, in
//! parallel, as fast as the send windows allow: a send refused with
//! `Error::WouldBlock` resumes in `on_rudp_writable`. The server checks every
//! peer's stream and, when the peer finishes, sends back a verdict. The
//! client prints one line:
//!
//! ```text
//! peers=4 messages=100000 size=64 guarantee=delivery secs=0.52 msgs_per_s=770000 mb_per_s=49.3 \
//!   delivered=400000 lost=0 retransmitted=0 rto=0 rtt_ms=0.41 verdict=ok
//! ```
//!
//! (`messages` is per peer; rates count the messages the server received,
//! over all peers, from the first handshake to the last verdict;
//! `retransmitted` and `rto` are summed over the peers, `rtt_ms` is their
//! mean smoothed RTT at the end, queueing delay included.) It exits
//! 0 only if every verdict is ok, 1 on a failed verdict, a lost connection
//! or `--timeout` (default 60 s), 2 on bad arguments. The server runs until
//! SIGINT/SIGTERM, then prints a summary and exits 0.
//!
//! # The protocol on top
//!
//! Every message starts with a tag byte; integers are little-endian u64.
//!
//! | message | guarantee        | bytes                                             |
//! |---------|------------------|---------------------------------------------------|
//! | DATA    | `--guarantee`    | `b'D'`, seq, padding up to `--size` (at least 9)  |
//! | FIN     | Delivery         | `b'F'`, messages sent, guarantee (0 none, 1 order, 2 delivery) |
//! | VERDICT | Delivery         | `b'V'`, received, duplicates, reordered, lost, invalid, ok (1 byte) |
//!
//! One run per connection. A Delivery FIN arrives after every Delivery
//! DATA, so the verdict on a `delivery` run goes out at once. Unreliable
//! DATA may arrive after the FIN (see [`SETTLE`]): for `order` and `none`
//! the server waits until every announced message is in, or until no DATA
//! came for 100 ms; what is still missing then counts as lost (and the
//! client's `secs` include that wait).
//!
//! What the verdict requires, by guarantee (a duplicate or an `invalid`
//! message — malformed, a seq not below the count sent, or sent with another
//! guarantee — always fails):
//!
//! - `delivery`: every message, in order;
//! - `order`: no message after a newer one (losses allowed);
//! - `none`: losses and any order allowed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use msgloop::rudp::{ConnectionStats, Guarantee, RudpCloseReason, RudpConfig};
use msgloop::{Ctx, Error, Handler, PeerId, Reactor, SocketId, TimerId};

const DATA: u8 = b'D';
const FIN: u8 = b'F';
const VERDICT: u8 = b'V';
/// Tag and sequence number: the smallest DATA message.
const DATA_HEADER: usize = 9;
/// Most messages per peer and run: bounds the server's duplicate bitmap
/// (one bit per message, 32 MiB at most) whatever a client claims.
const MAX_COUNT: u64 = 1 << 28;
/// How long the client waits for its peers to confirm the close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

// ---- command line ---------------------------------------------------------

enum Mode {
    Server(SocketAddr),
    Client(SocketAddr),
}

struct Args {
    mode: Mode,
    count: u64,
    size: usize,
    guarantee: Guarantee,
    peers: usize,
    timeout: Duration,
}

fn usage() -> ! {
    eprintln!(
        "usage: rudp_bench --server ADDR\n\
         \x20      rudp_bench --connect ADDR [--count N] [--size BYTES] [--peers K]\n\
         \x20                 [--guarantee none|order|delivery] [--timeout SECS]\n\
         \n\
         Defaults: --count 100000 --size 64 (at least 9) --peers 1\n\
         --guarantee delivery --timeout 60. The client exits 0 only if the\n\
         server's verdict on every peer's stream is ok."
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    fn num<T: std::str::FromStr>(flag: &str, v: String) -> T
    where
        T::Err: std::fmt::Display,
    {
        v.parse().unwrap_or_else(|e| {
            eprintln!("{flag}: {e}");
            usage()
        })
    }
    let mut mode = None;
    let mut args = Args {
        mode: Mode::Server("127.0.0.1:0".parse().expect("valid")),
        count: 100_000,
        size: 64,
        guarantee: Guarantee::Delivery,
        peers: 1,
        timeout: Duration::from_secs(60),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--server" => mode = Some(Mode::Server(num(&flag, v()))),
            "--connect" => mode = Some(Mode::Client(num(&flag, v()))),
            "--count" => args.count = num(&flag, v()),
            "--size" => args.size = num(&flag, v()),
            "--peers" => args.peers = num(&flag, v()),
            "--timeout" => args.timeout = Duration::from_secs(num(&flag, v())),
            "--guarantee" => {
                args.guarantee = match v().as_str() {
                    "none" => Guarantee::None,
                    "order" => Guarantee::Order,
                    "delivery" => Guarantee::Delivery,
                    other => {
                        eprintln!("--guarantee: {other:?} is not none, order or delivery");
                        usage()
                    }
                }
            }
            "-h" | "--help" => usage(),
            other => {
                eprintln!("unknown argument {other:?}");
                usage()
            }
        }
    }
    let Some(mode) = mode else { usage() };
    if args.peers == 0 || args.count > MAX_COUNT {
        eprintln!("--peers must be at least 1 and --count at most {MAX_COUNT}");
        usage()
    }
    if args.size > RudpConfig::default().max_message_len {
        eprintln!(
            "--size: at most {} bytes",
            RudpConfig::default().max_message_len
        );
        usage()
    }
    args.size = args.size.max(DATA_HEADER);
    args.mode = mode;
    args
}

fn label(g: Guarantee) -> &'static str {
    match g {
        Guarantee::None => "none",
        Guarantee::Order => "order",
        Guarantee::Delivery => "delivery",
    }
}

fn guarantee_code(g: Guarantee) -> u8 {
    match g {
        Guarantee::None => 0,
        Guarantee::Order => 1,
        Guarantee::Delivery => 2,
    }
}

fn guarantee_from(code: u8) -> Option<Guarantee> {
    match code {
        0 => Some(Guarantee::None),
        1 => Some(Guarantee::Order),
        2 => Some(Guarantee::Delivery),
        _ => None,
    }
}

/// The little-endian u64 at `msg[at..at + 8]`, if there is one.
fn u64_at(msg: &[u8], at: usize) -> Option<u64> {
    let bytes = msg.get(at..at + 8)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

// ---- the verdict ----------------------------------------------------------

/// What the server found in one peer's stream.
#[derive(Debug, Clone, Copy, Default)]
struct Verdict {
    /// Distinct messages received.
    received: u64,
    duplicates: u64,
    /// Messages that arrived after one with a higher sequence number.
    reordered: u64,
    /// Sent (per the FIN) but never received.
    lost: u64,
    /// Malformed DATA, a seq not below the count sent, or another guarantee.
    invalid: u64,
    ok: bool,
}

impl Verdict {
    const LEN: usize = 1 + 5 * 8 + 1;

    fn encode(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(Self::LEN);
        m.push(VERDICT);
        for v in [
            self.received,
            self.duplicates,
            self.reordered,
            self.lost,
            self.invalid,
        ] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m.push(u8::from(self.ok));
        m
    }

    fn decode(msg: &[u8]) -> Option<Verdict> {
        if msg.len() != Self::LEN || msg[0] != VERDICT {
            return None;
        }
        Some(Verdict {
            received: u64_at(msg, 1)?,
            duplicates: u64_at(msg, 9)?,
            reordered: u64_at(msg, 17)?,
            lost: u64_at(msg, 25)?,
            invalid: u64_at(msg, 33)?,
            ok: msg[41] == 1,
        })
    }

    /// The counters, for a failure message.
    fn counters(&self) -> String {
        format!(
            "received={} lost={} duplicates={} reordered={} invalid={}",
            self.received, self.lost, self.duplicates, self.reordered, self.invalid
        )
    }

    /// `ok`, or `FAIL(counters)`.
    fn describe(&self) -> String {
        if self.ok {
            "ok".into()
        } else {
            format!("FAIL({})", self.counters())
        }
    }
}

// ---- server ---------------------------------------------------------------

/// One peer's stream as the server sees it (one run per connection).
#[derive(Default)]
struct Stream {
    /// One bit per sequence number received.
    seen: Vec<u64>,
    received: u64,
    duplicates: u64,
    reordered: u64,
    invalid: u64,
    /// Highest sequence number received, plus one.
    next: u64,
    /// DATA received per guarantee (none, order, delivery).
    by_guarantee: [u64; 3],
    /// The peer's address, for messages after it closed.
    addr: Option<SocketAddr>,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
    /// The FIN: messages sent, and with which guarantee.
    fin: Option<(u64, Guarantee)>,
    /// Waiting for unreliable stragglers after the FIN.
    settle: Option<TimerId>,
    /// The verdict went out; DATA arriving now is only counted.
    done: bool,
    late: u64,
}

impl Stream {
    fn on_data(&mut self, now: Instant, msg: &[u8], g: Guarantee) {
        if self.done {
            self.late += 1;
            return;
        }
        self.first_at.get_or_insert(now);
        self.last_at = Some(now);
        let seq = match u64_at(msg, 1) {
            Some(seq) if seq < MAX_COUNT => seq,
            _ => {
                self.invalid += 1;
                return;
            }
        };
        self.by_guarantee[usize::from(guarantee_code(g))] += 1;
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= bit;
        self.received += 1;
        if seq < self.next {
            self.reordered += 1;
        } else {
            self.next = seq + 1;
        }
    }

    /// The peer's address if known, else its id.
    fn name(&self, peer: PeerId) -> String {
        self.addr
            .map_or_else(|| peer.to_string(), |a| a.to_string())
    }

    /// Every message the FIN announced is here (and nothing beyond).
    fn complete(&self) -> bool {
        self.fin
            .is_some_and(|(sent, _)| self.received == sent && self.next <= sent)
    }

    /// Distinct sequence numbers received at or above `from`.
    fn received_from(&self, from: u64) -> u64 {
        let first = (from / 64) as usize;
        let mut n = 0;
        for (i, &word) in self.seen.iter().enumerate().skip(first) {
            let mask = if i == first { !0u64 << (from % 64) } else { !0 };
            n += u64::from((word & mask).count_ones());
        }
        n
    }

    /// The verdict once the peer said it sent `sent` messages with `g`.
    fn verdict(&self, sent: u64, g: Guarantee) -> Verdict {
        let code = usize::from(guarantee_code(g));
        let other_guarantee = self.by_guarantee.iter().sum::<u64>() - self.by_guarantee[code];
        // Sequence numbers the peer never sent.
        let beyond = self.received_from(sent);
        let v = Verdict {
            received: self.received,
            duplicates: self.duplicates,
            reordered: self.reordered,
            lost: sent - (self.received - beyond),
            invalid: self.invalid + other_guarantee + beyond,
            ok: false,
        };
        let ok = v.duplicates == 0
            && v.invalid == 0
            && match g {
                Guarantee::Delivery => v.lost == 0 && v.reordered == 0,
                Guarantee::Order => v.reordered == 0,
                Guarantee::None => true,
            };
        Verdict { ok, ..v }
    }
}

/// After a FIN, how long the server waits for unreliable DATA that is
/// still missing: the verdict goes out once this passed without any DATA.
///
/// Why wait at all: the sender packs a datagram with unreliable messages
/// first, but fills the room left at its end with the next reliable chunk —
/// so a small FIN can overtake DATA queued before it. (A Delivery FIN never
/// overtakes Delivery DATA.)
const SETTLE: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Server {
    streams: HashMap<PeerId, Stream>,
    /// Settle timers, to their peer.
    timers: HashMap<TimerId, PeerId>,
    runs: u64,
    failed: u64,
    messages: u64,
    stop: bool,
}

impl Server {
    /// The stream of `peer`, created on its first message.
    fn stream(&mut self, cx: &Ctx, peer: PeerId) -> &mut Stream {
        self.streams.entry(peer).or_insert_with(|| Stream {
            addr: cx.rudp_peer_addr(peer).ok(),
            ..Stream::default()
        })
    }

    fn on_fin(&mut self, cx: &mut Ctx, peer: PeerId, msg: &[u8]) {
        let fin = (u64_at(msg, 1), msg.get(9).copied().and_then(guarantee_from));
        let stream = self.stream(cx, peer);
        let (Some(sent), Some(g)) = fin else {
            eprintln!("server: {}: malformed FIN, closing", stream.name(peer));
            let _ = cx.close_rudp(peer);
            return;
        };
        if stream.fin.is_some() || sent > MAX_COUNT {
            eprintln!(
                "server: {}: second or impossible FIN, closing",
                stream.name(peer)
            );
            let _ = cx.close_rudp(peer);
            return;
        }
        stream.fin = Some((sent, g));
        if g == Guarantee::Delivery || stream.complete() {
            self.finish(cx, peer);
        } else {
            let t = cx.set_timer(SETTLE);
            stream.settle = Some(t);
            self.timers.insert(t, peer);
        }
    }

    /// Sends `peer` its verdict.
    fn finish(&mut self, cx: &mut Ctx, peer: PeerId) {
        let Some(stream) = self.streams.get_mut(&peer) else {
            return;
        };
        let Some((sent, g)) = stream.fin else { return };
        if stream.done {
            return;
        }
        stream.done = true;
        if let Some(t) = stream.settle.take() {
            cx.cancel_timer(t);
            self.timers.remove(&t);
        }
        let v = stream.verdict(sent, g);
        let secs = match (stream.first_at, stream.last_at) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        self.runs += 1;
        self.failed += u64::from(!v.ok);
        self.messages += v.received;
        let addr = stream.name(peer);
        println!(
            "server: {addr} guarantee={} sent={sent} received={} secs={secs:.3} verdict={}",
            label(g),
            v.received,
            v.describe()
        );
        if let Err(e) = cx.send_rudp(peer, &v.encode(), Guarantee::Delivery) {
            eprintln!("server: {addr}: verdict not sent: {e}");
        }
    }
}

impl Handler for Server {
    fn on_rudp(&mut self, cx: &mut Ctx, peer: PeerId, msg: &[u8], g: Guarantee) {
        match msg.first() {
            Some(&DATA) => {
                let now = cx.now();
                let stream = self.stream(cx, peer);
                stream.on_data(now, msg, g);
                if !stream.done && stream.complete() {
                    self.finish(cx, peer);
                }
            }
            Some(&FIN) => self.on_fin(cx, peer, msg),
            _ => self.stream(cx, peer).invalid += 1,
        }
    }

    fn on_timer(&mut self, cx: &mut Ctx, timer: TimerId) {
        let Some(peer) = self.timers.remove(&timer) else {
            return;
        };
        let Some(stream) = self.streams.get_mut(&peer) else {
            return;
        };
        stream.settle = None;
        let quiet_since = stream.last_at.unwrap_or_else(|| cx.now());
        if cx.now() >= quiet_since + SETTLE {
            self.finish(cx, peer);
        } else {
            // DATA came in meanwhile: wait for SETTLE after the last one.
            let t = cx.set_timer_at(quiet_since + SETTLE);
            stream.settle = Some(t);
            self.timers.insert(t, peer);
        }
    }

    fn on_rudp_closed(&mut self, cx: &mut Ctx, peer: PeerId, reason: RudpCloseReason) {
        let Some(s) = self.streams.remove(&peer) else {
            return;
        };
        if let Some(t) = s.settle {
            cx.cancel_timer(t);
            self.timers.remove(&t);
        }
        if !s.done {
            eprintln!(
                "server: {} closed ({reason:?}) before its verdict, after {} messages",
                s.name(peer),
                s.received
            );
        } else if s.late > 0 {
            eprintln!(
                "server: {}: {} DATA arrived after the verdict",
                s.name(peer),
                s.late
            );
        }
    }

    fn on_signal(&mut self, _cx: &mut Ctx, _watcher: SocketId, signal: i32) {
        println!(
            "server: signal {signal}: {} run(s), {} failed, {} messages received",
            self.runs, self.failed, self.messages
        );
        self.stop = true;
    }
}

fn run_server(addr: SocketAddr) -> Result<ExitCode, Error> {
    let mut reactor = Reactor::new()?;
    reactor.watch_signals(&[libc::SIGINT, libc::SIGTERM])?;
    // A benchmark client opens all its `--peers` from one host, which the
    // per-source limits (64 connections, 16 handshakes at once) would
    // slow down: they are raised to the endpoint's.
    let cfg = RudpConfig::default()
        .max_connections_per_source(4096)
        .max_half_open_per_source(256);
    let sock = reactor.bind_rudp(addr, cfg)?;
    println!("server: listening on {}", reactor.local_addr(sock)?);
    let mut app = Server::default();
    while !app.stop {
        reactor.run_once(&mut app, None)?;
    }
    Ok(ExitCode::SUCCESS)
}

// ---- client ---------------------------------------------------------------

/// One connection of the client and how far it got.
struct Flow {
    peer: PeerId,
    sent: u64,
    fin_sent: bool,
    verdict: Option<Verdict>,
    /// Taken when the verdict arrives, before the peer closes.
    stats: Option<ConnectionStats>,
    closed: Option<RudpCloseReason>,
    /// A send failed for another reason than a full window.
    error: Option<Error>,
}

impl Flow {
    /// Ended: a verdict, or the connection is gone.
    fn finished(&self) -> bool {
        self.verdict.is_some() || self.closed.is_some() || self.error.is_some()
    }
}

struct Client {
    count: u64,
    guarantee: Guarantee,
    /// The DATA message, rewritten with each sequence number.
    msg: Vec<u8>,
    flows: Vec<Flow>,
    started: Option<Instant>,
    finished: Option<Instant>,
    /// `--timeout`.
    deadline: TimerId,
    timed_out: bool,
    interrupted: bool,
    /// The run is over (every flow finished, a timeout, a signal): peers
    /// are closing, nothing more is sent.
    closing: bool,
    stop: bool,
}

impl Client {
    fn flow(&mut self, peer: PeerId) -> Option<&mut Flow> {
        self.flows.iter_mut().find(|f| f.peer == peer)
    }

    /// Sends until the window is full (`on_rudp_writable` calls again) or
    /// everything, FIN included, is queued.
    fn pump(&mut self, cx: &mut Ctx, peer: PeerId) {
        let (count, g) = (self.count, self.guarantee);
        if self.closing {
            return; // the run is over (timeout, signal): peers are closing
        }
        let Some(i) = self.flows.iter().position(|f| f.peer == peer) else {
            return;
        };
        let flow = &mut self.flows[i];
        let result = loop {
            if flow.sent < count {
                self.msg[1..DATA_HEADER].copy_from_slice(&flow.sent.to_le_bytes());
                match cx.send_rudp(peer, &self.msg, g) {
                    Ok(()) => flow.sent += 1,
                    Err(e) => break Err(e),
                }
            } else if !flow.fin_sent {
                let mut fin = vec![FIN];
                fin.extend_from_slice(&flow.sent.to_le_bytes());
                fin.push(guarantee_code(g));
                match cx.send_rudp(peer, &fin, Guarantee::Delivery) {
                    Ok(()) => flow.fin_sent = true,
                    Err(e) => break Err(e),
                }
            } else {
                break Ok(());
            }
        };
        match result {
            // The window is full: on_rudp_writable resumes.
            Ok(()) | Err(Error::WouldBlock) => {}
            Err(e) => {
                flow.error = Some(e);
                self.check_done(cx);
            }
        }
    }

    /// Once every flow has finished: stop the clock and close the peers.
    fn check_done(&mut self, cx: &mut Ctx) {
        if self.closing || !self.flows.iter().all(Flow::finished) {
            return;
        }
        self.finished = Some(cx.now());
        self.close_all(cx);
    }

    fn close_all(&mut self, cx: &mut Ctx) {
        self.closing = true;
        let mut open = 0;
        for f in self.flows.iter().filter(|f| f.closed.is_none()) {
            let _ = cx.close_rudp(f.peer);
            open += 1;
        }
        if open == 0 {
            self.stop = true;
        } else {
            cx.set_timer(CLOSE_GRACE);
        }
    }

    /// The result line, and whether the run passed.
    fn report(&self, peers: usize, size: usize) -> (String, bool) {
        let end = self.finished.unwrap_or_else(Instant::now);
        let secs = self.started.map_or(0.0, |t| (end - t).as_secs_f64());
        let lost: u64 = self
            .flows
            .iter()
            .filter_map(|f| f.verdict)
            .map(|v| v.lost)
            .sum();
        let delivered: u64 = self
            .flows
            .iter()
            .filter_map(|f| f.verdict)
            .map(|v| v.received)
            .sum();
        let stats: Vec<&ConnectionStats> =
            self.flows.iter().filter_map(|f| f.stats.as_ref()).collect();
        let retransmitted: u64 = stats.iter().map(|s| s.chunks_retransmitted).sum();
        let rto: u64 = stats.iter().map(|s| s.rto_count).sum();
        let rtt_ms = if stats.is_empty() {
            0.0
        } else {
            stats.iter().map(|s| s.srtt.as_secs_f64()).sum::<f64>() * 1e3 / stats.len() as f64
        };
        let rate = |x: f64| if secs > 0.0 { x / secs } else { 0.0 };
        let mut failures = Vec::new();
        if self.timed_out || self.interrupted {
            failures.push(if self.timed_out {
                "timeout".to_string()
            } else {
                "interrupted".to_string()
            });
        }
        for (i, f) in self.flows.iter().enumerate() {
            match (&f.verdict, &f.error, &f.closed) {
                (Some(v), ..) if v.ok => {}
                (Some(v), ..) => failures.push(format!("peer{i}: {}", v.counters())),
                (None, Some(e), _) => failures.push(format!("peer{i}: send failed: {e}")),
                (None, None, Some(r)) => failures.push(format!(
                    "peer{i}: closed ({r:?}) after sending {} without a verdict",
                    f.sent
                )),
                (None, None, None) => failures.push(format!(
                    "peer{i}: no verdict (sent {}/{}{})",
                    f.sent,
                    self.count,
                    if f.fin_sent { " and FIN" } else { "" }
                )),
            }
        }
        let verdict = if failures.is_empty() {
            "ok".to_string()
        } else {
            format!("FAIL({})", failures.join("; "))
        };
        let line = format!(
            "peers={peers} messages={} size={size} guarantee={} secs={secs:.3} msgs_per_s={:.0} \
             mb_per_s={:.1} delivered={delivered} lost={lost} retransmitted={retransmitted} rto={rto} \
             rtt_ms={rtt_ms:.3} verdict={verdict}",
            self.count,
            label(self.guarantee),
            rate(delivered as f64),
            rate(delivered as f64 * size as f64 / 1e6),
        );
        (line, failures.is_empty())
    }
}

impl Handler for Client {
    fn on_rudp_connected(&mut self, cx: &mut Ctx, peer: PeerId) {
        let now = cx.now();
        self.started.get_or_insert(now);
        self.pump(cx, peer);
    }

    fn on_rudp_writable(&mut self, cx: &mut Ctx, peer: PeerId) {
        self.pump(cx, peer);
    }

    fn on_rudp(&mut self, cx: &mut Ctx, peer: PeerId, msg: &[u8], _g: Guarantee) {
        let stats = cx.rudp_peer_stats(peer).ok();
        let Some(flow) = self.flow(peer) else { return };
        match Verdict::decode(msg) {
            Some(v) => {
                flow.verdict = Some(v);
                flow.stats = stats;
            }
            None => eprintln!("client: unexpected message of {} bytes", msg.len()),
        }
        self.check_done(cx);
    }

    fn on_rudp_closed(&mut self, cx: &mut Ctx, peer: PeerId, reason: RudpCloseReason) {
        if let Some(flow) = self.flow(peer) {
            flow.closed = Some(reason);
        }
        if self.closing {
            if self.flows.iter().all(|f| f.closed.is_some()) {
                self.stop = true;
            }
        } else {
            self.check_done(cx);
        }
    }

    fn on_timer(&mut self, cx: &mut Ctx, timer: TimerId) {
        if timer == self.deadline && !self.closing {
            self.timed_out = true;
            self.finished = Some(cx.now());
            self.close_all(cx);
        } else if self.closing {
            // The close grace period is over.
            self.stop = true;
        }
    }

    fn on_signal(&mut self, cx: &mut Ctx, _watcher: SocketId, _signal: i32) {
        if self.closing {
            self.stop = true;
            return;
        }
        self.interrupted = true;
        self.finished = Some(cx.now());
        self.close_all(cx);
    }
}

fn run_client(args: &Args, server: SocketAddr) -> Result<ExitCode, Error> {
    let mut reactor = Reactor::new()?;
    reactor.watch_signals(&[libc::SIGINT, libc::SIGTERM])?;
    let mut flows = Vec::with_capacity(args.peers);
    for _ in 0..args.peers {
        // One socket per peer, connected to the server: the kernel's
        // buffers and the endpoints are not shared, as between separate
        // processes.
        flows.push(Flow {
            peer: reactor.connect_rudp(server, RudpConfig::default())?,
            sent: 0,
            fin_sent: false,
            verdict: None,
            stats: None,
            closed: None,
            error: None,
        });
    }
    let mut msg = vec![0x5a; args.size];
    msg[0] = DATA;
    let mut app = Client {
        count: args.count,
        guarantee: args.guarantee,
        msg,
        flows,
        started: None,
        finished: None,
        deadline: reactor.set_timer(args.timeout),
        timed_out: false,
        interrupted: false,
        closing: false,
        stop: false,
    };
    while !app.stop {
        reactor.run_once(&mut app, None)?;
    }
    let (line, ok) = app.report(args.peers, args.size);
    println!("{line}");
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn main() -> ExitCode {
    let args = parse_args();
    let result = match args.mode {
        Mode::Server(addr) => run_server(addr),
        Mode::Client(addr) => run_client(&args, addr),
    };
    result.unwrap_or_else(|e| {
        eprintln!("rudp_bench: {e}");
        ExitCode::FAILURE
    })
}
