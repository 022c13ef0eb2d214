//! The rudp receive side against arbitrary fragments: a server `Endpoint`
//! with four connections that completed real handshakes (three from one
//! source, played by the target, which picks every packet number, sequence
//! number, fragment index, fragment count and length; one from another
//! source, a real client `Endpoint` sending real messages), fed DATA
//! datagrams built from the input, mixed with event polling, timeouts and
//! the client's traffic.
//!
//! After every step, what the server holds must stay within every receive
//! budget (per connection, per source, endpoint-wide), within a constant
//! plus `K` bytes per byte it received, and the heap (a counting global
//! allocator) must not grow by more than the endpoint accounts for, plus a
//! constant: memory grows with the bytes that arrived, never with what a
//! header claims.
//!
//! Input: a config byte, then records `op, …` (see `step`).

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use msgloop::rudp::wire::{ChunkRepr, Chunks, FragInfo, PacketRepr, Params, SetInfo};
use msgloop::rudp::{Endpoint, EventRef, Guarantee, RudpConfig};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; the counter is
// only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes held per byte received, at most. The worst case is a Delivery
/// message of zero bytes out of order: 7 bytes on the wire, one window
/// entry (128 bytes) held.
const K: usize = 20;
/// What may be held regardless of the bytes received: per connection, the
/// inbox's smallest arena and the unreliable partial reassemblies (at most
/// `max_unreliable_partials`, each charged its bookkeeping).
const C_PER_CONN: usize = 256 + 8 * (128 + 256 + 64);
/// Heap the endpoint may use beyond what it accounts as held: acks owed,
/// queues, timer entries (bounded, not counted as received data).
const HEAP_SLACK: isize = 32 << 10;

const SEQ0: u32 = 1_000;

fn emit(p: &PacketRepr<'_>) -> Vec<u8> {
    let mut b = vec![0u8; p.buffer_len()];
    match p.emit(&mut b) {
        Ok(n) => b.truncate(n),
        Err(_) => b.clear(),
    }
    b
}

struct World {
    server: Endpoint,
    cfg: RudpConfig,
    saddr: SocketAddr,
    now: Instant,
    buf: Vec<u8>,
    /// Raw connections: (source address, connection id, next packet number).
    raw: Vec<(SocketAddr, u32, u32)>,
    client: Endpoint,
    caddr: SocketAddr,
    peer: Option<msgloop::rudp::ConnectionHandle>,
    /// Bytes of every datagram the server was handed.
    received: usize,
    frag: usize,
    /// What the heap grew by inside the server's calls (the client's and
    /// the target's own allocations are not the server's).
    srv_heap: isize,
}

impl World {
    /// Runs `f` on the server, counting what the heap grew by meanwhile.
    fn srv<R>(&mut self, f: impl FnOnce(&mut Endpoint) -> R) -> R {
        let before = LIVE.load(Relaxed);
        let r = f(&mut self.server);
        self.srv_heap += LIVE.load(Relaxed) - before;
        r
    }

    fn deliver(&mut self, from: SocketAddr, d: &[u8]) {
        if d.is_empty() {
            return;
        }
        self.received += d.len();
        let now = self.now;
        self.srv(|s| {
            let _ = s.handle_datagram(now, from, d);
        });
    }

    /// The server's output: answers to the client go to it, the rest is
    /// dropped; the client's own output goes to the server.
    fn shuttle(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut to_raw = Vec::new();
        for _ in 0..8 {
            let mut moved = false;
            loop {
                let (now, mut buf) = (self.now, core::mem::take(&mut self.buf));
                let t = self.srv(|s| s.poll_transmit(now, &mut buf));
                self.buf = buf;
                let Some(t) = t else {
                    break;
                };
                moved = true;
                if t.dest == self.caddr {
                    let _ = self
                        .client
                        .handle_datagram(self.now, self.saddr, &self.buf[..t.len]);
                } else if to_raw.len() < 64 {
                    to_raw.push((t.dest, self.buf[..t.len].to_vec()));
                }
            }
            while let Some(t) = self.client.poll_transmit(self.now, &mut self.buf) {
                moved = true;
                let d = self.buf[..t.len].to_vec();
                let c = self.caddr;
                self.deliver(c, &d);
            }
            while self.client.poll_event().is_some() {}
            if !moved {
                break;
            }
        }
        to_raw
    }

    fn handshake(&mut self, from: SocketAddr, id: u32) {
        self.deliver(from, &emit(&PacketRepr::Initial { conn_id: id, nonce: 1 }));
        let cookie = self.shuttle().into_iter().find_map(|(to, d)| match PacketRepr::parse(&d) {
            Ok(PacketRepr::Challenge { cookie, .. }) if to == from => Some(cookie),
            _ => None,
        });
        let Some(cookie) = cookie else {
            return;
        };
        let params = Params {
            initial_seq: SEQ0,
            recv_window: 1024,
            max_datagram: 1200,
            max_ack_delay_ms: 10,
            max_message_len: 1 << 20,
        };
        self.deliver(
            from,
            &emit(&PacketRepr::Echo {
                conn_id: id,
                cookie,
                params,
            }),
        );
        self.deliver(from, &emit(&PacketRepr::Ping { conn_id: id, pn: 1, ack: None }));
        self.raw.push((from, id, 2));
        self.shuttle();
    }

    fn check(&self) {
        let st = self.server.stats();
        let held = st.recv_bytes_held as usize;
        assert!(held <= self.cfg.max_endpoint_recv_bytes, "endpoint budget: {held}");
        let mut by_source: Vec<(std::net::IpAddr, usize)> = Vec::new();
        let mut sum = 0;
        for p in self.server.peers() {
            let Some(s) = self.server.peer_stats(p) else {
                continue;
            };
            assert!(s.recv_bytes_held <= self.cfg.max_recv_buffer_bytes);
            sum += s.recv_bytes_held;
            let ip = self.server.remote_addr(p).map(|a| a.ip());
            if let Some(ip) = ip {
                match by_source.iter_mut().find(|(i, _)| *i == ip) {
                    Some((_, n)) => *n += s.recv_bytes_held,
                    None => by_source.push((ip, s.recv_bytes_held)),
                }
            }
        }
        assert_eq!(sum, held, "the endpoint's total is the connections' sum");
        for (ip, n) in by_source {
            assert!(n <= self.cfg.max_source_recv_bytes, "source {ip}: {n}");
        }
        let conns = self.server.len().max(1);
        assert!(
            held <= conns * C_PER_CONN + K * self.received,
            "{held} B held for {} B received",
            self.received
        );
        let heap = self.srv_heap;
        assert!(
            heap <= held as isize + HEAP_SLACK,
            "heap grew {heap} B, the endpoint accounts {held} B"
        );
    }

    /// One DATA datagram on raw connection `k` with up to four chunks
    /// described by `desc` (9 bytes each), their sequence numbers moved on
    /// by `shift`.
    fn data(&mut self, k: usize, n: usize, desc: &[u8], shift: u32) {
        let Some(&(from, id, pn)) = self.raw.get(k) else {
            return;
        };
        let f = self.frag;
        let max_count = self.cfg.max_message_len.div_ceil(f).max(2);
        let window = self.cfg.recv_window;
        let mut chunks = vec![0u8; 1200];
        let mut at = 0;
        let payload = vec![0x5Au8; f.max(1)];
        for d in desc.chunks_exact(9).take(n) {
            let flags = d[0];
            let seq_off = u32::from(u16::from_le_bytes([d[1], d[2]])) + shift;
            let a = u16::from_le_bytes([d[3], d[4]]);
            let b = u16::from_le_bytes([d[5], d[6]]);
            let len = usize::from(u16::from_le_bytes([d[7], d[8]]));
            let g = match flags & 3 {
                0 => Guarantee::None,
                1 => Guarantee::Order,
                _ => Guarantee::Delivery,
            };
            // Arbitrary header values (mostly violations) one time in four.
            let raw = flags & 0xA0 == 0xA0;
            let (frag, plen) = if flags & 4 == 0 {
                (None, if raw { len } else { len % (f + 1) })
            } else if raw {
                (Some(FragInfo { index: a, count: b }), len)
            } else {
                let count = 2 + (usize::from(b) % (max_count - 1)) as u16;
                let index = if flags & 0x40 != 0 { count - 1 } else { a % count };
                let plen = if index + 1 == count { 1 + len % f } else { f };
                (Some(FragInfo { index, count }), plen)
            };
            let set = (g == Guarantee::Delivery && flags & 8 != 0).then(|| {
                let slen = 1 + (a >> 8) % 8;
                SetInfo {
                    index: (a & 0xff) % slen,
                    len: slen,
                }
            });
            let seq = if raw {
                SEQ0.wrapping_add(seq_off << 8)
            } else {
                SEQ0 + seq_off % window
            };
            let c = ChunkRepr {
                guarantee: g,
                seq,
                frag,
                set,
                payload: &payload[..plen.min(payload.len())],
            };
            if at + c.buffer_len() > 1200 - 30 {
                break;
            }
            if let Ok(w) = c.emit(&mut chunks[at..]) {
                at += w;
            }
        }
        let Ok(chunks) = Chunks::new_checked(&chunks[..at]) else {
            return;
        };
        let d = emit(&PacketRepr::Data {
            conn_id: id,
            pn,
            ack: None,
            chunks,
        });
        if let Some(c) = self.raw.get_mut(k) {
            c.2 = pn.wrapping_add(1);
        }
        self.deliver(from, &d);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    // Budgets small enough for an input to reach them.
    let (mtu, max_msg) = match sel & 3 {
        0 => (1200, 1 << 20),
        1 => (1200, 32 << 10),
        2 => (300, 64 << 10),
        _ => (128, 16 << 10),
    };
    let cfg = RudpConfig::default()
        .mtu(mtu)
        .max_message_len(max_msg)
        .max_recv_buffer_bytes(if sel & 4 == 0 { 2 * max_msg } else { 8 << 20 })
        .max_endpoint_recv_bytes(4 * max_msg)
        .max_source_recv_bytes(3 * max_msg)
        .recv_window(if sel & 8 == 0 { 1024 } else { 64 })
        .max_unreliable_partials(1 + usize::from(sel >> 4) % 8)
        // Violations discard their datagram but never close: an input
        // keeps its connections.
        .max_protocol_violations(1 << 20)
        .sanitized();
    let saddr: SocketAddr = "10.0.0.9:9000".parse().unwrap();
    let caddr: SocketAddr = "10.9.0.1:4000".parse().unwrap();
    let mut w = World {
        server: Endpoint::new(cfg.clone(), 1),
        cfg: cfg.clone(),
        saddr,
        now: Instant::now(),
        buf: vec![0u8; 2048],
        raw: Vec::new(),
        client: Endpoint::new(cfg.clone(), 2),
        caddr,
        peer: None,
        received: 0,
        frag: mtu - 45,
        srv_heap: 0,
    };
    let a: SocketAddr = "10.1.0.1:5000".parse().unwrap();
    for id in 1..=3 {
        w.handshake(a, id);
    }
    let now = w.now;
    w.peer = w.client.connect(now, saddr).ok();
    w.shuttle();
    w.srv_heap = 0;
    let mut steps = 0;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        steps += 1;
        if steps > 2000 {
            break;
        }
        match op % 8 {
            // DATA on raw connection 0..=2 with 1..=4 chunks; with bit 5,
            // a burst: the same chunks again in 64 or 512 datagrams, each
            // for the next messages (so that one input reaches the budgets).
            0..=3 => {
                let k = usize::from(op % 4).min(2);
                let n = 1 + usize::from(op >> 3) % 4;
                let take = (9 * n).min(rest.len());
                let (desc, tail) = rest.split_at(take);
                rest = tail;
                let reps = match (op & 0x20 != 0, op & 0x80 != 0) {
                    (false, _) => 1,
                    (true, false) => 64,
                    (true, true) => 512,
                };
                for r in 0..reps {
                    w.data(k, n, desc, r);
                    if r % 64 == 63 {
                        w.shuttle();
                        w.check();
                    }
                }
            }
            // Poll every event (by reference or by copy).
            4 => w.srv(|s| {
                if op & 0x10 == 0 {
                    while let Some((_, ev)) = s.poll_event_ref() {
                        if let EventRef::Message { data, .. } = ev {
                            assert!(data.len() <= max_msg);
                        }
                    }
                } else {
                    while s.poll_event().is_some() {}
                }
            }),
            // Time passes.
            5 => {
                w.now += Duration::from_millis(u64::from(op >> 3) * 40);
                let now = w.now;
                w.srv(|s| s.handle_timeout(now));
                w.client.handle_timeout(now);
            }
            // The real client sends a message.
            6 => {
                let len = (usize::from(op >> 3) * 977) % max_msg;
                if let Some(p) = w.peer {
                    let _ = w.client.send(p, &vec![1u8; len], Guarantee::Delivery);
                }
            }
            // A PING on a raw connection.
            _ => {
                let k = usize::from(op >> 3) % 3;
                if let Some(&(from, id, pn)) = w.raw.get(k) {
                    w.raw[k].2 = pn.wrapping_add(1);
                    w.deliver(from, &emit(&PacketRepr::Ping { conn_id: id, pn, ack: None }));
                }
            }
        }
        w.shuttle();
        w.check();
    }
});
