//! Reliable UDP through real kernel faults: inside a private network
//! namespace (`unshare -n`, `lo` up), nftables drops 10% of UDP at the input
//! hook and duplicates 1% at the output hook, and an HTB slow class on `lo`
//! delays (reorders) about 5% of UDP datagrams. 10,000 Delivery messages of
//! 1 KiB from each of 4 peers must arrive exactly once and in order.
//!
//! `tc netem` cannot be relied on: kernels built without
//! `CONFIG_NET_SCH_NETEM` (such as the minimal VM kernel this test was
//! written on) have no netem qdisc at all. Hence nftables `numgen random`
//! for loss and duplication, and an HTB class for reordering, which any
//! kernel with nftables and HTB has.
//!
//! The test re-executes its own binary inside the namespace
//! (`util::netns::enter`), so the rules never touch the host's network.
//! Where it cannot run (`unshare -n` not permitted, or `unshare`, `ip`,
//! `tc` or `nft` missing) it is skipped with `SKIPPED …` on stderr — except
//! under `CI=true`, where `.ci/run` installs the tools and a skip fails the
//! test.

mod util;

use std::collections::HashMap;
use std::io::Write;
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use msgloop::rudp::{Guarantee, RudpCloseReason, RudpConfig};
use msgloop::{Ctx, DgramOptions, Error, Handler, PeerId, Reactor, SocketId};

/// This test's name, for `--exact` in the child.
const TEST_NAME: &str = "delivery_messages_survive_kernel_loss_duplication_and_reordering";

const PEERS: usize = 4;
const MESSAGES: u64 = 10_000;
const MSG_LEN: usize = 1024;
/// The workload must be done within this (it takes a few seconds).
const LIMIT: Duration = Duration::from_secs(90);

/// The faults, in the namespace only. Output: 1% of UDP is duplicated (the
/// copy is sent to 127.0.0.1 through `lo` again), 5% is steered into the
/// HTB slow class 1:20 (`meta priority` selects an HTB class directly, no
/// tc filter needed). Input: 10% of UDP is dropped.
const NFT_RULES: &str = "\
table ip msgloop_faults {
  chain output {
    type filter hook output priority 0; policy accept;
    meta l4proto udp numgen random mod 100 < 1 counter dup to 127.0.0.1 device \"lo\"
    meta l4proto udp numgen random mod 100 < 5 counter meta priority set 1:20
  }
  chain input {
    type filter hook input priority 0; policy accept;
    meta l4proto udp numgen random mod 100 < 10 counter drop
    meta l4proto udp counter accept
  }
}
";

/// HTB on `lo`: a fast default class and a slow class (8 Mbit/s, a
/// 30-datagram FIFO, so at most ~30 ms of delay) that the 5% queue behind
/// while the rest overtakes them.
const TC_SETUP: &[&[&str]] = &[
    &[
        "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10", "r2q",
        "100000",
    ],
    &[
        "class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate", "10gbit",
        "burst", "1mb",
    ],
    &[
        "class", "add", "dev", "lo", "parent", "1:", "classid", "1:20", "htb", "rate", "8mbit",
        "ceil", "8mbit", "burst", "1600b", "cburst", "1600b",
    ],
    &[
        "qdisc", "add", "dev", "lo", "parent", "1:20", "handle", "20:", "pfifo", "limit", "30",
    ],
];

#[test]
fn delivery_messages_survive_kernel_loss_duplication_and_reordering() {
    if util::netns::enter(TEST_NAME, &["tc", "nft"]) {
        in_namespace();
    }
}

/// Runs a command, panicking with its output if it fails.
fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Loads `rules` with `nft -f -`.
fn nft_load(rules: &str) {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nft");
    child
        .stdin
        .take()
        .expect("nft stdin")
        .write_all(rules.as_bytes())
        .expect("write the rules to nft");
    let out = child.wait_with_output().expect("nft");
    assert!(
        out.status.success(),
        "nft -f: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `Sent ... pkt (dropped ...)` line of the slow class.
fn slow_class_stats() -> String {
    let s = run(
        "tc",
        &["-s", "class", "show", "dev", "lo", "classid", "1:20"],
    );
    s.lines()
        .find(|l| l.contains("Sent"))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The counters of the nftables rules, one line per rule.
fn nft_counters() -> String {
    run("nft", &["list", "table", "ip", "msgloop_faults"])
        .lines()
        .filter(|l| l.contains("counter packets"))
        .map(|l| format!("    {}\n", l.trim()))
        .collect()
}

fn in_namespace() {
    let _g = util::serial();
    // Sanity: a fresh namespace has nothing but a downed lo.
    run("ip", &["link", "set", "lo", "up"]);
    for args in TC_SETUP {
        run("tc", args);
    }
    nft_load(NFT_RULES);
    let probe = raw_probe();
    println!(
        "raw UDP probe: {} sent, {} received, {} lost ({:.1}%), {} duplicated, {} out of order \
         (largest displacement {})",
        probe.sent,
        probe.received,
        probe.lost,
        100.0 * probe.lost as f64 / probe.sent as f64,
        probe.duplicates,
        probe.out_of_order,
        probe.max_displacement
    );
    println!("  slow class after the probe: {}", slow_class_stats());
    assert!(
        probe.lost * 100 >= probe.sent * 3 && probe.lost * 100 <= probe.sent * 40,
        "the nftables drop rule should lose ~10% (plus slow-class overflow)"
    );
    assert!(
        probe.duplicates > 0,
        "the nftables dup rule duplicated nothing"
    );
    assert!(
        probe.out_of_order > 0,
        "the HTB slow class reordered nothing"
    );
    run("nft", &["reset", "counters"]);

    let _fds = util::FdCheck::new();
    workload();
    println!("  slow class, cumulative: {}", slow_class_stats());
    print!("  nftables counters (workload only):\n{}", nft_counters());
}

struct Probe {
    sent: u64,
    received: u64,
    lost: u64,
    duplicates: u64,
    out_of_order: u64,
    max_displacement: u64,
}

/// Sends numbered 1 KiB datagrams over the faulty loopback (about 15,000 a
/// second) and counts loss, duplicates and out-of-order arrivals.
fn raw_probe() -> Probe {
    const N: u64 = 5000;
    let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    util::force_rcvbuf(&rx, 16 << 20);
    rx.set_nonblocking(true).expect("nonblocking");
    let to = rx.local_addr().expect("addr");
    let mut got = Vec::with_capacity(N as usize + 100);
    let mut buf = [0u8; 2048];
    let mut drain = |got: &mut Vec<u64>| {
        while let Ok(n) = rx.recv(&mut buf) {
            assert!(n >= 8);
            got.push(u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")));
        }
    };
    let mut msg = [0u8; MSG_LEN];
    for i in 0..N {
        msg[..8].copy_from_slice(&i.to_le_bytes());
        tx.send_to(&msg, to).expect("send_to");
        if i % 20 == 19 {
            drain(&mut got);
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // The slow class holds datagrams for tens of milliseconds at most.
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_millis(300) {
        drain(&mut got);
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut seen = vec![0u32; N as usize];
    let (mut highest, mut out_of_order, mut max_displacement) = (None, 0, 0);
    for &s in &got {
        seen[s as usize] += 1;
        match highest {
            Some(h) if s < h => {
                out_of_order += 1;
                max_displacement = max_displacement.max(h - s);
            }
            _ => highest = Some(s),
        }
    }
    let unique = seen.iter().filter(|&&c| c > 0).count() as u64;
    Probe {
        sent: N,
        received: got.len() as u64,
        lost: N - unique,
        duplicates: got.len() as u64 - unique,
        out_of_order,
        max_displacement,
    }
}

/// One sending client connection.
struct Sender {
    peer: PeerId,
    sent: u64,
}

/// What the server received from one peer.
#[derive(Default)]
struct Stream {
    /// The client index carried in every message (learnt from the first).
    client: Option<u8>,
    /// The next sequence number expected; also the count delivered.
    next: u64,
}

struct Load {
    /// Two servers: one with UDP offload, one without.
    servers: [SocketId; 2],
    senders: Vec<Sender>,
    streams: HashMap<PeerId, Stream>,
    closed: Vec<(PeerId, RudpCloseReason)>,
    writable: u64,
    queue_full: u64,
    msg: Vec<u8>,
    expect: Vec<u8>,
}

/// Message `seq` of client `client`: the sequence number, the client index,
/// then a pattern depending on both (so a mixed-up or corrupted message is
/// caught).
fn fill(buf: &mut [u8], client: u8, seq: u64) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8] = client;
    let k = (seq as u8).wrapping_mul(31) ^ client;
    for (j, b) in buf[9..].iter_mut().enumerate() {
        *b = k.wrapping_add(j as u8);
    }
}

impl Load {
    fn pump(&mut self, cx: &mut Ctx, i: usize) {
        while self.senders[i].sent < MESSAGES {
            let seq = self.senders[i].sent;
            fill(&mut self.msg, i as u8, seq);
            match cx.send_rudp(self.senders[i].peer, &self.msg, Guarantee::Delivery) {
                Ok(()) => self.senders[i].sent += 1,
                Err(Error::WouldBlock) => {
                    self.queue_full += 1;
                    break;
                }
                Err(e) => panic!("client {i}: send_rudp: {e}"),
            }
        }
    }

    fn sender(&self, peer: PeerId) -> Option<usize> {
        self.senders.iter().position(|s| s.peer == peer)
    }

    fn done(&self) -> bool {
        self.senders.iter().all(|s| s.sent == MESSAGES)
            && self.streams.len() == PEERS
            && self.streams.values().all(|s| s.next == MESSAGES)
    }
}

impl Handler for Load {
    fn on_rudp_connected(&mut self, cx: &mut Ctx, peer: PeerId) {
        if self.servers.contains(&peer.sock) {
            assert!(
                self.streams.insert(peer, Stream::default()).is_none(),
                "{peer} connected twice"
            );
        } else if let Some(i) = self.sender(peer) {
            self.pump(cx, i);
        }
    }

    fn on_rudp_writable(&mut self, cx: &mut Ctx, peer: PeerId) {
        self.writable += 1;
        if let Some(i) = self.sender(peer) {
            self.pump(cx, i);
        }
    }

    fn on_rudp(&mut self, _cx: &mut Ctx, peer: PeerId, msg: &[u8], g: Guarantee) {
        assert!(self.servers.contains(&peer.sock), "clients receive nothing");
        assert_eq!(g, Guarantee::Delivery);
        assert_eq!(msg.len(), MSG_LEN, "{peer}: message length");
        let st = self
            .streams
            .get_mut(&peer)
            .unwrap_or_else(|| panic!("{peer}: message before on_rudp_connected"));
        let seq = u64::from_le_bytes(msg[..8].try_into().expect("8 bytes"));
        let client = *st.client.get_or_insert(msg[8]);
        assert_eq!(msg[8], client, "{peer}: messages of two clients mixed");
        assert!(
            seq >= st.next,
            "{peer}: message {seq} delivered again (expected {})",
            st.next
        );
        assert_eq!(
            seq, st.next,
            "{peer}: message {seq} delivered before {} (a gap or reordering)",
            st.next
        );
        fill(&mut self.expect, client, seq);
        assert!(msg == &self.expect[..], "{peer}: message {seq} corrupted");
        st.next += 1;
    }

    fn on_rudp_closed(&mut self, _cx: &mut Ctx, peer: PeerId, reason: RudpCloseReason) {
        self.closed.push((peer, reason));
    }
}

fn workload() {
    let mut r = Reactor::new().expect("reactor");
    // Offload on and off at both ends: client i has it when i is even and
    // talks to server i / 2, which has it for i < 2 — all four pairings.
    // (With offload, a train crosses nftables and HTB as one packet: its
    // loss, duplication and delay take whole trains.)
    let opts = |offload| DgramOptions::new().offload(offload);
    let servers = [true, false].map(|offload| {
        r.bind_rudp_with("127.0.0.1:0", RudpConfig::default(), &opts(offload))
            .expect("bind server")
    });
    let mut load = Load {
        servers,
        senders: Vec::new(),
        streams: HashMap::new(),
        closed: Vec::new(),
        writable: 0,
        queue_full: 0,
        msg: vec![0; MSG_LEN],
        expect: vec![0; MSG_LEN],
    };
    for i in 0..PEERS {
        let addr = r.local_addr(servers[i / 2 % 2]).unwrap().as_inet().unwrap();
        let c = r
            .bind_rudp_with("127.0.0.1:0", RudpConfig::default(), &opts(i % 2 == 0))
            .expect("bind client");
        let peer = r.connect_rudp_from(c, addr).expect("connect");
        load.senders.push(Sender { peer, sent: 0 });
    }
    let start = Instant::now();
    let mut calls = 0u64;
    while !load.done() {
        if start.elapsed() > LIMIT {
            let sent: Vec<u64> = load.senders.iter().map(|s| s.sent).collect();
            let got: Vec<u64> = load.streams.values().map(|s| s.next).collect();
            panic!(
                "not done within {LIMIT:?}: sent per client {sent:?}, delivered per server \
                 peer {got:?}, closed {:?}",
                load.closed
            );
        }
        assert!(
            load.closed.is_empty(),
            "a peer closed during the transfer: {:?}",
            load.closed
        );
        r.run_once(&mut load, Some(Duration::from_millis(10)))
            .expect("run_once");
        calls += 1;
    }
    let secs = start.elapsed().as_secs_f64();

    let mut sent = 0;
    let (mut retransmitted, mut lost, mut rtos, mut packets, mut peak) = (0, 0, 0, 0, 0);
    for s in &load.senders {
        let st = r.rudp_peer_stats(s.peer).expect("client stats");
        sent += st.messages_sent.delivery;
        retransmitted += st.chunks_retransmitted;
        lost += st.packets_lost;
        rtos += st.rto_count;
        packets += st.packets_sent;
        peak = peak.max(st.peak_in_flight);
    }
    let (mut delivered, mut dup_packets, mut dup_chunks) = (0, 0, 0);
    for &p in load.streams.keys() {
        let st = r.rudp_peer_stats(p).expect("server stats");
        delivered += st.messages_delivered.delivery;
        dup_packets += st.duplicate_packets;
        dup_chunks += st.duplicate_chunks;
    }
    let mut peers = 0;
    let mut eps = Vec::new();
    for &server in &load.servers {
        let ep = r.rudp_endpoint_stats(server).expect("rudp_endpoint_stats");
        let n = ep.connections as usize;
        peers += n;
        eps.push(ep);
    }
    let trains = |id: SocketId| {
        let st = r.stats(id).expect("stats");
        (st.trains_sent, st.trains_received)
    };
    let client_trains: Vec<_> = load.senders.iter().map(|s| trains(s.peer.sock)).collect();
    let server_trains: Vec<_> = load.servers.iter().map(|&s| trains(s)).collect();
    println!(
        "  trains (sent, received): clients {client_trains:?} (offload on, off, on, off), \
         servers {server_trains:?} (on, off)"
    );
    println!(
        "kernel-loss run: {PEERS} peers x {MESSAGES} x {MSG_LEN} B Delivery: sent {sent}, \
         delivered {delivered} (exactly once, in order), {:.2} s ({:.1} MB/s, {calls} run_once \
         calls)",
        secs,
        (delivered as usize * MSG_LEN) as f64 / secs / 1e6
    );
    println!(
        "  duplicates suppressed: {dup_packets} packets + {dup_chunks} chunks; retransmissions: \
         {retransmitted} chunks ({:.3} per message), {lost} of {packets} packets declared lost, \
         {rtos} RTOs, peak in flight {peak}",
        retransmitted as f64 / sent as f64
    );
    println!(
        "  writable callbacks {}, QueueFull {}; server endpoints: {eps:?}",
        load.writable, load.queue_full
    );
    assert_eq!(sent, PEERS as u64 * MESSAGES);
    assert_eq!(delivered, PEERS as u64 * MESSAGES);
    assert_eq!(peers, PEERS);
    assert!(load.closed.is_empty(), "closed: {:?}", load.closed);
    assert!(retransmitted > 0, "10% loss but nothing retransmitted?");
    assert!(
        dup_packets + dup_chunks > 0,
        "1% duplication (and spurious retransmissions) but no duplicate suppressed?"
    );
    if util::kernel_has_offload(TEST_NAME) {
        for (i, &(sent, _)) in client_trains.iter().enumerate() {
            assert_eq!(sent > 0, i % 2 == 0, "client {i}: trains sent {sent}");
        }
        assert!(server_trains[0].1 > 0, "the offload server read no train");
        assert_eq!(
            server_trains[1].1, 0,
            "a server without offload read a train"
        );
    }
    drop(r);
}
