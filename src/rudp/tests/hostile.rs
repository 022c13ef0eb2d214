//! Hostile peers against the receive budgets and the connection limits
//! (`docs/rudp.md` §3, §6, §8, §11): sparse fragments, connection-slot and
//! half-open floods from one source, and what happens at each budget.
//!
//! The attacker is played by the test ([`Raw`]): it injects datagrams from
//! an address of its own and reads the server's answers from
//! `Sim::captured`, so it can complete real handshakes and then send
//! exactly the bytes it wants. Memory is measured by the endpoint's own
//! accounting (`EndpointStats::recv_bytes_held`, which charges capacities
//! and bookkeeping overheads); `tests/rudp_sparse_alloc.rs` measures the
//! same attack with a counting allocator.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::rudp::sim::{LinkConfig, Sim};
use crate::rudp::wire::{
    ChunkRepr, Chunks, FragInfo, PacketRepr, PacketType, Params, ACK_DELAY_UNIT,
};
use crate::rudp::{
    Endpoint, EndpointStats, Event, Guarantee, MsgRef, RawEvent, RudpCloseReason, RudpConfig,
    RudpError,
};

const STEPS: u64 = 5_000_000;
/// The attacker's first Delivery sequence number (and Order/None).
const SEQ0: u32 = 1_000;
/// The attacker's first packet number.
const PN0: u32 = 70_000;
/// Fragment payload at the default mtu (1,200 − 45).
const F: usize = 1155;

fn emit(p: &PacketRepr<'_>) -> Vec<u8> {
    let mut b = vec![0u8; p.buffer_len()];
    let n = p.emit(&mut b).expect("emit");
    b.truncate(n);
    b
}

fn attacker(i: u8) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, i], 40_000))
}

fn params() -> Params {
    Params {
        initial_seq: SEQ0,
        recv_window: 1024,
        max_datagram: 1200,
        max_ack_delay_ms: 10,
        max_message_len: 1 << 20,
    }
}

/// One connection of a [`Raw`] peer.
#[derive(Debug, Clone, Copy)]
struct RawConn {
    id: u32,
    pn: u32,
    accepted: bool,
}

/// A peer played by the test: handshakes for real, then sends whatever
/// the test builds. Counts every byte it sends.
#[derive(Debug)]
struct Raw {
    addr: SocketAddr,
    server: usize,
    conns: Vec<RawConn>,
    sent: usize,
    chunk_buf: Vec<u8>,
}

impl Raw {
    fn new(addr: SocketAddr, server: usize) -> Self {
        Raw {
            addr,
            server,
            conns: Vec::new(),
            sent: 0,
            chunk_buf: vec![0u8; 2048],
        }
    }

    fn send(&mut self, sim: &mut Sim, d: &[u8]) {
        self.sent += d.len();
        sim.inject(self.addr, self.server, d);
    }

    /// The server's datagrams to us since the last call.
    fn take(&self, sim: &mut Sim) -> Vec<Vec<u8>> {
        let Some(c) = sim.captured.as_mut() else {
            return Vec::new();
        };
        let mut mine = Vec::new();
        c.retain_mut(|(_, to, d)| {
            if *to == self.addr {
                mine.push(core::mem::take(d));
                false
            } else {
                true
            }
        });
        mine
    }

    /// INITIALs for `ids`, a step, and the cookies they earned.
    fn cookies(&mut self, sim: &mut Sim, ids: &[u32]) -> Vec<(u32, u64)> {
        let mut got = Vec::new();
        for chunk in ids.chunks(200) {
            for &id in chunk {
                let d = emit(&PacketRepr::Initial {
                    conn_id: id,
                    nonce: u64::from(id),
                });
                self.send(sim, &d);
            }
            sim.step();
            sim.step();
            for d in self.take(sim) {
                if let Ok(PacketRepr::Challenge {
                    conn_id, cookie, ..
                }) = PacketRepr::parse(&d)
                {
                    got.push((conn_id, cookie));
                }
            }
        }
        got
    }

    fn echo(&mut self, sim: &mut Sim, id: u32, cookie: u64) {
        let d = emit(&PacketRepr::Echo {
            conn_id: id,
            cookie,
            params: params(),
        });
        self.send(sim, &d);
    }

    /// Full handshakes (INITIAL, ECHO, and a PING that confirms) for
    /// `ids`, 16 at a time (the default `max_half_open_per_source`);
    /// returns how many the server accepted.
    fn handshake(&mut self, sim: &mut Sim, ids: &[u32]) -> usize {
        for chunk in ids.chunks(16) {
            self.handshake_some(sim, chunk);
        }
        self.conns.len()
    }

    fn handshake_some(&mut self, sim: &mut Sim, ids: &[u32]) {
        let known = self.conns.len();
        for (id, cookie) in self.cookies(sim, ids) {
            self.echo(sim, id, cookie);
            self.conns.push(RawConn {
                id,
                pn: PN0,
                accepted: false,
            });
        }
        sim.step();
        sim.step();
        for d in self.take(sim) {
            if let Ok(PacketRepr::Accept { conn_id, .. }) = PacketRepr::parse(&d) {
                if let Some(c) = self.conns.iter_mut().find(|c| c.id == conn_id) {
                    c.accepted = true;
                }
            }
        }
        self.conns.retain(|c| c.accepted);
        for k in known..self.conns.len() {
            self.ping(sim, k);
        }
        sim.step();
        self.take(sim);
    }

    fn ping(&mut self, sim: &mut Sim, k: usize) {
        let c = &mut self.conns[k];
        let d = emit(&PacketRepr::Ping {
            conn_id: c.id,
            pn: c.pn,
            ack: None,
        });
        c.pn += 1;
        self.send(sim, &d);
    }

    /// One DATA datagram on connection `k` carrying `chunks`.
    fn data(&mut self, sim: &mut Sim, k: usize, chunks: &[ChunkRepr<'_>]) {
        let mut n = 0;
        for c in chunks {
            n += c.emit(&mut self.chunk_buf[n..]).expect("chunk fits");
        }
        let conn = &mut self.conns[k];
        let d = emit(&PacketRepr::Data {
            conn_id: conn.id,
            pn: conn.pn,
            ack: None,
            chunks: Chunks::new_checked(&self.chunk_buf[..n]).expect("chunks"),
        });
        conn.pn += 1;
        self.send(sim, &d);
    }
}

fn frag_chunk(g: Guarantee, seq: u32, index: u16, count: u16, payload: &[u8]) -> ChunkRepr<'_> {
    ChunkRepr {
        guarantee: g,
        seq,
        frag: Some(FragInfo { index, count }),
        set: None,
        payload,
    }
}

fn whole_chunk(g: Guarantee, seq: u32, payload: &[u8]) -> ChunkRepr<'_> {
    ChunkRepr {
        guarantee: g,
        seq,
        frag: None,
        set: None,
        payload,
    }
}

/// Fragments of a message of the largest size at the default settings.
const COUNT_1MIB: u16 = (1usize << 20).div_ceil(F) as u16;

fn held(sim: &Sim, node: usize) -> usize {
    sim.nodes[node].ep.stats().recv_bytes_held as usize
}

/// Checks what a node holds against the bound of the brief: 8 MiB plus 8
/// bytes per byte the attacker sent.
fn assert_bounded(sim: &Sim, node: usize, sent: usize, what: &str) {
    let st = sim.nodes[node].ep.stats();
    let cfg = sim.nodes[node].ep.config();
    let h = st.recv_bytes_held as usize;
    println!(
        "{what}: {sent} B sent, {h} B held ({:.2} B per B sent), peak {} B",
        h as f64 / sent as f64,
        st.recv_bytes_held_peak
    );
    assert!(
        h <= (8 << 20) + 8 * sent,
        "{what}: {h} B held for {sent} B sent"
    );
    assert!(st.recv_bytes_held_peak as usize <= cfg.max_endpoint_recv_bytes);
    let ep = &sim.nodes[node].ep;
    for p in ep.peers() {
        let s = ep.peer_stats(p).expect("live");
        assert!(s.recv_bytes_held <= cfg.max_recv_buffer_bytes);
    }
}

// -- 1. sparse fragments ----------------------------------------------------------

/// The attack of the report: after real handshakes, 24-byte datagrams
/// each carrying only the last fragment (1 byte) of a 1 MiB message, on
/// many connections from one socket. Before: each cost the receiver a
/// buffer sized by the fragment's index (about 1 MiB, 8 MiB per
/// connection after nine). Now each costs what arrived plus a bounded
/// overhead, and the source's budget caps the total.
#[test]
fn sparse_last_fragments_cost_what_was_sent() {
    let cfg = RudpConfig::default();
    let mut sim = Sim::new(2, cfg.clone(), LinkConfig::default(), 1);
    sim.captured = Some(Vec::new());
    let mut raw = Raw::new(attacker(1), 1);
    let ids: Vec<u32> = (1..=128).collect();
    let n = raw.handshake(&mut sim, &ids);
    // One source: at most `max_connections_per_source` of the 128.
    assert_eq!(n, cfg.max_connections_per_source);
    let st = sim.nodes[1].ep.stats();
    assert_eq!(st.refused_per_source, 128 - 64);
    let payload = [0xAAu8];
    let mut seq = vec![SEQ0 + 1; n];
    let mut send_round = |raw: &mut Raw, sim: &mut Sim, per_conn: usize| {
        for _ in 0..per_conn {
            for (k, s) in seq.iter_mut().enumerate() {
                let c = frag_chunk(
                    Guarantee::Delivery,
                    *s,
                    COUNT_1MIB - 1,
                    COUNT_1MIB,
                    &payload,
                );
                raw.data(sim, k, &[c]);
                *s += 1;
            }
            sim.step();
            raw.take(sim);
        }
    };
    // Each datagram is 24 bytes, as in the report.
    let before = raw.sent;
    send_round(&mut raw, &mut sim, 1);
    assert_eq!(raw.sent - before, 24 * n);
    // Below the budgets: everything is held, at most 8 bytes per byte.
    send_round(&mut raw, &mut sim, 511);
    assert_bounded(&sim, 1, raw.sent, "sparse, 512 per connection");
    let st = sim.nodes[1].ep.stats();
    assert_eq!(st.recv_budget_refusals, 0);
    assert!(held(&sim, 1) <= 8 * raw.sent);
    // Far beyond: the source's budget holds.
    send_round(&mut raw, &mut sim, 3584);
    assert_bounded(&sim, 1, raw.sent, "sparse, 4096 per connection");
    let st = sim.nodes[1].ep.stats();
    assert!(st.recv_bytes_held as usize <= cfg.max_source_recv_bytes);
    assert!(st.recv_budget_refusals > 0);
    assert_eq!(st.closed_over_budget, 0);
    // Nothing was delivered (message SEQ0 never came) and no connection
    // broke the protocol.
    assert_eq!(st.protocol_violations, 0);
}

/// Denser still: as many last fragments as fit in a datagram (12 bytes
/// each); and fragments of random far positions, two per message (which
/// make real reassemblies).
#[test]
fn dense_and_scattered_far_fragments_are_bounded() {
    let cfg = RudpConfig::default();
    let mut sim = Sim::new(2, cfg.clone(), LinkConfig::default(), 2);
    sim.captured = Some(Vec::new());
    let mut raw = Raw::new(attacker(2), 1);
    let n = raw.handshake(&mut sim, &(1..=8).collect::<Vec<_>>());
    assert_eq!(n, 8);
    let tail = [1u8];
    let mut seq = SEQ0 + 1;
    for _ in 0..64 {
        for k in 0..n {
            let chunks: Vec<_> = (0..98)
                .map(|i| {
                    frag_chunk(
                        Guarantee::Delivery,
                        seq + i,
                        COUNT_1MIB - 1,
                        COUNT_1MIB,
                        &tail,
                    )
                })
                .collect();
            raw.data(&mut sim, k, &chunks);
        }
        seq += 98;
        sim.step();
        raw.take(&mut sim);
    }
    let sent = raw.sent;
    let h = held(&sim, 1);
    println!(
        "dense: {sent} B sent, {h} B held ({:.2} B per B sent)",
        h as f64 / sent as f64
    );
    // 12 bytes on the wire per message: the per-message entry dominates.
    assert!(h <= (8 << 20) + 16 * sent, "{h} B held for {sent} B");
    // Scattered: two full fragments at random far positions per message.
    let mut rng = crate::rudp::rng::Rng::new(3);
    let full = vec![7u8; F];
    for _ in 0..200 {
        for k in 0..n {
            let a = (rng.next_u32() % u32::from(COUNT_1MIB - 2)) as u16 + 1;
            let b = (a + 2 + (rng.next_u32() % 100) as u16).min(COUNT_1MIB - 2);
            let chunks = [
                frag_chunk(Guarantee::Delivery, seq, a, COUNT_1MIB, &full),
                frag_chunk(Guarantee::Delivery, seq, b, COUNT_1MIB, &full),
            ];
            raw.data(&mut sim, k, &chunks[..1]);
            raw.data(&mut sim, k, &chunks[1..]);
        }
        seq += 1;
        sim.step();
        raw.take(&mut sim);
    }
    assert_bounded(&sim, 1, raw.sent, "dense then scattered");
    let per_byte = (held(&sim, 1) - h) as f64 / (raw.sent - sent) as f64;
    println!("scattered alone: {per_byte:.2} B held per B sent");
    assert!(per_byte < 2.0);
    // The unreliable kinds: at most `max_unreliable_partials` each.
    for k in 0..n {
        for s in 0..100 {
            let c = frag_chunk(Guarantee::None, SEQ0 + s, 5, COUNT_1MIB, &full);
            raw.data(&mut sim, k, &[c]);
        }
    }
    sim.step();
    raw.take(&mut sim);
    assert_bounded(&sim, 1, raw.sent, "plus unreliable partials");
}

// -- 2. and 3. floods from one source ---------------------------------------------------

/// Virtual time from `connect` to `Connected` for node 0 connecting to
/// node 1, running `flood` before every step.
fn time_to_connect(sim: &mut Sim, mut flood: impl FnMut(&mut Sim)) -> Duration {
    let server = sim.nodes[1].addr;
    let t0 = sim.now;
    let peer = sim.nodes[0].ep.connect(t0, server).expect("room");
    let mut at = None;
    sim.run_until(STEPS, Duration::from_secs(30), |s| {
        flood(s);
        for (p, e) in s.take_events(0) {
            if p == peer && e == Event::Connected {
                at = Some(s.now);
            }
        }
        at.is_some()
    })
    .expect("connected");
    at.expect("connected") - t0
}

fn link() -> LinkConfig {
    LinkConfig {
        latency: Duration::from_millis(10),
        ..LinkConfig::default()
    }
}

/// The handshake time with nobody else around (two round trips).
fn baseline(cfg: &RudpConfig) -> Duration {
    let mut sim = Sim::new(2, cfg.clone(), link(), 9);
    let t = time_to_connect(&mut sim, |_| {});
    assert_eq!(t, Duration::from_millis(40));
    t
}

/// One UDP socket opens every connection it can (4,096, the endpoint's
/// `max_connections`) and keeps them alive: it gets
/// `max_connections_per_source`, and a client from elsewhere connects in
/// the time a handshake takes.
#[test]
fn connection_flood_from_one_socket_leaves_room_for_others() {
    let cfg = RudpConfig::default();
    let base = baseline(&cfg);
    let mut sim = Sim::new(3, cfg.clone(), link(), 10);
    let server = sim.nodes[1].addr;
    let now = sim.now;
    for _ in 0..cfg.max_connections {
        sim.nodes[2].ep.connect(now, server).expect("room");
    }
    sim.run_for(Duration::from_secs(3), STEPS).expect("runs");
    let st = sim.nodes[1].ep.stats();
    println!(
        "connection flood: {} accepted, ECHOs refused: {} per source, {} half-open per source",
        st.accepted, st.refused_per_source, st.refused_half_open_per_source
    );
    assert_eq!(st.connections, cfg.max_connections_per_source as u64);
    assert_eq!(st.accepted, cfg.max_connections_per_source as u64);
    assert!(st.refused_per_source > 0);
    assert_eq!(
        st.refused,
        st.refused_per_source + st.refused_half_open_per_source
    );
    let t = time_to_connect(&mut sim, |_| {});
    println!("connection flood: other source connected in {t:?} (alone: {base:?})");
    assert!(t <= base, "{t:?}");
    // The flood's connections are alive (kept by heartbeats), and so is ours.
    sim.run_for(Duration::from_secs(3), STEPS).expect("runs");
    let st = sim.nodes[1].ep.stats();
    assert_eq!(st.connections, cfg.max_connections_per_source as u64 + 1);
    assert_eq!(st.sources, 2);
}

/// Keeps the server's half-open table refilled from one source, with
/// cookies collected in advance: `per_ms` fresh ECHOs every millisecond.
struct HalfOpenFlood {
    raw: Raw,
    cookies: Vec<(u32, u64)>,
    next: usize,
    last: Option<Instant>,
    per_ms: usize,
}

impl HalfOpenFlood {
    fn new(sim: &mut Sim, n: u32, per_ms: usize) -> Self {
        let mut raw = Raw::new(attacker(3), 1);
        let ids: Vec<u32> = (1..=n).collect();
        let cookies = raw.cookies(sim, &ids);
        assert_eq!(cookies.len(), n as usize);
        HalfOpenFlood {
            raw,
            cookies,
            next: 0,
            last: None,
            per_ms,
        }
    }

    fn tick(&mut self, sim: &mut Sim) {
        if self
            .last
            .is_some_and(|t| sim.now < t + Duration::from_millis(1))
        {
            return;
        }
        self.last = Some(sim.now);
        for _ in 0..self.per_ms {
            let Some(&(id, cookie)) = self.cookies.get(self.next) else {
                return;
            };
            self.next += 1;
            self.raw.echo(sim, id, cookie);
        }
        self.raw.take(sim);
    }

    /// Floods a millisecond at a time (half-open connections arm no timer
    /// but the handshake deadline, so idle steps would jump to it) until
    /// `done`, within `limit` of virtual time.
    fn run(&mut self, sim: &mut Sim, limit: Duration, mut done: impl FnMut(&Sim) -> bool) {
        let deadline = sim.now + limit;
        while !done(sim) {
            assert!(sim.now < deadline, "not done within {limit:?}");
            self.tick(sim);
            sim.run_for(Duration::from_millis(1), STEPS).expect("runs");
        }
    }
}

/// One source holding real cookies keeps every half-open slot filled
/// (its per-source limits raised to the table's size, so that only
/// eviction lets others in): a client from another source evicts the
/// oldest of them and connects in the time a handshake takes.
#[test]
fn half_open_flood_from_one_source_is_evicted_for_others() {
    let cfg = RudpConfig::default()
        .max_half_open_per_source(256)
        .max_connections_per_source(4096);
    let base = baseline(&cfg);
    let mut sim = Sim::new(2, cfg.clone(), link(), 11);
    sim.captured = Some(Vec::new());
    let mut flood = HalfOpenFlood::new(&mut sim, 4000, 50);
    // Fill the table.
    flood.run(&mut sim, Duration::from_secs(5), |s| {
        s.nodes[1].ep.half_open() == cfg.max_half_open
    });
    sim.run_for(Duration::from_millis(100), STEPS)
        .expect("runs");
    let t = time_to_connect(&mut sim, |s| flood.tick(s));
    let st = sim.nodes[1].ep.stats();
    println!(
        "half-open flood: other source connected in {t:?} (alone: {base:?}); {} evicted, {} refused",
        st.half_open_evicted, st.refused_half_open
    );
    assert!(t <= base, "{t:?}");
    assert_eq!(st.half_open_evicted, 1);
    assert!(st.refused_half_open > 0);
    // The flood kept trying all along, and never took the slot back.
    let end = sim.now + Duration::from_millis(200);
    flood.run(&mut sim, Duration::from_secs(1), |s| s.now >= end);
    let st2 = sim.nodes[1].ep.stats();
    assert_eq!(st2.half_open_evicted, 1);
    assert!(st2.refused > st.refused);
    assert!(sim
        .take_events(0)
        .iter()
        .all(|(_, e)| !matches!(e, Event::Closed(_))));
}

/// The same flood with the default per-source limit: it gets 16 slots,
/// nobody is evicted, and a client from elsewhere connects at once.
#[test]
fn half_open_flood_from_one_source_is_capped_per_source() {
    let cfg = RudpConfig::default();
    let base = baseline(&cfg);
    let mut sim = Sim::new(2, cfg.clone(), link(), 12);
    sim.captured = Some(Vec::new());
    let mut flood = HalfOpenFlood::new(&mut sim, 1000, 50);
    let end = sim.now + Duration::from_millis(50);
    flood.run(&mut sim, Duration::from_secs(1), |s| s.now >= end);
    assert_eq!(sim.nodes[1].ep.half_open(), cfg.max_half_open_per_source);
    let t = time_to_connect(&mut sim, |s| flood.tick(s));
    let st = sim.nodes[1].ep.stats();
    println!("half-open flood, default limits: other source connected in {t:?}");
    assert!(t <= base, "{t:?}");
    assert_eq!(st.half_open_evicted, 0);
    assert!(st.refused_half_open_per_source > 0);
    assert_eq!(st.refused_half_open, 0);
}

/// Half-open connections evicted and expired alike leave no source entry
/// behind: the per-source table holds live sources only.
#[test]
fn source_table_is_emptied_when_connections_go() {
    let cfg = RudpConfig::default()
        .max_half_open(8)
        .handshake_timeout(Duration::from_secs(1));
    let mut sim = Sim::new(2, cfg.clone(), link(), 13);
    sim.captured = Some(Vec::new());
    for i in 0..20u8 {
        let mut raw = Raw::new(attacker(100 + i), 1);
        let cookies = raw.cookies(&mut sim, &[u32::from(i) + 1]);
        for (id, c) in cookies {
            raw.echo(&mut sim, id, c);
        }
        sim.step();
    }
    let st = sim.nodes[1].ep.stats();
    assert_eq!(st.half_open, 8);
    assert!(st.sources <= 8 + 1);
    sim.run_for(Duration::from_secs(3), STEPS).expect("runs");
    let st = sim.nodes[1].ep.stats();
    assert_eq!((st.connections, st.half_open, st.sources), (0, 0, 0));
    assert_eq!(st.recv_bytes_held, 0);
}

// -- sources -------------------------------------------------------------------------

fn echo_from(ep: &mut Endpoint, now: Instant, from: SocketAddr, id: u32) -> Result<(), RudpError> {
    ep.handle_datagram(
        now,
        from,
        &emit(&PacketRepr::Initial {
            conn_id: id,
            nonce: 1,
        }),
    )?;
    let mut buf = [0u8; 1500];
    let mut cookie = None;
    while let Some(t) = ep.poll_transmit(now, &mut buf) {
        if let Ok(PacketRepr::Challenge { cookie: c, .. }) = PacketRepr::parse(&buf[..t.len]) {
            cookie = Some(c);
        }
    }
    let d = emit(&PacketRepr::Echo {
        conn_id: id,
        cookie: cookie.expect("a challenge"),
        params: params(),
    });
    ep.handle_datagram(now, from, &d)
}

/// A source is an IPv4 address or an IPv6 /64 (configurable); IPv4 peers
/// of a dual-stack socket (IPv4-mapped addresses) are IPv4 sources.
#[test]
fn sources_are_addresses_and_prefixes() {
    let cfg = RudpConfig::default().max_connections_per_source(2);
    let mut ep = Endpoint::new(cfg.clone(), 1);
    let now = Instant::now();
    let a = |s: &str| -> SocketAddr { s.parse().expect("address") };
    // Three hosts of one /64.
    assert_eq!(echo_from(&mut ep, now, a("[2001:db8::1]:1"), 1), Ok(()));
    assert_eq!(echo_from(&mut ep, now, a("[2001:db8::2]:1"), 2), Ok(()));
    assert_eq!(
        echo_from(&mut ep, now, a("[2001:db8::3]:9"), 3),
        Err(RudpError::TooManyConnections)
    );
    // The next /64 is another source.
    assert_eq!(echo_from(&mut ep, now, a("[2001:db8:0:1::1]:1"), 4), Ok(()));
    // IPv4, plain or mapped: one source per address.
    for (i, s) in ["192.0.2.1:5", "[::ffff:192.0.2.1]:6"].iter().enumerate() {
        assert_eq!(echo_from(&mut ep, now, a(s), 10 + i as u32), Ok(()));
    }
    assert_eq!(
        echo_from(&mut ep, now, a("[::ffff:192.0.2.1]:7"), 12),
        Err(RudpError::TooManyConnections)
    );
    assert_eq!(
        echo_from(&mut ep, now, a("[::ffff:192.0.2.2]:7"), 13),
        Ok(())
    );
    let st = ep.stats();
    assert_eq!(st.refused_per_source, 2);
    assert_eq!(st.sources, 4);
    // A wider IPv6 prefix makes both /64s one source.
    let mut ep = Endpoint::new(cfg.source_prefix_v6(48), 1);
    assert_eq!(echo_from(&mut ep, now, a("[2001:db8::1]:1"), 1), Ok(()));
    assert_eq!(echo_from(&mut ep, now, a("[2001:db8:0:1::1]:1"), 2), Ok(()));
    assert_eq!(
        echo_from(&mut ep, now, a("[2001:db8:0:2::1]:1"), 3),
        Err(RudpError::TooManyConnections)
    );
}

// -- 4. behaviour at the budgets ----------------------------------------------------

const INIT: u32 = 5_000;

fn messages_of(sim: &mut Sim, node: usize) -> Vec<Vec<u8>> {
    sim.take_events(node)
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::Message { data, .. } => Some(data),
            _ => None,
        })
        .collect()
}

/// A connection's messages wait out of order behind one that is lost for a
/// while, until the endpoint's budget is full: later messages are refused
/// (their packets left unacknowledged), the sender backs off and sends
/// them again, and once the lost one gets through every message is
/// delivered exactly once, in order. Nobody is closed: the budget is held
/// by the connection's own source.
#[test]
fn reliable_data_refused_at_the_budget_comes_again_exactly_once() {
    let mut cfg = RudpConfig::default()
        .max_message_len(16 << 10)
        .max_endpoint_recv_bytes(64 << 10);
    cfg.initial_sequence = Some(INIT);
    let link = LinkConfig {
        latency: Duration::from_millis(5),
        ..LinkConfig::default()
    };
    let (mut sim, peer) = Sim::pair(cfg, link, 21);
    let n = 2000u32;
    for i in 0..n {
        let mut m = vec![0u8; 1000];
        m[..4].copy_from_slice(&i.to_be_bytes());
        sim.nodes[0]
            .ep
            .send(peer, &m, Guarantee::Delivery)
            .expect("queued");
    }
    // Message 10 is lost for 400 ms.
    let until = sim.now + Duration::from_millis(400);
    let clock = std::rc::Rc::new(std::cell::Cell::new(sim.now));
    let c2 = clock.clone();
    sim.drop_filter = Some(Box::new(move |from, _, d| {
        from == 0
            && c2.get() < until
            && matches!(PacketRepr::parse(d), Ok(PacketRepr::Data { chunks, .. })
                if chunks.iter().any(|c| c.guarantee == Guarantee::Delivery && c.seq == INIT + 10))
    }));
    let mut got = Vec::new();
    sim.run_until(STEPS, Duration::from_secs(60), |s| {
        clock.set(s.now);
        got.extend(messages_of(s, 1));
        got.len() as u32 >= n
    })
    .expect("all delivered");
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m[..4], (i as u32).to_be_bytes(), "message {i}");
    }
    sim.run_for(Duration::from_millis(500), STEPS)
        .expect("runs");
    assert!(messages_of(&mut sim, 1).is_empty(), "delivered twice");
    let st = sim.nodes[1].ep.stats();
    let peak = st.recv_bytes_held_peak;
    println!(
        "refused then retransmitted: {} chunks refused, peak {peak} B held",
        st.recv_budget_refusals
    );
    assert!(st.recv_budget_refusals > 0);
    assert!(peak <= 64 << 10);
    assert_eq!(st.closed_over_budget, 0);
    assert!(sim
        .take_events(0)
        .iter()
        .all(|(_, e)| !matches!(e, Event::Closed(_))));
}

/// Fills the server's (node 1's) endpoint budget from the attacker's
/// source: `reliable` out-of-order Delivery messages (of `F` bytes), then
/// `unreliable` partial reassemblies of None messages (every fragment but
/// the first), then the fragments of its own front message.
fn fill_budget(sim: &mut Sim, raw: &mut Raw, reliable: u32, unreliable: u32) {
    assert_eq!(raw.handshake(sim, &[77]), 1);
    let full = vec![3u8; F];
    for s in 1..=reliable {
        let c = whole_chunk(Guarantee::Delivery, SEQ0 + s, &full);
        raw.data(sim, 0, &[c]);
    }
    for m in 0..unreliable {
        for i in 1..10 {
            let c = frag_chunk(Guarantee::None, SEQ0 + m, i, 10, &full);
            raw.data(sim, 0, &[c]);
        }
    }
    for i in 1..14 {
        let c = frag_chunk(Guarantee::Delivery, SEQ0, i, 14, &full);
        raw.data(sim, 0, &[c]);
    }
    sim.step();
    raw.take(sim);
}

fn budget_cfg() -> RudpConfig {
    RudpConfig::default()
        .max_message_len(16 << 10)
        .max_endpoint_recv_bytes(128 << 10)
        .max_source_recv_bytes(128 << 10)
}

/// The endpoint's budget is held by another source, partly in unreliable
/// partial reassemblies: those are dropped first to let a client from
/// elsewhere deliver a fragmented message; nobody is closed.
#[test]
fn unreliable_partials_are_dropped_first() {
    let cfg = budget_cfg();
    let (mut sim, peer) = Sim::pair(cfg.clone(), LinkConfig::default(), 22);
    sim.run_for(Duration::from_millis(10), STEPS)
        .expect("handshake");
    sim.captured = Some(Vec::new());
    let mut raw = Raw::new(attacker(4), 1);
    fill_budget(&mut sim, &mut raw, 60, 2);
    let st = sim.nodes[1].ep.stats();
    let limit = cfg.max_endpoint_recv_bytes as u64;
    let msg = vec![9u8; 15 << 10];
    assert!(st.recv_bytes_held + msg.len() as u64 > limit, "{st:?}");
    let drops = st.recv_budget_drops;
    sim.nodes[0]
        .ep
        .send(peer, &msg, Guarantee::Delivery)
        .expect("queued");
    let mut got = Vec::new();
    sim.run_until(STEPS, Duration::from_secs(10), |s| {
        got.extend(messages_of(s, 1));
        !got.is_empty()
    })
    .expect("delivered");
    assert_eq!(got, vec![msg]);
    let st = sim.nodes[1].ep.stats();
    println!(
        "unreliable first: {} partials dropped, {} closed",
        st.recv_budget_drops - drops,
        st.closed_over_budget
    );
    assert!(st.recv_budget_drops > drops);
    assert_eq!(st.closed_over_budget, 0);
    assert_eq!(st.connections, 2);
    assert!(st.recv_bytes_held_peak <= limit);
}

/// The endpoint's budget is held by another source in reliable data only
/// (acknowledged: it cannot be dropped): as a last resort, its connection
/// is closed (`OverBudget`, a CLOSE with reason 2 sent) so that a client
/// from elsewhere delivers its message.
#[test]
fn last_resort_closes_the_largest_holder() {
    let cfg = budget_cfg();
    let (mut sim, peer) = Sim::pair(cfg.clone(), LinkConfig::default(), 23);
    sim.run_for(Duration::from_millis(10), STEPS)
        .expect("handshake");
    sim.captured = Some(Vec::new());
    let mut raw = Raw::new(attacker(5), 1);
    fill_budget(&mut sim, &mut raw, 200, 0);
    let msg = vec![9u8; 12 << 10];
    sim.nodes[0]
        .ep
        .send(peer, &msg, Guarantee::Delivery)
        .expect("queued");
    let mut got = Vec::new();
    let mut closed = Vec::new();
    let mut close_sent = false;
    sim.run_until(STEPS, Duration::from_secs(10), |s| {
        for (_, e) in s.take_events(1) {
            match e {
                Event::Message { data, .. } => got.push(data),
                Event::Closed(r) => closed.push(r),
                _ => {}
            }
        }
        for d in raw.take(s) {
            close_sent |= matches!(PacketRepr::parse(&d),
                Ok(PacketRepr::Close { reason, .. }) if reason.to_u8() == 2);
        }
        !got.is_empty()
    })
    .expect("delivered");
    assert_eq!(got, vec![msg]);
    assert_eq!(closed, vec![RudpCloseReason::OverBudget]);
    assert!(close_sent);
    let st = sim.nodes[1].ep.stats();
    assert_eq!(st.closed_over_budget, 1);
    assert!(st.recv_bytes_held_peak <= cfg.max_endpoint_recv_bytes as u64);
}

/// In order and whole, a message needs no room in the reactor's path (it
/// is handed over from the receive buffer): a client keeps making
/// progress with the endpoint's budget full, and nobody is closed.
#[test]
fn in_place_in_order_messages_need_no_budget() {
    let cfg = budget_cfg();
    let mut sim = Sim::new(2, cfg.clone(), LinkConfig::default(), 24);
    sim.captured = Some(Vec::new());
    let mut raw = Raw::new(attacker(6), 1);
    fill_budget(&mut sim, &mut raw, 200, 0);
    // Up to the last bytes: the front messages of more connections.
    let limit = cfg.max_endpoint_recv_bytes;
    let full = vec![5u8; F];
    let msg_len = 1000;
    let mut free = limit - held(&sim, 1);
    for id in 78..90 {
        if free < msg_len {
            break;
        }
        let k = raw.handshake(&mut sim, &[id]) - 1;
        for i in 1..13 {
            let c = frag_chunk(Guarantee::Delivery, SEQ0, i, 14, &full);
            raw.data(&mut sim, k, &[c]);
        }
        sim.step();
        free = limit - held(&sim, 1);
        let last = vec![5u8; free.saturating_sub(400).clamp(1, F)];
        let c = frag_chunk(Guarantee::Delivery, SEQ0, 13, 14, &last);
        raw.data(&mut sim, k, &[c]);
        sim.step();
        raw.take(&mut sim);
        free = limit - held(&sim, 1);
    }
    let conns = raw.conns.len() as u64;
    assert!(free < msg_len, "{free} B free");
    // A client driven by hand, its datagrams handled in place.
    let now = sim.now;
    let (caddr, saddr) = (sim.nodes[0].addr, sim.nodes[1].addr);
    let mut client = Endpoint::new(cfg, 99);
    let peer = client.connect(now, saddr).expect("room");
    let server = &mut sim.nodes[1].ep;
    let mut buf = vec![0u8; 1500];
    let mut got = 0u32;
    let n = 500u32;
    let mut sent = 0u32;
    for round in 0..2000 {
        let t = now + Duration::from_millis(round);
        while sent < n {
            let mut m = vec![0u8; msg_len];
            m[..4].copy_from_slice(&sent.to_be_bytes());
            if client.send(peer, &m, Guarantee::Delivery).is_err() {
                break;
            }
            sent += 1;
        }
        while let Some(tx) = client.poll_transmit(t, &mut buf) {
            let _ = server.handle_datagram_in_place(t, caddr, &buf[..tx.len], 0);
            while let Some((_, ev)) = server.poll_event_raw() {
                if let RawEvent::Message { data, .. } = ev {
                    let bytes = match data {
                        MsgRef::InPlace { offset, len } => buf[offset..offset + len].to_vec(),
                        MsgRef::Bytes(b) => b.to_vec(),
                    };
                    assert_eq!(bytes.len(), msg_len);
                    assert_eq!(bytes[..4], got.to_be_bytes());
                    got += 1;
                }
            }
        }
        while let Some(tx) = server.poll_transmit(t, &mut buf) {
            if tx.dest == caddr {
                let _ = client.handle_datagram(t, saddr, &buf[..tx.len]);
            }
        }
        while client.poll_event().is_some() {}
        for ep in [&mut client, &mut *server] {
            if ep.poll_timeout().is_some_and(|d| d <= t) {
                ep.handle_timeout(t);
            }
        }
        if got == n {
            break;
        }
    }
    assert_eq!(got, n);
    let st = server.stats();
    assert_eq!(st.closed_over_budget, 0);
    assert_eq!(st.connections, conns + 1);
}

// -- 5. ack delay ------------------------------------------------------------------------

/// A delayed ack sent late (the reactor's timers round up to whole
/// milliseconds) reports at most the `max_ack_delay` the receiver
/// announced: 625 units of 16 µs for 10 ms.
#[test]
fn late_ack_reports_at_most_the_announced_delay() {
    let cfg = RudpConfig::default();
    let t0 = Instant::now();
    let (ca, sa): (SocketAddr, SocketAddr) =
        ("10.0.0.1:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap());
    let mut client = Endpoint::new(cfg.clone(), 1);
    let mut server = Endpoint::new(cfg.clone(), 2);
    let peer = client.connect(t0, sa).expect("room");
    let mut buf = vec![0u8; 1500];
    let mut shuttle = |client: &mut Endpoint, server: &mut Endpoint, t: Instant| {
        let mut acks = Vec::new();
        for _ in 0..4 {
            while let Some(tx) = client.poll_transmit(t, &mut buf) {
                let _ = server.handle_datagram(t, ca, &buf[..tx.len]);
            }
            while let Some(tx) = server.poll_transmit(t, &mut buf) {
                if let Ok(PacketRepr::Ack { ack, .. }) = PacketRepr::parse(&buf[..tx.len]) {
                    acks.push(ack);
                }
                let _ = client.handle_datagram(t, sa, &buf[..tx.len]);
            }
            while client.poll_event().is_some() {}
            while server.poll_event().is_some() {}
        }
        acks
    };
    shuttle(&mut client, &mut server, t0);
    // Whatever was owed is acked.
    let t = t0 + Duration::from_millis(50);
    server.handle_timeout(t);
    client.handle_timeout(t);
    shuttle(&mut client, &mut server, t);
    let t1 = t0 + Duration::from_millis(100);
    client
        .send(peer, b"one", Guarantee::Delivery)
        .expect("queued");
    let acks = shuttle(&mut client, &mut server, t1);
    assert!(acks.is_empty(), "the ack is delayed");
    let due = server.poll_timeout().expect("ack timer");
    assert_eq!(due, t1 + cfg.max_ack_delay);
    // The timer fires 1.5 ms late.
    let late = due + Duration::from_micros(1500);
    server.handle_timeout(late);
    let mut delays = Vec::new();
    while let Some(tx) = server.poll_transmit(late, &mut buf) {
        if let Ok(PacketRepr::Ack { ack, .. } | PacketRepr::Ping { ack: Some(ack), .. }) =
            PacketRepr::parse(&buf[..tx.len])
        {
            delays.push(ack.delay);
        }
    }
    let max_units = (cfg.max_ack_delay.as_micros() / ACK_DELAY_UNIT.as_micros()) as u16;
    assert_eq!(max_units, 625);
    assert_eq!(delays, vec![max_units]);
    let _ = PacketType::Ack;
}

/// Budget events reach the endpoint's counters.
#[test]
fn budget_counters_add_up() {
    let cfg = budget_cfg();
    let mut sim = Sim::new(2, cfg, LinkConfig::default(), 25);
    sim.captured = Some(Vec::new());
    let mut raw = Raw::new(attacker(7), 1);
    fill_budget(&mut sim, &mut raw, 200, 6);
    let st: EndpointStats = sim.nodes[1].ep.stats();
    let ep = &sim.nodes[1].ep;
    let (mut drops, mut refusals) = (0, 0);
    for p in ep.peers() {
        let s = ep.peer_stats(p).expect("live");
        drops += s.recv_budget_drops;
        refusals += s.recv_budget_refusals;
    }
    assert!(refusals > 0);
    assert_eq!(
        (st.recv_budget_drops, st.recv_budget_refusals),
        (drops, refusals)
    );
}

/// A server with two clients (nodes 1 and 2) connected; the server's
/// handles for them, in node order.
fn two_clients(cfg: RudpConfig) -> (Sim, [crate::rudp::ConnectionHandle; 2]) {
    let mut sim = Sim::new(3, cfg, LinkConfig::default(), 77);
    let server = sim.nodes[0].addr;
    let now = sim.now;
    for i in 1..3 {
        sim.nodes[i].ep.connect(now, server).expect("room");
    }
    sim.run_until(STEPS, Duration::from_secs(5), |s| {
        s.nodes[0].ep.len() == 2 && s.nodes[0].ep.half_open() == 0
    })
    .expect("both connect");
    sim.run_for(Duration::from_millis(100), STEPS)
        .expect("settle");
    let mut handles: Vec<_> = sim.nodes[0].ep.peers().collect();
    let addr1 = sim.nodes[1].addr;
    handles.sort_by_key(|&h| sim.nodes[0].ep.remote_addr(h) != Some(addr1));
    (sim, [handles[0], handles[1]])
}

/// Messages of up to 1,000 bytes and a send queue that never limits:
/// only the send budgets (`source` bytes per source) do.
fn send_budgets(source: usize) -> RudpConfig {
    RudpConfig::new()
        .max_message_len(1000)
        .max_send_queue_bytes(1 << 20)
        .max_source_send_bytes(source)
}

/// [`two_clients`] whose datagrams never reach the server: no acks.
fn two_clients_without_acks(cfg: RudpConfig) -> (Sim, [crate::rudp::ConnectionHandle; 2]) {
    let (mut sim, peers) = two_clients(cfg);
    sim.drop_filter = Some(Box::new(|from, _, _| from != 0));
    (sim, peers)
}

/// Queues 1,000-byte Delivery messages on `peer` until refused; how many
/// were queued and the error.
fn fill_send(
    sim: &mut Sim,
    peer: crate::rudp::ConnectionHandle,
) -> (usize, crate::rudp::SendError) {
    let msg = [7u8; 1000];
    for n in 0.. {
        if let Err(e) = sim.nodes[0].ep.send(peer, &msg, Guarantee::Delivery) {
            return (n, e);
        }
    }
    unreachable!()
}

#[test]
fn peers_withholding_acks_pin_no_more_than_the_send_budgets() {
    let cfg = send_budgets(20_000).max_endpoint_send_bytes(30_000);
    let (mut sim, [a, b]) = two_clients_without_acks(cfg);
    let (n, e) = fill_send(&mut sim, a);
    assert_eq!(
        (n, e),
        (20, crate::rudp::SendError::QueueFull),
        "a source's budget"
    );
    let (n, e) = fill_send(&mut sim, b);
    assert_eq!(
        (n, e),
        (10, crate::rudp::SendError::QueueFull),
        "the endpoint's budget"
    );
    // The checks that say more than "wait" still come first.
    assert!(matches!(
        sim.nodes[0].ep.send(a, &[0u8; 1001], Guarantee::Delivery),
        Err(crate::rudp::SendError::TooLarge { .. })
    ));
    let st = sim.nodes[0].ep.stats();
    assert_eq!(st.send_bytes_held, 30_000);
    assert_eq!(st.send_budget_refusals, 2);
    sim.run_for(Duration::from_millis(50), STEPS).expect("run");
    assert_eq!(
        sim.nodes[0].ep.stats().send_bytes_held,
        30_000,
        "nothing acked"
    );
    sim.take_events(0);

    // Acks flow again: both queues drain and both senders hear Writable.
    sim.drop_filter = None;
    sim.run_until(STEPS, Duration::from_secs(10), |s| {
        s.nodes[0].ep.stats().send_bytes_held == 0
    })
    .expect("queues drain");
    let writable: Vec<_> = sim
        .take_events(0)
        .into_iter()
        .filter(|(_, ev)| matches!(ev, Event::Writable))
        .map(|(h, _)| h)
        .collect();
    assert!(
        writable.contains(&a) && writable.contains(&b),
        "{writable:?}"
    );
    assert_eq!(sim.nodes[0].ep.stats().send_bytes_held_peak, 30_000);
    assert_eq!(fill_send(&mut sim, a).0, 20);
}

#[test]
fn send_leases_are_given_back_when_another_send_needs_the_room() {
    let cfg = send_budgets(100_000).max_endpoint_send_bytes(100_000);
    let (mut sim, [a, b]) = two_clients_without_acks(cfg);
    sim.nodes[0]
        .ep
        .send(a, &[1u8; 1000], Guarantee::Delivery)
        .expect("room");
    // `a` reserved more than it queued, an eighth of the room at most.
    let held = sim.nodes[0].ep.stats().send_bytes_held;
    assert!((1_000..=1_000 + 99_000 / 8).contains(&held), "{held}");
    assert!(
        held > 1_000,
        "a lease is taken while the budgets are unused"
    );
    // What `a` reserved and did not use goes to `b`, to the byte.
    assert_eq!(fill_send(&mut sim, b).0, 99);
    assert_eq!(sim.nodes[0].ep.stats().send_bytes_held, 100_000);
    // Acknowledged and empty, both queues give everything back.
    sim.drop_filter = None;
    sim.run_until(STEPS, Duration::from_secs(10), |s| {
        s.nodes[0].ep.stats().send_bytes_held == 0
    })
    .expect("queues drain and leases go back");
}

#[test]
fn no_send_lease_is_taken_while_a_sender_waits() {
    let cfg = send_budgets(20_000).max_endpoint_send_bytes(100_000);
    let (mut sim, [a, b]) = two_clients_without_acks(cfg);
    assert_eq!(fill_send(&mut sim, a).0, 20);
    // `a` waits for room: the totals stay what is queued, so that it is
    // woken when they drain to half.
    sim.nodes[0]
        .ep
        .send(b, &[1u8; 1000], Guarantee::Delivery)
        .expect("room");
    assert_eq!(sim.nodes[0].ep.stats().send_bytes_held, 21_000);
}

#[test]
fn a_source_over_its_send_budget_does_not_block_other_sources() {
    let cfg = send_budgets(10_000).max_endpoint_send_bytes(100_000);
    let (mut sim, [a, b]) = two_clients_without_acks(cfg);
    assert_eq!(fill_send(&mut sim, a).0, 10);
    assert_eq!(fill_send(&mut sim, b).0, 10);
}

#[test]
fn one_source_shares_its_send_budget() {
    let cfg = send_budgets(10_000).source_prefix_v4(24);
    let (mut sim, [a, b]) = two_clients_without_acks(cfg);
    assert_eq!(fill_send(&mut sim, a).0, 10);
    assert_eq!(fill_send(&mut sim, b).0, 0, "10.0.0.0/24 is one source");
}

#[test]
fn half_open_connections_send_nothing_but_their_accept() {
    let mut sim = Sim::new(2, RudpConfig::default(), link(), 5);
    sim.captured = Some(Vec::new());
    let mut raw = Raw::new(attacker(9), 1);
    let cookies = raw.cookies(&mut sim, &[1, 2, 3, 4]);
    assert_eq!(cookies.len(), 4);
    for &(id, cookie) in &cookies {
        raw.echo(&mut sim, id, cookie);
    }
    // Never confirmed: until the handshake deadline (10 s) they are
    // half-open, and then they go.
    sim.run_for(Duration::from_secs(12), STEPS).expect("runs");
    let mut kinds = std::collections::BTreeMap::new();
    for d in raw.take(&mut sim) {
        let kind = PacketRepr::parse(&d).map(|p| p.packet_type());
        *kinds.entry(format!("{kind:?}")).or_insert(0) += 1;
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        vec![(format!("{:?}", Ok::<_, ()>(PacketType::Accept)), 4)],
        "only one ACCEPT per ECHO"
    );
    assert_eq!(sim.nodes[1].ep.len(), 0, "timed out");
}
