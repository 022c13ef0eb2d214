//! `sendmmsg` / `recvmmsg` (Linux): many datagrams per system call.

use std::io;
use std::mem;
use std::os::fd::RawFd;

use std::mem::MaybeUninit;

use super::{Outgoing, RawAddr};

/// The most datagrams one call moves; larger batches are cut to this.
pub(crate) const MAX_BATCH: usize = 64;

/// One `msghdr` over one iovec (everything else zero: no address, no
/// control data).
pub(super) fn header(iov: *mut libc::iovec) -> libc::mmsghdr {
    // SAFETY: `mmsghdr` is a plain C struct; all-zero is a valid value (and
    // keeps any private padding zero).
    let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
    h.msg_hdr.msg_iov = iov;
    h.msg_hdr.msg_iovlen = 1;
    h
}

/// Control words (`u64`, aligned for `cmsghdr`) of one `UDP_SEGMENT` or
/// `UDP_GRO` message.
const UDP_CMSG_WORDS: usize = super::cmsg::cmsg_space(mem::size_of::<libc::c_int>()) / 8;

/// Control words for what a plain UDP socket may receive with a datagram:
/// a `UDP_GRO` segment size, a traffic class (`IP_TOS` / `IPV6_TCLASS`) and
/// packet info (`IP_PKTINFO` / `IPV6_PKTINFO`, the larger of the two).
const RECV_CMSG_WORDS: usize = (2 * super::cmsg::cmsg_space(mem::size_of::<libc::c_int>())
    + super::cmsg::cmsg_space(mem::size_of::<libc::in6_pktinfo>()))
    / 8;

/// Control words for what one entry of [`send_udp`] may carry: a segment
/// size, a traffic class and a source address.
const SEND_CMSG_WORDS: usize = RECV_CMSG_WORDS;

/// Sends up to [`MAX_BATCH`] entries with one `sendmmsg`. Each goes to its
/// own address, or to the connected peer when it has none. Returns how
/// many entries the kernel took (a prefix of `msgs`).
///
/// Only the `msgs.len()` headers in use are written: a call costs what it
/// sends, not [`MAX_BATCH`].
pub(crate) fn send_batch(fd: RawFd, msgs: &[Outgoing<'_>]) -> io::Result<usize> {
    let n = msgs.len().min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; MAX_BATCH];
    let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; MAX_BATCH];
    let mut controls = [const { MaybeUninit::<[u64; UDP_CMSG_WORDS]>::uninit() }; MAX_BATCH];
    for (i, m) in msgs[..n].iter().enumerate() {
        let iov = iovs[i].write(libc::iovec {
            iov_base: m.buf.as_ptr() as *mut libc::c_void,
            iov_len: m.buf.len(),
        });
        let h = hdrs[i].write(header(iov));
        if let Some(a) = m.dest {
            let (name, len) = a.as_ptr_len();
            h.msg_hdr.msg_name = name as *mut libc::c_void;
            h.msg_hdr.msg_namelen = len;
        }
        if m.segment != 0 && m.buf.len() > usize::from(m.segment) {
            let c = controls[i].write([0; UDP_CMSG_WORDS]);
            // The kernel reads a u16 segment size.
            let len =
                super::cmsg::put_udp(bytes_of_mut(c), libc::UDP_SEGMENT, &m.segment.to_ne_bytes());
            h.msg_hdr.msg_control = c.as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = len as _;
        }
    }
    sendmmsg(fd, &mut hdrs[..n])
}

/// `sendmmsg` over `hdrs`, every one initialised by the caller and
/// pointing at live iovecs, addresses and control buffers of the declared
/// lengths. Returns how many the kernel took.
fn sendmmsg(fd: RawFd, hdrs: &mut [MaybeUninit<libc::mmsghdr>]) -> io::Result<usize> {
    // SAFETY: the callers initialise every header of `hdrs` (they pass
    // the prefix they wrote) and point it at iovecs over live, borrowed
    // payloads, at live addresses and at initialised control buffers of
    // the declared lengths; the kernel only reads them, and reads no
    // header past `hdrs.len()`.
    let sent = syscall!(sendmmsg(
        fd,
        hdrs.as_mut_ptr().cast::<libc::mmsghdr>(),
        hdrs.len() as libc::c_uint,
        super::SEND_FLAGS
    ))?;
    Ok(sent as usize)
}

/// The bytes of a control buffer.
fn bytes_of_mut(words: &mut [u64; UDP_CMSG_WORDS]) -> &mut [u8] {
    words_as_bytes(words)
}

/// The bytes of a control buffer of any size.
fn words_as_bytes(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: the slice is initialised; `u8` has no alignment or validity
    // requirement, and the view borrows `words` mutably for its lifetime.
    unsafe {
        std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), mem::size_of_val(words))
    }
}

/// One entry of [`send_udp`]: a datagram whose bytes are the concatenation
/// of `iov`, or — with `segment` — a train of datagrams of that size (the
/// last one possibly shorter), with its per-datagram metadata.
#[derive(Clone, Copy)]
pub(crate) struct UdpOut<'a> {
    pub(crate) iov: &'a [io::IoSlice<'a>],
    /// `None`: to the connected peer.
    pub(crate) dest: Option<&'a super::RawDest<'a>>,
    /// Non-zero: a train sent with segmentation offload (`UDP_SEGMENT`).
    pub(crate) segment: u16,
    /// The traffic class byte (`IP_TOS` / `IPV6_TCLASS`: ECN is its low two
    /// bits), if set.
    pub(crate) tos: Option<u8>,
    /// The source address (`IP_PKTINFO` / `IPV6_PKTINFO`), if chosen.
    pub(crate) src: Option<std::net::IpAddr>,
    /// The socket is IPv6 (the control messages are `IPV6_*`).
    pub(crate) ipv6: bool,
}

/// Sends up to [`MAX_BATCH`] entries with one `sendmmsg`, each with its own
/// iovecs and control messages (segment size, traffic class, source
/// address). Returns how many entries the kernel took (a prefix).
pub(crate) fn send_udp(fd: RawFd, msgs: &[UdpOut<'_>]) -> io::Result<usize> {
    let n = msgs.len().min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; MAX_BATCH];
    let mut controls = [const { MaybeUninit::<[u64; SEND_CMSG_WORDS]>::uninit() }; MAX_BATCH];
    for (i, m) in msgs[..n].iter().enumerate() {
        // SAFETY: `mmsghdr` is a plain C struct; all-zero is a valid value.
        let h = hdrs[i].write(unsafe { mem::zeroed() });
        // `IoSlice` is ABI-compatible with `iovec` on Unix; the kernel only
        // reads through it.
        h.msg_hdr.msg_iov = m.iov.as_ptr() as *mut libc::iovec;
        h.msg_hdr.msg_iovlen = m.iov.len() as _;
        if let Some(a) = m.dest {
            let (name, len) = a.as_ptr_len();
            h.msg_hdr.msg_name = name as *mut libc::c_void;
            h.msg_hdr.msg_namelen = len;
        }
        let c = controls[i].write([0; SEND_CMSG_WORDS]);
        let len = put_udp_control(words_as_bytes(c), m);
        if len > 0 {
            h.msg_hdr.msg_control = c.as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = len as _;
        }
    }
    sendmmsg(fd, &mut hdrs[..n])
}

/// Writes the control messages `m` needs into `control`; their total
/// length (0: none).
fn put_udp_control(control: &mut [u8], m: &UdpOut<'_>) -> usize {
    use super::cmsg::{cmsg_space, put_msg as put};
    let mut off = 0;
    let total: usize = m.iov.iter().map(|s| s.len()).sum();
    if m.segment != 0 && total > usize::from(m.segment) {
        put(
            &mut control[off..],
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            &m.segment.to_ne_bytes(),
        );
        off += cmsg_space(2);
    }
    if let Some(tos) = m.tos {
        let v = libc::c_int::from(tos).to_ne_bytes();
        if m.ipv6 {
            put(&mut control[off..], libc::SOL_IPV6, libc::IPV6_TCLASS, &v);
        } else {
            put(&mut control[off..], libc::SOL_IP, libc::IP_TOS, &v);
        }
        off += cmsg_space(v.len());
    }
    match m.src {
        Some(std::net::IpAddr::V4(a)) if !m.ipv6 => {
            // `in_pktinfo`: ifindex 0, spec_dst = the source, addr unused.
            let mut info = [0u8; 12];
            info[4..8].copy_from_slice(&a.octets());
            put(&mut control[off..], libc::SOL_IP, libc::IP_PKTINFO, &info);
            off += cmsg_space(info.len());
        }
        Some(ip) => {
            // `in6_pktinfo`: addr, ifindex 0 (an IPv4 source on a
            // dual-stack socket as a mapped address).
            let v6 = match ip {
                std::net::IpAddr::V4(a) => a.to_ipv6_mapped(),
                std::net::IpAddr::V6(a) => a,
            };
            let mut info = [0u8; 20];
            info[..16].copy_from_slice(&v6.octets());
            put(
                &mut control[off..],
                libc::SOL_IPV6,
                libc::IPV6_PKTINFO,
                &info,
            );
            off += cmsg_space(info.len());
        }
        None => {}
    }
    off
}

/// What [`recv_batch`] reports for one datagram.
pub(crate) struct BatchMeta {
    /// Bytes stored in the buffer.
    pub(crate) len: usize,
    /// The datagram did not fit its buffer and was cut.
    pub(crate) truncated: bool,
    /// The sender, as the kernel wrote it.
    pub(crate) addr: RawAddr,
    /// Non-zero: receive offload coalesced a train of datagrams of this
    /// size (the last one possibly shorter) into the buffer.
    pub(crate) segment: usize,
    /// The traffic class byte, if the socket asked for it.
    pub(crate) tos: Option<u8>,
    /// The destination address, if the socket asked for it.
    pub(crate) dst: Option<std::net::IpAddr>,
}

impl BatchMeta {
    pub(crate) const fn new() -> BatchMeta {
        BatchMeta {
            len: 0,
            truncated: false,
            addr: RawAddr::new(),
            segment: 0,
            tos: None,
            dst: None,
        }
    }
}

/// Receives up to `min(bufs.len(), meta.len(), MAX_BATCH)` datagrams with
/// one non-blocking `recvmmsg`; returns what arrived (at least one, or an
/// error such as `WouldBlock`), as the initialised prefix of `meta`. The
/// kernel writes each sender's address straight into its `meta` entry;
/// nothing is zeroed or copied beforehand.
///
/// With `control` (the socket has receive offload, [`super::set_udp_gro`],
/// or asked for traffic classes or packet info), each buffer gets room for
/// those control messages: a coalesced train reports its segment size in
/// [`BatchMeta::segment`] (the buffers should then hold a whole train, 64
/// KiB, or its tail is cut off), and the traffic class and destination
/// land in [`BatchMeta::tos`] and [`BatchMeta::dst`].
pub(crate) fn recv_batch<'m>(
    fd: RawFd,
    bufs: &mut [&mut [u8]],
    meta: &'m mut [MaybeUninit<BatchMeta>],
    control: bool,
) -> io::Result<&'m [BatchMeta]> {
    let n = bufs.len().min(meta.len()).min(MAX_BATCH);
    if n == 0 {
        return Ok(&[]);
    }
    let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; MAX_BATCH];
    let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; MAX_BATCH];
    let mut controls = [const { MaybeUninit::<[u64; RECV_CMSG_WORDS]>::uninit() }; MAX_BATCH];
    let gro = control;
    for i in 0..n {
        let iov = iovs[i].write(libc::iovec {
            iov_base: bufs[i].as_mut_ptr().cast(),
            iov_len: bufs[i].len(),
        });
        let h = hdrs[i].write(header(iov));
        let m = meta[i].write(BatchMeta::new());
        let (name, namelen) = m.addr.as_out();
        h.msg_hdr.msg_name = name;
        h.msg_hdr.msg_namelen = namelen;
        if gro {
            let c = controls[i].write([0; RECV_CMSG_WORDS]);
            h.msg_hdr.msg_control = c.as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = mem::size_of_val(c) as _;
        }
    }
    // SAFETY: the first `n` headers are initialised (above) and point at
    // iovecs over distinct, mutably borrowed buffers, at address storage of
    // the declared size in distinct, mutably borrowed `meta` entries and (with
    // `gro`) at distinct, initialised control buffers of the declared size;
    // all outlive the call, and the kernel touches no header past `n`. A null
    // timeout with MSG_DONTWAIT never blocks.
    let got = syscall!(recvmmsg(
        fd,
        hdrs.as_mut_ptr().cast::<libc::mmsghdr>(),
        n as libc::c_uint,
        libc::MSG_DONTWAIT,
        std::ptr::null_mut()
    ))? as usize;
    let got = got.min(n);
    for i in 0..got {
        // SAFETY: header `i < n` and meta entry `i` were initialised above
        // (the kernel only wrote lengths, flags and the address bytes).
        let (h, m) = unsafe { (hdrs[i].assume_init_ref(), meta[i].assume_init_mut()) };
        m.len = (h.msg_len as usize).min(bufs[i].len());
        m.truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        m.addr.set_len(h.msg_hdr.msg_namelen);
        if gro {
            // `msg_controllen` is a `size_t` on glibc, a `socklen_t` elsewhere.
            #[allow(clippy::unnecessary_cast)]
            let controllen = h.msg_hdr.msg_controllen as usize;
            // SAFETY: control buffer `i` was initialised above (zeros, then
            // whatever the kernel wrote).
            let words = unsafe { controls[i].assume_init_mut() };
            let bytes = words_as_bytes(words);
            let summary = super::cmsg::parse(&bytes[..controllen.min(bytes.len())], |_| {});
            m.segment = summary.udp_gro.unwrap_or(0);
            m.tos = summary.tos;
            m.dst = summary.dst;
        }
    }
    // SAFETY: the first `got <= n` entries of `meta` are initialised (above);
    // `MaybeUninit<T>` has the layout of `T`; the view borrows `meta`.
    Ok(unsafe { std::slice::from_raw_parts(meta.as_ptr().cast::<BatchMeta>(), got) })
}
