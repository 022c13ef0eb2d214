//! `tcp_idle_10k`: 10,000 concurrent TCP connections held by one reactor.
//!
//! The client is this same program run again as a separate process
//! (`bench --c10k-client ADDR N`): it opens N connections, says so on
//! stdout, and holds them until its stdin closes. The server side is one
//! reactor accepting them all. Reported:
//!
//! - memory per idle connection: the server's resident set (VmRSS) before
//!   and after accepting, divided by N — everything the process holds per
//!   connection (slab slot, connection state, allocator overhead); the
//!   kernel's socket memory is not in it;
//! - the cost of an idle `run_once(Some(ZERO))` with N idle connections,
//!   against the same call on an empty reactor (the `baseline` field):
//!   idle passes cost O(ready sockets), not O(connections).
//!
//! `ulimit -n` is 20,000 per process here: each side holds N + a few fds.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use msgloop::framing::FrameConfig;
use msgloop::{Ctx, Handler, PeerAddr, Reactor, SocketId, TcpOptions};

use super::report;

const CONNECTIONS: usize = 10_000;

/// The client process: open `n` connections to `addr`, report, hold them.
pub(crate) fn client_main(addr: &str, n: usize) -> io::Result<()> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(TcpStream::connect(addr)?);
    }
    println!("connected {}", conns.len());
    io::stdout().flush()?;
    // Hold them until the parent closes our stdin.
    let mut line = String::new();
    let _ = io::stdin().read_line(&mut line);
    Ok(())
}

fn rss_bytes() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .ok_or_else(|| io::Error::other("no VmRSS in /proc/self/status"))?;
    Ok(kb * 1024)
}

#[derive(Default)]
struct Accept {
    accepted: usize,
}

impl Handler for Accept {
    fn on_accept(&mut self, _cx: &mut Ctx, _l: SocketId, _c: SocketId, _p: &PeerAddr) {
        self.accepted += 1;
    }
}

/// ns per idle `run_once(Some(ZERO))`, the median of 5 runs of 2,000.
fn idle_pass_us(r: &mut Reactor, app: &mut Accept) -> io::Result<f64> {
    let mut runs = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..2_000 {
            if r.run_once(app, Some(Duration::ZERO))? != 0 {
                return Err(io::Error::other("an idle pass made callbacks"));
            }
        }
        runs.push(start.elapsed().as_secs_f64() * 1e9 / 2_000.0);
    }
    Ok(super::median(runs))
}

pub(crate) fn run(want: &dyn Fn(&str) -> bool) -> io::Result<()> {
    if !want("tcp_idle_10k") {
        return Ok(());
    }
    let mut empty = Reactor::new()?;
    let empty_cost = idle_pass_us(&mut empty, &mut Accept::default())?;

    let mut r = Reactor::new()?;
    // Every client comes from 127.0.0.1: no per-source limit.
    let opts = TcpOptions::new(FrameConfig::default())
        .max_connections_per_source(None)
        .max_connections(Some(CONNECTIONS + 100))
        .backlog(4096);
    let l = r.listen_tcp_with("127.0.0.1:0", &opts)?;
    let addr = r.local_addr(l)?.as_inet().expect("tcp");
    let mut app = Accept::default();
    // Warm the reactor's own buffers before the first RSS reading.
    r.run_once(&mut app, Some(Duration::ZERO))?;
    let rss_before = rss_bytes()?;

    let mut child = Command::new(std::env::current_exe()?)
        .args(["--c10k-client", &addr.to_string(), &CONNECTIONS.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let start = Instant::now();
    while app.accepted < CONNECTIONS {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            return Err(io::Error::other(format!(
                "only {} connections accepted",
                app.accepted
            )));
        }
        r.run_once(&mut app, Some(Duration::from_millis(50)))?;
    }
    let mut ready = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut ready)?;
    let accept_secs = start.elapsed().as_secs_f64();
    // Let every accept-time event settle, then measure idle passes.
    while r.run_once(&mut app, Some(Duration::from_millis(20)))? > 0 {}
    let rss_after = rss_bytes()?;
    let per_conn = (rss_after.saturating_sub(rss_before)) as f64 / CONNECTIONS as f64;
    let buffered: usize = r
        .socket_ids()
        .map(|id| r.buffered_bytes(id).unwrap_or(0))
        .sum();
    let idle_cost = idle_pass_us(&mut r, &mut app)?;
    drop(child.stdin.take()); // the client exits
    let _ = child.wait();
    report(
        "tcp_idle_10k",
        idle_cost,
        empty_cost,
        idle_cost / empty_cost,
        "ns_per_idle_run_once",
        "empty_reactor",
        &format!(
            "connections={} rss_per_conn_bytes={per_conn:.0} buffered_bytes_total={buffered} accept_secs={accept_secs:.2}",
            app.accepted
        ),
    );
    Ok(())
}
