//! `msgloop::batch`: `send_batch` and `recv_batch` on plain UDP and Unix
//! datagram sockets, without a reactor.

mod util;

use std::io;
use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use msgloop::batch;

#[test]
fn batch_round_trip() {
    let _t = util::guard();
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = socket2::SockAddr::from(b.local_addr().unwrap());
    let payloads: Vec<Vec<u8>> = (0..100).map(|i| util::pattern(i * 13, i as u8)).collect();
    let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();

    // At most MAX_BATCH per call: a prefix.
    let mut sent = 0;
    let mut calls = 0;
    while sent < refs.len() {
        let n = batch::send_batch(&a, &refs[sent..], Some(&to)).unwrap();
        assert!((1..=batch::MAX_BATCH).contains(&n), "sent {n}");
        sent += n;
        calls += 1;
        assert!(calls <= 100, "send_batch makes no progress");
    }
    assert!(calls >= 2, "100 payloads need at least two calls");

    let mut storage = vec![[0u8; 2048]; 100];
    let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|b| &mut b[..]).collect();
    let mut meta = vec![batch::RecvMeta::default(); 100];
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while got < 100 {
        match batch::recv_batch(&b, &mut bufs[got..], &mut meta[got..]) {
            Ok(n) => {
                assert!((1..=batch::MAX_BATCH).contains(&n));
                got += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "only {got} of 100 arrived");
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("recv_batch: {e}"),
        }
    }
    let from = a.local_addr().unwrap();
    for (i, p) in payloads.iter().enumerate() {
        assert_eq!(meta[i].len, p.len(), "datagram {i}");
        assert!(!meta[i].truncated);
        assert!(bufs[i][..meta[i].len] == p[..], "datagram {i} contents");
        assert_eq!(meta[i].addr.as_socket(), Some(from));
    }
    // Empty queue: WouldBlock, even on a blocking socket.
    match batch::recv_batch(&b, &mut bufs[..], &mut meta[..]) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        other => panic!("expected WouldBlock, got {other:?}"),
    }

    // Truncation is reported.
    batch::send_batch(&a, &[&[5u8; 300][..], b"", b"xy"], Some(&to)).unwrap();
    let mut small = [[0u8; 100]; 3];
    let mut sbufs: Vec<&mut [u8]> = small.iter_mut().map(|b| &mut b[..]).collect();
    let mut got = 0;
    while got < 3 {
        match batch::recv_batch(&b, &mut sbufs[got..], &mut meta[got..3]) {
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline + Duration::from_secs(5));
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("recv_batch: {e}"),
        }
    }
    assert!(meta[0].truncated);
    assert_eq!(meta[0].len, 100);
    assert!(sbufs[0].iter().all(|&x| x == 5));
    assert!(!meta[1].truncated);
    assert_eq!(meta[1].len, 0);
    assert!(!meta[2].truncated);
    assert_eq!(&sbufs[2][..meta[2].len], b"xy");
}

#[test]
fn batch_on_connected_unix_pair() {
    let _t = util::guard();
    let (a, b) = UnixDatagram::pair().unwrap();
    // max_dgram_qlen may be as small as 10: stay below it.
    let n = batch::send_batch(&a, &[b"one", b"", b"three"], None).unwrap();
    assert_eq!(n, 3);
    let mut storage = [[0u8; 16]; 3];
    let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|b| &mut b[..]).collect();
    let mut meta = vec![batch::RecvMeta::default(); 3];
    let got = batch::recv_batch(&b, &mut bufs, &mut meta).unwrap();
    assert_eq!(got, 3);
    assert_eq!(&bufs[0][..meta[0].len], b"one");
    assert_eq!(meta[1].len, 0);
    assert_eq!(&bufs[2][..meta[2].len], b"three");
}
