//! bench — msgloop against the raw system calls it wraps, in the same run.
//!
//! ```text
//! cargo run --release --example bench                 # every workload
//! cargo run --release --example bench -- --only udp_pingpong
//! cargo run --release --example bench -- --rounds 7   # more repetitions
//! ```
//!
//! Each workload prints one line that scripts can read:
//!
//! ```text
//! workload=NAME unit=U msgloop=X baseline=Y ratio=R baseline_is=WHAT [key=value ...]
//! ```
//!
//! - `msgloop`, `baseline`: the median of each side's rate (in `unit`)
//!   over its slices or rounds;
//! - `ratio`: the median, over adjacent pairs of one msgloop slice and one
//!   baseline slice, of msgloop's rate / the baseline's (higher is better
//!   for msgloop). Pairing cancels most of a shared machine's drift, so
//!   `ratio` can differ from `msgloop / baseline`;
//! - `baseline_is`: what the baseline is, in a word or two (each workload
//!   below says more);
//! - the other keys are figures of that workload.
//!
//! msgloop and the baseline alternate, `--rounds` times (default 5), so that
//! drifts of the machine hit both alike.
//!
//! Workloads:
//! - `udp_pingpong`: 64 B round trips, both ends in one thread — a client
//!   socket and the echo socket in one reactor. Baseline: the same two
//!   sockets in one plain `mio::Poll` with direct `recv_from`/`send_to`.
//! - `udp_ingest`: 64 B datagrams per second received from a raw
//!   `sendmmsg` sender on another thread. Baseline: a blocking `recv_from`
//!   loop; the `recvmmsg` figure is printed as an extra field. The sender
//!   bounds this workload: the point is that the framework adds nothing.
//! - `unix_dgram_pingpong`: 64 B round trips over a Unix datagram pair,
//!   both ends in one thread; baseline: the pair in a plain `mio::Poll`.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

mod c10k;
mod offload;
mod rudp;
mod rudp_core;
mod seqpacket;
mod shards;
mod tcp;
use msgloop::{Ctx, Datagram, DgramOptions, Handler, Reactor, SocketId};

const PAYLOAD: [u8; 64] = [0x5a; 64];

/// Every workload, in the order they run.
const WORKLOADS: [&str; 20] = [
    "udp_pingpong",
    "udp_ingest",
    "udp_ingest_gro",
    "udp_send_gso",
    "unix_dgram_pingpong",
    "seqpacket_pingpong",
    "seqpacket_oneway",
    "tcp_frames_64",
    "tcp_echo_64",
    "tcp_frames_64k",
    "tcp_idle_10k",
    "udp_ingest_shards",
    "tcp_frames_shards",
    "rudp_delivery_64",
    "rudp_delivery_1k",
    "rudp_none_64",
    "rudp_delivery_1k_no_offload",
    "rudp_fanout_1k",
    "rudp_core_64",
    "rudp_core_1k",
];

struct Opts {
    only: Option<String>,
    rounds: usize,
    /// Profiling aid: run only one side (`msgloop` or `baseline`).
    side: Option<String>,
}

fn parse() -> Opts {
    let mut o = Opts {
        only: None,
        rounds: 5,
        side: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--only" => o.only = it.next(),
            "--rounds" => {
                o.rounds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| die("--rounds takes a positive number"))
            }
            "--side" => o.side = it.next(),
            "--bench" => {} // passed by `cargo bench`-style runners; ignore
            "-h" | "--help" => {
                println!(
                    "usage: bench [--only WORKLOAD] [--rounds N] [--side msgloop|baseline]\n\n\
                     Workloads (the module docs of examples/bench/ describe each):\n  {}\n\n\
                     Output: workload=NAME unit=U msgloop=X baseline=Y ratio=R baseline_is=WHAT ...\n\
                     msgloop, baseline: median rates; ratio: median of paired-slice ratios.",
                    WORKLOADS.join("\n  ")
                );
                std::process::exit(0);
            }
            other => die(&format!("unknown argument {other:?}")),
        }
    }
    o
}

fn die(msg: &str) -> ! {
    eprintln!("bench: {msg}");
    std::process::exit(2)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan()); // one side skipped with --side
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

static SIDE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// One workload's line (see the module docs for the keys).
fn report(
    name: &str,
    ours: f64,
    base: f64,
    ratio: f64,
    unit: &str,
    baseline_is: &str,
    extra: &str,
) {
    println!(
        "workload={name} unit={unit} msgloop={ours:.0} baseline={base:.0} ratio={ratio:.3} \
         baseline_is={baseline_is}{}{extra}",
        if extra.is_empty() { "" } else { " " }
    );
}

// ---- ping-pong -------------------------------------------------------------

/// Round trips per slice; slices of msgloop and the baseline alternate.
const SLICE_ROUND_TRIPS: u64 = 4_000;

/// One side of an interleaved comparison: runs `n` operations, returns
/// the time taken.
trait Side {
    fn run(&mut self, n: u64) -> io::Result<Duration>;
}

/// Alternates slices of `ours` and `base` (`slices` each, `n` operations
/// per slice) after one warm-up slice each. Returns (our rate, baseline
/// rate, median of the per-slice-pair ratios): pairing adjacent slices
/// cancels the drift of a shared machine far better than comparing two
/// long runs.
fn interleave(
    slices: usize,
    n: u64,
    ours: &mut dyn Side,
    base: &mut dyn Side,
) -> io::Result<(f64, f64, f64)> {
    let side = SIDE.get().cloned().flatten();
    let (run_ours, run_base) = (
        side.as_deref() != Some("baseline"),
        side.as_deref() != Some("msgloop"),
    );
    if run_ours {
        ours.run(n)?;
    }
    if run_base {
        base.run(n)?;
    }
    let (mut a, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..slices {
        let ra = if run_ours {
            n as f64 / ours.run(n)?.as_secs_f64()
        } else {
            f64::NAN
        };
        let rb = if run_base {
            n as f64 / base.run(n)?.as_secs_f64()
        } else {
            f64::NAN
        };
        a.push(ra);
        b.push(rb);
        r.push(ra / rb);
    }
    let clean = |v: Vec<f64>| v.into_iter().filter(|x| x.is_finite()).collect::<Vec<_>>();
    Ok((median(clean(a)), median(clean(b)), median(clean(r))))
}

/// Echo on `server`; on `client`, count and send the next ping.
struct PingPong {
    server: SocketId,
    client: SocketId,
    /// Where the client sends (None: connected pair, use `send`).
    server_addr: Option<SocketAddr>,
    remaining: u64,
}

impl Handler for PingPong {
    fn on_datagram(&mut self, cx: &mut Ctx, sock: SocketId, msg: Datagram<'_>) {
        if sock == self.server {
            let r = match self.server_addr {
                Some(_) => cx.send_to(sock, msg.data(), msg.from()),
                None => cx.send(sock, msg.data()),
            };
            r.expect("echo");
        } else {
            self.remaining -= 1;
            if self.remaining > 0 {
                ping(cx, self.client, self.server_addr).expect("ping");
            }
        }
    }
}

fn ping(cx: &mut Ctx, client: SocketId, to: Option<SocketAddr>) -> Result<(), msgloop::Error> {
    match to {
        Some(a) => cx.send_to(client, &PAYLOAD, a),
        None => cx.send(client, &PAYLOAD),
    }
}

/// msgloop: a client and an echo socket in one reactor.
struct ReactorPingPong {
    reactor: Reactor,
    app: PingPong,
}

impl ReactorPingPong {
    fn udp() -> io::Result<Self> {
        let mut reactor = Reactor::new()?;
        let server = reactor.bind_udp("127.0.0.1:0")?;
        let client = reactor.bind_udp("127.0.0.1:0")?;
        let server_addr = reactor.local_addr(server)?.as_inet();
        let app = PingPong {
            server,
            client,
            server_addr,
            remaining: 0,
        };
        Ok(ReactorPingPong { reactor, app })
    }

    fn unix() -> io::Result<Self> {
        let (a, b) = std::os::unix::net::UnixDatagram::pair()?;
        let mut reactor = Reactor::new()?;
        let server =
            reactor.add_unix_datagram(socket2::Socket::from(std::os::fd::OwnedFd::from(a)))?;
        let client =
            reactor.add_unix_datagram(socket2::Socket::from(std::os::fd::OwnedFd::from(b)))?;
        let app = PingPong {
            server,
            client,
            server_addr: None,
            remaining: 0,
        };
        Ok(ReactorPingPong { reactor, app })
    }
}

impl Side for ReactorPingPong {
    fn run(&mut self, n: u64) -> io::Result<Duration> {
        let start = Instant::now();
        self.app.remaining = n;
        ping(&mut self.reactor, self.app.client, self.app.server_addr)?;
        while self.app.remaining > 0 {
            if self
                .reactor
                .run_once(&mut self.app, Some(Duration::from_secs(2)))?
                == 0
            {
                return Err(io::Error::other("ping-pong stalled (a datagram was lost)"));
            }
        }
        Ok(start.elapsed())
    }
}

/// The same two sockets in a plain mio `Poll`, with direct system calls.
struct MioPingPong<S> {
    poll: Poll,
    events: Events,
    server: S,
    client: S,
    buf: Vec<u8>,
    /// send/recv for one socket kind: (recv into buf → len+reply target, send).
    ops: MioOps<S>,
}

type PingFn<S> = Box<dyn Fn(&S) -> io::Result<()>>;

struct MioOps<S> {
    /// Echo everything readable on the server; returns after WouldBlock.
    echo: fn(&S, &mut [u8]) -> io::Result<()>,
    /// Reads one reply on the client: Ok(false) on WouldBlock.
    recv: fn(&S, &mut [u8]) -> io::Result<bool>,
    /// Sends one ping from the client.
    ping: PingFn<S>,
}

impl<S: mio::event::Source> MioPingPong<S> {
    fn new(mut server: S, mut client: S, ops: MioOps<S>) -> io::Result<Self> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut server, Token(0), Interest::READABLE)?;
        poll.registry()
            .register(&mut client, Token(1), Interest::READABLE)?;
        Ok(MioPingPong {
            poll,
            events: Events::with_capacity(1024),
            server,
            client,
            buf: vec![0; 65536],
            ops,
        })
    }
}

impl<S> Side for MioPingPong<S> {
    fn run(&mut self, n: u64) -> io::Result<Duration> {
        let start = Instant::now();
        let mut remaining = n;
        (self.ops.ping)(&self.client)?;
        while remaining > 0 {
            self.poll
                .poll(&mut self.events, Some(Duration::from_secs(2)))?;
            if self.events.is_empty() {
                return Err(io::Error::other("baseline ping-pong stalled"));
            }
            for ev in self.events.iter() {
                if ev.token() == Token(0) {
                    (self.ops.echo)(&self.server, &mut self.buf)?;
                } else {
                    while (self.ops.recv)(&self.client, &mut self.buf)? {
                        remaining -= 1;
                        if remaining > 0 {
                            (self.ops.ping)(&self.client)?;
                        }
                    }
                }
            }
        }
        Ok(start.elapsed())
    }
}

fn would_block<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

fn mio_udp_pingpong() -> io::Result<MioPingPong<mio::net::UdpSocket>> {
    let server = mio::net::UdpSocket::bind("127.0.0.1:0".parse().unwrap())?;
    let client = mio::net::UdpSocket::bind("127.0.0.1:0".parse().unwrap())?;
    let to = server.local_addr()?;
    MioPingPong::new(
        server,
        client,
        MioOps {
            echo: |s, buf| {
                while let Some((n, from)) = would_block(s.recv_from(buf))? {
                    s.send_to(&buf[..n], from)?;
                }
                Ok(())
            },
            recv: |s, buf| Ok(would_block(s.recv_from(buf))?.is_some()),
            ping: Box::new(move |s| s.send_to(&PAYLOAD, to).map(drop)),
        },
    )
}

fn mio_unix_pingpong() -> io::Result<MioPingPong<mio::net::UnixDatagram>> {
    let (server, client) = mio::net::UnixDatagram::pair()?;
    MioPingPong::new(
        server,
        client,
        MioOps {
            echo: |s, buf| {
                while let Some(n) = would_block(s.recv(buf))? {
                    s.send(&buf[..n])?;
                }
                Ok(())
            },
            recv: |s, buf| Ok(would_block(s.recv(buf))?.is_some()),
            ping: Box::new(|s| s.send(&PAYLOAD).map(drop)),
        },
    )
}

// ---- ingest ----------------------------------------------------------------

/// Each reader's turn at the socket.
const INGEST_WINDOW: Duration = Duration::from_millis(40);
const RCVBUF: usize = 4 << 20;

/// A raw sender: `sendmmsg` batches of 32 × 64 B to `to` until stopped.
fn spawn_sender(to: SocketAddr, stop: Arc<AtomicBool>) -> io::Result<std::thread::JoinHandle<u64>> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.connect(to)?;
    Ok(std::thread::spawn(move || {
        let batch: [&[u8]; 32] = [&PAYLOAD; 32];
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) {
            match msgloop::batch::send_batch(&sock, &batch, None) {
                Ok(n) => sent += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("sender: {e}"),
            }
        }
        sent
    }))
}

struct Count(u64);
impl Handler for Count {
    fn on_datagram(&mut self, _cx: &mut Ctx, _sock: SocketId, _msg: Datagram<'_>) {
        self.0 += 1;
    }
}

/// Datagrams/s received by msgloop, a raw `recv_from` loop and a raw
/// `recvmmsg` loop, taking turns on ONE socket fed by one sender that
/// never stops: the queue is always full, so each reader runs flat out
/// and the figures compare receive paths, not senders. Returns
/// (msgloop, recv_from, recvmmsg, median msgloop/recv_from ratio).
fn udp_ingest(slices: usize) -> io::Result<(f64, f64, f64, f64)> {
    let side = SIDE.get().cloned().flatten();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())?;
    let to = sock.local_addr()?.as_socket().expect("inet");
    // The raw readers use a second descriptor for the same socket.
    let raw: UdpSocket = sock.try_clone()?.into();
    let mut reactor = Reactor::new()?;
    let opts = DgramOptions::default().recv_buffer_size(Some(RCVBUF));
    reactor.add_udp_with(sock, &opts)?; // also makes it non-blocking (shared)
    let mut count = Count(0);
    let mut buf = vec![0u8; 65536];
    let mut storage = vec![[0u8; 2048]; 32];
    let mut meta = vec![msgloop::batch::RecvMeta::default(); 32];

    let stop = Arc::new(AtomicBool::new(false));
    let sender = spawn_sender(to, stop.clone())?;
    let mut ours = |window: Duration| -> io::Result<f64> {
        count.0 = 0;
        let start = Instant::now();
        while start.elapsed() < window {
            reactor.run_once(&mut count, Some(Duration::from_millis(1)))?;
        }
        Ok(count.0 as f64 / start.elapsed().as_secs_f64())
    };
    let mut recv_from = |window: Duration| -> io::Result<f64> {
        let (start, mut n) = (Instant::now(), 0u64);
        while start.elapsed() < window {
            for _ in 0..64 {
                match raw.recv_from(&mut buf) {
                    Ok(_) => n += 1,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    };
    let mut recvmmsg = |window: Duration| -> io::Result<f64> {
        let (start, mut n) = (Instant::now(), 0u64);
        let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|b| &mut b[..]).collect();
        while start.elapsed() < window {
            match msgloop::batch::recv_batch(&raw, &mut bufs, &mut meta) {
                Ok(got) => n += got as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    };
    let (mut a, mut b, mut c, mut r) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let result = (|| -> io::Result<()> {
        // Warm-up: fill the queue, touch every code path once.
        ours(INGEST_WINDOW)?;
        recv_from(INGEST_WINDOW)?;
        for _ in 0..slices {
            let ra = if side.as_deref() != Some("baseline") {
                ours(INGEST_WINDOW)?
            } else {
                f64::NAN
            };
            let rb = if side.as_deref() != Some("msgloop") {
                recv_from(INGEST_WINDOW)?
            } else {
                f64::NAN
            };
            let rc = if side.is_none() {
                recvmmsg(INGEST_WINDOW)?
            } else {
                f64::NAN
            };
            a.push(ra);
            b.push(rb);
            c.push(rc);
            r.push(ra / rb);
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    sender
        .join()
        .map_err(|_| io::Error::other("sender panicked"))?;
    result?;
    let clean = |v: Vec<f64>| v.into_iter().filter(|x| x.is_finite()).collect::<Vec<_>>();
    Ok((
        median(clean(a)),
        median(clean(b)),
        median(clean(c)),
        median(clean(r)),
    ))
}

// ---- main --------------------------------------------------------------------

fn main() {
    // The separate client process of `tcp_idle_10k`.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--c10k-client") {
        let (addr, n) = (&args[2], args[3].parse().expect("count"));
        if let Err(e) = c10k::client_main(addr, n) {
            die(&format!("c10k client: {e}"));
        }
        return;
    }
    let o = parse();
    SIDE.set(o.side.clone()).expect("set once");
    let want = |name: &str| o.only.as_deref().is_none_or(|w| w == name);

    if let Some(w) = &o.only {
        if !WORKLOADS.contains(&w.as_str()) {
            die(&format!(
                "unknown workload {w:?}; known: {}",
                WORKLOADS.join(", ")
            ));
        }
    }
    // Ping-pong workloads: slices per side (each `SLICE_ROUND_TRIPS`).
    let slices = o.rounds * 6;
    let run = || -> io::Result<()> {
        if want("udp_pingpong") {
            let (a, b, r) = interleave(
                slices,
                SLICE_ROUND_TRIPS,
                &mut ReactorPingPong::udp()?,
                &mut mio_udp_pingpong()?,
            )?;
            report(
                "udp_pingpong",
                a,
                b,
                r,
                "round_trips/s",
                "mio_recv_from_send_to",
                &format!("payload=64 slices={slices}x{SLICE_ROUND_TRIPS}"),
            );
        }
        if want("udp_ingest") {
            let (a, b, c, r) = udp_ingest(slices)?;
            report(
                "udp_ingest",
                a,
                b,
                r,
                "datagrams/s",
                "blocking_recv_from",
                &format!(
                    "recvmmsg={c:.0} payload=64 slices={slices}x{}ms",
                    INGEST_WINDOW.as_millis()
                ),
            );
        }
        if want("unix_dgram_pingpong") {
            let (a, b, r) = interleave(
                slices,
                SLICE_ROUND_TRIPS,
                &mut ReactorPingPong::unix()?,
                &mut mio_unix_pingpong()?,
            )?;
            report(
                "unix_dgram_pingpong",
                a,
                b,
                r,
                "round_trips/s",
                "mio_recv_send",
                &format!("payload=64 slices={slices}x{SLICE_ROUND_TRIPS}"),
            );
        }
        offload::run(slices, &want)?;
        seqpacket::run(o.rounds, slices, &want)?;
        tcp::run(o.rounds, &want)?;
        c10k::run(&want)?;
        shards::run(o.rounds, &want)?;
        rudp::run(o.rounds, &want)?;
        rudp_core::run(slices, &want)?;
        Ok(())
    };
    if let Err(e) = run() {
        die(&format!("{e}"));
    }
}
