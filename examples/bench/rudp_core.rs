//! RUDP core workloads: the sans-IO protocol alone over a perfect in-memory
//! link.
//!
//! - `rudp_core_64` / `rudp_core_1k`: two [`Endpoint`]s in one thread, A
//!   sending `Delivery` messages of 64 B / 1 KiB to B. Datagrams are handed
//!   from one endpoint to the other directly (no sockets, no loss); the
//!   clock is the real one, read once per round of the drive loop (as a
//!   reactor would once per `run_once`). Every message goes through
//!   `send` → `poll_transmit` → `handle_datagram` → `poll_event_ref`, and B
//!   checks the counter each message carries (exactly once, in order).
//!   Acks flow back B → A the same way. Each round hands over at most 32
//!   datagrams per direction, like one `sendmmsg`/`recvmmsg` batch.
//!
//! Baseline: the same bytes through a plain memcpy queue — each message
//! copied into a `VecDeque<u8>` ring and out again into a buffer, order
//! checked the same way. The ratio says what the protocol costs compared to
//! the cheapest possible hand-over of the bytes.
//!
//! Extra fields: `mb_per_s` (payload megabytes per second through the
//! protocol), `msgs_per_datagram` (packing), `datagrams` (A → B datagrams
//! per slice), `acks_per_datagram` (B → A datagrams per A → B datagram) and
//! `ns_per_msg` (the protocol's cost per message, both sides together).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use msgloop::rudp::{ConnectionHandle, Endpoint, EventRef, Guarantee, RudpConfig, SendError};

use super::{interleave, report, Side};

/// Messages per slice, per message size.
fn slice_messages(size: usize) -> u64 {
    if size <= 64 {
        200_000
    } else {
        50_000
    }
}

/// Datagrams handed over per direction per round: what one `sendmmsg` /
/// `recvmmsg` batch would carry in the reactor.
const BATCH: usize = 32;

/// A → B over a perfect in-memory link.
struct CorePair {
    a: Endpoint,
    b: Endpoint,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    peer: ConnectionHandle,
    size: usize,
    msg: Vec<u8>,
    buf: Vec<u8>,
    /// Next counter to send / expected next.
    next_send: u64,
    next_recv: u64,
    /// A → B and B → A datagrams so far.
    data_dgrams: u64,
    ack_dgrams: u64,
}

impl CorePair {
    fn new(size: usize) -> io::Result<Self> {
        let cfg = RudpConfig::default();
        let mut a = Endpoint::new(cfg.clone(), 0x5eed_000a);
        let b = Endpoint::new(cfg, 0x5eed_000b);
        let a_addr: SocketAddr = "127.0.0.1:1000".parse().expect("addr");
        let b_addr: SocketAddr = "127.0.0.1:2000".parse().expect("addr");
        let peer = a
            .connect(Instant::now(), b_addr)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut p = CorePair {
            a,
            b,
            a_addr,
            b_addr,
            peer,
            size,
            msg: vec![0x5a; size],
            buf: vec![0; 2048],
            next_send: 0,
            next_recv: 0,
            data_dgrams: 0,
            ack_dgrams: 0,
        };
        // Handshake.
        for _ in 0..10 {
            p.round(Instant::now())?;
        }
        if !p.a.connection(peer).is_some_and(|c| c.is_established()) {
            return Err(io::Error::other("rudp handshake did not complete"));
        }
        Ok(p)
    }

    /// One round of the drive loop: up to [`BATCH`] A → B datagrams, B's
    /// events, up to [`BATCH`] B → A datagrams, A's events, due timers.
    /// Returns whether anything moved.
    fn round(&mut self, now: Instant) -> io::Result<bool> {
        let mut moved = false;
        for _ in 0..BATCH {
            let Some(t) = self.a.poll_transmit(now, &mut self.buf) else {
                break;
            };
            moved = true;
            self.data_dgrams += 1;
            let _ = self.b.handle_datagram(now, self.a_addr, &self.buf[..t.len]);
        }
        while let Some((_, ev)) = self.b.poll_event_ref() {
            moved = true;
            if let EventRef::Message { data, .. } = ev {
                let mut c = [0u8; 8];
                c.copy_from_slice(&data[..8]);
                let got = u64::from_le_bytes(c);
                if got != self.next_recv || data.len() != self.size {
                    return Err(io::Error::other(format!(
                        "rudp bench: got message {got} (len {}), expected {} (len {})",
                        data.len(),
                        self.next_recv,
                        self.size
                    )));
                }
                self.next_recv += 1;
            }
        }
        for _ in 0..BATCH {
            let Some(t) = self.b.poll_transmit(now, &mut self.buf) else {
                break;
            };
            moved = true;
            self.ack_dgrams += 1;
            let _ = self.a.handle_datagram(now, self.b_addr, &self.buf[..t.len]);
        }
        while self.a.poll_event_ref().is_some() {
            moved = true;
        }
        for ep in [&mut self.a, &mut self.b] {
            if ep.poll_timeout().is_some_and(|t| t <= now) {
                ep.handle_timeout(now);
                moved = true;
            }
        }
        Ok(moved)
    }
}

impl Side for CorePair {
    fn run(&mut self, n: u64) -> io::Result<Duration> {
        let start = Instant::now();
        let (end_send, end_recv) = (self.next_send + n, self.next_recv + n);
        let mut idle_since: Option<Instant> = None;
        while self.next_recv < end_recv {
            while self.next_send < end_send {
                self.msg[..8].copy_from_slice(&self.next_send.to_le_bytes());
                match self.a.send(self.peer, &self.msg, Guarantee::Delivery) {
                    Ok(()) => self.next_send += 1,
                    Err(SendError::QueueFull) => break,
                    Err(e) => return Err(io::Error::other(e.to_string())),
                }
            }
            let now = Instant::now();
            if self.round(now)? {
                idle_since = None;
            } else {
                // Only timers can move things now (they should not be
                // needed on a perfect link); give up after 5 s.
                let since = *idle_since.get_or_insert(now);
                if now - since > Duration::from_secs(5) {
                    return Err(io::Error::other("rudp core bench stalled"));
                }
            }
        }
        Ok(start.elapsed())
    }
}

/// Baseline: every message copied into a byte ring and out again.
struct MemcpyQueue {
    ring: VecDeque<u8>,
    size: usize,
    msg: Vec<u8>,
    out: Vec<u8>,
    next_send: u64,
    next_recv: u64,
}

impl MemcpyQueue {
    fn new(size: usize) -> Self {
        MemcpyQueue {
            ring: VecDeque::with_capacity(1 << 20),
            size,
            msg: vec![0x5a; size],
            out: vec![0; size],
            next_send: 0,
            next_recv: 0,
        }
    }
}

impl Side for MemcpyQueue {
    fn run(&mut self, n: u64) -> io::Result<Duration> {
        let start = Instant::now();
        let end = self.next_send + n;
        // Batches of up to 256 messages in, then all out.
        while self.next_send < end {
            let batch = (end - self.next_send).min(256);
            for _ in 0..batch {
                self.msg[..8].copy_from_slice(&self.next_send.to_le_bytes());
                self.ring.extend(self.msg.iter().copied());
                self.next_send += 1;
            }
            while self.ring.len() >= self.size {
                let (x, y) = self.ring.as_slices();
                let k = x.len().min(self.size);
                self.out[..k].copy_from_slice(&x[..k]);
                self.out[k..].copy_from_slice(&y[..self.size - k]);
                self.ring.drain(..self.size);
                let mut c = [0u8; 8];
                c.copy_from_slice(&self.out[..8]);
                if u64::from_le_bytes(c) != self.next_recv {
                    return Err(io::Error::other("baseline out of order"));
                }
                self.next_recv += 1;
            }
        }
        std::hint::black_box(&self.out);
        Ok(start.elapsed())
    }
}

/// Runs the `rudp_core_*` workloads selected by `want`.
pub(crate) fn run(slices: usize, want: &dyn Fn(&str) -> bool) -> io::Result<()> {
    for (name, size) in [("rudp_core_64", 64usize), ("rudp_core_1k", 1024)] {
        if !want(name) {
            continue;
        }
        let n = slice_messages(size);
        let mut ours = CorePair::new(size)?;
        let mut base = MemcpyQueue::new(size);
        let (d0, a0, m0) = (ours.data_dgrams, ours.ack_dgrams, ours.next_recv);
        let (a, b, r) = interleave(slices, n, &mut ours, &mut base)?;
        let msgs = (ours.next_recv - m0).max(1) as f64;
        let dgrams = (ours.data_dgrams - d0).max(1) as f64;
        let acks = (ours.ack_dgrams - a0) as f64;
        let per_slice = dgrams / msgs * n as f64;
        report(
            name,
            a,
            b,
            r,
            "messages/s",
            "memcpy_through_a_queue",
            &format!(
                "mb_per_s={:.1} ns_per_msg={:.0} datagrams={:.0} msgs_per_datagram={:.2} \
                 acks_per_datagram={:.3} payload={size} slices={slices}x{n}",
                a * size as f64 / 1e6,
                1e9 / a,
                per_slice,
                msgs / dgrams,
                acks / dgrams,
            ),
        );
    }
    Ok(())
}
