//! The sparse-fragment attack on the rudp receive side, measured with a
//! counting allocator: after real handshakes, DATA datagrams of 24 bytes
//! each carrying only the last fragment (1 byte) of a 1 MiB message.
//!
//! The receiver must hold memory in proportion to the bytes that arrived
//! (at most 8 bytes per byte sent, plus a constant), not to what the
//! fragments' headers claim (before the fix, nine such datagrams pinned
//! 8 MiB on one connection). This binary has a global allocator of its
//! own that counts live bytes and allocations; it runs one test, so
//! nothing else allocates meanwhile (the harness's main thread only
//! waits).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::Instant;

use msgloop::rudp::wire::{ChunkRepr, Chunks, FragInfo, PacketRepr, Params};
use msgloop::rudp::{Endpoint, Guarantee, RudpConfig};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_ALLOCS: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; the counters are
// only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(l.size() as isize, Relaxed);
        LIVE_ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(l.size() as isize, Relaxed);
        LIVE_ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE_BYTES.fetch_sub(l.size() as isize, Relaxed);
        LIVE_ALLOCS.fetch_sub(1, Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new as isize - l.size() as isize, Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Live heap: bytes requested, and bytes the allocator really spends
/// (glibc: an 8-byte header per chunk, sizes rounded up to 16, at least
/// 32).
fn live() -> (isize, isize) {
    let b = LIVE_BYTES.load(Relaxed);
    let n = LIVE_ALLOCS.load(Relaxed);
    (b, b + 16 * n)
}

const SEQ0: u32 = 1_000;
/// Fragment payload at the default mtu (1,200 − 45), and the fragments of
/// a 1 MiB message.
const F: usize = 1155;
const COUNT: u16 = (1usize << 20).div_ceil(F) as u16;

fn emit(p: &PacketRepr<'_>) -> Vec<u8> {
    let mut b = vec![0u8; p.buffer_len()];
    let n = p.emit(&mut b).expect("emit");
    b.truncate(n);
    b
}

struct Attack {
    server: Endpoint,
    from: SocketAddr,
    now: Instant,
    buf: Vec<u8>,
    chunk: Vec<u8>,
    /// (connection id, next packet number, next sequence number)
    conns: Vec<(u32, u32, u32)>,
    sent: usize,
}

impl Attack {
    fn send(&mut self, d: &[u8]) {
        self.sent += d.len();
        let _ = self.server.handle_datagram(self.now, self.from, d);
    }

    /// The server's datagrams (and its events, dropped).
    fn drain(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(t) = self.server.poll_transmit(self.now, &mut self.buf) {
            out.push(self.buf[..t.len].to_vec());
        }
        while self.server.poll_event().is_some() {}
        out
    }

    /// Handshakes `ids`, one at a time.
    fn connect(&mut self, ids: impl Iterator<Item = u32>) {
        for id in ids {
            self.send(&emit(&PacketRepr::Initial {
                conn_id: id,
                nonce: 7,
            }));
            let cookie = self
                .drain()
                .iter()
                .find_map(|d| match PacketRepr::parse(d) {
                    Ok(PacketRepr::Challenge { cookie, .. }) => Some(cookie),
                    _ => None,
                });
            let params = Params {
                initial_seq: SEQ0,
                recv_window: 1024,
                max_datagram: 1200,
                max_ack_delay_ms: 10,
                max_message_len: 1 << 20,
            };
            self.send(&emit(&PacketRepr::Echo {
                conn_id: id,
                cookie: cookie.expect("a challenge"),
                params,
            }));
            let accepted = self
                .drain()
                .iter()
                .any(|d| matches!(PacketRepr::parse(d), Ok(PacketRepr::Accept { .. })));
            if accepted {
                self.send(&emit(&PacketRepr::Ping {
                    conn_id: id,
                    pn: 1,
                    ack: None,
                }));
                self.conns.push((id, 2, SEQ0 + 1));
            }
            self.drain();
        }
    }

    /// `per_conn` far last fragments (1 byte, one datagram each) on every
    /// connection.
    fn far_fragments(&mut self, per_conn: usize) {
        for _ in 0..per_conn {
            for k in 0..self.conns.len() {
                let (id, pn, seq) = self.conns[k];
                let c = ChunkRepr {
                    guarantee: Guarantee::Delivery,
                    seq,
                    frag: Some(FragInfo {
                        index: COUNT - 1,
                        count: COUNT,
                    }),
                    set: None,
                    payload: &[0xAA],
                };
                let n = c.emit(&mut self.chunk).expect("chunk");
                let d = emit(&PacketRepr::Data {
                    conn_id: id,
                    pn,
                    ack: None,
                    chunks: Chunks::new_checked(&self.chunk[..n]).expect("chunks"),
                });
                assert_eq!(d.len(), 24);
                self.send(&d);
                self.conns[k] = (id, pn + 1, seq + 1);
            }
            self.drain();
        }
    }
}

#[test]
fn sparse_fragments_cost_the_bytes_that_arrived() {
    let mut a = Attack {
        server: Endpoint::new(RudpConfig::default(), 5),
        from: "198.51.100.1:40000".parse().expect("address"),
        now: Instant::now(),
        buf: vec![0u8; 2048],
        chunk: vec![0u8; 64],
        conns: Vec::new(),
        sent: 0,
    };
    // Room for everything the test itself keeps, before measuring.
    a.conns.reserve(1024);
    a.connect(1..=1);
    // What a connection costs before it receives anything.
    let (_, c0) = live();
    a.connect(2..=16);
    let (_, c1) = live();
    let per_conn = (c1 - c0) / 15;
    println!("an established connection: {per_conn} B of heap");
    assert!(per_conn < 16 << 10, "{per_conn} B per connection");
    assert_eq!(a.conns.len(), 16);
    let (b0, r0) = live();
    let sent0 = a.sent;
    // The report's attack: nine far fragments per connection (they pinned
    // 8 MiB per connection before).
    a.far_fragments(9);
    let (b1, r1) = live();
    let sent = a.sent - sent0;
    println!(
        "9 far fragments on 16 connections: {sent} B sent, heap +{} B requested, +{} B with allocator overhead ({:.1} B per B sent); endpoint accounts {} B",
        b1 - b0,
        r1 - r0,
        (r1 - r0) as f64 / sent as f64,
        a.server.stats().recv_bytes_held
    );
    assert!(r1 - r0 <= 8 * sent as isize, "{} B for {sent} B", r1 - r0);
    // Many more, on more connections: the bound holds, and the endpoint's
    // accounting is never below what the allocator sees.
    a.connect(17..=64);
    let (b0, r0) = live();
    let held0 = a.server.stats().recv_bytes_held as isize;
    let sent0 = a.sent;
    a.far_fragments(512);
    let (b1, r1) = live();
    let sent = a.sent - sent0;
    let held = a.server.stats().recv_bytes_held as isize - held0;
    println!(
        "512 far fragments on 64 connections: {sent} B sent, heap +{} B requested, +{} B with allocator overhead ({:.2} B per B sent); endpoint accounts +{held} B ({:.2} B per B sent)",
        b1 - b0,
        r1 - r0,
        (r1 - r0) as f64 / sent as f64,
        held as f64 / sent as f64
    );
    assert!(r1 - r0 <= (8 << 20) + 8 * sent as isize);
    assert!(
        r1 - r0 <= held + (64 << 10),
        "the endpoint accounts {held} B, the heap grew {} B",
        r1 - r0
    );
    // And it all goes with the connections.
    for (id, _, _) in std::mem::take(&mut a.conns) {
        a.send(&emit(&PacketRepr::Close {
            conn_id: id,
            reason: msgloop::rudp::wire::CloseCode::Normal,
        }));
    }
    a.drain();
    assert_eq!(a.server.stats().recv_bytes_held, 0);
}
