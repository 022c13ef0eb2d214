//! Reliable UDP through the reactor, both ends in one thread.
//!
//! - `rudp_delivery_64`, `rudp_delivery_1k`, `rudp_none_64`: 200,000
//!   messages A→B between two reliable-UDP sockets of one reactor, over
//!   real loopback UDP. B checks every message's sequence number (count,
//!   order, duplicates); the figure is messages/s.
//! - Baseline, in the same run: raw UDP in one thread — `sendmmsg` batches
//!   of 32 datagrams of the same payload size from one socket, `recvmmsg`
//!   drained on the other — in datagrams/s. For 64 B the ratio compares
//!   messages/s to datagrams/s (packing carries many messages per
//!   datagram); for 1 KiB it compares payload rates.
//! - msgloop sends trains of datagrams with UDP segmentation offload and
//!   reads them with receive offload (`DgramOptions::offload`, on by
//!   default), which the baseline does not. So every line also reports
//!   `baseline_gso` — raw UDP with the same offload, the kernel's ceiling —
//!   and `ratio_vs_gso`; `rudp_delivery_1k_no_offload` runs with offload
//!   off, paying per datagram as the baseline does.
//! - `rudp_fanout_1k`: one server socket sends the 200,000 messages spread
//!   over 8 clients (each on its own socket, same reactor); its
//!   `datagrams` field reports the server's trains.

use std::io;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use msgloop::rudp::{Guarantee, RudpCloseReason, RudpConfig};
use msgloop::{Ctx, DgramOptions, Handler, PeerId, Reactor};

use super::{median, report};

const MESSAGES: u64 = 200_000;

struct Run {
    guarantee: Guarantee,
    client: Option<PeerId>,
    sent: u64,
    /// Receiver state: next expected sequence number, and faults.
    next: u64,
    received: u64,
    duplicates_or_reordered: u64,
    closed: Option<RudpCloseReason>,
    buf: Vec<u8>,
}

impl Run {
    fn pump(&mut self, cx: &mut Ctx) {
        let Some(peer) = self.client else { return };
        while self.sent < MESSAGES {
            self.buf[..8].copy_from_slice(&self.sent.to_le_bytes());
            match cx.send_rudp(peer, &self.buf, self.guarantee) {
                Ok(()) => self.sent += 1,
                Err(_) => break, // window full: on_rudp_writable resumes
            }
        }
    }
}

impl Handler for Run {
    fn on_rudp_connected(&mut self, cx: &mut Ctx, peer: PeerId) {
        if Some(peer) == self.client {
            self.pump(cx);
        }
    }

    fn on_rudp_writable(&mut self, cx: &mut Ctx, _peer: PeerId) {
        self.pump(cx);
    }

    fn on_rudp(&mut self, _cx: &mut Ctx, _peer: PeerId, msg: &[u8], _g: Guarantee) {
        let seq = u64::from_le_bytes(msg[..8].try_into().expect("8-byte header"));
        self.received += 1;
        if seq < self.next {
            self.duplicates_or_reordered += 1;
        } else {
            self.next = seq + 1;
        }
    }

    fn on_rudp_closed(&mut self, _cx: &mut Ctx, _peer: PeerId, reason: RudpCloseReason) {
        self.closed = Some(reason);
    }
}

/// Returns (messages/s, datagrams A→B, retransmissions).
fn rudp_run(size: usize, guarantee: Guarantee, offload: bool) -> io::Result<(f64, u64, u64)> {
    let config = RudpConfig::default();
    let opts = DgramOptions::new().offload(offload);
    let mut r = Reactor::new()?;
    let server = r.bind_rudp_with("127.0.0.1:0", config.clone(), &opts)?;
    let server_addr = r.local_addr(server)?.as_inet().expect("udp");
    let mut app = Run {
        guarantee,
        client: None,
        sent: 0,
        next: 0,
        received: 0,
        duplicates_or_reordered: 0,
        closed: None,
        buf: vec![0x5a; size],
    };
    let start = Instant::now();
    // The client's own socket, as a client connects.
    app.client = Some(r.connect_rudp_with(server_addr, config, &opts)?);
    let mut last_progress = (0u64, Instant::now());
    loop {
        r.run_once(&mut app, Some(Duration::from_millis(50)))?;
        let done = match guarantee {
            Guarantee::Delivery => app.received >= MESSAGES,
            // Unreliable: done once everything was sent and the receiver
            // has been quiet for a moment.
            _ => app.sent >= MESSAGES && last_progress.1.elapsed() > Duration::from_millis(20),
        };
        if done {
            break;
        }
        if app.received != last_progress.0 {
            last_progress = (app.received, Instant::now());
        } else if last_progress.1.elapsed() > Duration::from_secs(10) {
            return Err(io::Error::other(format!(
                "rudp run stalled: sent {} received {} closed {:?}",
                app.sent, app.received, app.closed
            )));
        }
    }
    let secs = start.elapsed().as_secs_f64()
        - match guarantee {
            Guarantee::Delivery => 0.0,
            _ => 0.02,
        };
    if app.duplicates_or_reordered > 0 && guarantee == Guarantee::Delivery {
        return Err(io::Error::other(format!(
            "{} messages duplicated or out of order",
            app.duplicates_or_reordered
        )));
    }
    let stats = r.rudp_peer_stats(app.client.expect("set"))?;
    Ok((
        app.received as f64 / secs,
        stats.packets_sent,
        stats.chunks_retransmitted,
    ))
}

/// Fan-out: one server socket sends `MESSAGES` Delivery messages of `size`
/// bytes spread over `FANOUT_PEERS` clients (each on its own socket, all in
/// the same reactor), which check count and order; messages/s.
const FANOUT_PEERS: usize = 8;

struct Fanout {
    server: msgloop::SocketId,
    /// Server-side peers and what each was sent.
    peers: Vec<(PeerId, u64)>,
    /// Client side: next expected sequence number per client socket.
    next: std::collections::HashMap<msgloop::SocketId, u64>,
    received: u64,
    faults: u64,
    buf: Vec<u8>,
}

impl Fanout {
    fn pump(&mut self, cx: &mut Ctx, i: usize) {
        let per_peer = MESSAGES / FANOUT_PEERS as u64;
        let (peer, sent) = &mut self.peers[i];
        while *sent < per_peer {
            self.buf[..8].copy_from_slice(&sent.to_le_bytes());
            match cx.send_rudp(*peer, &self.buf, Guarantee::Delivery) {
                Ok(()) => *sent += 1,
                Err(_) => break, // window full: on_rudp_writable resumes
            }
        }
    }
}

impl Handler for Fanout {
    fn on_rudp_connected(&mut self, cx: &mut Ctx, peer: PeerId) {
        if peer.sock == self.server {
            self.peers.push((peer, 0));
            self.pump(cx, self.peers.len() - 1);
        }
    }

    fn on_rudp_writable(&mut self, cx: &mut Ctx, peer: PeerId) {
        if let Some(i) = self.peers.iter().position(|p| p.0 == peer) {
            self.pump(cx, i);
        }
    }

    fn on_rudp(&mut self, _cx: &mut Ctx, peer: PeerId, msg: &[u8], _g: Guarantee) {
        let seq = u64::from_le_bytes(msg[..8].try_into().expect("8-byte header"));
        let next = self.next.entry(peer.sock).or_insert(0);
        if seq != *next {
            self.faults += 1;
        }
        *next = seq + 1;
        self.received += 1;
    }
}

/// Returns (messages/s, trains sent by the server).
fn fanout_run(size: usize) -> io::Result<(f64, u64)> {
    let mut r = Reactor::new()?;
    let server = r.bind_rudp("127.0.0.1:0", RudpConfig::default())?;
    let server_addr = r.local_addr(server)?.as_inet().expect("udp");
    let mut app = Fanout {
        server,
        peers: Vec::new(),
        next: Default::default(),
        received: 0,
        faults: 0,
        buf: vec![0x5a; size],
    };
    let start = Instant::now();
    for _ in 0..FANOUT_PEERS {
        r.connect_rudp(server_addr, RudpConfig::default())?;
    }
    let total = MESSAGES / FANOUT_PEERS as u64 * FANOUT_PEERS as u64;
    let mut last_progress = (0u64, Instant::now());
    while app.received < total {
        r.run_once(&mut app, Some(Duration::from_millis(50)))?;
        if app.received != last_progress.0 {
            last_progress = (app.received, Instant::now());
        } else if last_progress.1.elapsed() > Duration::from_secs(10) {
            return Err(io::Error::other(format!(
                "fan-out run stalled: received {}",
                app.received
            )));
        }
    }
    if app.faults > 0 {
        return Err(io::Error::other(format!(
            "fan-out: {} messages out of order",
            app.faults
        )));
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((app.received as f64 / secs, r.stats(server)?.trains_sent))
}

/// The raw baselines' sockets: `a` connected to `b`, which is
/// non-blocking with a 4 MiB receive buffer.
fn raw_pair() -> io::Result<(UdpSocket, UdpSocket)> {
    let a = UdpSocket::bind("127.0.0.1:0")?;
    let b = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    b.set_recv_buffer_size(4 << 20)?;
    b.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    let b: UdpSocket = b.into();
    b.set_nonblocking(true)?;
    a.connect(b.local_addr()?)?;
    Ok((a, b))
}

/// Raw UDP, one thread: sendmmsg 32 × `size`, recvmmsg drained; datagrams/s.
fn raw_run(size: usize) -> io::Result<f64> {
    let (a, b) = raw_pair()?;
    let payload = vec![0x5au8; size];
    let batch: [&[u8]; 32] = [&payload; 32];
    let mut storage = vec![vec![0u8; size.max(64) + 64]; 32];
    let mut meta = vec![msgloop::batch::RecvMeta::default(); 32];
    let (mut sent, mut got) = (0u64, 0u64);
    let start = Instant::now();
    while sent < MESSAGES {
        sent += msgloop::batch::send_batch(&a, &batch, None)? as u64;
        let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|v| &mut v[..]).collect();
        loop {
            match msgloop::batch::recv_batch(&b, &mut bufs, &mut meta) {
                Ok(n) => got += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(got as f64 / start.elapsed().as_secs_f64())
}

pub(crate) fn run(rounds: usize, want: &dyn Fn(&str) -> bool) -> io::Result<()> {
    for (name, size, g, offload) in [
        ("rudp_delivery_64", 64usize, Guarantee::Delivery, true),
        ("rudp_delivery_1k", 1024, Guarantee::Delivery, true),
        ("rudp_none_64", 64, Guarantee::None, true),
        // The same as rudp_delivery_1k with offload off: one kernel packet
        // per datagram, as the baseline pays — the protocol's own cost.
        (
            "rudp_delivery_1k_no_offload",
            1024,
            Guarantee::Delivery,
            false,
        ),
        // One server socket sending to 8 clients.
        ("rudp_fanout_1k", 1024, Guarantee::Delivery, true),
    ] {
        if !want(name) {
            continue;
        }
        let (mut a, mut b, mut r, mut dgr, mut retx) = (vec![], vec![], vec![], vec![], vec![]);
        let (mut gso, mut r_gso) = (vec![], vec![]);
        let side = super::SIDE.get().cloned().flatten();
        for _ in 0..rounds {
            let (rate, datagrams, retransmitted) = if side.as_deref() == Some("baseline") {
                (f64::NAN, 0, 0)
            } else if name == "rudp_fanout_1k" {
                // "datagrams" reports the server's trains here.
                let (rate, trains) = fanout_run(size)?;
                (rate, trains, 0)
            } else {
                rudp_run(size, g, offload)?
            };
            let (base, base_gso) = if side.as_deref() == Some("msgloop") {
                (f64::NAN, f64::NAN)
            } else {
                (raw_run(size)?, raw_gso_run(size)?)
            };
            a.push(rate);
            b.push(base);
            r.push(rate / base);
            gso.push(base_gso);
            r_gso.push(rate / base_gso);
            dgr.push(datagrams as f64);
            retx.push(retransmitted as f64);
        }
        report(
            name,
            median(a),
            median(b),
            median(r),
            "messages/s",
            "raw_udp_sendmmsg_recvmmsg",
            &format!(
                "baseline_unit=datagrams/s payload={size} messages={MESSAGES} datagrams={:.0} \
                 retransmitted={:.0} offload={offload} baseline_gso={:.0} ratio_vs_gso={:.3}",
                median(dgr),
                median(retx),
                median(gso),
                median(r_gso),
            ),
        );
    }
    Ok(())
}

/// Raw UDP with segmentation offload, one thread: trains of up to 64
/// datagrams of `size` bytes per `sendmsg` (`UDP_SEGMENT`), received with
/// `UDP_GRO` (one read per train); datagrams/s. The kernel's ceiling when
/// neither side pays per datagram, reported as `baseline_gso` (msgloop's
/// reliable UDP uses the same offload by default).
fn raw_gso_run(size: usize) -> io::Result<f64> {
    use nix::sys::socket::{
        recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
        SockaddrStorage,
    };
    use std::io::{IoSlice, IoSliceMut};
    use std::os::fd::{AsFd, AsRawFd};
    let (a, b) = raw_pair()?;
    setsockopt(&b.as_fd(), sockopt::UdpGroSegment, &true).map_err(io::Error::from)?;
    let per_train = (65_000 / size).min(64);
    let train = vec![0x5au8; size * per_train];
    let seg = size as u16;
    let mut rx = vec![0u8; 65_536];
    let mut cmsg = nix::cmsg_space!(i32);
    let (mut sent, mut got) = (0u64, 0u64);
    let start = Instant::now();
    while sent < MESSAGES {
        let n = per_train.min((MESSAGES - sent) as usize);
        sendmsg::<()>(
            a.as_raw_fd(),
            &[IoSlice::new(&train[..n * size])],
            &[ControlMessage::UdpGsoSegments(&seg)],
            MsgFlags::empty(),
            None,
        )
        .map_err(io::Error::from)?;
        sent += n as u64;
        loop {
            let mut iov = [IoSliceMut::new(&mut rx)];
            match recvmsg::<SockaddrStorage>(
                b.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(m) => {
                    let mut segs = 1;
                    for c in m.cmsgs().map_err(io::Error::from)? {
                        if let ControlMessageOwned::UdpGroSegments(g) = c {
                            segs = m.bytes.div_ceil(g as usize);
                        }
                    }
                    got += segs as u64;
                }
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(got as f64 / start.elapsed().as_secs_f64())
}
