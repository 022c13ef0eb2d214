//! Control messages (`SCM_RIGHTS`, `SCM_CREDENTIALS`): `recvmsg` / `sendmsg`
//! with ancillary data, and the parser behind them (Linux).
//!
//! The parser is in two layers, so that untrusted bytes can never become an
//! `OwnedFd`:
//!
//! 1. [`parse`] is safe and total over any `&[u8]`: it walks the control
//!    messages and reports raw descriptor *numbers* (plain `i32`s), the
//!    credentials and whether anything was cut or malformed. The fuzz
//!    target calls it (through `net::parse_control`, built for fuzzing
//!    only).
//! 2. [`recvmsg`] runs the system call and, on the next line, walks the
//!    control bytes the kernel has just written with [`parse`], wrapping each
//!    descriptor number in an `OwnedFd`. Only there is a number known to be
//!    a descriptor the kernel installed for us, and only there does it become
//!    owned — every `SCM_RIGHTS` message is walked, also when `MSG_CTRUNC`
//!    cut the list, so none is ever leaked.

use std::io::{self, IoSlice};
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use super::{RawAddr, RawDest};

/// The most descriptors Linux accepts in one `SCM_RIGHTS` message
/// (`SCM_MAX_FD`); more gives `EINVAL`.
pub(crate) const SCM_MAX_FD: usize = 253;

/// `CMSG_ALIGN` (Linux: multiples of `size_t`).
const fn cmsg_align(len: usize) -> usize {
    let a = mem::size_of::<usize>();
    (len + a - 1) & !(a - 1)
}

/// Offset of a control message's data from its header (`CMSG_LEN(0)`).
const DATA_OFFSET: usize = cmsg_align(mem::size_of::<libc::cmsghdr>());

/// `CMSG_LEN(len)`: the `cmsg_len` of a message carrying `len` data bytes.
pub(crate) const fn cmsg_len(len: usize) -> usize {
    DATA_OFFSET + len
}

/// `CMSG_SPACE(len)`: the room a message with `len` data bytes takes.
pub(crate) const fn cmsg_space(len: usize) -> usize {
    DATA_OFFSET + cmsg_align(len)
}

const UCRED_LEN: usize = mem::size_of::<libc::ucred>();
const WORD: usize = mem::size_of::<u64>();

/// The number of `u64` words of control buffer that hold credentials and
/// up to `max_fds` descriptors. Control buffers are `[u64]` so that they
/// are aligned for `cmsghdr`.
pub(crate) const fn control_words(max_fds: usize) -> usize {
    let fds = if max_fds == 0 {
        0
    } else {
        cmsg_space(max_fds * mem::size_of::<RawFd>())
    };
    (cmsg_space(UCRED_LEN) + fds).div_ceil(WORD)
}

/// Control words for credentials alone (what `RecvMsg` on a seqpacket
/// socket passes: enough to tell an empty message from end of stream, and
/// no room for descriptors, so the kernel installs none).
pub(crate) const CREDS_WORDS: usize = control_words(0);

/// Control words for the largest message we send.
const SEND_WORDS: usize = control_words(SCM_MAX_FD);

/// Credentials as the kernel reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cred {
    pub(crate) pid: libc::pid_t,
    pub(crate) uid: libc::uid_t,
    pub(crate) gid: libc::gid_t,
}

/// What [`parse`] found besides descriptor numbers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Summary {
    /// The first complete `SCM_CREDENTIALS` message.
    pub(crate) creds: Option<Cred>,
    /// A header or payload was cut short, or a length was impossible.
    pub(crate) malformed: bool,
    /// Control messages of other kinds, skipped.
    pub(crate) other: usize,
    /// The segment size of a train coalesced by UDP receive offload
    /// (`UDP_GRO`): the buffer holds datagrams of this size, the last one
    /// possibly shorter.
    pub(crate) udp_gro: Option<usize>,
    /// The IP header's traffic class byte (`IP_TOS` / `IPV6_TCLASS`): its
    /// low two bits are the ECN codepoint.
    pub(crate) tos: Option<u8>,
    /// The datagram's destination address (`IP_PKTINFO` / `IPV6_PKTINFO`).
    pub(crate) dst: Option<std::net::IpAddr>,
}

/// Walks the control messages in `bytes`, calling `on_fd` with every number
/// in every `SCM_RIGHTS` message, in order.
///
/// Total: any input gives a result, never a panic, and nothing is read
/// outside `bytes`. A message whose length runs past the end is clamped to
/// what is there (and reported as malformed); a length shorter than a
/// header ends the walk (as `CMSG_NXTHDR` would).
pub(crate) fn parse(bytes: &[u8], mut on_fd: impl FnMut(RawFd)) -> Summary {
    const HDR: usize = mem::size_of::<libc::cmsghdr>();
    let mut summary = Summary::default();
    let mut off = 0usize;
    while bytes.len().saturating_sub(off) >= HDR {
        // SAFETY: `off + HDR <= bytes.len()` (loop condition), so the read
        // stays inside `bytes`; `cmsghdr` is plain integers (every bit
        // pattern is a valid value) and `read_unaligned` needs no alignment.
        let hdr: libc::cmsghdr = unsafe { ptr::read_unaligned(bytes.as_ptr().add(off).cast()) };
        let len = hdr.cmsg_len as usize;
        if len < DATA_OFFSET {
            summary.malformed = true;
            break;
        }
        let avail = bytes.len() - off;
        if len > avail {
            summary.malformed = true;
        }
        let end = off + len.min(avail);
        let data = bytes.get(off + DATA_OFFSET..end).unwrap_or(&[]);
        match (hdr.cmsg_level, hdr.cmsg_type) {
            (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                let mut chunks = data.chunks_exact(mem::size_of::<RawFd>());
                for c in &mut chunks {
                    on_fd(RawFd::from_ne_bytes([c[0], c[1], c[2], c[3]]));
                }
                if !chunks.remainder().is_empty() {
                    summary.malformed = true;
                }
            }
            (libc::SOL_SOCKET, libc::SCM_CREDENTIALS) => {
                if data.len() >= UCRED_LEN {
                    if summary.creds.is_none() {
                        let word = |i: usize| [data[i], data[i + 1], data[i + 2], data[i + 3]];
                        summary.creds = Some(Cred {
                            pid: libc::pid_t::from_ne_bytes(word(0)),
                            uid: libc::uid_t::from_ne_bytes(word(4)),
                            gid: libc::gid_t::from_ne_bytes(word(8)),
                        });
                    }
                } else {
                    summary.malformed = true;
                }
            }
            // IPv4 reports the byte alone; some kernels send an int.
            (libc::SOL_IP, libc::IP_TOS) => match data.first() {
                Some(&b) => summary.tos = Some(b),
                None => summary.malformed = true,
            },
            (libc::SOL_IPV6, libc::IPV6_TCLASS) => match data.get(..4) {
                Some(w) => {
                    let v = libc::c_int::from_ne_bytes([w[0], w[1], w[2], w[3]]);
                    summary.tos = Some(v as u8);
                }
                None => summary.malformed = true,
            },
            // `in_pktinfo`: ifindex (4), spec_dst (4), addr (4): the header's
            // destination is `addr`.
            (libc::SOL_IP, libc::IP_PKTINFO) => match data.get(8..12) {
                Some(a) => {
                    let ip = std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                    summary.dst = Some(ip.into());
                }
                None => summary.malformed = true,
            },
            // `in6_pktinfo`: addr (16), ifindex (4).
            (libc::SOL_IPV6, libc::IPV6_PKTINFO) => match data.get(..16) {
                Some(a) => {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(a);
                    let ip = std::net::Ipv6Addr::from(b);
                    // A dual-stack socket's IPv4 peer.
                    summary.dst = Some(match ip.to_ipv4_mapped() {
                        Some(v4) => v4.into(),
                        None => ip.into(),
                    });
                }
                None => summary.malformed = true,
            },
            (libc::SOL_UDP, libc::UDP_GRO) => match data.get(..4) {
                Some(w) => {
                    let size = libc::c_int::from_ne_bytes([w[0], w[1], w[2], w[3]]);
                    summary.udp_gro = usize::try_from(size).ok().filter(|&s| s > 0);
                    if summary.udp_gro.is_none() {
                        summary.malformed = true;
                    }
                }
                None => summary.malformed = true,
            },
            _ => summary.other += 1,
        }
        // `cmsg_align(len)`, without overflow for lengths near usize::MAX.
        // The step is at least DATA_OFFSET > 0, so the walk always advances.
        let a = mem::size_of::<usize>();
        let Some(step) = len.checked_add(a - 1).map(|l| l & !(a - 1)) else {
            break;
        };
        match off.checked_add(step) {
            Some(next) => off = next,
            None => break,
        }
    }
    summary
}

/// What [`recvmsg`] received.
#[derive(Debug)]
pub(crate) struct Received {
    /// The full length of the message (`MSG_TRUNC` is always passed, so
    /// Linux returns it even when the buffer was smaller).
    pub(crate) len: usize,
    /// The message did not fit the buffer and was cut (`MSG_TRUNC`).
    pub(crate) truncated: bool,
    /// The control data did not fit the control buffer (`MSG_CTRUNC`): the
    /// kernel discarded (closed) the descriptors that had no room.
    pub(crate) ctrunc: bool,
    /// Every descriptor the kernel installed for this message.
    pub(crate) fds: Vec<OwnedFd>,
    /// The sender's credentials (`SO_PASSCRED` on the receiving socket).
    pub(crate) creds: Option<Cred>,
    /// The control data did not parse cleanly.
    pub(crate) malformed: bool,
}

impl Received {
    /// End of stream on a seqpacket socket with `SO_PASSCRED`: every real
    /// message carries credentials, so a 0-byte read without them is the
    /// end (Linux reads both as 0 bytes).
    pub(crate) fn is_seqpacket_eof(&self) -> bool {
        self.len == 0 && self.creds.is_none()
    }

    /// The message's size as far as it is known from a buffer of `cap`
    /// bytes: exact, or at least `cap + 1` when it was cut.
    pub(crate) fn size(&self, cap: usize) -> usize {
        if self.truncated {
            self.len.max(cap + 1)
        } else {
            self.len
        }
    }
}

/// `recvmsg(fd, ..., MSG_TRUNC | MSG_CMSG_CLOEXEC)` with a control buffer,
/// plus `MSG_PEEK` when `peek`. The sender's address goes to `addr` when
/// given.
///
/// Descriptors the kernel passes become `OwnedFd`s before this function
/// returns. A control buffer of [`CREDS_WORDS`] has no room for any, so the
/// kernel installs none (it closes them and sets `MSG_CTRUNC`).
pub(crate) fn recvmsg(
    fd: RawFd,
    buf: &mut [u8],
    control: &mut [u64],
    peek: bool,
    mut addr: Option<&mut RawAddr>,
) -> io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let control_bytes = mem::size_of_val(control);
    // SAFETY: `msghdr` is a plain C struct; all-zero is a valid value
    // (it also keeps any private padding fields zero, as musl wants).
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if control_bytes > 0 {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control_bytes as _;
    }
    if let Some(a) = addr.as_deref_mut() {
        msg.msg_name = a.storage.as_mut_ptr().cast();
        msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    }
    // SAFETY: `msg` points at `iov` (valid for `buf.len()` writable bytes of
    // `buf`, borrowed mutably), at `control_bytes` writable bytes of
    // `control` (u64-aligned, so aligned for `cmsghdr`) and, when `addr` is
    // given, at `msg_namelen` bytes of address storage; all outlive the call.
    let flags = libc::MSG_TRUNC | libc::MSG_CMSG_CLOEXEC | if peek { libc::MSG_PEEK } else { 0 };
    let res = syscall!(recvmsg(fd, &mut msg, flags));
    let n = match res {
        Ok(n) => n as usize,
        Err(e) => {
            if let Some(a) = addr {
                a.len = 0;
            }
            return Err(e);
        }
    };
    // SAFETY: `recvmsg` has just succeeded on `msg`, whose control buffer
    // is `control` (or nothing, when `control` is empty and the kernel
    // reports 0 bytes); `msg.msg_controllen` is the number of bytes of it
    // the kernel wrote for this message, so every `SCM_RIGHTS` number in
    // them is a descriptor it installed for us that nothing owns yet.
    // This is the one call for it, straight after the system call.
    let r = unsafe {
        take_received(
            control,
            msg.msg_controllen as usize,
            msg.msg_flags,
            n,
            buf.len(),
        )
    };
    if let Some(a) = addr {
        a.len = msg.msg_namelen;
    }
    Ok(r)
}

/// Turns what one `recvmsg` (or one `recvmmsg` entry) wrote into a
/// [`Received`]: the descriptors in the first `controllen` bytes of
/// `control` become owned, the credentials are parsed.
///
/// # Safety
///
/// Every descriptor number in an `SCM_RIGHTS` message within the first
/// `controllen` bytes of `control` becomes an `OwnedFd`, which closes it
/// when dropped. So the caller must guarantee that:
///
/// - those bytes are the control data the kernel wrote into `control` for
///   one message received by a `recvmsg` / `recvmmsg` call of this process
///   that has just succeeded, and `controllen` is the `msg_controllen` the
///   kernel reported for that message (any bytes past it are ignored);
/// - each such number is therefore a descriptor the kernel installed in
///   this process's table for that message, and nothing has taken
///   ownership of it yet: this function is called once per received
///   message, and nothing else reads the descriptor numbers out of
///   `control` and closes or wraps them.
unsafe fn take_received(
    control: &[u64],
    controllen: usize,
    msg_flags: libc::c_int,
    n: usize,
    buf_len: usize,
) -> Received {
    let used = controllen.min(mem::size_of_val(control));
    // SAFETY: `control` is `size_of_val(control)` initialised bytes (u64s)
    // and `used` is no more; viewing a prefix as `u8`s is valid (no
    // alignment or validity requirement) while `control` is borrowed.
    let control_bytes = unsafe { std::slice::from_raw_parts(control.as_ptr().cast::<u8>(), used) };
    let mut fds = Vec::new();
    let summary = parse(control_bytes, |raw| {
        if raw >= 0 {
            // SAFETY: by this function's contract these bytes are the
            // control data the kernel has just written for one message, so
            // each SCM_RIGHTS number is a descriptor it installed in our
            // table for it, owned by nothing else yet. Each is taken exactly
            // once: the walk visits every entry once, and the caller calls
            // this once per message.
            fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
        }
    });
    Received {
        len: n,
        truncated: n > buf_len || msg_flags & libc::MSG_TRUNC != 0,
        ctrunc: msg_flags & libc::MSG_CTRUNC != 0,
        fds,
        creds: summary.creds,
        malformed: summary.malformed,
    }
}

/// The most messages [`recvmmsg`] reads in one call.
pub(crate) const MAX_RECV_BATCH: usize = 2;

/// One non-blocking `recvmmsg(fd, ..., MSG_TRUNC | MSG_CMSG_CLOEXEC)`: up to
/// `min(bufs.len(), controls.len(), MAX_RECV_BATCH)` messages, message `i`
/// into `bufs[i]` with its control data in `controls[i]`. Returns how many
/// were asked for and what arrived, in order (`Some` for a prefix): fewer
/// than asked means the kernel found the queue empty — or hit an error,
/// which it keeps for the next call.
///
/// Every descriptor of every message received is owned by the result.
pub(crate) fn recvmmsg(
    fd: RawFd,
    bufs: &mut [&mut [u8]],
    controls: &mut [&mut [u64]],
) -> io::Result<(usize, [Option<Received>; MAX_RECV_BATCH])> {
    let n = bufs.len().min(controls.len()).min(MAX_RECV_BATCH);
    let mut received: [Option<Received>; MAX_RECV_BATCH] = Default::default();
    if n == 0 {
        return Ok((0, received));
    }
    let mut iovs = [const { mem::MaybeUninit::<libc::iovec>::uninit() }; MAX_RECV_BATCH];
    let mut hdrs = [const { mem::MaybeUninit::<libc::mmsghdr>::uninit() }; MAX_RECV_BATCH];
    for i in 0..n {
        let iov = iovs[i].write(libc::iovec {
            iov_base: bufs[i].as_mut_ptr().cast(),
            iov_len: bufs[i].len(),
        });
        let h = &mut hdrs[i].write(super::mmsg::header(iov)).msg_hdr;
        let room = mem::size_of_val(&*controls[i]);
        if room > 0 {
            h.msg_control = controls[i].as_mut_ptr().cast();
            h.msg_controllen = room as _;
        }
    }
    // SAFETY: the first `n` headers are initialised (above) and point at
    // iovecs over distinct, mutably borrowed buffers and at distinct, mutably
    // borrowed, u64-aligned control buffers of the declared sizes; all
    // outlive the call, and the kernel touches no header past `n`. A null
    // timeout with MSG_DONTWAIT never blocks.
    let flags = libc::MSG_DONTWAIT | libc::MSG_TRUNC | libc::MSG_CMSG_CLOEXEC;
    let got = syscall!(recvmmsg(
        fd,
        hdrs.as_mut_ptr().cast::<libc::mmsghdr>(),
        n as libc::c_uint,
        flags,
        std::ptr::null_mut()
    ))? as usize;
    for (i, slot) in received.iter_mut().enumerate().take(got.min(n)) {
        // SAFETY: header `i < n` was initialised above (the kernel only
        // wrote lengths and flags).
        let h = unsafe { hdrs[i].assume_init_ref() };
        // `msg_controllen` is a `size_t` on glibc, a `socklen_t` elsewhere.
        #[allow(clippy::unnecessary_cast)]
        let controllen = h.msg_hdr.msg_controllen as usize;
        // SAFETY: `recvmmsg` has just received message `i < got`, with
        // `controls[i]` as its control buffer (set in header `i` above, or
        // none when it is empty and the kernel reports 0 bytes); the kernel
        // stored how many bytes of it it wrote in `msg_controllen`. Each
        // message's descriptors are taken here once, and nowhere else.
        *slot = Some(unsafe {
            take_received(
                controls[i],
                controllen,
                h.msg_hdr.msg_flags,
                h.msg_len as usize,
                bufs[i].len(),
            )
        });
    }
    Ok((n, received))
}

/// Writes one control message header and its data at `off` of `control`;
/// returns the offset of the next message.
fn put(
    control: &mut [u8],
    off: usize,
    ty: libc::c_int,
    data: impl Iterator<Item = [u8; 4]>,
    len: usize,
) -> usize {
    let room = &mut control[off..off + cmsg_space(len)];
    put_header(room, libc::SOL_SOCKET, ty, len);
    for (i, word) in data.enumerate() {
        room[DATA_OFFSET + 4 * i..DATA_OFFSET + 4 * i + 4].copy_from_slice(&word);
    }
    off + cmsg_space(len)
}

/// Writes the header of a control message with `len` data bytes at the
/// start of `room` (at least `cmsg_space(len)` bytes).
fn put_header(room: &mut [u8], level: libc::c_int, ty: libc::c_int, len: usize) {
    // SAFETY: `cmsghdr` is a plain C struct; all-zero is valid (and keeps
    // any private padding zero).
    let mut hdr: libc::cmsghdr = unsafe { mem::zeroed() };
    hdr.cmsg_len = cmsg_len(len) as _;
    hdr.cmsg_level = level;
    hdr.cmsg_type = ty;
    let room = &mut room[..cmsg_space(len)];
    // SAFETY: `room` holds at least a header (`cmsg_space(len) >=
    // DATA_OFFSET >= size_of::<cmsghdr>()`, checked by the slice above);
    // `write_unaligned` needs no alignment.
    unsafe { ptr::write_unaligned(room.as_mut_ptr().cast::<libc::cmsghdr>(), hdr) };
}

/// Writes one `SOL_UDP` control message of type `ty` carrying `data` at
/// the start of `control`; returns its `cmsg_len` (what the kernel reads
/// as `msg_controllen` when it is the only message).
pub(crate) fn put_udp(control: &mut [u8], ty: libc::c_int, data: &[u8]) -> usize {
    put_msg(control, libc::SOL_UDP, ty, data)
}

/// Writes one control message (`level`, `ty`, `data`) at the start of
/// `control`; returns its `cmsg_len`. The next message goes
/// `cmsg_space(data.len())` bytes further.
pub(crate) fn put_msg(
    control: &mut [u8],
    level: libc::c_int,
    ty: libc::c_int,
    data: &[u8],
) -> usize {
    put_header(control, level, ty, data.len());
    control[DATA_OFFSET..DATA_OFFSET + data.len()].copy_from_slice(data);
    cmsg_len(data.len())
}

/// `sendmsg(fd, bufs, MSG_NOSIGNAL)` with `SCM_RIGHTS` for `fds` and, when
/// given, `SCM_CREDENTIALS`; to `dest`, or to the connected peer. `eor`
/// adds `MSG_EOR` (seqpacket: the message ends here).
pub(crate) fn sendmsg(
    fd: RawFd,
    bufs: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
    creds: Option<Cred>,
    dest: Option<&RawDest<'_>>,
    eor: bool,
) -> io::Result<usize> {
    if fds.len() > SCM_MAX_FD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} file descriptors in one message; Linux accepts at most {SCM_MAX_FD}",
                fds.len()
            ),
        ));
    }
    if fds.is_empty() && creds.is_none() {
        // Nothing to pass: plain send/sendto, no msghdr, no control buffer.
        let flags = super::SEND_FLAGS | if eor { libc::MSG_EOR } else { 0 };
        return super::send_vectored(fd, bufs, dest, flags);
    }
    let mut control = [0u64; SEND_WORDS];
    // SAFETY: `control` is SEND_WORDS initialised u64s borrowed mutably for
    // the life of this view; u8 has no alignment or validity requirement.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(
            control.as_mut_ptr().cast::<u8>(),
            mem::size_of_val(&control),
        )
    };
    let mut used = 0;
    if let Some(c) = creds {
        let words = [
            c.pid.to_ne_bytes(),
            c.uid.to_ne_bytes(),
            c.gid.to_ne_bytes(),
        ];
        used = put(
            bytes,
            used,
            libc::SCM_CREDENTIALS,
            words.into_iter(),
            UCRED_LEN,
        );
    }
    if !fds.is_empty() {
        let words = fds.iter().map(|f| f.as_raw_fd().to_ne_bytes());
        used = put(
            bytes,
            used,
            libc::SCM_RIGHTS,
            words,
            fds.len() * mem::size_of::<RawFd>(),
        );
    }
    // SAFETY: `msghdr` is a plain C struct; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    // `IoSlice` is ABI-compatible with `iovec` on Unix (std guarantees it);
    // the kernel only reads through this pointer.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len() as _;
    if used > 0 {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = used as _;
    }
    if let Some(d) = dest {
        let (p, l) = d.as_ptr_len();
        msg.msg_name = p as *mut libc::c_void;
        msg.msg_namelen = l;
    }
    // SAFETY: `msg` points at `bufs.len()` live iovecs over borrowed
    // payloads, at `used` initialised bytes of `control` (u64-aligned), and
    // at a live destination address of `msg_namelen` bytes; the kernel
    // only reads them. The descriptors are borrowed for the call.
    let flags = super::SEND_FLAGS | if eor { libc::MSG_EOR } else { 0 };
    let n = syscall!(sendmsg(fd, &msg, flags))?;
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_libc() {
        for n in [0usize, 1, 4, 12, 13, 1012] {
            // SAFETY: pure arithmetic.
            let (l, s) = unsafe { (libc::CMSG_LEN(n as u32), libc::CMSG_SPACE(n as u32)) };
            assert_eq!(cmsg_len(n), l as usize, "CMSG_LEN({n})");
            assert_eq!(cmsg_space(n), s as usize, "CMSG_SPACE({n})");
        }
    }

    #[test]
    fn encode_then_parse_round_trips() {
        let mut control = [0u64; SEND_WORDS];
        // SAFETY: as in `sendmsg`.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(
                control.as_mut_ptr().cast::<u8>(),
                mem::size_of_val(&control),
            )
        };
        let cred = Cred {
            pid: 7,
            uid: 8,
            gid: 9,
        };
        let words = [
            cred.pid.to_ne_bytes(),
            cred.uid.to_ne_bytes(),
            cred.gid.to_ne_bytes(),
        ];
        let mut used = put(
            bytes,
            0,
            libc::SCM_CREDENTIALS,
            words.into_iter(),
            UCRED_LEN,
        );
        used = put(
            bytes,
            used,
            libc::SCM_RIGHTS,
            [3i32, 4, 5].map(i32::to_ne_bytes).into_iter(),
            12,
        );
        let mut got = Vec::new();
        let s = parse(&bytes[..used], |fd| got.push(fd));
        assert_eq!(got, [3, 4, 5]);
        assert_eq!(s.creds, Some(cred));
        assert!(!s.malformed);
        // Every prefix parses without panicking, and never yields more.
        for cut in 0..used {
            let mut n = 0;
            parse(&bytes[..cut], |_| n += 1);
            assert!(n <= 3);
        }
    }

    #[test]
    fn udp_gro_segment_size_is_read_and_checked() {
        let mut c = [0u8; 64];
        let len = put_udp(&mut c, libc::UDP_GRO, &1044i32.to_ne_bytes());
        let s = parse(&c[..len], |_| panic!("no fds"));
        assert_eq!((s.udp_gro, s.malformed, s.other), (Some(1044), false, 0));
        for bad in [0i32, -5] {
            let len = put_udp(&mut c, libc::UDP_GRO, &bad.to_ne_bytes());
            let s = parse(&c[..len], |_| {});
            assert_eq!((s.udp_gro, s.malformed), (None, true), "size {bad}");
        }
        // Too short to hold an int.
        let len = put_udp(&mut c, libc::UDP_GRO, &[1, 2]);
        let s = parse(&c[..len], |_| {});
        assert_eq!((s.udp_gro, s.malformed), (None, true));
        // Another SOL_UDP message is skipped.
        let len = put_udp(&mut c, libc::UDP_SEGMENT, &1000u16.to_ne_bytes());
        let s = parse(&c[..len], |_| {});
        assert_eq!((s.udp_gro, s.malformed, s.other), (None, false, 1));
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn hostile_lengths_are_total() {
        let mut b = [0u8; 64];
        for len in [
            0usize,
            1,
            DATA_OFFSET - 1,
            63,
            64,
            65,
            usize::MAX,
            usize::MAX - 3,
        ] {
            b[..8].copy_from_slice(&len.to_ne_bytes());
            b[8..12].copy_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
            b[12..16].copy_from_slice(&libc::SCM_RIGHTS.to_ne_bytes());
            let mut n = 0;
            let _ = parse(&b, |_| n += 1);
            assert!(n <= 12);
        }
    }
}
