//! Kernel TCP bulk transfer across a [`Link`]: the baseline the reliable
//! UDP protocol is compared with.
//!
//! Retransmissions are counted with the namespace's own SNMP counters
//! (`/proc/net/snmp`, `Tcp: RetransSegs` and `OutSegs`, read inside the
//! sending host before and after): neither socket2 nor nix has a safe
//! `TCP_INFO`, and since each host is a private namespace, the counters
//! are this transfer's alone — as long as no other TCP connection runs
//! in that host meanwhile.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{now_ns, Dir, Link, Netns};

/// How much a [`bulk`] transfer sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Amount {
    /// This many bytes.
    Bytes(u64),
    /// As much as the connection takes in this time (the sender stops
    /// writing then; what it wrote is still delivered).
    For(Duration),
}

/// The result of a [`bulk`] transfer.
#[derive(Clone, Debug)]
pub struct TcpRun {
    /// The congestion control used.
    pub cc: String,
    /// The direction.
    pub dir: Dir,
    /// Payload bytes received.
    pub bytes: u64,
    /// Receiver-side goodput in bits per second: payload bits received
    /// after the first read, over the time from the first read to the last
    /// byte.
    pub goodput_bps: f64,
    /// From the first byte received to the last.
    pub duration: Duration,
    /// From `connect` to the receiver seeing the end of the stream.
    pub total: Duration,
    /// TCP segments retransmitted by the sending host (`RetransSegs`).
    pub retransmits: u64,
    /// TCP segments the sending host sent (`OutSegs`, retransmissions
    /// excluded).
    pub segments_out: u64,
}

impl TcpRun {
    /// Goodput in megabits (10^6) per second.
    pub fn mbit(&self) -> f64 {
        self.goodput_bps / 1e6
    }
}

impl fmt::Display for TcpRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tcp {} {}: {:.2} Mbit/s goodput, {:.1} MB in {:.2} s, retransmits {} of {} segments ({:.2}%)",
            self.cc,
            self.dir,
            self.mbit(),
            self.bytes as f64 / 1e6,
            self.duration.as_secs_f64(),
            self.retransmits,
            self.segments_out,
            100.0 * self.retransmits as f64 / self.segments_out.max(1) as f64
        )
    }
}

/// `(RetransSegs, OutSegs)` of the namespace.
fn tcp_counters(ns: &Netns) -> io::Result<(u64, u64)> {
    let snmp = ns.proc_net("snmp")?;
    let mut lines = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = match (lines.next(), lines.next()) {
        (Some(n), Some(v)) => (n, v),
        _ => return Err(io::Error::other("no Tcp: lines in /proc/net/snmp")),
    };
    let get = |key: &str| -> io::Result<u64> {
        let i = names
            .split_whitespace()
            .position(|n| n == key)
            .ok_or_else(|| io::Error::other(format!("no {key} in /proc/net/snmp")))?;
        values
            .split_whitespace()
            .nth(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::other(format!("cannot parse {key}")))
    };
    Ok((get("RetransSegs")?, get("OutSegs")?))
}

/// Moves `amount` over one TCP connection in direction `dir` (the sender
/// connects from its host to a listener in the other), with congestion
/// control `cc` on the sending socket (`"bbr"`, `"cubic"`, `"reno"`; it
/// must be in `net.ipv4.tcp_available_congestion_control`). Fails if the
/// transfer takes longer than `timeout` from `connect` to the end.
pub fn bulk(
    link: &Link,
    dir: Dir,
    cc: &str,
    amount: Amount,
    timeout: Duration,
) -> io::Result<TcpRun> {
    let tx_host = link.sender(dir);
    let rx_host = link.receiver(dir);
    let rx_addr = rx_host.addr();
    let listener = rx_host.enter(|| TcpListener::bind((rx_addr, 0)))?;
    let dst: SocketAddr = listener.local_addr()?;
    let sock = tx_host.enter(|| Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)))?;
    sock.set_tcp_congestion(cc.as_bytes())?;
    let mut got = sock.tcp_congestion()?;
    while got.last() == Some(&0) {
        got.pop();
    }
    if got != cc.as_bytes() {
        return Err(io::Error::other(format!(
            "congestion control is {} after setting {cc}",
            String::from_utf8_lossy(&got)
        )));
    }
    let (retrans0, out0) = tcp_counters(tx_host.netns())?;
    let deadline = now_ns() + timeout.as_nanos() as u64;
    let remaining = move || {
        Duration::from_nanos(deadline.saturating_sub(now_ns())).max(Duration::from_millis(1))
    };

    let receiver = std::thread::Builder::new()
        .name("linkem-tcp-rx".into())
        .spawn(move || -> io::Result<(u64, u64, u64, u64, u64)> {
            let (mut s, _) = listener.accept()?;
            let mut buf = vec![0u8; 1 << 18];
            let (mut total, mut first_len) = (0u64, 0u64);
            let (mut first, mut last) = (0u64, 0u64);
            loop {
                s.set_read_timeout(Some(remaining()))?;
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                last = now_ns();
                if total == 0 {
                    first = last;
                    first_len = n as u64;
                }
                total += n as u64;
            }
            Ok((total, first_len, first, last, now_ns()))
        })?;

    let start = now_ns();
    let sent = send(sock, dst, amount, remaining);
    if sent.is_err() {
        // Unblock the receiver, which may still be waiting in accept.
        let _ = rx_host.enter(|| TcpStream::connect_timeout(&dst, Duration::from_millis(100)));
    }
    let received = receiver
        .join()
        .map_err(|_| io::Error::other("TCP receiver panicked"))?;
    sent?;
    let (total, first_len, first, last, end) = received?;
    let (retrans1, out1) = tcp_counters(tx_host.netns())?;
    let span = last.saturating_sub(first);
    let goodput_bps = if span == 0 {
        0.0
    } else {
        (total - first_len) as f64 * 8e9 / span as f64
    };
    Ok(TcpRun {
        cc: cc.to_string(),
        dir,
        bytes: total,
        goodput_bps,
        duration: Duration::from_nanos(span),
        total: Duration::from_nanos(end - start),
        retransmits: retrans1 - retrans0,
        segments_out: out1 - out0,
    })
}

/// The sending side of [`bulk`]: connects, writes `amount`, shuts down
/// the write side.
fn send(
    sock: Socket,
    dst: SocketAddr,
    amount: Amount,
    remaining: impl Fn() -> Duration,
) -> io::Result<()> {
    sock.connect_timeout(&SockAddr::from(dst), remaining())?;
    let mut s: TcpStream = sock.into();
    let buf = vec![0x5au8; 1 << 18];
    let stop_at = match amount {
        Amount::For(d) => Some(now_ns() + d.as_nanos() as u64),
        Amount::Bytes(_) => None,
    };
    let mut left = match amount {
        Amount::Bytes(n) => n,
        Amount::For(_) => u64::MAX,
    };
    while left > 0 && stop_at.is_none_or(|t| now_ns() < t) {
        s.set_write_timeout(Some(remaining()))?;
        let n = (buf.len() as u64).min(left) as usize;
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    // Closing now would be fine too; keep the socket until the receiver
    // saw the end so that its counters include the whole transfer.
    let mut b = [0u8; 1];
    s.set_read_timeout(Some(remaining()))?;
    let _ = s.read(&mut b);
    Ok(())
}
