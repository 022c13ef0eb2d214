//! echo_server — msgloop's main job: echo every message on every transport.
//!
//! ```text
//! cargo run --release --example echo_server                 # every transport, defaults
//! cargo run --release --example echo_server -- --udp 127.0.0.1:9000
//! cargo run --release --example echo_server -- --unix-dgram /tmp/echo.sock
//! ```
//!
//! With no transport flag it serves every transport on its default:
//!
//! | transport      | flag                | default                                   |
//! |----------------|---------------------|-------------------------------------------|
//! | UDP            | `--udp ADDR`        | `127.0.0.1:7000`                          |
//! | Unix datagram  | `--unix-dgram PATH` | `msgloop-echo.dgram` in the temp directory |
//! | TCP frames     | `--tcp ADDR`        | `127.0.0.1:7001` (4-byte big-endian length prefix) |
//! | Reliable UDP   | `--rudp ADDR`       | `127.0.0.1:7002` (each message echoed with its guarantee) |
//! | Unix seqpacket | `--seqpacket PATH`  | `msgloop-echo.seq` in the temp directory (passed fds are sent back) |
//!
//! When any transport flag is given, only the transports named are served.
//! Each message goes back to its sender byte for byte (a Unix datagram
//! client must bind its own socket to get replies). Every 10 s, and on
//! SIGINT/SIGTERM, a one-line summary of the counters is printed; on a
//! signal the server also removes its socket files and exits 0.
//!
//! Try it with a client that is not ours:
//!
//! ```text
//! python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
//!     s.sendto(b"hello", ("127.0.0.1", 7000)); print(s.recvfrom(65535))'
//! ```

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use msgloop::framing::FrameConfig;
use msgloop::rudp::{Guarantee, RudpConfig};
use msgloop::{
    CloseReason, Ctx, Datagram, DgramOptions, Error, Handler, PeerAddr, PeerId, Reactor,
    SeqpacketMessage, SeqpacketOptions, SocketId, TcpOptions, TimerId, UnixAddr,
};

const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Addresses are kept as given: the library resolves them (`localhost:7000`
/// works as well as `127.0.0.1:7000`).
struct Args {
    udp: Option<String>,
    unix_dgram: Option<PathBuf>,
    tcp: Option<String>,
    rudp: Option<String>,
    seqpacket: Option<PathBuf>,
    max_message: usize,
    max_frame: usize,
}

const USAGE: &str = "\
usage: echo_server [--udp ADDR] [--unix-dgram PATH] [--tcp ADDR] [--rudp ADDR]
                   [--seqpacket PATH] [--max-message BYTES] [--max-frame BYTES]

With no transport flag, serves every transport on its default:
  UDP            127.0.0.1:7000
  Unix datagram  $TMPDIR/msgloop-echo.dgram (clients must bind to get replies)
  TCP frames     127.0.0.1:7001 (4-byte big-endian length prefix)
  reliable UDP   127.0.0.1:7002 (see examples/rudp_chat.rs for a client)
  Unix seqpacket $TMPDIR/msgloop-echo.seq (passed fds come back)
Naming any transport serves only those. ADDR is HOST:PORT (names resolve).
--max-message caps Unix datagrams and seqpacket messages (default 1 MiB;
larger ones are dropped and counted); --max-frame caps TCP frames (default
8 MiB; a larger header closes that connection).";

/// A bad command line: the error first, then where to find the usage.
fn bad_args(msg: &str) -> ! {
    eprintln!("echo_server: {msg}\n(run with --help for the usage)");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        udp: None,
        unix_dgram: None,
        tcp: None,
        rudp: None,
        seqpacket: None,
        max_message: 1 << 20,
        max_frame: 8 << 20,
    };
    let mut any = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| bad_args(&format!("{flag} needs a value")))
        };
        let size = |v: String| {
            v.parse::<usize>()
                .unwrap_or_else(|e| bad_args(&format!("{flag} {v:?}: {e}")))
        };
        match flag.as_str() {
            "--udp" => args.udp = Some(value()),
            "--unix-dgram" => args.unix_dgram = Some(PathBuf::from(value())),
            "--tcp" => args.tcp = Some(value()),
            "--rudp" => args.rudp = Some(value()),
            "--seqpacket" => args.seqpacket = Some(PathBuf::from(value())),
            "--max-frame" => {
                args.max_frame = size(value());
                continue;
            }
            "--max-message" => {
                args.max_message = size(value());
                continue;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            other => bad_args(&format!("unknown argument {other:?}")),
        }
        any = true;
    }
    if !any {
        args.udp = Some("127.0.0.1:7000".into());
        args.unix_dgram = Some(std::env::temp_dir().join("msgloop-echo.dgram"));
        args.tcp = Some("127.0.0.1:7001".into());
        args.rudp = Some("127.0.0.1:7002".into());
        args.seqpacket = Some(std::env::temp_dir().join("msgloop-echo.seq"));
    }
    args
}

/// Per-transport counters the summary prints next to the reactor's own.
#[derive(Default)]
struct Counts {
    echoed: u64,
    echo_failed: u64,
    unreplyable: u64,
    errors: u64,
    tcp_open: u64,
    tcp_accepted: u64,
    tcp_closed_bad_frame: u64,
    tcp_closed_idle: u64,
    tcp_frames_dropped: u64,
    rudp_peers: u64,
    rudp_connected: u64,
    rudp_dropped: u64,
    seq_open: u64,
    seq_fds_echoed: u64,
    seq_fds_cut: u64,
}

struct Echo {
    udp: Option<SocketId>,
    unix: Option<SocketId>,
    tcp: Option<SocketId>,
    rudp: Option<SocketId>,
    seqpacket: Option<SocketId>,
    /// Open seqpacket connections (to tell their closes from TCP's).
    seq_conns: HashSet<SocketId>,
    counts: Counts,
    started: Instant,
    stop: bool,
}

impl Echo {
    fn summary(&self, cx: &Ctx) -> String {
        let mut line = format!("echo_server: up {}s", self.started.elapsed().as_secs());
        for (name, id) in [("udp", self.udp), ("unix_dgram", self.unix)] {
            if let Some(id) = id {
                if let Ok(s) = cx.stats(id) {
                    line += &format!(
                        " | {name} in={} ({} B) out={} ({} B) over_quota={}",
                        s.messages_in,
                        s.bytes_in,
                        s.messages_out,
                        s.bytes_out,
                        s.dropped_over_quota
                    );
                }
            }
        }
        let c = &self.counts;
        if self.tcp.is_some() {
            line += &format!(
                " | tcp conns open={} accepted={} closed_bad_frame={} closed_idle={} frames_dropped={}",
                c.tcp_open, c.tcp_accepted, c.tcp_closed_bad_frame, c.tcp_closed_idle, c.tcp_frames_dropped
            );
        }
        if let Some(id) = self.rudp {
            if let Ok(ep) = cx.rudp_endpoint_stats(id) {
                line += &format!(
                    " | rudp peers={} connected={} dropped={} malformed={} refused={} \
                     (per_source={}) evicted={} recv_held={} B (peak {} B) recv_budget_events={} \
                     send_held={} B sends_refused_budget={}",
                    ep.connections,
                    c.rudp_connected,
                    c.rudp_dropped,
                    ep.malformed,
                    ep.refused,
                    ep.refused_per_source + ep.refused_half_open_per_source,
                    ep.half_open_evicted + ep.closed_over_budget,
                    ep.recv_bytes_held,
                    ep.recv_bytes_held_peak,
                    ep.recv_budget_drops + ep.recv_budget_refusals,
                    ep.send_bytes_held,
                    ep.send_budget_refusals
                );
            }
        }
        if self.seqpacket.is_some() {
            line += &format!(
                " | seqpacket conns open={} fds_echoed={} messages_with_fds_cut={}",
                c.seq_open, c.seq_fds_echoed, c.seq_fds_cut
            );
        }
        let r = cx.reactor_stats();
        line += &format!(
            " | echoed={} echo_failed={} unreplyable={} errors={}\n  reactor: {} sockets open, {} closed, {} passes, buffered {} B (peak {} B) | {}",
            c.echoed,
            c.echo_failed,
            c.unreplyable,
            c.errors,
            r.open_sockets,
            r.closed_sockets,
            r.run_once_calls,
            r.buffered_bytes,
            r.buffered_peak,
            r.totals
        );
        line
    }
}

impl Handler for Echo {
    fn on_datagram(&mut self, cx: &mut Ctx, sock: SocketId, msg: Datagram<'_>) {
        if msg.from().as_unix().is_some_and(UnixAddr::is_unnamed) {
            // An unbound Unix client: there is no address to answer.
            self.counts.unreplyable += 1;
            return;
        }
        match cx.send_to(sock, msg.data(), msg.from()) {
            Ok(_) => self.counts.echoed += 1,
            Err(e) => {
                self.counts.echo_failed += 1;
                log_rate_limited(
                    &format!("echo to {} failed: {e}", msg.from()),
                    self.counts.echo_failed,
                );
            }
        }
    }

    fn on_accept(&mut self, _cx: &mut Ctx, listener: SocketId, conn: SocketId, _peer: &PeerAddr) {
        if Some(listener) == self.seqpacket {
            self.seq_conns.insert(conn);
            self.counts.seq_open += 1;
            return;
        }
        self.counts.tcp_accepted += 1;
        self.counts.tcp_open += 1;
    }

    fn on_seqpacket(&mut self, cx: &mut Ctx, conn: SocketId, mut msg: SeqpacketMessage<'_>) {
        if msg.fds_truncated() {
            // More descriptors were passed than could be received (out of
            // descriptors, or over SCM_MAX_FD): the kernel closed the rest.
            self.counts.seq_fds_cut += 1;
            log_rate_limited(
                &format!("{conn}: passed descriptors were cut (MSG_CTRUNC)"),
                self.counts.seq_fds_cut,
            );
        }
        // Echo the bytes and pass back the very descriptors we received
        // (taken: ours, closed when they go out of scope below); the client
        // gets its own descriptors of the same open files.
        let owned = msg.take_fds();
        let fds: Vec<BorrowedFd<'_>> = owned.iter().map(|fd| fd.as_fd()).collect();
        match cx.send_seqpacket_with_fds(conn, msg.data(), &fds) {
            Ok(()) => {
                self.counts.echoed += 1;
                self.counts.seq_fds_echoed += fds.len() as u64;
            }
            Err(e) => {
                self.counts.echo_failed += 1;
                log_rate_limited(
                    &format!("{conn}: echo failed: {e}"),
                    self.counts.echo_failed,
                );
            }
        }
    }

    fn on_frame(&mut self, cx: &mut Ctx, conn: SocketId, frame: &[u8]) {
        match cx.send_frame(conn, frame) {
            Ok(()) => self.counts.echoed += 1,
            Err(e) => {
                // A client that sends but never reads fills its queue: its
                // echoes are dropped (and counted) rather than buffered
                // without bound.
                self.counts.tcp_frames_dropped += 1;
                log_rate_limited(
                    &format!("{conn}: echo dropped: {e}"),
                    self.counts.tcp_frames_dropped,
                );
            }
        }
    }

    fn on_close(&mut self, _cx: &mut Ctx, sock: SocketId, reason: CloseReason) {
        if [self.tcp, self.udp, self.unix, self.seqpacket].contains(&Some(sock)) {
            eprintln!("echo_server: {sock} closed: {reason}");
            return;
        }
        if self.seq_conns.remove(&sock) {
            self.counts.seq_open -= 1;
            return;
        }
        self.counts.tcp_open = self.counts.tcp_open.saturating_sub(1);
        match reason {
            CloseReason::Frame(e) => {
                self.counts.tcp_closed_bad_frame += 1;
                log_rate_limited(
                    &format!("{sock}: closed: {e}"),
                    self.counts.tcp_closed_bad_frame,
                );
            }
            CloseReason::FrameTimeout | CloseReason::IdleTimeout => {
                self.counts.tcp_closed_idle += 1
            }
            _ => {}
        }
    }

    fn on_rudp_connected(&mut self, _cx: &mut Ctx, _peer: PeerId) {
        self.counts.rudp_connected += 1;
        self.counts.rudp_peers += 1;
    }

    fn on_rudp(&mut self, cx: &mut Ctx, peer: PeerId, msg: &[u8], guarantee: Guarantee) {
        match cx.send_rudp(peer, msg, guarantee) {
            Ok(()) => self.counts.echoed += 1,
            Err(e) => {
                self.counts.rudp_dropped += 1;
                log_rate_limited(
                    &format!("{peer}: echo dropped: {e}"),
                    self.counts.rudp_dropped,
                );
            }
        }
    }

    fn on_rudp_closed(&mut self, _cx: &mut Ctx, _peer: PeerId, _reason: msgloop::RudpCloseReason) {
        self.counts.rudp_peers = self.counts.rudp_peers.saturating_sub(1);
    }

    fn on_error(&mut self, _cx: &mut Ctx, sock: SocketId, error: Error) {
        self.counts.errors += 1;
        log_rate_limited(&format!("{sock}: {error}"), self.counts.errors);
    }

    fn on_timer(&mut self, cx: &mut Ctx, _timer: TimerId) {
        eprintln!("{}", self.summary(cx));
        cx.set_timer(SUMMARY_EVERY);
    }

    fn on_signal(&mut self, cx: &mut Ctx, _watcher: SocketId, signal: i32) {
        let name = match signal {
            libc::SIGINT => "SIGINT",
            libc::SIGTERM => "SIGTERM",
            _ => "a signal",
        };
        eprintln!("echo_server: {name} ({signal}), shutting down");
        eprintln!("{}", self.summary(cx));
        self.stop = true;
    }
}

/// Prints the first few occurrences of an error, then one in a thousand.
fn log_rate_limited(msg: &str, count: u64) {
    if count <= 5 || count % 1000 == 0 {
        eprintln!("echo_server: {msg} (#{count})");
    }
}

fn main() -> ExitCode {
    let args = parse_args();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo_server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// An error of setting up `transport`, saying which.
fn setup(transport: &str) -> impl FnOnce(Error) -> String + '_ {
    move |e| format!("{transport}: {e}")
}

fn run(args: Args) -> Result<(), String> {
    let mut reactor = Reactor::new().map_err(|e| format!("reactor: {e}"))?;
    // Before anything else: SIGINT/SIGTERM become on_signal callbacks.
    reactor
        .watch_signals(&[libc::SIGINT, libc::SIGTERM])
        .map_err(setup("signals"))?;

    let mut app = Echo {
        udp: None,
        unix: None,
        tcp: None,
        rudp: None,
        seqpacket: None,
        seq_conns: HashSet::new(),
        counts: Counts::default(),
        started: Instant::now(),
        stop: false,
    };
    if let Some(addr) = &args.udp {
        let opts = DgramOptions::new().recv_buffer_size(4 << 20);
        let id = reactor
            .bind_udp_with(addr.as_str(), &opts)
            .map_err(setup(&format!("udp {addr}")))?;
        let local = reactor.local_addr(id).map_err(setup("udp"))?;
        eprintln!("echo_server: udp on {local}");
        app.udp = Some(id);
    }
    if let Some(path) = &args.unix_dgram {
        // The file is ours: a leftover from a killed run is replaced (never
        // a live socket's, never a non-socket file), and it is removed again
        // when we exit. Room to echo the largest message we accept.
        let room = 2 * args.max_message + 4096;
        let opts = DgramOptions::new()
            .max_message_len(args.max_message)
            .unlink_stale(true)
            .send_buffer_size(room)
            .recv_buffer_size(room);
        let id = reactor
            .bind_unix_datagram_with(path, &opts)
            .map_err(setup("unix datagram"))?;
        eprintln!("echo_server: unix datagram on {}", path.display());
        app.unix = Some(id);
    }
    if let Some(addr) = &args.tcp {
        let opts = TcpOptions::new(FrameConfig::new().with_max_frame_len(args.max_frame));
        let id = reactor
            .listen_tcp_with(addr.as_str(), &opts)
            .map_err(setup(&format!("tcp {addr}")))?;
        let local = reactor.local_addr(id).map_err(setup("tcp"))?;
        eprintln!(
            "echo_server: tcp frames on {local} (4-byte big-endian length, max {} B)",
            opts.frame.max_frame_len()
        );
        app.tcp = Some(id);
    }
    if let Some(addr) = &args.rudp {
        let id = reactor
            .bind_rudp(addr.as_str(), RudpConfig::default())
            .map_err(setup(&format!("reliable udp {addr}")))?;
        let local = reactor.local_addr(id).map_err(setup("reliable udp"))?;
        eprintln!("echo_server: reliable udp on {local}");
        app.rudp = Some(id);
    }
    if let Some(path) = &args.seqpacket {
        // Our file: a leftover of a killed run is replaced.
        let opts = SeqpacketOptions::new()
            .max_message_len(args.max_message)
            .unlink_stale(true);
        let id = reactor
            .listen_seqpacket_with(path, &opts)
            .map_err(setup("unix seqpacket"))?;
        eprintln!("echo_server: unix seqpacket on {}", path.display());
        app.seqpacket = Some(id);
    }
    reactor.set_timer(SUMMARY_EVERY);

    while !app.stop {
        reactor
            .run_once(&mut app, None)
            .map_err(|e| format!("run_once: {e}"))?;
    }
    // Dropping the reactor closes every socket and removes their files.
    drop(reactor);
    Ok(())
}
