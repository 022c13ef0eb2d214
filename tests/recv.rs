//! The receive API (`RecvMsg`, `TruncatingRecvMsg`, `MsgBuf`) on plain std
//! and mio sockets, without a reactor. (`msgloop::batch` is in batch.rs.)

mod util;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use msgloop::{
    FullSizeResult, MsgBuf, QuotaExceeded, RecvMsg, RecvResult, TruncResult, TruncatingRecvMsg,
    TruncatingRecvMsgWithFullSize, UnixAddr, MAX_UDP_PAYLOAD,
};

const UDP_SIZES: [usize; 4] = [0, 1, 1472, 65_507];

/// Calls `f` until it stops returning `WouldBlock`, for at most 5 s.
fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            other => return other,
        }
    }
}

fn assert_would_block<T: std::fmt::Debug>(r: io::Result<T>) {
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        other => panic!("expected WouldBlock (queue empty), got {other:?}"),
    }
}

/// Sends each size twice from `tx` to `to` and receives it on `rx`: once
/// into a 65,535-byte buffer (must `Fit`), once into a small borrowed one
/// (must `Spill` past its capacity and become owned).
fn udp_sizes_round_trip<R>(rx: &R, tx: &UdpSocket, to: SocketAddr)
where
    R: RecvMsg<Addr = SocketAddr>,
{
    let from = tx.local_addr().unwrap();
    for &size in &UDP_SIZES {
        let payload = util::pattern(size, size as u8);

        tx.send_to(&payload, to).unwrap();
        let mut big = MsgBuf::with_capacity(MAX_UDP_PAYLOAD);
        let r = retry(|| rx.recv_msg(&mut big)).unwrap();
        assert_eq!(r, RecvResult::Fit(from), "size {size}, 64 KiB buffer");
        assert_eq!(big.len(), size);
        assert!(big.filled() == &payload[..], "size {size}: contents differ");

        tx.send_to(&payload, to).unwrap();
        let mut storage = [0u8; 512];
        let mut small = MsgBuf::from(&mut storage[..]);
        let r = retry(|| rx.recv_msg(&mut small)).unwrap();
        if size <= 512 {
            assert_eq!(r, RecvResult::Fit(from), "size {size}, 512 B buffer");
            assert!(!small.is_owned());
        } else {
            assert_eq!(r, RecvResult::Spilled(from), "size {size}, 512 B buffer");
            assert!(small.is_owned(), "a spilled buffer owns its memory");
            assert!(small.capacity() >= size);
        }
        assert_eq!(small.len(), size);
        assert!(
            small.filled() == &payload[..],
            "size {size}: contents differ"
        );
    }
}

#[test]
fn udp_sizes_on_std_socket() {
    let _t = util::guard();
    let rx = util::udp_client("127.0.0.1");
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp_sizes_round_trip(&rx, &tx, rx.local_addr().unwrap());
}

#[test]
fn udp_sizes_on_mio_socket() {
    let _t = util::guard();
    let rx = mio::net::UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp_sizes_round_trip(&rx, &tx, rx.local_addr().unwrap());
    // Everything was consumed.
    let mut buf = MsgBuf::with_capacity(16);
    assert_would_block(rx.recv_msg(&mut buf));
}

#[test]
fn udp_sizes_on_ipv6_socket() {
    let _t = util::guard();
    if !util::ipv6_loopback("udp_sizes_on_ipv6_socket") {
        return;
    }
    let rx = util::udp_client("[::1]");
    let tx = UdpSocket::bind("[::1]:0").unwrap();
    udp_sizes_round_trip(&rx, &tx, rx.local_addr().unwrap());
}

/// Sends sizes 0 and 300 KiB from `tx` and receives on `rx` into a buffer
/// that starts at 1 KiB; `expect_from` checks the reported sender.
fn unix_sizes_round_trip<R>(rx: &R, send: impl Fn(&[u8]), expect_from: impl Fn(&UnixAddr))
where
    R: RecvMsg<Addr = UnixAddr>,
{
    for &size in &[0usize, 300 * 1024, 0, 1] {
        let payload = util::pattern(size, 3);
        send(&payload);
        let mut storage = [0u8; 1024];
        let mut buf = MsgBuf::from(&mut storage[..]);
        let r = retry(|| rx.recv_msg(&mut buf)).unwrap();
        match &r {
            RecvResult::Fit(a) if size <= 1024 => expect_from(a),
            RecvResult::Spilled(a) if size > 1024 => {
                expect_from(a);
                assert!(buf.is_owned());
            }
            other => panic!("size {size}: unexpected {other:?}"),
        }
        assert_eq!(buf.len(), size);
        assert!(buf.filled() == &payload[..], "size {size}: contents differ");
    }
}

#[test]
fn unix_sizes_on_socket_pair() {
    let _t = util::guard();
    let (a, b) = UnixDatagram::pair().unwrap();
    util::force_sndbuf(&a, 1 << 20);
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    unix_sizes_round_trip(
        &b,
        |p| assert_eq!(a.send(p).unwrap(), p.len()),
        |from| {
            assert!(from.is_unnamed(), "a socket pair's peer is unnamed: {from}");
            assert_eq!(from.as_pathname(), None);
        },
    );

    // The same over mio's type.
    let (a, b) = mio::net::UnixDatagram::pair().unwrap();
    util::force_sndbuf(&a, 1 << 20);
    unix_sizes_round_trip(
        &b,
        |p| assert_eq!(a.send(p).unwrap(), p.len()),
        |from| assert!(from.is_unnamed()),
    );
}

#[test]
fn unix_sizes_on_bound_paths() {
    let _t = util::guard();
    let rx_path = util::temp_path("rx.sock");
    let tx_path = util::temp_path("tx.sock");
    let _rm = (
        util::RemoveOnDrop(rx_path.clone()),
        util::RemoveOnDrop(tx_path.clone()),
    );
    let rx = UnixDatagram::bind(&rx_path).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let tx = UnixDatagram::bind(&tx_path).unwrap();
    util::force_sndbuf(&tx, 1 << 20);
    unix_sizes_round_trip(
        &rx,
        |p| assert_eq!(tx.send_to(p, &rx_path).unwrap(), p.len()),
        |from| assert_eq!(from.as_pathname(), Some(tx_path.as_path())),
    );

    // mio receiver, unbound std sender: the sender is unnamed.
    let mio_path = util::temp_path("rx-mio.sock");
    let _rm2 = util::RemoveOnDrop(mio_path.clone());
    let rx = mio::net::UnixDatagram::bind(&mio_path).unwrap();
    let tx = UnixDatagram::unbound().unwrap();
    util::force_sndbuf(&tx, 1 << 20);
    unix_sizes_round_trip(
        &rx,
        |p| assert_eq!(tx.send_to(p, &mio_path).unwrap(), p.len()),
        |from| assert!(from.is_unnamed()),
    );
}

/// A 2,000-byte datagram over a 1,000-byte quota is consumed and reported
/// with its size; the small one sent after it arrives intact.
fn check_quota<R>(rx: &R, send: impl Fn(&[u8]), capacity: usize)
where
    R: RecvMsg,
    R::Addr: std::fmt::Debug,
{
    let big = util::pattern(2000, 9);
    let small = util::pattern(100, 10);
    send(&big);
    send(&small);
    let mut storage = vec![0u8; capacity];
    let mut buf = MsgBuf::from(&mut storage[..]).with_quota(Some(1000));
    match retry(|| rx.recv_msg(&mut buf)).unwrap() {
        RecvResult::QuotaExceeded(q, _) => {
            assert_eq!(
                q,
                QuotaExceeded {
                    size: 2000,
                    quota: 1000
                },
                "capacity {capacity}"
            );
        }
        other => panic!("capacity {capacity}: expected QuotaExceeded, got {other:?}"),
    }
    assert!(buf.is_empty(), "nothing delivered for a message over quota");
    assert!(!buf.is_owned(), "no growth for a message over quota");
    let r = retry(|| rx.recv_msg(&mut buf)).unwrap();
    assert!(r.is_message(), "capacity {capacity}: next message: {r:?}");
    assert!(buf.filled() == &small[..], "the next message is intact");
}

#[test]
fn quota_exceeded_is_consumed_udp() {
    let _t = util::guard();
    let rx = mio::net::UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let to = rx.local_addr().unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let send = |p: &[u8]| {
        tx.send_to(p, to).unwrap();
    };
    // capacity == quota and quota < capacity < size: one recvmsg.
    check_quota(&rx, send, 1000);
    check_quota(&rx, send, 1500);
    // capacity < quota: peek for the size, then discard.
    check_quota(&rx, send, 512);
    check_quota(&rx, send, 0);
    // Blocking std socket, peek path and one-syscall path.
    let rx = util::udp_client("127.0.0.1");
    let to = rx.local_addr().unwrap();
    let send = |p: &[u8]| {
        tx.send_to(p, to).unwrap();
    };
    check_quota(&rx, send, 512);
    check_quota(&rx, send, 1000);
}

#[test]
fn quota_exceeded_is_consumed_unix() {
    let _t = util::guard();
    let (a, b) = mio::net::UnixDatagram::pair().unwrap();
    let send = |p: &[u8]| {
        a.send(p).unwrap();
    };
    check_quota(&b, send, 1000);
    check_quota(&b, send, 1500);
    check_quota(&b, send, 512);
    let (a, b) = UnixDatagram::pair().unwrap();
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let send = |p: &[u8]| {
        a.send(p).unwrap();
    };
    check_quota(&b, send, 100);
    check_quota(&b, send, 1000);
}

/// The quota bounds the message, not the buffer: a buffer larger than the
/// message must not let an over-quota message through.
#[test]
fn quota_exceeded_with_buffer_larger_than_message() {
    let _t = util::guard();
    let rx = mio::net::UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let to = rx.local_addr().unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    check_quota(
        &rx,
        |p| {
            tx.send_to(p, to).unwrap();
        },
        MAX_UDP_PAYLOAD,
    );
    let (a, b) = mio::net::UnixDatagram::pair().unwrap();
    check_quota(
        &b,
        |p| {
            a.send(p).unwrap();
        },
        4096,
    );
}

#[test]
fn zero_length_datagram_is_a_message_udp() {
    let _t = util::guard();
    let rx = mio::net::UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let to = rx.local_addr().unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let from = tx.local_addr().unwrap();
    // Small buffer (peek path) and full-size buffer (one recvmsg).
    for cap in [16usize, MAX_UDP_PAYLOAD] {
        let mut buf = MsgBuf::with_capacity(cap);
        tx.send_to(b"", to).unwrap();
        assert_eq!(
            retry(|| rx.recv_msg(&mut buf)).unwrap(),
            RecvResult::Fit(from)
        );
        assert!(buf.is_empty());
        // Consumed: the queue is empty now.
        assert_would_block(rx.recv_msg(&mut buf));

        tx.send_to(b"", to).unwrap();
        tx.send_to(b"next", to).unwrap();
        assert_eq!(
            retry(|| rx.recv_msg(&mut buf)).unwrap(),
            RecvResult::Fit(from)
        );
        assert!(buf.is_empty());
        assert_eq!(
            retry(|| rx.recv_msg(&mut buf)).unwrap(),
            RecvResult::Fit(from)
        );
        assert_eq!(buf.filled(), b"next");
        assert_would_block(rx.recv_msg(&mut buf));
    }
}

#[test]
fn zero_length_datagram_is_a_message_unix() {
    let _t = util::guard();
    let (a, b) = mio::net::UnixDatagram::pair().unwrap();
    for quota in [None, Some(64)] {
        for cap in [0usize, 16, 128] {
            let mut buf = MsgBuf::with_capacity(cap).with_quota(quota);
            a.send(b"").unwrap();
            let r = b.recv_msg(&mut buf).unwrap();
            assert!(matches!(r, RecvResult::Fit(_)), "cap {cap}: {r:?}");
            assert!(buf.is_empty());
            assert_would_block(b.recv_msg(&mut buf));

            a.send(b"").unwrap();
            a.send(b"next").unwrap();
            assert!(matches!(b.recv_msg(&mut buf).unwrap(), RecvResult::Fit(_)));
            assert!(buf.is_empty());
            assert!(b.recv_msg(&mut buf).unwrap().is_message());
            assert_eq!(buf.filled(), b"next");
            assert_would_block(b.recv_msg(&mut buf));
        }
    }
}

#[test]
fn truncating_recv_peek_and_truncate_udp() {
    let _t = util::guard();
    let rx = mio::net::UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let to = rx.local_addr().unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let from = tx.local_addr().unwrap();
    let msg = util::pattern(100, 1);
    let next = util::pattern(10, 2);
    tx.send_to(&msg, to).unwrap();
    tx.send_to(&next, to).unwrap();

    // Peek: the message stays queued, every time.
    let mut storage = [0u8; 200];
    let mut buf = MsgBuf::from(&mut storage[..]);
    for _ in 0..2 {
        buf.clear();
        let r = retry(|| rx.recv_trunc(true, &mut buf)).unwrap();
        assert_eq!(r, TruncResult::Fit(from));
        assert!(buf.filled() == &msg[..]);
    }
    // Peek into a small buffer: cut, still queued.
    let mut small = [0u8; 40];
    let mut sbuf = MsgBuf::from(&mut small[..]);
    assert_eq!(
        rx.recv_trunc(true, &mut sbuf).unwrap(),
        TruncResult::Truncated(from)
    );
    assert!(sbuf.filled() == &msg[..40]);
    assert_eq!(
        rx.recv_trunc_with_full_size(true, &mut sbuf).unwrap(),
        FullSizeResult::Truncated {
            addr: from,
            full_size: 100
        }
    );
    // Read it for real into the small buffer: cut, and the rest is gone.
    assert_eq!(
        rx.recv_trunc_with_full_size(false, &mut sbuf).unwrap(),
        FullSizeResult::Truncated {
            addr: from,
            full_size: 100
        }
    );
    assert!(sbuf.filled() == &msg[..40]);
    assert!(!sbuf.is_owned(), "recv_trunc never grows the buffer");
    // The next message is the second one, whole.
    assert_eq!(
        rx.recv_trunc_with_full_size(false, &mut buf).unwrap(),
        FullSizeResult::Fit(from)
    );
    assert!(buf.filled() == &next[..]);
    assert_would_block(rx.recv_trunc(false, &mut buf));
    assert_would_block(rx.recv_trunc(true, &mut buf));
}

#[test]
fn truncating_recv_on_unix_and_blocking_std() {
    let _t = util::guard();
    let (a, b) = UnixDatagram::pair().unwrap();
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let msg = util::pattern(5000, 4);
    a.send(&msg).unwrap();
    let mut storage = [0u8; 1000];
    let mut buf = MsgBuf::from(&mut storage[..]);
    match b.recv_trunc_with_full_size(true, &mut buf).unwrap() {
        FullSizeResult::Truncated { addr, full_size } => {
            assert!(addr.is_unnamed());
            assert_eq!(full_size, 5000);
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    assert!(buf.filled() == &msg[..1000]);
    assert!(matches!(
        b.recv_trunc(false, &mut buf).unwrap(),
        TruncResult::Truncated(_)
    ));
    assert!(buf.filled() == &msg[..1000]);
    a.send(b"ok").unwrap();
    assert!(matches!(
        b.recv_trunc(false, &mut buf).unwrap(),
        TruncResult::Fit(_)
    ));
    assert_eq!(buf.filled(), b"ok");

    // Empty message: Fit, empty.
    a.send(b"").unwrap();
    assert!(matches!(
        b.recv_trunc_with_full_size(false, &mut buf).unwrap(),
        FullSizeResult::Fit(_)
    ));
    assert!(buf.is_empty());
}

#[test]
fn msgbuf_reserve_and_quota() {
    let _t = util::guard();
    let mut storage = [0u8; 8];
    let mut buf = MsgBuf::from(&mut storage[..]).with_quota(Some(100));
    assert_eq!(buf.capacity(), 8);
    assert_eq!(buf.quota(), Some(100));
    assert!(buf.reserve_total(8).is_ok());
    assert!(!buf.is_owned());
    assert_eq!(
        buf.reserve_total(101),
        Err(QuotaExceeded {
            size: 101,
            quota: 100
        })
    );
    assert!(!buf.is_owned(), "a failed reserve changes nothing");
    assert!(buf.reserve_total(100).is_ok());
    assert!(buf.is_owned());
    assert!(buf.capacity() >= 100);
    buf.set_quota(None);
    assert!(buf.reserve_total(10_000).is_ok());
    let v = MsgBuf::owned(Vec::with_capacity(32));
    assert!(v.is_owned());
    assert!(v.capacity() >= 32);
    assert!(v.into_vec().is_empty());
}
