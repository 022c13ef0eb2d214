//! Reliable UDP at scale and under a handshake flood, over real loopback
//! sockets:
//!
//! - 1,000 idle peers on one server socket: memory per peer and the cost of
//!   an idle `run_once` are printed; peers that vanish are timed out and
//!   freed.
//! - 10,000 handshake packets from many source ports create no state (the
//!   cookie handshake is stateless), and a real peer still connects during
//!   the flood.
//! - Sources that complete the cookie exchange but never confirm hold at
//!   most `max_half_open` connections, which expire; a real peer then gets
//!   in.
//!
//! Memory is measured with a counting global allocator (`util::alloc`)
//! that counts only while the measuring thread's flag is set: the clients
//! run in a second reactor on the same thread, driven with the flag off, so
//! only the server's allocations are counted.

mod util;

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use msgloop::rudp::wire::{PacketRepr, Params};
use msgloop::rudp::{RudpCloseReason, RudpConfig};
use msgloop::{Ctx, Handler, PeerId, Reactor, SocketId};

/// SplitMix64: seeded pseudo-random numbers for the flood's connection ids
/// and nonces.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

use util::alloc::counted;

#[global_allocator]
static GLOBAL: util::alloc::Counting = util::alloc::Counting;

/// Counts the callbacks of one side.
#[derive(Default)]
struct Peers {
    connected: HashSet<PeerId>,
    closed: Vec<(PeerId, RudpCloseReason)>,
    messages: u64,
}

impl Handler for Peers {
    fn on_rudp_connected(&mut self, _cx: &mut Ctx, peer: PeerId) {
        assert!(self.connected.insert(peer), "{peer} connected twice");
    }
    fn on_rudp_closed(&mut self, _cx: &mut Ctx, peer: PeerId, reason: RudpCloseReason) {
        self.closed.push((peer, reason));
    }
    fn on_rudp(&mut self, _cx: &mut Ctx, _p: PeerId, _m: &[u8], _g: msgloop::rudp::Guarantee) {
        self.messages += 1;
    }
}

/// Drives the server reactor (counted) and the client reactor (not counted)
/// alternately until `done`, failing after `limit`.
fn drive2(
    server: &mut (Reactor, Peers),
    client: &mut (Reactor, Peers),
    mut done: impl FnMut(&Peers, &Peers) -> bool,
    limit: Duration,
    what: &str,
) {
    let start = Instant::now();
    while !done(&server.1, &client.1) {
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}: server connected {} closed {}, client connected {} \
             closed {}",
            server.1.connected.len(),
            server.1.closed.len(),
            client.1.connected.len(),
            client.1.closed.len()
        );
        counted(|| {
            server
                .0
                .run_once(&mut server.1, Some(Duration::from_millis(1)))
        })
        .expect("server run_once");
        client
            .0
            .run_once(&mut client.1, Some(Duration::ZERO))
            .expect("client run_once");
    }
}

/// Microseconds per `run_once(Some(ZERO))` over `n` calls; asserts no
/// callback ran.
fn idle_cost(r: &mut Reactor, h: &mut Peers, n: u32) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        let callbacks = r.run_once(h, Some(Duration::ZERO)).expect("run_once");
        assert_eq!(callbacks, 0, "idle call {i} made {callbacks} callback(s)");
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

#[test]
fn a_thousand_idle_peers_cost_little_and_vanished_ones_are_freed() {
    const N: usize = 1000;
    const BATCH: usize = 100;
    let _t = util::guard();
    // Heartbeats every second, timeout after 2 s of silence: idle enough
    // for the measurement (a few tens of ms) and quick to time out.
    // Every peer is on 127.0.0.1, one source: the per-source limits are
    // raised to the test's scale.
    let cfg = RudpConfig::default()
        .idle_timeout(Duration::from_secs(2))
        .heartbeat_interval(Duration::from_secs(1))
        .max_connections_per_source(N + 1)
        .max_half_open_per_source(256);
    let mut server = (Reactor::new().expect("reactor"), Peers::default());
    let mut client = (Reactor::new().expect("reactor"), Peers::default());
    let sock = server
        .0
        .bind_rudp("127.0.0.1:0", cfg.clone())
        .expect("bind");
    let addr = server.0.local_addr(sock).unwrap().as_inet().unwrap();
    let opts = util::opts(|o| {
        o.recv_buffer_size = Some(64 << 10);
        o.send_buffer_size = Some(64 << 10);
    });
    let client_socks: Vec<SocketId> = (0..N)
        .map(|_| {
            client
                .0
                .bind_rudp_with("127.0.0.1:0", cfg.clone(), &opts)
                .expect("bind client")
        })
        .collect();

    // Baseline: a server reactor that has run (its buffers exist), no peer.
    let empty_cost = {
        for _ in 0..10 {
            counted(|| server.0.run_once(&mut server.1, Some(Duration::ZERO))).unwrap();
        }
        idle_cost(&mut server.0, &mut server.1, 20_000)
    };
    let before = util::alloc::counts().net_bytes;

    let start = Instant::now();
    for (b, chunk) in client_socks.chunks(BATCH).enumerate() {
        for &c in chunk {
            client.0.connect_rudp_from(c, addr).expect("connect");
        }
        let want = (b + 1) * BATCH;
        drive2(
            &mut server,
            &mut client,
            |s, c| s.connected.len() >= want && c.connected.len() >= want,
            Duration::from_secs(10),
            "connecting",
        );
    }
    let connect_secs = start.elapsed().as_secs_f64();
    // Let the last handshakes' acks and confirmations settle.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_millis(100) {
        counted(|| {
            server
                .0
                .run_once(&mut server.1, Some(Duration::from_millis(1)))
        })
        .unwrap();
        client
            .0
            .run_once(&mut client.1, Some(Duration::ZERO))
            .unwrap();
    }
    let ep = server.0.rudp_endpoint_stats(sock).unwrap();
    let peers = ep.connections as usize;
    assert_eq!(peers, N, "server peers");
    assert_eq!(ep.accepted, N as u64);
    assert!(server.1.closed.is_empty() && client.1.closed.is_empty());
    let with_peers = util::alloc::counts().net_bytes;
    let per_peer = (with_peers - before) as f64 / N as f64;

    // The idle cost: nothing is due, nothing arrives (the clients are not
    // driven meanwhile; a heartbeat may fall due on the server).
    let dgrams_before = ep.datagrams_received;
    let calls = 20_000;
    let cost = counted(|| idle_cost(&mut server.0, &mut server.1, calls));
    let ep = server.0.rudp_endpoint_stats(sock).unwrap();
    let idle_bytes = util::alloc::counts().net_bytes - with_peers;

    // The clients vanish: their sockets close without a CLOSE.
    let vanish = Instant::now();
    drop(client);
    let limit = cfg.idle_timeout + Duration::from_secs(3);
    while server.1.closed.len() < N {
        assert!(
            vanish.elapsed() < limit,
            "only {} of {N} vanished peers timed out within {limit:?}",
            server.1.closed.len()
        );
        counted(|| {
            server
                .0
                .run_once(&mut server.1, Some(Duration::from_millis(50)))
        })
        .unwrap();
    }
    let timeout_secs = vanish.elapsed().as_secs_f64();
    assert!(
        server
            .1
            .closed
            .iter()
            .all(|(_, why)| *why == RudpCloseReason::Timeout),
        "every vanished peer closes with Timeout"
    );
    let closed: HashSet<PeerId> = server.1.closed.iter().map(|(p, _)| *p).collect();
    assert_eq!(closed, server.1.connected, "each peer closed exactly once");
    let ep_after = server.0.rudp_endpoint_stats(sock).unwrap();
    let peers_after = ep_after.connections as usize;
    assert_eq!(peers_after, 0, "timed-out peers are freed");
    assert!(server.0.rudp_peers(sock).unwrap().is_empty());
    // What stays allocated: the endpoint's slot table, map and heap
    // capacity, a few bytes per peer it once had.
    let retained = counted(|| {
        server
            .0
            .run_once(&mut server.1, Some(Duration::ZERO))
            .unwrap();
        util::alloc::counts().net_bytes - before
    });
    println!(
        "1,000 idle peers: connected in {connect_secs:.2} s; server memory per peer {per_peer:.0} \
         B ({:.2} MB for {N}); after all timed out {retained} B still held ({:.0} B per former \
         peer)",
        (with_peers - before) as f64 / 1e6,
        retained as f64 / N as f64
    );
    println!(
        "  idle run_once(Some(ZERO)): {cost:.2} us per call with {N} peers ({} datagrams arrived \
         and {idle_bytes} B net allocated over {calls} calls), {empty_cost:.2} us with none",
        ep.datagrams_received - dgrams_before
    );
    println!(
        "  vanished peers timed out in {timeout_secs:.2} s (idle_timeout {:?}); endpoint: \
         {ep_after:?}",
        cfg.idle_timeout
    );
    assert!(
        retained < (with_peers - before) / 4,
        "memory not freed: {retained} B of {} B still held after every peer timed out",
        with_peers - before
    );
}

/// An INITIAL from a new connection id, padded to the minimum length.
fn initial(conn_id: u32, nonce: u64) -> Vec<u8> {
    let p = PacketRepr::Initial { conn_id, nonce };
    let mut b = vec![0u8; p.buffer_len()];
    let n = p.emit(&mut b).expect("emit INITIAL");
    b.truncate(n);
    b
}

fn echo(conn_id: u32, cookie: u64) -> Vec<u8> {
    let p = PacketRepr::Echo {
        conn_id,
        cookie,
        params: Params {
            initial_seq: 0,
            recv_window: 8192,
            max_datagram: 1200,
            max_ack_delay_ms: 10,
            max_message_len: 1 << 20,
        },
    };
    let mut b = vec![0u8; p.buffer_len()];
    let n = p.emit(&mut b).expect("emit ECHO");
    b.truncate(n);
    b
}

fn flood_sockets(n: usize) -> Vec<UdpSocket> {
    (0..n)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind flood socket");
            s.set_nonblocking(true).expect("nonblocking");
            s
        })
        .collect()
}

#[test]
fn a_handshake_flood_creates_no_state_and_a_real_peer_still_connects() {
    const SOURCES: usize = 100;
    const PACKETS: usize = 10_000;
    const BURST: usize = 500;
    let _t = util::guard();
    let mut r = Reactor::new().expect("reactor");
    let mut h = Peers::default();
    let server = r
        .bind_rudp("127.0.0.1:0", RudpConfig::default())
        .expect("bind");
    let addr: SocketAddr = r.local_addr(server).unwrap().as_inet().unwrap();
    let client = r
        .bind_rudp("127.0.0.1:0", RudpConfig::default())
        .expect("bind");
    let cap = RudpConfig::default().max_half_open;
    let flood = flood_sockets(SOURCES);
    let mut rng = Rng::new(0x5eed);
    let (mut initials, mut forged) = (0u64, 0u64);
    let mut real = None;
    let mut max_peers = 0;
    let mut knock = None;
    let start = Instant::now();
    for burst in 0..PACKETS / BURST {
        if burst == PACKETS / BURST / 2 {
            // Half-way through the flood, a real peer connects.
            real = Some(r.connect_rudp_from(client, addr).expect("connect"));
            knock = Some(Instant::now());
        }
        for i in 0..BURST {
            let s = &flood[(burst * BURST + i) % SOURCES];
            let conn_id = (rng.next_u64() as u32).max(1);
            // Nine in ten start a handshake; one in ten is an ECHO with a
            // forged cookie.
            let pkt = if i % 10 == 9 {
                forged += 1;
                echo(conn_id, rng.next_u64())
            } else {
                initials += 1;
                initial(conn_id, rng.next_u64())
            };
            s.send_to(&pkt, addr).expect("flood send");
        }
        // Serve the burst before the next one (the socket buffer is not
        // what is being tested).
        let sent = ((burst + 1) * BURST) as u64;
        let mut calls = 0;
        while r.rudp_endpoint_stats(server).unwrap().datagrams_received < sent {
            calls += 1;
            assert!(calls < 1000, "the server did not read the flood");
            r.run_once(&mut h, Some(Duration::from_millis(2)))
                .expect("run_once");
            max_peers = max_peers.max(r.rudp_endpoint_stats(server).unwrap().connections as usize);
        }
    }
    let flood_secs = start.elapsed().as_secs_f64();
    let real = real.expect("the real peer");
    util::run_until(
        &mut r,
        &mut h,
        |r, h| {
            max_peers = max_peers.max(r.rudp_endpoint_stats(server).unwrap().connections as usize);
            h.connected.contains(&real) && h.connected.len() == 2
        },
        100,
    );
    let real_secs = knock.expect("knocked").elapsed().as_secs_f64();
    // Whatever is still queued is read too.
    for _ in 0..5 {
        r.run_once(&mut h, Some(Duration::from_millis(2)))
            .expect("run_once");
    }
    let ep = r.rudp_endpoint_stats(server).unwrap();
    let peers = ep.connections as usize;
    println!(
        "handshake flood: {initials} INITIALs + {forged} forged ECHOs from {SOURCES} source \
         ports in {flood_secs:.2} s; a real peer that started half-way connected in \
         {real_secs:.3} s; server peers at most {max_peers} during the flood, {peers} after \
         (half-open cap {cap})"
    );
    println!("  server endpoint: {ep:?}");
    assert!(
        max_peers <= 1,
        "the flood created state: {max_peers} peers on the server (cap {cap})"
    );
    assert_eq!(peers, 1, "only the real peer has state");
    assert_eq!(ep.accepted, 1, "only the real peer was accepted");
    assert_eq!(
        ep.invalid_cookies, forged,
        "every forged cookie is rejected"
    );
    // One answer (or one counted drop) per INITIAL, the real peer's
    // INITIAL (and perhaps a retransmission of it) included: no
    // amplification, nothing silently lost.
    let answered = ep.challenges_sent + ep.stateless_dropped;
    assert!(
        answered > initials && answered <= initials + 3,
        "{answered} INITIALs answered or dropped, {initials} + the real peer's sent"
    );
    assert!(h.closed.is_empty(), "closed: {:?}", h.closed);
}

#[test]
fn unconfirmed_handshakes_hold_at_most_the_half_open_cap_and_expire() {
    const SOURCES: usize = 100;
    const CAP: usize = 32;
    let _t = util::guard();
    let mut r = Reactor::new().expect("reactor");
    let mut h = Peers::default();
    // Every source socket is on 127.0.0.1, one source: its half-open
    // limit is raised to the endpoint's.
    let server_cfg = RudpConfig::default()
        .max_half_open(CAP)
        .max_half_open_per_source(CAP)
        .handshake_timeout(Duration::from_millis(800));
    let server = r.bind_rudp("127.0.0.1:0", server_cfg).expect("bind");
    let addr: SocketAddr = r.local_addr(server).unwrap().as_inet().unwrap();
    let client = r
        .bind_rudp("127.0.0.1:0", RudpConfig::default())
        .expect("bind");
    let attackers = flood_sockets(SOURCES);
    // Each source asks for a cookie...
    for (i, s) in attackers.iter().enumerate() {
        s.send_to(&initial(i as u32 + 1, i as u64), addr)
            .expect("send INITIAL");
    }
    let mut cookies = vec![None; SOURCES];
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    while cookies.iter().any(Option::is_none) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "challenges missing"
        );
        r.run_once(&mut h, Some(Duration::from_millis(2)))
            .expect("run_once");
        for (i, s) in attackers.iter().enumerate() {
            while let Ok(n) = s.recv(&mut buf) {
                if let Ok(PacketRepr::Challenge { cookie, .. }) = PacketRepr::parse(&buf[..n]) {
                    cookies[i] = Some(cookie);
                }
            }
        }
    }
    // ... echoes it, and never says another word.
    for (i, s) in attackers.iter().enumerate() {
        s.send_to(&echo(i as u32 + 1, cookies[i].unwrap()), addr)
            .expect("send ECHO");
    }
    let mut max_peers = 0;
    for _ in 0..20 {
        r.run_once(&mut h, Some(Duration::from_millis(2)))
            .expect("run_once");
        max_peers = max_peers.max(r.rudp_endpoint_stats(server).unwrap().connections as usize);
    }
    let ep = r.rudp_endpoint_stats(server).unwrap();
    let peers = ep.connections as usize;
    assert_eq!(peers, CAP, "the half-open cap is filled, not exceeded");
    assert_eq!(ep.accepted, CAP as u64);
    assert_eq!(ep.refused, (SOURCES - CAP) as u64);
    // A real peer knocks while the cap is full: refused until the
    // unconfirmed connections expire, then in.
    let knock = Instant::now();
    let real = r.connect_rudp_from(client, addr).expect("connect");
    while !h.connected.contains(&real) {
        assert!(
            knock.elapsed() < Duration::from_secs(8),
            "the real peer never got in"
        );
        r.run_once(&mut h, Some(Duration::from_millis(20)))
            .expect("run_once");
        max_peers = max_peers.max(r.rudp_endpoint_stats(server).unwrap().connections as usize);
    }
    let waited = knock.elapsed().as_secs_f64();
    util::run_until(&mut r, &mut h, |_, h| h.connected.len() == CAP + 2, 100);
    let ep = r.rudp_endpoint_stats(server).unwrap();
    let peers = ep.connections as usize;
    let timeouts = h
        .closed
        .iter()
        .filter(|(p, why)| p.sock == server && *why == RudpCloseReason::Timeout)
        .count();
    println!(
        "half-open flood: {SOURCES} sources echoed valid cookies; {CAP} held (cap), {} refused; \
         server peers at most {max_peers}; the unconfirmed expired ({timeouts} timeouts) and the \
         real peer got in after {waited:.2} s; peers now {peers}",
        ep.refused
    );
    println!("  server endpoint: {ep:?}");
    assert!(max_peers <= CAP + 1, "peers beyond the half-open cap + 1");
    assert_eq!(timeouts, CAP, "every unconfirmed connection expired");
    assert_eq!(peers, 1, "only the real peer is left");
}
