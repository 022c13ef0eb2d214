//! UDP measurements across a [`Link`]: one-way delay probes, an echo, and
//! the emulator's ceiling.
//!
//! Every datagram carries its sequence number and the sender's
//! `CLOCK_MONOTONIC` time ([`now_ns`]), which is the same clock in both
//! hosts, so the receiver measures one-way delays directly.

use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};

use super::{fmt_ns, now_ns, Dir, Impairments, Lateness, Link, LinkConfig};

/// Bytes of header (sequence number, send time, echo time) at the start
/// of every probe datagram; payloads are at least this long.
pub const HEADER: usize = 24;

/// A UDP socket bound in `host` to its address, port chosen by the kernel,
/// with 8 MiB socket buffers (forced past the sysctl limits).
pub fn udp_socket(host: &super::Host) -> io::Result<UdpSocket> {
    let addr = host.addr();
    let s = host.enter(|| UdpSocket::bind((addr, 0)))?;
    let _ = setsockopt(&s, sockopt::RcvBufForce, &(8 << 20));
    let _ = setsockopt(&s, sockopt::SndBufForce, &(8 << 20));
    Ok(s)
}

fn header(buf: &mut [u8], seq: u64, t0: u64, t1: u64) {
    buf[0..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&t0.to_le_bytes());
    buf[16..24].copy_from_slice(&t1.to_le_bytes());
}

fn field(buf: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap())
}

/// A datagram that arrived.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    /// Its sequence number (0 for the first sent).
    pub seq: u64,
    /// When it was sent ([`now_ns`]).
    pub sent_ns: u64,
    /// When the receiving socket returned it ([`now_ns`]).
    pub recv_ns: u64,
}

impl Arrival {
    /// One-way delay, nanoseconds.
    pub fn delay_ns(&self) -> u64 {
        self.recv_ns.saturating_sub(self.sent_ns)
    }
}

/// The result of [`udp_probe`].
#[derive(Clone, Debug, Default)]
pub struct Probe {
    /// Datagrams sent.
    pub sent: u64,
    /// Payload bytes of each.
    pub payload_len: usize,
    /// Those that arrived, in arrival order.
    pub arrivals: Vec<Arrival>,
    /// From the first send to the last.
    pub send_time: Duration,
}

impl Probe {
    /// Datagrams received.
    pub fn received(&self) -> u64 {
        self.arrivals.len() as u64
    }

    /// `1 - received / sent`.
    pub fn loss_ratio(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            1.0 - self.received() as f64 / self.sent as f64
        }
    }

    /// Arrivals with a lower sequence number than one that arrived before.
    pub fn reordered(&self) -> u64 {
        let mut hwm = None;
        let mut n = 0;
        for a in &self.arrivals {
            if hwm.is_some_and(|h| a.seq < h) {
                n += 1;
            } else {
                hwm = Some(a.seq);
            }
        }
        n
    }

    /// The one-way delays, nanoseconds, sorted.
    pub fn delays_sorted(&self) -> Vec<u64> {
        let mut d: Vec<u64> = self.arrivals.iter().map(Arrival::delay_ns).collect();
        d.sort_unstable();
        d
    }

    /// The `q` quantile (0.0 to 1.0) of the one-way delay (zero if nothing
    /// arrived).
    pub fn delay_quantile(&self, q: f64) -> Duration {
        let d = self.delays_sorted();
        if d.is_empty() {
            return Duration::ZERO;
        }
        let i = ((q.clamp(0.0, 1.0) * d.len() as f64).ceil() as usize).clamp(1, d.len()) - 1;
        Duration::from_nanos(d[i])
    }

    /// Received datagrams per second, from the first arrival to the last.
    pub fn recv_rate_pps(&self) -> f64 {
        match (self.arrivals.first(), self.arrivals.last()) {
            (Some(f), Some(l)) if l.recv_ns > f.recv_ns => {
                (self.arrivals.len() - 1) as f64 * 1e9 / (l.recv_ns - f.recv_ns) as f64
            }
            _ => 0.0,
        }
    }

    /// The lengths of the runs of consecutive lost sequence numbers.
    pub fn loss_bursts(&self) -> Vec<u64> {
        let mut got = vec![false; self.sent as usize];
        for a in &self.arrivals {
            if let Some(g) = got.get_mut(a.seq as usize) {
                *g = true;
            }
        }
        let mut runs = Vec::new();
        let mut run = 0;
        for g in got {
            if g {
                if run > 0 {
                    runs.push(run);
                }
                run = 0;
            } else {
                run += 1;
            }
        }
        if run > 0 {
            runs.push(run);
        }
        runs
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent {} received {} (loss {:.4}) reordered {} delay min {} p50 {} p99 {} max {}",
            self.sent,
            self.received(),
            self.loss_ratio(),
            self.reordered(),
            fmt_ns(self.delay_quantile(0.0).as_nanos() as u64),
            fmt_ns(self.delay_quantile(0.5).as_nanos() as u64),
            fmt_ns(self.delay_quantile(0.99).as_nanos() as u64),
            fmt_ns(self.delay_quantile(1.0).as_nanos() as u64),
        )
    }
}

/// Sends `count` datagrams of `payload_len` bytes (at least [`HEADER`])
/// in direction `dir`, one every `interval` (`Duration::ZERO`: as fast as
/// the socket takes them; below ~100 µs the sender catches up in bursts),
/// and records the arrivals until `linger` after the last send (or until
/// all arrived).
pub fn udp_probe(
    link: &Link,
    dir: Dir,
    count: u64,
    payload_len: usize,
    interval: Duration,
    linger: Duration,
) -> io::Result<Probe> {
    let payload_len = payload_len.max(HEADER);
    let rx = udp_socket(link.receiver(dir))?;
    let tx = udp_socket(link.sender(dir))?;
    let dst = rx.local_addr()?;
    rx.set_read_timeout(Some(Duration::from_millis(5)))?;
    let done = Arc::new(AtomicBool::new(false));
    let done_rx = done.clone();
    let receiver = std::thread::Builder::new()
        .name("linkem-probe-rx".into())
        .spawn(move || -> Vec<Arrival> {
            let mut arrivals = Vec::with_capacity(count as usize);
            let mut buf = vec![0u8; 65536];
            let mut done_at = None;
            loop {
                match rx.recv(&mut buf) {
                    Ok(n) if n >= HEADER => {
                        let recv_ns = now_ns();
                        arrivals.push(Arrival {
                            seq: field(&buf, 0),
                            sent_ns: field(&buf, 1),
                            recv_ns,
                        });
                        if arrivals.len() as u64 >= count {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            || e.kind() == io::ErrorKind::TimedOut
                            || e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => panic!("probe receiver: {e}"),
                }
                if done_rx.load(Ordering::Acquire) {
                    let t = *done_at.get_or_insert_with(now_ns);
                    if now_ns() - t >= linger.as_nanos() as u64 {
                        break;
                    }
                }
            }
            arrivals
        })?;
    let mut buf = vec![0u8; payload_len];
    let start = now_ns();
    let step = interval.as_nanos() as u64;
    let mut result = Ok(());
    for seq in 0..count {
        let due = start + seq * step;
        let now = now_ns();
        if due > now + 100_000 {
            std::thread::sleep(Duration::from_nanos(due - now));
        }
        header(&mut buf, seq, now_ns(), 0);
        if let Err(e) = tx.send_to(&buf, dst) {
            result = Err(e);
            break;
        }
    }
    let send_time = Duration::from_nanos(now_ns() - start);
    done.store(true, Ordering::Release);
    let arrivals = receiver
        .join()
        .map_err(|_| io::Error::other("probe receiver panicked"))?;
    result?;
    Ok(Probe {
        sent: count,
        payload_len,
        arrivals,
        send_time,
    })
}

/// One round trip of [`udp_echo`].
#[derive(Clone, Copy, Debug)]
pub struct Echo {
    /// Sequence number.
    pub seq: u64,
    /// One-way delay A→B (send to the echo server's receive), ns.
    pub a_to_b_ns: u64,
    /// One-way delay B→A (echo server's receive to A's receive), ns.
    pub b_to_a_ns: u64,
}

impl Echo {
    /// Round-trip time, ns.
    pub fn rtt_ns(&self) -> u64 {
        self.a_to_b_ns + self.b_to_a_ns
    }
}

/// Sends `count` datagrams of `payload_len` bytes from A to an echo server
/// in B, one every `interval`, each waiting at most `timeout` for its echo
/// (a lost one is skipped). Returns the echoes received, each with both
/// one-way delays (the server stamps its receive time in the echo).
pub fn udp_echo(
    link: &Link,
    count: u64,
    payload_len: usize,
    interval: Duration,
    timeout: Duration,
) -> io::Result<Vec<Echo>> {
    let payload_len = payload_len.max(HEADER);
    let server = udp_socket(link.b())?;
    let client = udp_socket(link.a())?;
    let dst: SocketAddr = server.local_addr()?;
    server.set_read_timeout(Some(Duration::from_millis(10)))?;
    client.set_read_timeout(Some(timeout))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_srv = stop.clone();
    let echo = std::thread::Builder::new()
        .name("linkem-echo".into())
        .spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop_srv.load(Ordering::Acquire) {
                if let Ok((n, from)) = server.recv_from(&mut buf) {
                    if n >= HEADER {
                        let t1 = now_ns();
                        buf[16..24].copy_from_slice(&t1.to_le_bytes());
                        let _ = server.send_to(&buf[..n], from);
                    }
                }
            }
        })?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; payload_len];
    let mut rbuf = vec![0u8; 65536];
    let mut result = Ok(());
    for seq in 0..count {
        if seq > 0 {
            std::thread::sleep(interval);
        }
        header(&mut buf, seq, now_ns(), 0);
        if let Err(e) = client.send_to(&buf, dst) {
            result = Err(e);
            break;
        }
        let deadline = now_ns() + timeout.as_nanos() as u64;
        while now_ns() < deadline {
            match client.recv(&mut rbuf) {
                Ok(n) if n >= HEADER && field(&rbuf, 0) == seq => {
                    let t2 = now_ns();
                    let (t0, t1) = (field(&rbuf, 1), field(&rbuf, 2));
                    out.push(Echo {
                        seq,
                        a_to_b_ns: t1.saturating_sub(t0),
                        b_to_a_ns: t2.saturating_sub(t1),
                    });
                    break;
                }
                Ok(_) => {} // a late echo of an earlier one
                Err(_) => break,
            }
        }
    }
    stop.store(true, Ordering::Release);
    echo.join()
        .map_err(|_| io::Error::other("echo server panicked"))?;
    result.map(|_| out)
}

/// What the emulator sustains with no impairment ([`ceiling`]).
#[derive(Clone, Debug)]
pub struct Ceiling {
    /// UDP payload bytes per datagram.
    pub payload_len: usize,
    /// How long the sender blasted.
    pub duration: Duration,
    /// Datagrams the sender handed to its socket.
    pub sent: u64,
    /// Packets the emulator read from A's device.
    pub emulator_in: u64,
    /// Packets it wrote to B's device.
    pub forwarded: u64,
    /// Datagrams B's socket received.
    pub received: u64,
    /// Packets A's kernel dropped at its TUN device (the emulator did not
    /// read them in time): the overload.
    pub tun_drops: u64,
    /// Forwarded packets per second.
    pub pps: f64,
    /// Forwarded megabits per second of IP packets (payload + 28 bytes).
    pub mbit_ip: f64,
    /// How late the emulator released packets meanwhile.
    pub lateness: Lateness,
}

impl Ceiling {
    /// Whether the emulator, not the sender, limited the rate: the sender
    /// offered more than the emulator read (its TUN queue overflowed).
    pub fn emulator_bound(&self) -> bool {
        self.tun_drops > 0
    }
}

impl fmt::Display for Ceiling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ceiling {:.0} pkt/s = {:.1} Mbit/s of {}-byte IP packets, {} (sent {} in {:.1} s, emulator in {} fwd {}, received {}, tun drops {}; late {})",
            self.pps,
            self.mbit_ip,
            self.payload_len + 28,
            if self.emulator_bound() {
                "emulator-bound"
            } else {
                "sender-bound: at least this"
            },
            self.sent,
            self.duration.as_secs_f64(),
            self.emulator_in,
            self.forwarded,
            self.received,
            self.tun_drops,
            self.lateness
        )
    }
}

/// Measures the emulator's ceiling: on a fresh link with `config`'s
/// real-time priority, MTU and queue length but no impairment, a sender in
/// A blasts `payload_len`-byte datagrams at B for `duration`, as fast as it
/// can; the rate the emulator forwards is the ceiling. (On a 2-core
/// machine sender, emulator and receiver share the cores, so this is the
/// ceiling *with* a busy sender beside it — as in a benchmark.)
pub fn ceiling(config: &LinkConfig, payload_len: usize, duration: Duration) -> io::Result<Ceiling> {
    let mut cfg = config.clone();
    cfg.a_to_b = Impairments::none();
    cfg.b_to_a = Impairments::none();
    let link = Link::new(cfg)?;
    let payload_len = payload_len.max(HEADER);
    let rx = udp_socket(link.b())?;
    let tx = udp_socket(link.a())?;
    let dst = rx.local_addr()?;
    rx.set_read_timeout(Some(Duration::from_millis(5)))?;
    let done = Arc::new(AtomicBool::new(false));
    let done_rx = done.clone();
    let receiver = std::thread::Builder::new()
        .name("linkem-ceil-rx".into())
        .spawn(move || -> u64 {
            let mut n = 0;
            let mut buf = vec![0u8; 65536];
            let mut idle_since = None;
            loop {
                match rx.recv(&mut buf) {
                    Ok(_) => {
                        n += 1;
                        idle_since = None;
                    }
                    Err(_) => {
                        if done_rx.load(Ordering::Acquire) {
                            let t = *idle_since.get_or_insert_with(now_ns);
                            if now_ns() - t > 50_000_000 {
                                return n;
                            }
                        }
                    }
                }
            }
        })?;
    // Warm up (ARP-free link, but the first packets allocate buffers).
    let buf = vec![0u8; payload_len];
    for _ in 0..100 {
        tx.send_to(&buf, dst)?;
    }
    std::thread::sleep(Duration::from_millis(50));
    link.reset_stats();
    let drops_before = link.a().tun_tx_dropped()?;
    let start = now_ns();
    let end = start + duration.as_nanos() as u64;
    let mut sent = 0u64;
    while now_ns() < end {
        for _ in 0..64 {
            tx.send_to(&buf, dst)?;
        }
        sent += 64;
    }
    let stats = link.stats();
    let elapsed = now_ns() - start;
    done.store(true, Ordering::Release);
    let received = receiver
        .join()
        .map_err(|_| io::Error::other("ceiling receiver panicked"))?;
    let s = &stats.a_to_b;
    let pps = s.forwarded as f64 * 1e9 / elapsed as f64;
    Ok(Ceiling {
        payload_len,
        duration: Duration::from_nanos(elapsed),
        sent,
        emulator_in: s.packets_in,
        forwarded: s.forwarded,
        received: received.saturating_sub(100),
        tun_drops: link.a().tun_tx_dropped()? - drops_before,
        pps,
        mbit_ip: pps * (payload_len + 28) as f64 * 8.0 / 1e6,
        lateness: s.lateness.clone(),
    })
}
