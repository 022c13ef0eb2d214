//! rudp_chat — a terminal chat over reliable UDP, with a guarantee per message.
//!
//! ```text
//! cargo run --example rudp_chat -- --listen 127.0.0.1:7100              # the hub
//! cargo run --example rudp_chat -- --connect 127.0.0.1:7100 --name bob  # more terminals
//! cargo run --example rudp_chat -- --connect 127.0.0.1:7002             # echo_server's port
//! ```
//!
//! A hub whose stdin is closed goes on relaying (run it detached with
//! `< /dev/null &`) until SIGINT or SIGTERM.
//!
//! The hub is a participant too: it prints what it receives and relays each
//! message, with the sender's name and its guarantee, to every other peer.
//! Each line typed is one message; a prefix chooses its guarantee:
//!
//! | input     | guarantee  | meaning                                            |
//! |-----------|------------|----------------------------------------------------|
//! | `text`    | `Delivery` | reliable, exactly once, in order (the default)     |
//! | `/d text` | `Delivery` | the same, spelled out                              |
//! | `/o text` | `Order`    | unreliable, never after a newer `/o` (latest wins) |
//! | `/n text` | `None`     | unreliable, any order, at most once                |
//! | `/stats`  |            | RTT, loss and retransmissions of each peer         |
//! | `/quit`   |            | close gracefully and exit (so do Ctrl-C and, for a client, Ctrl-D) |
//!
//! Incoming messages print as `[name|guarantee] text`. Guarantees are not
//! ordered among themselves: an `/o` or `/n` line can overtake a `/d` line
//! sent just before it.
//!
//! What it shows:
//!
//! - **Any descriptor in the loop.** stdin is registered with
//!   [`Ctx::add_fd`] like the sockets, level-triggered: each
//!   [`Handler::on_ready`] reads once (stdin stays blocking — it is shared
//!   with the shell — and a read of a ready descriptor does not block) and
//!   is called again while input is left. No helper thread. (A stdin that
//!   cannot be watched, such as `/dev/null`, counts as closed.)
//! - **Noticing a vanished peer.** Kill one side with `kill -9`: the other
//!   prints that the peer closed with reason `Timeout` within the idle
//!   timeout (5 s here, with a heartbeat every second; see
//!   `--idle-timeout`).
//! - **Shutting down cleanly.** SIGINT/SIGTERM arrive as
//!   [`Handler::on_signal`] callbacks; every peer is closed with
//!   `close_rudp`, and the program exits once they all report closed (or
//!   after 1 s).
//!
//! On the wire a chat message is `name`, a newline, then the text; the hub
//! relays the bytes unchanged.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use msgloop::rudp::{Guarantee, RudpCloseReason, RudpConfig};
use msgloop::{
    Ctx, Error, Handler, Interest, PeerId, Reactor, Readiness, SocketId, TimerId, Trigger,
};

/// How long `/quit` or a signal waits for peers to acknowledge the close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

// ---- command line ---------------------------------------------------------

enum Role {
    /// Accept peers on this address and relay between them.
    Hub(SocketAddr),
    /// Connect to a hub.
    Client(SocketAddr),
}

struct Args {
    role: Role,
    name: String,
    idle_timeout: Duration,
}

fn usage() -> ! {
    eprintln!(
        "usage: rudp_chat --listen ADDR [--name NAME] [--idle-timeout SECS]\n\
         \x20      rudp_chat --connect ADDR [--name NAME] [--idle-timeout SECS]\n\
         \n\
         Each line typed is sent; prefix /d (default), /o or /n picks the\n\
         guarantee Delivery, Order or None. /stats prints per-peer figures,\n\
         /quit (or Ctrl-D, Ctrl-C) closes gracefully. The idle timeout\n\
         (default 5 s) is how soon a vanished peer is noticed."
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut role = None;
    let mut name = None;
    let mut idle_timeout = Duration::from_secs(5);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        let mut addr = |flag: &str| -> SocketAddr {
            value().parse().unwrap_or_else(|e| {
                eprintln!("{flag}: {e}");
                usage()
            })
        };
        match flag.as_str() {
            "--listen" => role = Some(Role::Hub(addr("--listen"))),
            "--connect" => role = Some(Role::Client(addr("--connect"))),
            "--name" => name = Some(value()),
            "--idle-timeout" => {
                let secs: f64 = value().parse().unwrap_or_else(|e| {
                    eprintln!("--idle-timeout: {e}");
                    usage()
                });
                idle_timeout = Duration::try_from_secs_f64(secs).unwrap_or_else(|e| {
                    eprintln!("--idle-timeout: {e}");
                    usage()
                });
            }
            "-h" | "--help" => usage(),
            other => {
                eprintln!("unknown argument {other:?}");
                usage()
            }
        }
    }
    let Some(role) = role else { usage() };
    let name = name.unwrap_or_else(|| match role {
        Role::Hub(_) => "hub".to_string(),
        Role::Client(_) => format!("user{}", std::process::id()),
    });
    if name.is_empty() || name.contains('\n') {
        eprintln!("--name: must be non-empty and on one line");
        usage()
    }
    Args {
        role,
        name,
        idle_timeout,
    }
}

// ---- stdin ----------------------------------------------------------------

/// Lines typed, split from what each read of stdin returned.
#[derive(Default)]
struct LineReader {
    partial: Vec<u8>,
}

impl LineReader {
    /// Reads what stdin has (once: it is ready, so this does not block);
    /// the complete lines, and whether stdin is at its end.
    fn read(&mut self) -> (Vec<String>, bool) {
        let mut buf = [0u8; 64 * 1024]; // larger than std's own buffer: read directly
        let n = match std::io::stdin().lock().read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return (Vec::new(), false),
            Err(_) => 0,
        };
        self.partial.extend_from_slice(&buf[..n]);
        let mut lines = Vec::new();
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            lines.push(String::from_utf8_lossy(&line).trim_end().to_string());
        }
        if n == 0 && !self.partial.is_empty() {
            lines.push(String::from_utf8_lossy(&std::mem::take(&mut self.partial)).to_string());
        }
        (lines, n == 0)
    }
}

// ---- the chat -------------------------------------------------------------

struct Chat {
    name: String,
    /// The hub relays between peers; a client has one peer, the hub.
    is_hub: bool,
    /// Live peers and what to call them. The hub's clients go by the name
    /// they last used (their address until they speak). A client's one
    /// peer, the hub, is in here from `connect_rudp` on: messages sent
    /// before the handshake completes are queued and go out once it does.
    peers: HashMap<PeerId, String>,
    stdin: LineReader,
    /// Set by `/quit`, end of input or a signal: peers are closing.
    closing: bool,
    /// The program should return from its loop.
    stop: bool,
    /// Exit status: a client that lost its hub (not closed by it) exits 1.
    failed: bool,
}

impl Chat {
    /// stdin is closed (Ctrl-D, the end of a pipe, or not watchable): a
    /// client has nothing left to say; a hub keeps relaying without a
    /// terminal (run detached: `rudp_chat --listen ADDR < /dev/null &`)
    /// until a signal or `/quit`.
    fn stdin_closed(&mut self, cx: &mut Ctx) {
        if self.is_hub {
            println!("* stdin closed: relaying until SIGINT/SIGTERM");
        } else {
            self.shut_down(cx);
        }
    }

    /// Sends one message to every connected peer but `except`.
    fn broadcast(&mut self, cx: &mut Ctx, msg: &[u8], g: Guarantee, except: Option<PeerId>) {
        for &peer in self.peers.keys() {
            if Some(peer) == except {
                continue;
            }
            // A chat never fills a send window, but a stalled peer could:
            // say so rather than queue without bound.
            if let Err(e) = cx.send_rudp(peer, msg, g) {
                println!("* message to {} dropped: {e}", self.peers[&peer]);
            }
        }
    }

    /// One line typed by the user.
    fn on_line(&mut self, cx: &mut Ctx, line: &str) {
        let (g, text) = match line.split_once(' ').unwrap_or((line, "")) {
            ("/d", text) => (Guarantee::Delivery, text),
            ("/o", text) => (Guarantee::Order, text),
            ("/n", text) => (Guarantee::None, text),
            ("/stats", _) => return self.print_stats(cx),
            ("/quit", _) => return self.shut_down(cx),
            (cmd, _) if cmd.starts_with('/') => {
                println!("* unknown command {cmd}: use /d, /o, /n, /stats or /quit");
                return;
            }
            _ => (Guarantee::Delivery, line),
        };
        if text.is_empty() {
            return;
        }
        if self.peers.is_empty() {
            println!("* nobody to send to yet");
            return;
        }
        let msg = format!("{}\n{text}", self.name);
        self.broadcast(cx, msg.as_bytes(), g, None);
    }

    fn print_stats(&self, cx: &Ctx) {
        if self.peers.is_empty() {
            println!("* no peers");
        }
        for (&peer, name) in &self.peers {
            let (Ok(s), Ok(addr)) = (cx.rudp_peer_stats(peer), cx.rudp_peer_addr(peer)) else {
                continue;
            };
            // min_rtt stays zero until the first sample; srtt is then
            // only the configured initial guess.
            let rtt = if s.min_rtt.is_zero() {
                "no sample yet".to_string()
            } else {
                format!(
                    "{:.3} ms (min {:.3})",
                    s.srtt.as_secs_f64() * 1e3,
                    s.min_rtt.as_secs_f64() * 1e3
                )
            };
            println!(
                "* {name} ({addr}): rtt {rtt}, packets sent {} lost {}, \
                 chunks retransmitted {}, rto fired {}, messages in {} out {}",
                s.packets_sent,
                s.packets_lost,
                s.chunks_retransmitted,
                s.rto_count,
                s.messages_delivered.total(),
                s.messages_sent.total(),
            );
        }
    }

    /// Closes every peer gracefully (queued messages go out first). The
    /// loop ends when the last one reports closed, or after `CLOSE_GRACE`.
    fn shut_down(&mut self, cx: &mut Ctx) {
        if self.closing {
            return;
        }
        self.closing = true;
        if self.peers.is_empty() {
            self.stop = true;
            return;
        }
        println!("* closing {} peer(s)", self.peers.len());
        for &peer in self.peers.keys() {
            let _ = cx.close_rudp(peer);
        }
        cx.set_timer(CLOSE_GRACE);
    }
}

impl Handler for Chat {
    /// stdin has input (or is at its end).
    fn on_ready(&mut self, cx: &mut Ctx, fd: SocketId, _ready: Readiness) {
        let (lines, eof) = self.stdin.read();
        for line in lines {
            self.on_line(cx, &line);
        }
        if eof {
            let _ = cx.close(fd);
            self.stdin_closed(cx);
        }
    }

    fn on_rudp_connected(&mut self, cx: &mut Ctx, peer: PeerId) {
        let addr = cx
            .rudp_peer_addr(peer)
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        if self.is_hub {
            println!("* {addr} joined");
            self.peers.insert(peer, addr);
        } else {
            println!("* connected to the hub at {addr}; type a line to send it");
        }
        if self.closing {
            let _ = cx.close_rudp(peer);
        }
    }

    fn on_rudp(&mut self, cx: &mut Ctx, peer: PeerId, msg: &[u8], g: Guarantee) {
        let text = String::from_utf8_lossy(msg);
        let (name, text) = text.split_once('\n').unwrap_or(("?", &text));
        println!("[{name}|{}] {text}", label(g));
        if self.is_hub {
            // Remember the name for messages about this peer (a client's
            // only peer is the hub, which relays for everybody).
            if let Some(known) = self.peers.get_mut(&peer) {
                name.clone_into(known);
            }
            // Relay the bytes unchanged, with the guarantee they came with.
            self.broadcast(cx, msg, g, Some(peer));
        }
    }

    fn on_rudp_closed(&mut self, _cx: &mut Ctx, peer: PeerId, reason: RudpCloseReason) {
        let who = self.peers.remove(&peer).unwrap_or_else(|| peer.to_string());
        let why = match reason {
            RudpCloseReason::Timeout => {
                "nothing heard from it within the idle (or handshake) timeout"
            }
            RudpCloseReason::ClosedByPeer => "closed by the peer",
            RudpCloseReason::Local => "closed by us",
            RudpCloseReason::ProtocolViolation(v) => v,
            _ => "closed",
        };
        println!("* {who} closed (reason {reason:?}: {why})");
        if !self.is_hub && !self.closing {
            // A client without its hub has nobody to talk to. Losing it is
            // a failure; the hub saying goodbye is not.
            self.failed = reason != RudpCloseReason::ClosedByPeer;
            self.stop = true;
        }
        if self.closing && self.peers.is_empty() {
            self.stop = true;
        }
    }

    /// The only timer is the shutdown grace period.
    fn on_timer(&mut self, _cx: &mut Ctx, _timer: TimerId) {
        if !self.peers.is_empty() {
            println!("* {} peer(s) did not confirm the close", self.peers.len());
        }
        self.stop = true;
    }

    fn on_signal(&mut self, cx: &mut Ctx, _watcher: SocketId, signal: i32) {
        println!("* signal {signal}");
        self.shut_down(cx);
    }
}

fn label(g: Guarantee) -> &'static str {
    match g {
        Guarantee::Delivery => "delivery",
        Guarantee::Order => "order",
        Guarantee::None => "none",
    }
}

// ---- main -----------------------------------------------------------------

fn main() -> ExitCode {
    let args = parse_args();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("rudp_chat: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs until `/quit`, end of input, a signal or (a client) the hub's
/// departure; `Ok(false)` if a client lost its hub without a goodbye.
fn run(args: Args) -> Result<bool, Error> {
    let mut reactor = Reactor::new()?;
    // SIGINT and SIGTERM arrive through the reactor, as callbacks.
    reactor.watch_signals(&[libc::SIGINT, libc::SIGTERM])?;

    // A short idle timeout with regular heartbeats: a silent link is kept
    // alive by PINGs, a dead one is noticed within `idle_timeout`.
    let config = RudpConfig::default()
        .idle_timeout(args.idle_timeout)
        .heartbeat_interval(Duration::from_secs(1).min(args.idle_timeout / 4))
        .handshake_timeout(args.idle_timeout);
    let is_hub = matches!(args.role, Role::Hub(_));
    let mut peers = HashMap::new();
    match args.role {
        Role::Hub(addr) => {
            let sock = reactor.bind_rudp(addr, config.clone())?;
            println!("* {} listening on {}", args.name, reactor.local_addr(sock)?);
        }
        Role::Client(hub) => {
            // A socket of its own, on an ephemeral port, connected to the
            // hub. The id is usable at once; on_rudp_connected follows (or
            // on_rudp_closed with Timeout if nobody answers).
            let peer = reactor.connect_rudp(hub, config.clone())?;
            peers.insert(peer, format!("hub {hub}"));
            println!("* {} connecting to {hub}", args.name);
        }
    }
    let c = config.sanitized();
    println!(
        "* idle timeout {:?}, heartbeat every {:?}: a vanished peer is reported within the idle timeout",
        c.idle_timeout, c.heartbeat_interval
    );

    let mut chat = Chat {
        name: args.name,
        is_hub,
        peers,
        stdin: LineReader::default(),
        closing: false,
        stop: false,
        failed: false,
    };
    // stdin in the loop, level-triggered: read once per call.
    if let Err(e) = reactor.add_fd(std::io::stdin(), Interest::READABLE, Trigger::Level) {
        log::debug!("stdin cannot be watched ({e}): treated as closed");
        chat.stdin_closed(&mut reactor);
    }
    // No timeout needed: sockets, stdin, timers and signals all wake
    // run_once.
    while !chat.stop {
        reactor.run_once(&mut chat, None)?;
    }
    Ok(!chat.failed)
}
