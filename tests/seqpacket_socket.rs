//! Unix seqpacket sockets and ancillary data at the socket layer (no
//! reactor): sizes, empty messages vs end of stream, fd passing, credentials,
//! addresses, backlog-full connects, mio registration. (Fd passing over a
//! Unix datagram pair is in unix_dgram.rs.)
//!
//! Every test holds `util::guard()`.
#![cfg(target_os = "linux")]

mod util;

use std::fs::File;
use std::io::{self, IoSlice, Read, Seek, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::Path;
use std::time::Duration;

use msgloop::socket2::{Domain, SockAddr, Socket, Type};
use msgloop::{
    AncillaryBuf, BindOptions, FullSizeResult, MsgBuf, QuotaExceeded, RecvMsg, RecvResult,
    SendAncillary, TruncResult, TruncatingRecvMsg, TruncatingRecvMsgWithFullSize, UCred, UnixAddr,
    UnixSeqpacket, UnixSeqpacketListener, SCM_MAX_FD,
};
use util::fds::{borrowed, dev_null, is_socket_file, own_ucred, tempfile};
use util::RemoveOnDrop;

const MIB: usize = 1024 * 1024;

fn is_cloexec(fd: &impl AsRawFd) -> bool {
    // SAFETY: F_GETFD on a live descriptor reads its flags.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
    assert!(flags >= 0, "fcntl: {}", io::Error::last_os_error());
    flags & libc::FD_CLOEXEC != 0
}

fn same_file(a: &File, b: &File) -> bool {
    let (a, b) = (a.metadata().unwrap(), b.metadata().unwrap());
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

/// A listener on a fresh path, a connected client and the accepted server.
fn connected(name: &str) -> (UnixSeqpacket, UnixSeqpacket, RemoveOnDrop) {
    let path = util::temp_path(name);
    let listener = UnixSeqpacketListener::bind(&path).unwrap();
    let guard = RemoveOnDrop(path.clone());
    let client = UnixSeqpacket::connect(&path).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server, guard)
}

/// Reads one message (of up to 64 bytes: `Fit`) with a fresh buffer.
fn recv_fresh(s: &UnixSeqpacket) -> (RecvResult<()>, Vec<u8>) {
    let mut small = [0u8; 64];
    let mut buf = MsgBuf::from(&mut small[..]);
    let r = s.recv_msg(&mut buf).unwrap();
    (r, buf.filled().to_vec())
}

/// The raw OS error under an error msgloop annotated (its `source`).
fn os_error(e: &io::Error) -> Option<i32> {
    std::error::Error::source(e)?
        .downcast_ref::<io::Error>()?
        .raw_os_error()
}

/// A socket of type `ty` bound at `path` (not listening), and dropped:
/// its file stays behind, stale.
fn stale_socket_file(path: &Path, ty: Type) {
    let s = Socket::new(Domain::UNIX, ty, None).unwrap();
    s.bind(&SockAddr::unix(path).unwrap()).unwrap();
}

fn abstract_name(tag: &str) -> UnixAddr {
    let name = format!("msgloop-seq-{}-{tag}", std::process::id());
    UnixAddr::from_abstract_name(name.as_bytes()).unwrap()
}

#[test]
fn sizes_0_1_64k_1m_arrive_intact() {
    let _t = util::guard();
    let (a, b) = UnixSeqpacket::pair().unwrap();
    // A seqpacket message must fit the sender's buffer (less 32 bytes).
    let snd = util::force_sndbuf(&a, 4 * MIB);
    assert!(snd > 2 * MIB, "SO_SNDBUF only {snd}");
    util::force_rcvbuf(&b, 4 * MIB);

    for (i, size) in [0usize, 1, 64 * 1024, MIB].into_iter().enumerate() {
        let msg = util::pattern(size, i as u8);
        assert_eq!(a.send(&msg).unwrap(), size);
        let mut small = [0u8; 16];
        let mut buf = MsgBuf::from(&mut small[..]);
        let r = b.recv_msg(&mut buf).unwrap();
        if size <= 16 {
            assert_eq!(r, RecvResult::Fit(()), "size {size}");
        } else {
            assert_eq!(r, RecvResult::Spilled(()), "size {size}");
            assert!(buf.is_owned());
        }
        assert_eq!(buf.len(), size);
        assert!(buf.filled() == &msg[..], "{size}-byte message changed");
    }

    // With a quota and a buffer that large: one recvmsg per message.
    let mut buf = MsgBuf::with_capacity(2 * MIB).with_quota(Some(2 * MIB));
    for (i, size) in [MIB, 0, 3].into_iter().enumerate() {
        let msg = util::pattern(size, 100 + i as u8);
        a.send(&msg).unwrap();
        assert_eq!(b.recv_msg(&mut buf).unwrap(), RecvResult::Fit(()));
        assert!(buf.filled() == &msg[..]);
    }
    let err = b.recv_msg(&mut buf).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
}

#[test]
fn thousand_empty_messages_then_exactly_one_end_of_stream() {
    let _t = util::guard();
    let (a, b) = UnixSeqpacket::pair().unwrap();
    // Each queued skb is charged to the sender (~1 KiB): make room for all
    // 1,000 so they are queued before the close.
    util::force_sndbuf(&a, 8 * MIB);
    for i in 0..1000 {
        match a.send(b"") {
            Ok(0) => {}
            Ok(n) => panic!("an empty send returned {n}"),
            Err(e) => panic!("send {i} of 1000 empty messages: {e}"),
        }
    }
    drop(a);

    let mut empties = 0;
    let mut eofs = 0;
    let mut storage = [0u8; 8];
    let mut buf = MsgBuf::from(&mut storage[..]);
    for _ in 0..1100 {
        match b.recv_msg(&mut buf).unwrap() {
            RecvResult::Fit(()) => {
                assert!(buf.filled().is_empty());
                empties += 1;
            }
            RecvResult::EndOfStream => {
                eofs += 1;
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((empties, eofs), (1000, 1));
    // End of stream is final and stable.
    assert_eq!(b.recv_msg(&mut buf).unwrap(), RecvResult::EndOfStream);
    assert_eq!(b.recv(&mut [0u8; 4]).unwrap(), None);
}

#[test]
fn empty_messages_and_end_of_stream_on_accepted_and_connecting_sockets() {
    let _t = util::guard();
    // The accepted socket inherits SO_PASSCRED from the listener; the
    // connecting socket has it from before connect.
    for server_closes in [false, true] {
        let (client, server, _path) = connected("empties");
        let (tx, rx) = if server_closes {
            (server, client)
        } else {
            (client, server)
        };
        for _ in 0..10 {
            tx.send(b"").unwrap();
        }
        tx.send(b"last").unwrap();
        drop(tx);
        for _ in 0..10 {
            assert_eq!(recv_fresh(&rx), (RecvResult::Fit(()), vec![]));
        }
        assert_eq!(recv_fresh(&rx), (RecvResult::Fit(()), b"last".to_vec()));
        assert_eq!(recv_fresh(&rx).0, RecvResult::EndOfStream);
    }
}

#[test]
fn two_hundred_fds_in_one_message_all_arrive_and_untaken_ones_close() {
    let _t = util::guard();
    let (a, b) = UnixSeqpacket::pair().unwrap();
    let mut files = dev_null(199);
    let mut tmp = tempfile();
    tmp.write_all(b"the 200th fd").unwrap();
    files.push(tmp);
    let baseline = util::open_fds();

    a.send_with_fds(b"two hundred", &borrowed(&files)).unwrap();
    let mut buf = MsgBuf::with_capacity(64);
    let mut anc = AncillaryBuf::new();
    let (r, mut got) = b.recv_with_ancillary(&mut buf, &mut anc).unwrap();
    assert_eq!(r, RecvResult::Fit(()));
    assert_eq!(buf.filled(), b"two hundred");
    assert!(!got.is_truncated());
    assert_eq!(got.credentials(), Some(own_ucred()));
    assert_eq!(got.fds().len(), 200);
    assert_eq!(util::open_fds(), baseline + 200);
    for fd in got.fds() {
        assert!(is_cloexec(fd), "received fds are close-on-exec");
    }

    // Take them all; keep 50 (the last, with the temp file), drop 150.
    let mut taken = got.take_fds();
    assert!(got.fds().is_empty());
    drop(got); // holds nothing now: closes nothing
    assert_eq!(util::open_fds(), baseline + 200);
    let mut kept: Vec<OwnedFd> = taken.drain(150..).collect();
    drop(taken);
    assert_eq!(util::open_fds(), baseline + 50);
    let mut last = File::from(kept.pop().unwrap());
    assert!(same_file(&last, &files[199]));
    assert!(same_file(&File::from(kept.pop().unwrap()), &files[198]));
    let mut text = String::new();
    last.rewind().unwrap();
    last.read_to_string(&mut text).unwrap();
    assert_eq!(text, "the 200th fd");
    drop((last, kept));
    assert_eq!(util::open_fds(), baseline);

    // Take none: dropping the RecvAncillary closes all 200.
    a.send_with_fds(b"again", &borrowed(&files)).unwrap();
    let (_, got) = b.recv_with_ancillary(&mut buf, &mut anc).unwrap();
    assert_eq!(got.fds().len(), 200);
    assert_eq!(util::open_fds(), baseline + 200);
    drop(got);
    assert_eq!(util::open_fds(), baseline);
}

/// An unlinked temporary file.
#[test]
fn small_control_buffer_reports_ctrunc_and_leaks_nothing() {
    let _t = util::guard();
    let (a, b) = UnixSeqpacket::pair().unwrap();
    let files = dev_null(10);
    let fds = borrowed(&files);
    let baseline = util::open_fds();
    let mut buf = MsgBuf::with_capacity(16);

    for max in [0usize, 3] {
        let mut anc = AncillaryBuf::with_max_fds(max);
        a.send_with_fds(b"ten", &fds).unwrap();
        let (r, got) = b.recv_with_ancillary(&mut buf, &mut anc).unwrap();
        assert_eq!(r, RecvResult::Fit(()));
        assert_eq!(buf.filled(), b"ten");
        assert!(got.is_truncated(), "MSG_CTRUNC reported (max_fds {max})");
        // Room is rounded up to the control-message alignment: at least
        // `max` fit, never all ten.
        let n = got.fds().len();
        assert!(n >= max && n < 10, "{n} fds with room for {max}");
        assert_eq!(got.credentials(), Some(own_ucred()));
        assert_eq!(util::open_fds(), baseline + n, "the kernel closed the rest");
        drop(got);
        assert_eq!(util::open_fds(), baseline);
    }

    // A flood: 200 fds x 100 messages into room for 8, fd count stable.
    let files = dev_null(190);
    let mut all = fds.clone();
    all.extend(borrowed(&files));
    assert_eq!(all.len(), 200);
    let baseline = util::open_fds();
    let mut anc = AncillaryBuf::with_max_fds(8);
    let mut truncated = 0;
    for _ in 0..100 {
        a.send_with_fds(b"flood", &all).unwrap();
        let (r, got) = b.recv_with_ancillary(&mut buf, &mut anc).unwrap();
        assert!(r.is_message());
        truncated += usize::from(got.is_truncated());
    }
    assert_eq!(truncated, 100);
    assert_eq!(util::open_fds(), baseline);

    // RecvMsg and recv() leave no room for fds: the kernel discards them.
    a.send_with_fds(b"x", &all).unwrap();
    assert_eq!(recv_fresh(&b), (RecvResult::Fit(()), b"x".to_vec()));
    a.send_with_fds(b"y", &all).unwrap();
    assert_eq!(b.recv(&mut [0u8; 4]).unwrap(), Some(1));
    assert_eq!(util::open_fds(), baseline);
}

#[test]
fn more_than_scm_max_fd_is_refused_before_sending() {
    let _t = util::guard();
    let (a, b) = UnixSeqpacket::pair().unwrap();
    let f = File::open("/dev/null").unwrap();
    let fds = vec![f.as_fd(); SCM_MAX_FD + 1];
    let e = a.send_with_fds(b"too many", &fds).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(
        b.recv(&mut [0u8; 8]).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    // Exactly SCM_MAX_FD (the same file repeated) is fine.
    a.send_with_fds(b"max", &fds[..SCM_MAX_FD]).unwrap();
    let (_, got) = b
        .recv_with_ancillary(&mut MsgBuf::with_capacity(8), &mut AncillaryBuf::new())
        .unwrap();
    assert_eq!(got.fds().len(), SCM_MAX_FD);
}

#[test]
fn empty_message_with_fds_is_a_message() {
    let _t = util::guard();
    let (a, b) = UnixSeqpacket::pair().unwrap();
    let files = dev_null(2);
    a.send_with_fds(b"", &borrowed(&files)).unwrap();
    drop(a);
    let mut buf = MsgBuf::with_capacity(8);
    let mut anc = AncillaryBuf::new();
    let (r, mut got) = b.recv_with_ancillary(&mut buf, &mut anc).unwrap();
    assert_eq!(r, RecvResult::Fit(()));
    assert!(buf.filled().is_empty());
    let taken = got.take_fds();
    assert_eq!(taken.len(), 2);
    assert!(same_file(
        &File::from(taken.into_iter().next().unwrap()),
        &files[0]
    ));
    let (r, got) = b.recv_with_ancillary(&mut buf, &mut anc).unwrap();
    assert_eq!(r, RecvResult::EndOfStream);
    assert!(got.is_empty());
}

#[test]
fn credentials_match_getpid_getuid_getgid() {
    let _t = util::guard();
    let (a, b) = UnixSeqpacket::pair().unwrap();
    let cur = UCred::current();
    assert_eq!(cur, own_ucred());
    assert_eq!(cur.pid as u32, std::process::id());

    let mut buf = MsgBuf::with_capacity(8);
    let mut anc = AncillaryBuf::with_max_fds(0);
    // Implicitly (SO_PASSCRED on the receiver) ...
    a.send(b"implicit").unwrap();
    let (_, got) = b.recv_with_ancillary(&mut buf, &mut anc).unwrap();
    assert_eq!(got.credentials(), Some(cur));
    // ... and explicitly.
    let explicit = SendAncillary::new().with_credentials(cur);
    a.send_with_ancillary(&[IoSlice::new(b"expl"), IoSlice::new(b"icit")], &explicit)
        .unwrap();
    let (_, got) = b.recv_with_ancillary(&mut buf, &mut anc).unwrap();
    assert_eq!(buf.filled(), b"explicit");
    assert_eq!(got.credentials(), Some(cur));
    assert!(!got.is_truncated());
}

#[test]
fn peer_cred_on_pair_and_accepted_connections() {
    let _t = util::guard();
    let (a, b) = UnixSeqpacket::pair().unwrap();
    assert_eq!(a.peer_cred().unwrap(), own_ucred());
    assert_eq!(b.peer_cred().unwrap(), own_ucred());
    let (client, server, _path) = connected("peercred");
    assert_eq!(client.peer_cred().unwrap(), own_ucred());
    assert_eq!(server.peer_cred().unwrap(), own_ucred());
}

#[test]
fn backlog_full_connect_is_a_distinct_retryable_error() {
    let _t = util::guard();
    let path = util::temp_path("backlog");
    let listener = UnixSeqpacketListener::bind_with(&path, &BindOptions::new().backlog(1)).unwrap();
    let _rm = RemoveOnDrop(path.clone());
    let addr = UnixAddr::from_pathname(&path).unwrap();

    let mut pending = Vec::new();
    let mut failed = None;
    for _ in 0..32 {
        let s = UnixSeqpacket::new().unwrap();
        match s.connect_to(&addr) {
            Ok(()) => pending.push(s),
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
                failed = Some(s);
                break;
            }
        }
    }
    let failed = failed.expect("no backlog-full error within 32 connects");
    // Linux lets backlog + 1 connections wait.
    assert_eq!(pending.len(), 2);

    // The failed socket is not connected: not "in progress".
    let e = failed.send(b"hello?").unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotConnected, "{e}");
    assert!(failed.peer_addr().is_err());
    // The convenience constructor reports the same kind.
    let e = UnixSeqpacket::connect(&path).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    // It names the path and says what happened; EAGAIN is its source.
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("connect {}: ", path.display())),
        "{text}"
    );
    assert!(text.contains("backlog is full"), "{text}");
    assert_eq!(os_error(&e), Some(libc::EAGAIN), "{e:?}");

    // Accepting one makes room: the same socket connects on retry.
    let (first, _) = listener.accept().unwrap();
    failed.connect_to(&addr).unwrap();
    failed.send(b"retried").unwrap();
    let (second, _) = listener.accept().unwrap();
    let (third, _) = listener.accept().unwrap();
    assert_eq!(
        recv_fresh(&third),
        (RecvResult::Fit(()), b"retried".to_vec())
    );
    drop((first, second, pending));
}

#[test]
fn abstract_name_bind_connect_and_addresses() {
    let _t = util::guard();
    let addr = abstract_name("abs");
    let listener = UnixSeqpacketListener::bind(&addr).unwrap();
    assert_eq!(listener.local_addr().unwrap(), addr);
    // A second bind to the same name fails; no file is involved.
    let e = UnixSeqpacketListener::bind(&addr).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse);

    let client = UnixSeqpacket::connect(&addr).unwrap();
    let (server, from) = listener.accept().unwrap();
    assert_eq!(client.peer_addr().unwrap(), addr);
    // SO_PASSCRED autobinds the connecting socket to an abstract name.
    let client_local = client.local_addr().unwrap();
    assert!(client_local.as_abstract_name().is_some(), "{client_local}");
    assert_eq!(from, client_local);
    assert_eq!(server.peer_addr().unwrap(), client_local);
    assert_eq!(server.local_addr().unwrap(), addr);

    client.send(b"over an abstract name").unwrap();
    assert_eq!(
        recv_fresh(&server),
        (RecvResult::Fit(()), b"over an abstract name".to_vec())
    );
}

#[test]
fn local_and_peer_addr_for_paths_and_pairs() {
    let _t = util::guard();
    let path = util::temp_path("addrs");
    let listener = UnixSeqpacketListener::bind(&path).unwrap();
    let _rm = RemoveOnDrop(path.clone());
    assert_eq!(listener.local_addr().unwrap().as_pathname(), Some(&*path));
    let client = UnixSeqpacket::connect(&path).unwrap();
    let (server, _) = listener.accept().unwrap();
    assert_eq!(client.peer_addr().unwrap().as_pathname(), Some(&*path));
    assert_eq!(server.local_addr().unwrap().as_pathname(), Some(&*path));

    let (a, b) = UnixSeqpacket::pair().unwrap();
    for s in [&a, &b] {
        assert!(s.local_addr().unwrap().is_unnamed());
        assert!(s.peer_addr().unwrap().is_unnamed());
    }
    assert!(a.take_error().unwrap().is_none());
    assert!(listener.take_error().unwrap().is_none());
}

#[test]
fn binding_never_removes_a_file_unless_stale_and_a_socket() {
    let _t = util::guard();
    let path = util::temp_path("stale");
    let _rm = RemoveOnDrop(path.clone());
    // Listeners that leave their file behind when dropped, as a killed
    // process does.
    let keep = BindOptions::new().unlink_on_drop(false);
    let first = UnixSeqpacketListener::bind_with(&path, &keep).unwrap();

    // Live listener: AddrInUse, with or without unlink_stale; it still works.
    let e = UnixSeqpacketListener::bind(&path).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    let opts = BindOptions::new().unlink_stale(true);
    let e = UnixSeqpacketListener::bind_with(&path, &opts).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
    let c = UnixSeqpacket::connect(&path).unwrap();
    let (s, _) = first.accept().unwrap();
    drop((c, s));
    // The probe left nothing to accept.
    assert_eq!(
        first.accept().unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );

    // Stale socket file: plain bind fails, unlink_stale replaces it.
    drop(first);
    assert!(path.exists());
    let e = UnixSeqpacketListener::bind(&path).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    let second = UnixSeqpacketListener::bind_with(&path, &opts).unwrap();
    let c = UnixSeqpacket::connect(&path).unwrap();
    second.accept().unwrap();
    drop((c, second));
    assert!(!path.exists(), "a dropped listener removes its file");

    // A regular file is never removed.
    std::fs::write(&path, b"precious").unwrap();
    let e = UnixSeqpacketListener::bind_with(&path, &opts).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn unlink_stale_replaces_a_stale_file_of_any_socket_type() {
    let _t = util::guard();
    let opts = BindOptions::new().unlink_stale(true);
    for ty in [Type::SEQPACKET, Type::STREAM, Type::DGRAM] {
        let path = util::temp_path("stale-any");
        let _rm = RemoveOnDrop(path.clone());
        stale_socket_file(&path, ty);
        assert!(is_socket_file(&path));
        let e = UnixSeqpacketListener::bind(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{ty:?}: {e}");
        let listener = UnixSeqpacketListener::bind_with(&path, &opts).unwrap();
        let c = UnixSeqpacket::connect(&path).unwrap();
        let (s, _) = listener.accept().unwrap();
        c.send(b"new").unwrap();
        assert_eq!(recv_fresh(&s), (RecvResult::Fit(()), b"new".to_vec()));
    }
}

#[test]
fn unlink_stale_never_removes_a_live_socket_of_any_type() {
    let _t = util::guard();
    let opts = BindOptions::new().unlink_stale(true);
    let refused = |path: &Path| {
        let e = UnixSeqpacketListener::bind_with(path, &opts).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("bind {}: ", path.display())),
            "{text}"
        );
        assert!(text.contains("live socket"), "{text}");
        assert_eq!(os_error(&e), Some(libc::EADDRINUSE), "{e:?}");
        assert!(is_socket_file(path), "{} removed", path.display());
    };

    // A seqpacket listener: refused, and the probe queued no connection.
    let path = util::temp_path("live-seq");
    let _rm = RemoveOnDrop(path.clone());
    let listener = UnixSeqpacketListener::bind(&path).unwrap();
    refused(&path);
    let e = listener.accept().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "the probe connected");
    let c = UnixSeqpacket::connect(&path).unwrap();
    drop((c, listener.accept().unwrap()));

    // A seqpacket socket bound but not listening yet (a probe of its own
    // type would be refused, as if the file were stale).
    let path = util::temp_path("bound-seq");
    let _rm = RemoveOnDrop(path.clone());
    let bound = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
    bound.bind(&SockAddr::unix(&path).unwrap()).unwrap();
    refused(&path);
    bound.listen(1).unwrap();
    drop(UnixSeqpacket::connect(&path).unwrap());

    // A stream listener: refused, and nothing queued.
    let path = util::temp_path("live-stream");
    let _rm = RemoveOnDrop(path.clone());
    let stream = UnixListener::bind(&path).unwrap();
    stream.set_nonblocking(true).unwrap();
    refused(&path);
    let e = stream.accept().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "the probe connected");

    // A datagram socket, unconnected and connected to another: refused,
    // and it still receives.
    let path = util::temp_path("live-dgram");
    let _rm = RemoveOnDrop(path.clone());
    let dgram = UnixDatagram::bind(&path).unwrap();
    refused(&path);
    let other = util::temp_path("live-dgram-peer");
    let _rm2 = RemoveOnDrop(other.clone());
    let peer = UnixDatagram::bind(&other).unwrap();
    dgram.connect(&other).unwrap();
    refused(&path);
    peer.send_to(b"still here", &path).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(dgram.recv(&mut buf).unwrap(), 10);
}

#[test]
fn unlink_stale_never_removes_what_is_not_a_socket() {
    let _t = util::guard();
    let opts = BindOptions::new().unlink_stale(true);

    let path = util::temp_path("regular");
    let _rm = RemoveOnDrop(path.clone());
    std::fs::write(&path, b"precious").unwrap();
    let e = UnixSeqpacketListener::bind_with(&path, &opts).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("bind {}: ", path.display())),
        "{text}"
    );
    assert!(text.contains("not a socket"), "{text}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");

    // A symlink to a stale socket file: neither is removed.
    let target = util::temp_path("link-target");
    let _rm2 = RemoveOnDrop(target.clone());
    stale_socket_file(&target, Type::SEQPACKET);
    let link = util::temp_path("link");
    let _rm3 = RemoveOnDrop(link.clone());
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = UnixSeqpacketListener::bind_with(&link, &opts).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert!(is_socket_file(&target));
}

#[test]
fn bind_and_connect_errors_name_the_address_and_keep_the_os_error() {
    let _t = util::guard();
    let path = util::temp_path("errors");
    let _rm = RemoveOnDrop(path.clone());
    let prefix = |op: &str| format!("{op} {}: ", path.display());

    // Nothing there: NotFound.
    let e = UnixSeqpacket::connect(&path).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    assert!(e.to_string().starts_with(&prefix("connect")), "{e}");
    assert_eq!(os_error(&e), Some(libc::ENOENT), "{e:?}");

    // A live listener: a second bind is AddrInUse. (It leaves its file
    // behind when dropped, as a killed process does.)
    let keep = BindOptions::new().unlink_on_drop(false);
    let listener = UnixSeqpacketListener::bind_with(&path, &keep).unwrap();
    let e = UnixSeqpacketListener::bind(&path).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "{}{}",
            prefix("bind"),
            io::Error::from_raw_os_error(libc::EADDRINUSE)
        )
    );
    assert_eq!(os_error(&e), Some(libc::EADDRINUSE), "{e:?}");

    // A stale file: ConnectionRefused.
    drop(listener);
    let e = UnixSeqpacket::connect(&path).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    assert!(e.to_string().starts_with(&prefix("connect")), "{e}");
    assert_eq!(os_error(&e), Some(libc::ECONNREFUSED), "{e:?}");

    // A socket of another type: connect_to names it too.
    std::fs::remove_file(&path).unwrap();
    let dgram = UnixDatagram::bind(&path).unwrap();
    let s = UnixSeqpacket::new().unwrap();
    let e = s
        .connect_to(UnixAddr::from_pathname(&path).unwrap())
        .unwrap_err();
    assert!(e.to_string().starts_with(&prefix("connect")), "{e}");
    assert_eq!(os_error(&e), Some(libc::EPROTOTYPE), "{e:?}");
    drop(dgram);

    // Abstract names are named as `@name`.
    let addr = abstract_name("errors");
    let _held = UnixSeqpacketListener::bind(&addr).unwrap();
    let e = UnixSeqpacketListener::bind(&addr).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
    assert!(e.to_string().starts_with(&format!("bind {addr}: ")), "{e}");
    assert!(addr.to_string().starts_with('@'));
}

#[test]
fn shutdown_write_gives_the_peer_end_of_stream() {
    let _t = util::guard();
    let (client, server, _path) = connected("shutdown");
    client.send(b"last words").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        recv_fresh(&server),
        (RecvResult::Fit(()), b"last words".to_vec())
    );
    assert_eq!(recv_fresh(&server).0, RecvResult::EndOfStream);
    // Writing after shutdown: EPIPE, no SIGPIPE.
    assert_eq!(
        client.send(b"more").unwrap_err().kind(),
        io::ErrorKind::BrokenPipe
    );
    // The other direction still works.
    server.send(b"reply").unwrap();
    assert_eq!(
        recv_fresh(&client),
        (RecvResult::Fit(()), b"reply".to_vec())
    );
}

#[test]
fn quota_exceeded_is_consumed_reported_and_closes_its_fds() {
    let _t = util::guard();
    let (a, b) = UnixSeqpacket::pair().unwrap();
    let files = dev_null(5);
    let baseline = util::open_fds();
    let mut anc = AncillaryBuf::new();
    // Buffer >= quota (one recvmsg) and buffer < quota (peek, then read).
    for cap in [100usize, 10] {
        let mut buf = MsgBuf::with_capacity(cap).with_quota(Some(100));
        a.send_with_fds(&[1u8; 101], &borrowed(&files)).unwrap();
        a.send(b"next").unwrap();
        let (r, got) = b.recv_with_ancillary(&mut buf, &mut anc).unwrap();
        assert_eq!(
            r,
            RecvResult::QuotaExceeded(
                QuotaExceeded {
                    size: 101,
                    quota: 100
                },
                ()
            ),
            "capacity {cap}"
        );
        assert!(got.fds().is_empty());
        assert_eq!(got.credentials(), Some(own_ucred()));
        assert!(buf.is_empty());
        assert_eq!(util::open_fds(), baseline);
        let (r, _) = b.recv_with_ancillary(&mut buf, &mut anc).unwrap();
        assert!(r.is_message());
        assert_eq!(buf.filled(), b"next");
    }
    // And through RecvMsg.
    let mut buf = MsgBuf::with_capacity(4).with_quota(Some(8));
    a.send(&[0u8; 9]).unwrap();
    a.send(b"ok").unwrap();
    assert!(matches!(
        b.recv_msg(&mut buf).unwrap(),
        RecvResult::QuotaExceeded(QuotaExceeded { size: 9, quota: 8 }, ())
    ));
    assert_eq!(b.recv_msg(&mut buf).unwrap(), RecvResult::Fit(()));
    assert_eq!(buf.filled(), b"ok");
}

#[test]
fn truncating_receives_report_cuts_and_end_of_stream() {
    let _t = util::guard();
    let (a, b) = UnixSeqpacket::pair().unwrap();
    a.send(b"0123456789").unwrap();
    a.send(b"").unwrap();
    drop(a);
    let mut small = [0u8; 4];
    let mut buf = MsgBuf::from(&mut small[..]);
    // Peek leaves it queued.
    assert_eq!(
        b.recv_trunc(true, &mut buf).unwrap(),
        TruncResult::Truncated(())
    );
    assert_eq!(buf.filled(), b"0123");
    assert_eq!(
        b.recv_trunc_with_full_size(false, &mut buf).unwrap(),
        FullSizeResult::Truncated {
            addr: (),
            full_size: 10
        }
    );
    assert_eq!(b.recv_trunc(false, &mut buf).unwrap(), TruncResult::Fit(()));
    assert!(buf.filled().is_empty());
    assert_eq!(
        b.recv_trunc(true, &mut buf).unwrap(),
        TruncResult::EndOfStream
    );
    assert_eq!(
        b.recv_trunc_with_full_size(false, &mut buf).unwrap(),
        FullSizeResult::EndOfStream
    );
}

#[test]
fn plain_recv_reports_full_length_and_end_of_stream() {
    let _t = util::guard();
    let (a, b) = UnixSeqpacket::pair().unwrap();
    a.send_vectored(&[IoSlice::new(b"hello "), IoSlice::new(b"world")])
        .unwrap();
    a.send(b"").unwrap();
    a.send(b"cut me").unwrap();
    drop(a);
    let mut buf = [0u8; 32];
    assert_eq!(b.recv(&mut buf).unwrap(), Some(11));
    assert_eq!(&buf[..11], b"hello world");
    assert_eq!(b.recv(&mut buf).unwrap(), Some(0));
    let mut tiny = [0u8; 3];
    assert_eq!(b.recv(&mut tiny).unwrap(), Some(6), "full length reported");
    assert_eq!(&tiny, b"cut");
    assert_eq!(b.recv(&mut buf).unwrap(), None);
}

#[test]
fn mio_registration_sees_readable_when_a_message_arrives() {
    use mio::{Events, Interest, Poll, Token};

    let _t = util::guard();
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(8);
    let path = util::temp_path("mio");
    let mut listener = UnixSeqpacketListener::bind(&path).unwrap();
    let _rm = RemoveOnDrop(path.clone());
    poll.registry()
        .register(&mut listener, Token(0), Interest::READABLE)
        .unwrap();
    let client = UnixSeqpacket::connect(&path).unwrap();

    let wait_for = |poll: &mut Poll, events: &mut Events, token: Token| {
        for _ in 0..100 {
            poll.poll(events, Some(Duration::from_millis(50))).unwrap();
            if events.iter().any(|e| e.token() == token && e.is_readable()) {
                return;
            }
        }
        panic!("no READABLE for {token:?} within 5 s");
    };
    wait_for(&mut poll, &mut events, Token(0));
    let (mut server, _) = listener.accept().unwrap();
    poll.registry()
        .register(&mut server, Token(1), Interest::READABLE)
        .unwrap();

    client.send(b"wake up").unwrap();
    wait_for(&mut poll, &mut events, Token(1));
    // Edge-triggered: drain until WouldBlock.
    let mut got = Vec::new();
    loop {
        let mut buf = [0u8; 16];
        match server.recv(&mut buf) {
            Ok(Some(n)) => got.push(buf[..n].to_vec()),
            Ok(None) => panic!("unexpected end of stream"),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got, [b"wake up".to_vec()]);

    // End of stream is readable too.
    drop(client);
    wait_for(&mut poll, &mut events, Token(1));
    assert_eq!(server.recv(&mut [0u8; 4]).unwrap(), None);

    // mio requires deregistering before close.
    poll.registry().deregister(&mut server).unwrap();
    poll.registry().deregister(&mut listener).unwrap();
}

#[test]
fn owned_fd_round_trip_keeps_the_socket_working() {
    let _t = util::guard();
    let (a, b) = UnixSeqpacket::pair().unwrap();
    let owned: OwnedFd = b.into();
    let b = UnixSeqpacket::from(owned);
    a.send(b"").unwrap();
    drop(a);
    assert_eq!(recv_fresh(&b), (RecvResult::Fit(()), vec![]));
    assert_eq!(recv_fresh(&b).0, RecvResult::EndOfStream);
    b.set_nonblocking(false).unwrap();
    // Blocking mode: end of stream still returns at once.
    assert_eq!(b.recv(&mut [0u8; 1]).unwrap(), None);
}
