//! Reliable UDP in the reactor: one [`Endpoint`] per UDP socket, many peers
//! on it.
//!
//! - Reads: `recvmmsg` into slots of the shared receive buffer, each
//!   datagram handled in place ([`Endpoint::handle_datagram_in_place`]); a
//!   train coalesced by receive offload (`UDP_GRO`) is split into its
//!   datagrams.
//! - Events: a message that lies whole in a datagram is handed to
//!   [`Handler::on_rudp`] straight from the receive buffer; others are
//!   copied once into the reactor's scratch buffer (no allocation per
//!   message).
//! - Writes: datagrams produced during a pass are built back to back and go
//!   out together at its end with `sendmmsg` (32 entries per call); with
//!   segmentation offload (`UDP_SEGMENT`) consecutive equal-size datagrams
//!   to one peer form one entry, a train. Many small messages are packed
//!   into each datagram by the protocol.
//! - Timers: the endpoint keeps its own deadline heap over its peers; the
//!   reactor's single deadline structure holds one entry per endpoint, so an
//!   idle tick costs O(due peers), not O(peers).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use socket2::{Socket, Type};

use super::ctx::{Ctx, TimerTarget};
use super::datagram::{apply_buffers, bind_udp_socket};
use super::options::DgramOptions;
use super::stats::SocketStats;
use super::table::Sock;
use crate::addr::first_addr;
use crate::error::{context, AddError, Error};
use crate::handler::{Handler, PeerId, SocketId, SocketKind};
use crate::rudp::{
    ConnectionStats, Endpoint, EndpointStats, Guarantee, MsgRef, RawEvent, RudpConfig, SendError,
};
use crate::sys;
use crate::timer::TimerKey;

/// Datagrams moved per `recvmmsg` / `sendmmsg`.
const BATCH: usize = 32;

/// Most datagrams in one segmentation-offload train: the kernel's
/// `UDP_MAX_SEGMENTS` (64 before Linux 6.9, 128 since).
const MAX_TRAIN: usize = 64;

/// Most bytes in one train: one UDP payload (at most 65,507 bytes over
/// IPv4), with room to spare for IPv6 extension headers.
const MAX_TRAIN_BYTES: usize = 65_000;

/// Bytes of datagrams built per `sendmmsg` with segmentation offload: a few
/// trains, small enough to stay in the CPU cache.
const TX_BYTES: usize = 128 << 10;

/// Receive slot with receive offload: room for a whole coalesced train.
const GRO_SLOT: usize = 64 << 10;

/// Receive slots per `recvmmsg` with receive offload (the reactor's
/// receive buffer grows to `GRO_SLOTS * GRO_SLOT` for them).
const GRO_SLOTS: usize = 8;

/// Socket buffers of a reliable-UDP socket unless the options say
/// otherwise (forced past the system's cap where the process may): a
/// window of in-flight datagrams must fit, or the kernel drops what the
/// protocol then has to resend.
const DEFAULT_RUDP_BUFFER: usize = 4 << 20;

/// The largest [`RudpConfig::mtu`] sent with don't-fragment: what fits a
/// 1,500-byte Ethernet path under IPv6 and UDP headers.
#[cfg(target_os = "linux")]
const DONT_FRAGMENT_MTU: usize = 1500 - 40 - 8;

/// A UDP socket carrying reliable-UDP peers.
pub(super) struct RudpSock {
    pub(super) sock: mio::net::UdpSocket,
    ep: Endpoint,
    /// The endpoint's deadline, as armed in the reactor's timer heap.
    timer: Option<(TimerKey, Instant)>,
    /// In [`Pending::dirty`]: output may be pending (a send, a received
    /// datagram, a timeout).
    dirty: bool,
    /// Datagram slot size for receiving: the largest datagram accepted.
    slot: usize,
    /// The address the UDP socket is connected to, if it is: datagrams to
    /// it go without an address (the kernel keeps the route).
    connected: Option<SocketAddr>,
    /// Send trains of datagrams with segmentation offload (`UDP_SEGMENT`).
    /// Turned off for good when the kernel refuses one.
    gso: bool,
    /// The socket has receive offload (`UDP_GRO`) on: a read may hold a
    /// train, so receive slots are [`GRO_SLOT`] bytes.
    gro: bool,
}

impl RudpSock {
    /// Folds the endpoint's and the peers' figures into a socket's counters.
    pub(super) fn add_peer_stats(&self, s: &mut SocketStats) {
        let ep = self.ep.stats();
        s.rudp_refused += ep.refused;
        s.refused_per_source += ep.refused_per_source + ep.refused_half_open_per_source;
        s.rudp_evicted += ep.half_open_evicted + ep.closed_over_budget;
        s.rudp_recv_budget += ep.recv_budget_drops + ep.recv_budget_refusals;
        s.sends_refused_budget += ep.send_budget_refusals;
        for peer in self.ep.peers() {
            if let Some(p) = self.ep.peer_stats(peer) {
                s.rudp_peers += 1;
                s.rudp_packets_lost += p.packets_lost;
                s.rudp_retransmitted += p.chunks_retransmitted;
                s.rudp_max_srtt_us = s.rudp_max_srtt_us.max(p.srtt.as_micros() as u64);
            }
        }
    }

    /// Marks output pending; `true` if it was not already.
    fn mark_dirty(&mut self) -> bool {
        !std::mem::replace(&mut self.dirty, true)
    }
}

/// The reliable-UDP sockets with work left for the end of the pass.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Output to send.
    dirty: Vec<SocketId>,
    /// Flushed since their events were last polled (a flush can end a
    /// connection: its CLOSE went out).
    flushed: Vec<SocketId>,
    /// Datagram slots for `sendmmsg`.
    tx: Vec<u8>,
}

impl Pending {
    /// Events may be waiting to be delivered.
    pub(super) fn has_events(&self) -> bool {
        !self.flushed.is_empty()
    }
}

/// Why a datagram socket could not take more this pass.
fn log_send_error(id: SocketId, e: &io::Error, dropped: usize) {
    log::debug!(
        "{id}: sendmmsg: {e}; {dropped} datagram(s) dropped (the protocol resends what matters)"
    );
}

/// The reactor's error for a refused reliable-UDP send.
fn send_error(e: SendError) -> Error {
    match e {
        SendError::QueueFull => Error::WouldBlock,
        SendError::TooLarge { len, max } => Error::TooLarge {
            len,
            max: Some(max),
        },
        SendError::SetTooLarge { len } => Error::TooLarge {
            len,
            max: Some(usize::from(u16::MAX)),
        },
        SendError::Closed => Error::Closed,
        SendError::UnknownPeer => Error::StaleId,
    }
}

impl Ctx {
    /// Binds a UDP socket for reliable-UDP peers (IPv6: dual-stack where
    /// the system allows). A server accepts peers that connect to it
    /// ([`Handler::on_rudp_connected`]); it can also start connections of
    /// its own with [`connect_rudp_from`](Ctx::connect_rudp_from). Many
    /// peers share one socket; their messages arrive at
    /// [`Handler::on_rudp`].
    pub fn bind_rudp<A: ToSocketAddrs>(
        &mut self,
        addr: A,
        config: RudpConfig,
    ) -> Result<SocketId, Error> {
        self.bind_rudp_with(addr, config, &DgramOptions::default())
    }

    /// [`bind_rudp`](Ctx::bind_rudp) with socket options (buffer sizes —
    /// 4 MiB unless set —, `SO_REUSEPORT`, offload; `max_message_len` does
    /// not apply: the protocol's MTU does).
    pub fn bind_rudp_with<A: ToSocketAddrs>(
        &mut self,
        addr: A,
        config: RudpConfig,
        opts: &DgramOptions,
    ) -> Result<SocketId, Error> {
        let opts = rudp_socket_options(opts);
        let sock = bind_udp_socket(addr, &opts, "reliable UDP")?;
        Ok(self.add_rudp_with(sock, config, &opts)?)
    }

    /// Adopts a bound UDP socket for reliable-UDP peers (a socket2
    /// `Socket`, a std `UdpSocket`...). On failure the socket comes back in
    /// the error.
    pub fn add_rudp<S: Into<Socket>>(
        &mut self,
        socket: S,
        config: RudpConfig,
    ) -> Result<SocketId, AddError> {
        self.add_rudp_with(socket, config, &DgramOptions::default())
    }

    /// [`add_rudp`](Ctx::add_rudp) with socket options.
    pub fn add_rudp_with<S: Into<Socket>>(
        &mut self,
        socket: S,
        config: RudpConfig,
        opts: &DgramOptions,
    ) -> Result<SocketId, AddError> {
        let socket = socket.into();
        let opts = rudp_socket_options(opts);
        let config = config.sanitized();
        let prepared = (|| -> Result<(bool, bool), Error> {
            if socket.r#type()? != Type::DGRAM || socket.local_addr()?.as_socket().is_none() {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "add_rudp: not a UDP socket",
                )));
            }
            socket.set_nonblocking(true)?;
            apply_buffers(&socket, &opts)?;
            Ok(configure_offload(&socket, &config, &opts))
        })();
        let (gso, gro) = match prepared {
            Ok(o) => o,
            Err(error) => return Err(AddError { socket, error }),
        };
        if gro {
            self.rbuf_needed = self.rbuf_needed.max(GRO_SLOTS * GRO_SLOT);
        }
        let sock = mio::net::UdpSocket::from_std(socket.into());
        let slot = if gro {
            GRO_SLOT
        } else {
            (config.mtu + 1).max(1500)
        };
        let mut ep = Endpoint::new(config, seed_from(&sock, self.table.len() as u32));
        if gso {
            // A connection's datagrams in runs: trains to its peer.
            ep.set_transmit_burst(MAX_TRAIN as u32);
        }
        let build = |sock| {
            Sock::Rudp(Box::new(RudpSock {
                sock,
                ep,
                timer: None,
                dirty: false,
                slot,
                connected: None,
                gso,
                gro,
            }))
        };
        self.insert(SocketKind::Rudp, sock, build)
            .map_err(|(sock, error)| AddError {
                socket: Socket::from(OwnedFd::from(sock)),
                error,
            })
    }

    /// Connects to a reliable-UDP server at `remote` (the first address it
    /// resolves to) from a socket of its own — the client's call, like
    /// [`connect_tcp`](Ctx::connect_tcp). The peer id is usable at once
    /// (messages sent now go out once the handshake completes);
    /// [`Handler::on_rudp_connected`] follows, or
    /// [`Handler::on_rudp_closed`] with a timeout.
    ///
    /// The new socket (`peer.sock`) is bound to an ephemeral port, accepts
    /// no peers, and its UDP socket is connected to `remote`: the kernel
    /// routes each datagram without a lookup and drops datagrams from
    /// anyone else. It stays open when the peer closes; close it with
    /// [`close`](Ctx::close) when done.
    pub fn connect_rudp<A: ToSocketAddrs>(
        &mut self,
        remote: A,
        config: RudpConfig,
    ) -> Result<PeerId, Error> {
        self.connect_rudp_with(remote, config, &DgramOptions::default())
    }

    /// [`connect_rudp`](Ctx::connect_rudp) with socket options.
    pub fn connect_rudp_with<A: ToSocketAddrs>(
        &mut self,
        remote: A,
        config: RudpConfig,
        opts: &DgramOptions,
    ) -> Result<PeerId, Error> {
        let remote = first_addr(remote, "connect reliable UDP")?;
        let local: SocketAddr = match remote {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let mut config = config;
        config.accept_incoming = false;
        let sock = self.bind_rudp_with(local, config, opts)?;
        let connected = self.rudp_mut(sock, "connect_rudp").and_then(|rs| {
            rs.sock
                .connect(remote)
                .map_err(|e| context(e, format_args!("connect reliable UDP {remote}")))?;
            rs.connected = Some(remote);
            Ok(())
        });
        match connected.and_then(|()| self.connect_rudp_from(sock, remote)) {
            Ok(peer) => Ok(peer),
            Err(e) => {
                let _ = self.close(sock);
                Err(e)
            }
        }
    }

    /// Starts a reliable-UDP connection to `remote` from `sock`, a socket
    /// of [`bind_rudp`](Ctx::bind_rudp) that may carry other peers too.
    /// Like [`connect_rudp`](Ctx::connect_rudp) otherwise. A socket of
    /// `connect_rudp` talks to its one address only.
    pub fn connect_rudp_from(
        &mut self,
        sock: SocketId,
        remote: SocketAddr,
    ) -> Result<PeerId, Error> {
        let now = self.now();
        let rs = self.rudp_mut(sock, "connect_rudp_from")?;
        if rs.connected.is_some_and(|to| to != remote) {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a socket from connect_rudp talks to one address; use bind_rudp for more",
            )));
        }
        let peer = rs.ep.connect(now, remote).map_err(Error::Rudp)?;
        self.mark_rudp_dirty(sock);
        Ok(PeerId { sock, peer })
    }

    /// Sends one message to a reliable-UDP peer with `guarantee`.
    ///
    /// A full send queue (the peer's, or its source's or the socket's send
    /// budget, see [`RudpConfig`](crate::rudp::RudpConfig)) gives [`Error::WouldBlock`];
    /// [`Handler::on_rudp_writable`] follows when there is room. A message
    /// over `max_message_len` gives [`Error::TooLarge`]; a peer that is
    /// closing, [`Error::Closed`]; a peer that is gone, [`Error::StaleId`].
    pub fn send_rudp(
        &mut self,
        peer: PeerId,
        msg: &[u8],
        guarantee: Guarantee,
    ) -> Result<(), Error> {
        self.send_rudp_msgs(peer, "send_rudp", &[msg], |ep, p| {
            ep.send(p, msg, guarantee)
        })
    }

    /// Sends a message set: its members may be delivered in any order among
    /// themselves; the set stays ordered with the rest of the reliable
    /// stream (see [`crate::rudp`]).
    pub fn send_rudp_set(&mut self, peer: PeerId, msgs: &[&[u8]]) -> Result<(), Error> {
        self.send_rudp_msgs(peer, "send_rudp_set", msgs, |ep, p| ep.send_set(p, msgs))
    }

    fn send_rudp_msgs(
        &mut self,
        peer: PeerId,
        op: &'static str,
        msgs: &[&[u8]],
        send: impl FnOnce(&mut Endpoint, crate::rudp::ConnectionHandle) -> Result<(), SendError>,
    ) -> Result<(), Error> {
        let entry = self.entry_mut(peer.sock)?;
        let kind = entry.kind;
        let Some(Sock::Rudp(rs)) = entry.sock.as_mut() else {
            return Err(Error::WrongKind { op, kind });
        };
        match send(&mut rs.ep, peer.peer) {
            Ok(()) => {
                entry.stats.messages_out += msgs.len() as u64;
                entry.stats.bytes_out += msgs.iter().map(|m| m.len() as u64).sum::<u64>();
            }
            Err(e) => {
                if e == SendError::QueueFull {
                    entry.stats.send_would_block += 1;
                } else {
                    entry.stats.send_errors += 1;
                }
                return Err(send_error(e));
            }
        }
        self.mark_rudp_dirty(peer.sock);
        Ok(())
    }

    /// Closes a reliable-UDP peer gracefully: queued messages are delivered
    /// first, then the peer is told; [`Handler::on_rudp_closed`] follows.
    /// From now on the peer takes no sends ([`Error::Closed`]) and gets no
    /// [`Handler::on_rudp_writable`].
    pub fn close_rudp(&mut self, peer: PeerId) -> Result<(), Error> {
        let rs = self.rudp_mut(peer.sock, "close_rudp")?;
        if rs.ep.remote_addr(peer.peer).is_none() {
            return Err(Error::StaleId);
        }
        rs.ep.close(peer.peer);
        self.mark_rudp_dirty(peer.sock);
        Ok(())
    }

    /// Round-trip time, loss, retransmissions and counters of one
    /// reliable-UDP peer.
    pub fn rudp_peer_stats(&self, peer: PeerId) -> Result<ConnectionStats, Error> {
        self.rudp(peer.sock, "rudp_peer_stats")?
            .ep
            .peer_stats(peer.peer)
            .ok_or(Error::StaleId)
    }

    /// The address of a reliable-UDP peer.
    pub fn rudp_peer_addr(&self, peer: PeerId) -> Result<SocketAddr, Error> {
        self.rudp(peer.sock, "rudp_peer_addr")?
            .ep
            .remote_addr(peer.peer)
            .ok_or(Error::StaleId)
    }

    /// Endpoint-wide counters of a reliable-UDP socket: datagrams,
    /// malformed and spoofed ones, handshakes, refusals, connections.
    pub fn rudp_endpoint_stats(&self, sock: SocketId) -> Result<EndpointStats, Error> {
        Ok(self.rudp(sock, "rudp_endpoint_stats")?.ep.stats())
    }

    /// The peers of a reliable-UDP socket.
    pub fn rudp_peers(&self, sock: SocketId) -> Result<Vec<PeerId>, Error> {
        let rs = self.rudp(sock, "rudp_peers")?;
        Ok(rs.ep.peers().map(|peer| PeerId { sock, peer }).collect())
    }

    fn rudp(&self, sock: SocketId, op: &'static str) -> Result<&RudpSock, Error> {
        let entry = self.entry(sock)?;
        match entry.sock.as_ref() {
            Some(Sock::Rudp(rs)) => Ok(rs),
            _ => Err(Error::WrongKind {
                op,
                kind: entry.kind,
            }),
        }
    }

    fn rudp_mut(&mut self, sock: SocketId, op: &'static str) -> Result<&mut RudpSock, Error> {
        let entry = self.entry_mut(sock)?;
        let kind = entry.kind;
        match entry.sock.as_mut() {
            Some(Sock::Rudp(rs)) => Ok(rs),
            _ => Err(Error::WrongKind { op, kind }),
        }
    }

    /// Output is pending on `sock`: inside a pass it goes out at the end;
    /// between passes, now.
    fn mark_rudp_dirty(&mut self, sock: SocketId) {
        if let Ok(rs) = self.rudp_mut(sock, "") {
            if rs.mark_dirty() {
                self.rudp_pending.dirty.push(sock);
            }
        }
        if !self.dispatching {
            flush_dirty(self);
        }
    }
}

/// A reliable-UDP socket's options: the 4 MiB buffers unless set.
fn rudp_socket_options(opts: &DgramOptions) -> DgramOptions {
    let mut o = opts.clone();
    o.recv_buffer_size.get_or_insert(DEFAULT_RUDP_BUFFER);
    o.send_buffer_size.get_or_insert(DEFAULT_RUDP_BUFFER);
    o
}

/// Don't-fragment and UDP offload for a reliable-UDP socket; returns
/// whether it sends trains (`UDP_SEGMENT`) and reads them (`UDP_GRO`).
fn configure_offload(sock: &Socket, config: &RudpConfig, opts: &DgramOptions) -> (bool, bool) {
    #[cfg(target_os = "linux")]
    {
        // Datagrams that fit any Ethernet path go with don't-fragment (and
        // no per-datagram IP ID); larger ones may still need fragments.
        if config.mtu <= DONT_FRAGMENT_MTU {
            let ipv6 = sock.local_addr().is_ok_and(|a| a.is_ipv6());
            if let Err(e) = sys::set_dont_fragment(sock.as_raw_fd(), ipv6) {
                log::debug!("reliable UDP: don't-fragment: {e}");
            }
        }
        // A train of datagrams crosses the kernel as one packet (see
        // `DgramOptions::offload`).
        if !opts.offload.unwrap_or(true) {
            return (false, false);
        }
        let gso = sys::udp_gso_supported(sock.as_raw_fd());
        let gro = match sys::set_udp_gro(sock.as_raw_fd()) {
            Ok(()) => true,
            Err(e) => {
                log::debug!("reliable UDP: receive offload: {e}");
                false
            }
        };
        (gso, gro)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (sock, config, opts);
        (false, false)
    }
}

fn seed_from(sock: &mio::net::UdpSocket, salt: u32) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS once per process and varies per
    // instance: a cheap, dependency-free source for the cookie secret.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(salt);
    h.write_i32(sock.as_raw_fd());
    if let Ok(a) = sock.local_addr() {
        h.write_u16(a.port());
    }
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Reads datagrams into the endpoint until the queue is empty or the
/// budget is spent; delivers the events they caused. `true` if the budget
/// ran out.
///
/// A `recvmmsg` that returns fewer datagrams than asked found the queue
/// empty (or met an ICMP error, which comes with its own `ERR` event): with
/// `trust_short_read` (the event had no `ERR`/`RDHUP`) that ends the drain
/// without one more call to see `WouldBlock`.
pub(super) fn drain<H: Handler + ?Sized>(
    cx: &mut Ctx,
    rbuf: &mut [u8],
    scratch: &mut Vec<u8>,
    handler: &mut H,
    id: SocketId,
    trust_short_read: bool,
) -> bool {
    let mut budget = cx.config.read_budget.max(1);
    while budget > 0 {
        let now = cx.now();
        let Some(entry) = cx.table.get_mut(id) else {
            return false;
        };
        let Some(Sock::Rudp(rs)) = entry.sock.as_mut() else {
            return false;
        };
        let slot = rs.slot.min(rbuf.len());
        let n_slots = (rbuf.len() / slot).clamp(1, BATCH).min(budget);
        let mut bufs: [&mut [u8]; BATCH] = super::datagram::receive_slots(rbuf, slot);
        let mut meta = [(0usize, false, UNSPECIFIED, 0usize); BATCH];
        let got = match recv_batch(rs, &mut bufs[..n_slots], &mut meta) {
            Ok(got) => got,
            Err(e) => {
                budget -= 1;
                if cx.recv_failed(handler, id, e) {
                    continue;
                }
                return false;
            }
        };
        budget = budget.saturating_sub(got.max(1));
        for (i, (buf, &(len, truncated, from, segment))) in
            bufs.iter().zip(&meta).take(got).enumerate()
        {
            if truncated {
                // Larger than any datagram (or train) the protocol sends:
                // not ours.
                entry.stats.dropped_truncated += 1;
                continue;
            }
            // A train coalesced by receive offload holds datagrams of
            // `segment` bytes (the last one may be shorter).
            if segment != 0 {
                entry.stats.trains_received += 1;
            }
            let step = if segment == 0 { len.max(1) } else { segment };
            for at in (0..len).step_by(step) {
                let datagram = &buf[at..(at + step).min(len)];
                // Messages that lie whole in the datagram stay in `rbuf`
                // until `deliver_events` below hands them over: no copy.
                if let Err(e) = rs
                    .ep
                    .handle_datagram_in_place(now, from, datagram, i * slot + at)
                {
                    log::trace!("{id}: datagram from {from}: {e}");
                }
            }
        }
        if got > 0 && rs.mark_dirty() {
            cx.rudp_pending.dirty.push(id);
        }
        deliver_events(cx, rbuf, scratch, handler, id);
        if got < n_slots && trust_short_read {
            return false;
        }
    }
    true
}

const UNSPECIFIED: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    0,
));

/// One `recvmmsg` (Linux) or a `recvfrom` loop: datagrams (or trains)
/// into `bufs`, (length, truncated, sender, train segment size or 0) into
/// `meta`.
fn recv_batch(
    rs: &RudpSock,
    bufs: &mut [&mut [u8]],
    meta: &mut [(usize, bool, SocketAddr, usize)],
) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    {
        let mut raw = [const { std::mem::MaybeUninit::uninit() }; BATCH];
        let got = sys::mmsg::recv_batch(rs.sock.as_raw_fd(), bufs, &mut raw, rs.gro)?;
        for (out, m) in meta.iter_mut().zip(got) {
            *out = (
                m.len,
                m.truncated,
                m.addr.to_inet().unwrap_or(UNSPECIFIED),
                m.segment,
            );
        }
        Ok(got.len())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let mut got = 0;
        for (buf, out) in bufs.iter_mut().zip(meta.iter_mut()) {
            let mut raw = sys::RawAddr::new();
            match sys::recv_from(rs.sock.as_raw_fd(), buf, sys::MSG_TRUNC, &mut raw) {
                Ok(r) => {
                    *out = (
                        r.ret.min(buf.len()),
                        r.ret > buf.len(),
                        raw.to_inet().unwrap_or(UNSPECIFIED),
                        0,
                    );
                    got += 1;
                }
                Err(e) if got > 0 && e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }
}

/// Hands every pending endpoint event of `id` to the handler. `rbuf` is
/// the receive buffer the endpoint's datagrams were just handled in place
/// from (messages still there are read from it); empty where none were.
pub(super) fn deliver_events<H: Handler + ?Sized>(
    cx: &mut Ctx,
    rbuf: &[u8],
    scratch: &mut Vec<u8>,
    handler: &mut H,
    id: SocketId,
) {
    enum Ev {
        Connected,
        /// The bytes are in `scratch`, or at this range of `rbuf`.
        Message(Guarantee, Option<std::ops::Range<usize>>),
        Writable,
        Closed(crate::rudp::RudpCloseReason),
    }
    loop {
        let Some(entry) = cx.table.get_mut(id) else {
            return;
        };
        let Some(Sock::Rudp(rs)) = entry.sock.as_mut() else {
            return;
        };
        let (peer, ev) = match rs.ep.poll_event_raw() {
            None => return,
            Some((peer, RawEvent::Message { data, guarantee })) => {
                let (len, at) = match data {
                    MsgRef::InPlace { offset, len } => (len, Some(offset..offset + len)),
                    MsgRef::Bytes(data) => {
                        // Reassembled, reordered or retained: borrowed from
                        // the endpoint, so copied out for the callback.
                        scratch.clear();
                        scratch.extend_from_slice(data);
                        (data.len(), None)
                    }
                };
                entry.stats.messages_in += 1;
                entry.stats.bytes_in += len as u64;
                (peer, Ev::Message(guarantee, at))
            }
            Some((peer, RawEvent::Connected)) => (peer, Ev::Connected),
            Some((peer, RawEvent::Writable)) => (peer, Ev::Writable),
            Some((peer, RawEvent::Closed(r))) => (peer, Ev::Closed(r)),
        };
        let peer = PeerId { sock: id, peer };
        match ev {
            Ev::Message(g, None) => cx.call(handler, |h, cx| h.on_rudp(cx, peer, scratch, g)),
            Ev::Message(g, Some(at)) => match rbuf.get(at) {
                Some(msg) => cx.call(handler, |h, cx| h.on_rudp(cx, peer, msg, g)),
                None => {
                    // A broken internal invariant, never peer input: say so
                    // loudly rather than deliver the wrong bytes.
                    debug_assert!(false, "in-place message outside the receive buffer");
                    log::error!("{peer}: a message was lost (receive buffer reused)");
                }
            },
            Ev::Connected => cx.call(handler, |h, cx| h.on_rudp_connected(cx, peer)),
            Ev::Writable => cx.call(handler, |h, cx| h.on_rudp_writable(cx, peer)),
            Ev::Closed(r) => cx.call(handler, |h, cx| h.on_rudp_closed(cx, peer, r)),
        }
    }
}

/// The endpoint's deadline came: run its timers.
pub(super) fn timeout_due<H: Handler + ?Sized>(
    cx: &mut Ctx,
    scratch: &mut Vec<u8>,
    handler: &mut H,
    id: SocketId,
    now: Instant,
) {
    let Some(Sock::Rudp(rs)) = cx.table.get_mut(id).and_then(|e| e.sock.as_mut()) else {
        return;
    };
    rs.timer = None;
    rs.ep.handle_timeout(now);
    if rs.mark_dirty() {
        cx.rudp_pending.dirty.push(id);
    }
    deliver_events(cx, &[], scratch, handler, id);
}

/// The end of a pass: the datagrams produced during it go out (with
/// `sendmmsg`); sending can end a connection (its CLOSE went out), so the
/// events of flushed endpoints are delivered, and what the handler sends
/// back goes out too.
pub(super) fn finish_pass<H: Handler + ?Sized>(
    cx: &mut Ctx,
    scratch: &mut Vec<u8>,
    handler: &mut H,
) {
    flush_dirty(cx);
    while let Some(id) = cx.rudp_pending.flushed.pop() {
        deliver_events(cx, &[], scratch, handler, id);
        flush_dirty(cx);
    }
}

/// A handler panicked mid-pass: messages not yet delivered may still lie
/// in the receive buffer, which the next pass reuses, so every endpoint
/// copies them out (they are delivered on the next pass).
pub(super) fn after_panic(cx: &mut Ctx, rbuf: &[u8]) {
    for (_, entry) in cx.table.iter_mut() {
        if let Some(Sock::Rudp(rs)) = entry.sock.as_mut() {
            rs.ep.materialize(rbuf);
        }
    }
}

/// A reliable-UDP socket is being closed: its timer goes.
pub(super) fn closing(cx: &mut Ctx, _id: SocketId, rs: &mut RudpSock) {
    if let Some((key, _)) = rs.timer.take() {
        cx.timers.cancel(key);
    }
}

/// Writes the pending datagrams of every dirty endpoint and re-arms their
/// timers.
pub(super) fn flush_dirty(cx: &mut Ctx) {
    while let Some(id) = cx.rudp_pending.dirty.pop() {
        flush(cx, id);
    }
}

fn flush(cx: &mut Ctx, id: SocketId) {
    let now = cx.now();
    let Ctx {
        table,
        timers,
        rudp_pending,
        ..
    } = cx;
    let Pending {
        tx: rudp_tx,
        flushed: rudp_flushed,
        ..
    } = rudp_pending;
    let Some(entry) = table.get_mut(id) else {
        return;
    };
    let Some(Sock::Rudp(rs)) = entry.sock.as_mut() else {
        return;
    };
    rs.dirty = false;
    if !rudp_flushed.contains(&id) {
        rudp_flushed.push(id);
    }
    let mtu = rs.ep.config().mtu;
    let cap = if rs.gso {
        TX_BYTES.max(BATCH * mtu)
    } else {
        BATCH * mtu
    };
    if rudp_tx.len() < cap {
        rudp_tx.resize(cap, 0);
    }
    let tx = &mut rudp_tx[..cap];
    // A datagram polled into a full batch, moved to the next one.
    let mut carry: Option<(usize, usize, SocketAddr)> = None;
    loop {
        // Datagrams are written back to back; consecutive ones of equal
        // size to one address form a train (one entry, one kernel packet
        // with segmentation offload). Up to BATCH entries per `sendmmsg`.
        let mut trains = Trains::new(rs.gso);
        let mut off = 0;
        if let Some((at, len, dest)) = carry.take() {
            tx.copy_within(at..at + len, 0);
            trains.push(0, len, dest);
            off = len;
        }
        let mut done = false;
        while off + mtu <= tx.len() {
            let Some(t) = rs.ep.poll_transmit(now, &mut tx[off..off + mtu]) else {
                done = true;
                break;
            };
            if !trains.push(off, t.len, t.dest) {
                carry = Some((off, t.len, t.dest));
                break;
            }
            off += t.len;
        }
        if trains.is_empty() {
            break;
        }
        let mut dests: [Option<sys::RawDest<'static>>; BATCH] = [const { None }; BATCH];
        for (d, t) in dests.iter_mut().zip(trains.as_slice()) {
            // To the connected peer: no address (the kernel's cached route).
            *d = (rs.connected != Some(t.dest)).then(|| sys::RawDest::inet(&t.dest));
        }
        let mut items = [sys::Outgoing::datagram(&[], None); BATCH];
        for (i, t) in trains.as_slice().iter().enumerate() {
            items[i] = sys::Outgoing {
                buf: &tx[t.start..t.start + t.len],
                dest: dests[i].as_ref(),
                segment: if t.count > 1 { t.segment as u16 } else { 0 },
            };
        }
        send_all(rs, &mut entry.stats, id, &items[..trains.len()]);
        if done {
            break;
        }
    }
    // Re-arm the endpoint's one entry in the reactor's deadline heap.
    let next = rs.ep.poll_timeout();
    match (rs.timer, next) {
        (Some((_, at)), Some(t)) if at == t => {}
        (old, next) => {
            if let Some((key, _)) = old {
                timers.cancel(key);
            }
            rs.timer = next.map(|t| (timers.insert(t, TimerTarget::Rudp(id)), t));
        }
    }
}

/// Sends `items` (datagrams and trains), as many per call as the kernel
/// takes. A train the kernel refuses (the route's device cannot offload,
/// or a datagram exceeds its MTU) turns segmentation offload off for the
/// socket and goes out datagram by datagram; other errors drop what is
/// left of the batch (the protocol resends what matters).
fn send_all(rs: &mut RudpSock, stats: &mut SocketStats, id: SocketId, items: &[sys::Outgoing<'_>]) {
    let mut sent = 0;
    while sent < items.len() {
        let t = items[sent];
        if t.segment != 0 && !rs.gso {
            // Offload was refused earlier in this batch.
            let single: Vec<_> = t
                .buf
                .chunks(usize::from(t.segment))
                .map(|d| sys::Outgoing::datagram(d, t.dest))
                .collect();
            send_all(rs, stats, id, &single);
            sent += 1;
            continue;
        }
        match send_batch(&rs.sock, &items[sent..]) {
            Ok(k) => {
                let k = k.max(1);
                let trains = items[sent..].iter().take(k).filter(|m| m.segment != 0);
                stats.trains_sent += trains.count() as u64;
                sent += k;
            }
            Err(e) if t.segment != 0 && gso_refused(&e) => {
                // Resent datagram by datagram on the next turn of the loop.
                rs.gso = false;
                rs.ep.set_transmit_burst(1);
                stats.offload_refused += 1;
                log::info!(
                    "{id}: UDP segmentation offload refused ({e}); sending datagrams one by one"
                );
            }
            Err(e) => {
                stats.send_errors += 1;
                log_send_error(id, &e, items.len() - sent);
                break;
            }
        }
    }
}

/// Errors with which the kernel refuses a segmentation-offload train
/// where single datagrams may still go: `EIO` (the device cannot offload
/// checksums), `EMSGSIZE` / `EINVAL` (a datagram of the train exceeds the
/// route's MTU: single ones may still be fragmented), and kernels that do
/// not know the option.
fn gso_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EMSGSIZE | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOPROTOOPT)
    )
}

/// One `sendmmsg` entry being built: a datagram, or a train of
/// equal-size datagrams to one address (the last one may be shorter).
#[derive(Clone, Copy)]
struct Train {
    start: usize,
    len: usize,
    segment: usize,
    count: usize,
    dest: SocketAddr,
    /// A shorter last datagram closed it.
    closed: bool,
}

/// The entries of one `sendmmsg`, in order.
struct Trains {
    items: [Train; BATCH],
    n: usize,
    /// Datagrams may join trains (segmentation offload is on).
    gso: bool,
}

impl Trains {
    fn new(gso: bool) -> Trains {
        let empty = Train {
            start: 0,
            len: 0,
            segment: 0,
            count: 0,
            dest: UNSPECIFIED,
            closed: true,
        };
        Trains {
            items: [empty; BATCH],
            n: 0,
            gso,
        }
    }

    /// Adds the datagram at `start..start + len` (right after the previous
    /// one): to the last train if it fits there, else as a new entry.
    /// `false` if that needs an entry and all are taken.
    fn push(&mut self, start: usize, len: usize, dest: SocketAddr) -> bool {
        if self.gso && self.n > 0 {
            let t = &mut self.items[self.n - 1];
            if !t.closed
                && t.dest == dest
                && len <= t.segment
                && t.count < MAX_TRAIN
                && t.len + len <= MAX_TRAIN_BYTES
            {
                debug_assert_eq!(t.start + t.len, start);
                t.len += len;
                t.count += 1;
                t.closed = len < t.segment;
                return true;
            }
        }
        if self.n == BATCH {
            return false;
        }
        self.items[self.n] = Train {
            start,
            len,
            segment: len,
            count: 1,
            dest,
            closed: len > usize::from(u16::MAX),
        };
        self.n += 1;
        true
    }

    fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn len(&self) -> usize {
        self.n
    }

    fn as_slice(&self) -> &[Train] {
        &self.items[..self.n]
    }
}

fn send_batch(sock: &mio::net::UdpSocket, items: &[sys::Outgoing<'_>]) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    {
        sys::mmsg::send_batch(sock.as_raw_fd(), items)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let m = &items[0];
        match m.dest {
            Some(dest) => sys::send_to(sock.as_raw_fd(), m.buf, dest).map(|_| 1),
            None => sys::send(sock.as_raw_fd(), m.buf).map(|_| 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// (start, len, segment, count) of each entry after pushing datagrams
    /// of `lens` (to the port given with each) back to back.
    fn build(gso: bool, datagrams: &[(usize, u16)]) -> (Vec<(usize, usize, usize, usize)>, usize) {
        let mut t = Trains::new(gso);
        let (mut off, mut taken) = (0, 0);
        for &(len, port) in datagrams {
            if !t.push(off, len, addr(port)) {
                break;
            }
            off += len;
            taken += 1;
        }
        let entries = t
            .as_slice()
            .iter()
            .map(|e| (e.start, e.len, e.segment, e.count))
            .collect();
        (entries, taken)
    }

    #[test]
    fn equal_datagrams_to_one_peer_form_a_train_a_shorter_one_ends_it() {
        let (e, _) = build(true, &[(100, 1), (100, 1), (60, 1), (100, 1)]);
        assert_eq!(e, [(0, 260, 100, 3), (260, 100, 100, 1)]);
    }

    #[test]
    fn a_larger_datagram_or_another_peer_starts_a_new_entry() {
        let (e, _) = build(true, &[(100, 1), (120, 1), (120, 2), (120, 2)]);
        assert_eq!(
            e,
            [(0, 100, 100, 1), (100, 120, 120, 1), (220, 240, 120, 2)]
        );
    }

    #[test]
    fn trains_stop_at_the_kernels_segment_and_size_limits() {
        let (e, _) = build(true, &[(10, 1); MAX_TRAIN + 1]);
        assert_eq!(
            e,
            [
                (0, 10 * MAX_TRAIN, 10, MAX_TRAIN),
                (10 * MAX_TRAIN, 10, 10, 1)
            ]
        );
        let big = 20_000;
        let (e, _) = build(true, &[(big, 1); 4]);
        assert_eq!(e.iter().map(|x| x.3).collect::<Vec<_>>(), [3, 1]);
        assert!(e.iter().all(|x| x.1 <= MAX_TRAIN_BYTES));
    }

    #[test]
    fn without_offload_every_datagram_is_an_entry_and_a_full_batch_says_so() {
        let (e, taken) = build(false, &[(100, 1); BATCH + 3]);
        assert_eq!(e.len(), BATCH);
        assert_eq!(taken, BATCH, "the datagram past a full batch is refused");
        assert!(e.iter().all(|x| x.3 == 1));
    }
}
