//! Fault cases: signals interrupting the poll, panicking handlers (caught
//! by the opt-in), and a clock that goes backwards into the reliable-UDP
//! core. (EMFILE on accept, close-then-send in one callback, stale events
//! for a reused slot and the default panic policy have their own tests in
//! tcp.rs and reactor.rs.)

mod util;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use msgloop::rudp::{Endpoint, Guarantee, RudpConfig};
use msgloop::{CloseReason, Config, Ctx, Datagram, Handler, Reactor, SocketId};

static SIGNALS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::Relaxed);
}

/// SIGALRM every millisecond, with a handler installed *without*
/// `SA_RESTART`, so `epoll_wait` fails with `EINTR` over and over.
struct SignalStorm;

impl SignalStorm {
    fn start() -> SignalStorm {
        // SAFETY: installing a handler that only touches an atomic, and an
        // interval timer; both undone in Drop.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = count_signal as *const () as usize;
            sa.sa_flags = 0; // no SA_RESTART: interrupted calls fail with EINTR
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut()), 0);
            let it = libc::itimerval {
                it_interval: libc::timeval {
                    tv_sec: 0,
                    tv_usec: 1000,
                },
                it_value: libc::timeval {
                    tv_sec: 0,
                    tv_usec: 1000,
                },
            };
            assert_eq!(
                libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()),
                0
            );
        }
        SignalStorm
    }
}

impl Drop for SignalStorm {
    fn drop(&mut self) {
        // SAFETY: stopping the timer and restoring the default action.
        unsafe {
            let zero: libc::itimerval = std::mem::zeroed();
            libc::setitimer(libc::ITIMER_REAL, &zero, std::ptr::null_mut());
            libc::signal(libc::SIGALRM, libc::SIG_IGN);
        }
    }
}

#[derive(Default)]
struct Count {
    datagrams: u64,
    closes: Vec<(SocketId, String)>,
    panic_on: Option<SocketId>,
}

impl Handler for Count {
    fn on_datagram(&mut self, _cx: &mut Ctx, sock: SocketId, msg: Datagram<'_>) {
        if Some(sock) == self.panic_on && msg.data() == b"boom" {
            panic!("handler bug triggered by a peer");
        }
        self.datagrams += 1;
    }

    fn on_close(&mut self, _cx: &mut Ctx, sock: SocketId, reason: CloseReason) {
        self.closes.push((sock, reason.to_string()));
    }
}

#[test]
fn eintr_during_poll_is_retried_inside_never_surfaced() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let id = r.bind_udp("127.0.0.1:0").unwrap();
    let addr = r.local_addr(id).unwrap().as_inet().unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut app = Count::default();
    let before = SIGNALS.load(Ordering::Relaxed);
    let storm = SignalStorm::start();
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_millis(300) {
        if sent < 20 {
            client.send_to(b"x", addr).unwrap();
            sent += 1;
        }
        // Every call must succeed although signals keep interrupting it.
        r.run_once(&mut app, Some(Duration::from_millis(20)))
            .expect("run_once surfaced an error during a signal storm");
    }
    drop(storm);
    let signals = SIGNALS.load(Ordering::Relaxed) - before;
    assert!(signals > 50, "the storm delivered only {signals} signals");
    // Nothing was lost to the interruptions.
    let deadline = Instant::now() + Duration::from_secs(2);
    while app.datagrams < 20 && Instant::now() < deadline {
        r.run_once(&mut app, Some(Duration::from_millis(20)))
            .unwrap();
    }
    assert_eq!(app.datagrams, 20);
}

#[test]
fn catch_panics_closes_the_offending_socket_and_goes_on() {
    let _t = util::guard();
    let mut r = Reactor::with_config(Config::default().catch_panics(true)).unwrap();
    let bad = r.bind_udp("127.0.0.1:0").unwrap();
    let good = r.bind_udp("127.0.0.1:0").unwrap();
    let bad_addr = r.local_addr(bad).unwrap().as_inet().unwrap();
    let good_addr = r.local_addr(good).unwrap().as_inet().unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut app = Count {
        panic_on: Some(bad),
        ..Count::default()
    };
    client.send_to(b"boom", bad_addr).unwrap();
    client.send_to(b"fine", good_addr).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while (app.closes.is_empty() || app.datagrams == 0) && Instant::now() < deadline {
        // Never an Err, never a panic out of run_once.
        r.run_once(&mut app, Some(Duration::from_millis(20)))
            .unwrap();
    }
    assert_eq!(app.closes.len(), 1, "exactly one close: {:?}", app.closes);
    assert_eq!(app.closes[0].0, bad);
    assert!(app.closes[0].1.contains("panicked"), "{:?}", app.closes[0]);
    assert!(!r.contains(bad));
    // The other socket keeps being served.
    assert_eq!(app.datagrams, 1);
    client.send_to(b"again", good_addr).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.datagrams < 2 && Instant::now() < deadline {
        r.run_once(&mut app, Some(Duration::from_millis(20)))
            .unwrap();
    }
    assert_eq!(app.datagrams, 2);
}

#[test]
fn a_clock_going_backwards_does_not_disturb_the_rudp_core() {
    let cfg = RudpConfig::default();
    let mut a = Endpoint::new(cfg.clone(), 1);
    let mut b = Endpoint::new(cfg, 2);
    let addr_a = "127.0.0.1:1000".parse().unwrap();
    let addr_b = "127.0.0.1:2000".parse().unwrap();
    let t0 = Instant::now() + Duration::from_secs(100);
    let peer = a.connect(t0, addr_b).unwrap();
    let mut buf = vec![0u8; 2048];
    let mut delivered = Vec::new();
    // Time jumps back and forth by up to 50 s; every call must be a no-op
    // or progress, never a panic, and the stream must still arrive.
    let times: Vec<Instant> = (0..400u64)
        .map(|i| {
            if i % 3 == 0 {
                t0 - Duration::from_secs(i % 50)
            } else {
                t0 + Duration::from_millis(i * 5)
            }
        })
        .collect();
    let mut sent = 0u32;
    for &now in &times {
        if a.send(peer, &sent.to_le_bytes(), Guarantee::Delivery)
            .is_ok()
        {
            sent += 1;
        }
        a.handle_timeout(now);
        a.handle_timeout(now); // twice at the same instant: a no-op
        b.handle_timeout(now);
        while let Some(t) = a.poll_transmit(now, &mut buf) {
            let _ = b.handle_datagram(now, addr_a, &buf[..t.len]);
        }
        while let Some(t) = b.poll_transmit(now, &mut buf) {
            let _ = a.handle_datagram(now, addr_b, &buf[..t.len]);
        }
        while let Some((_, ev)) = b.poll_event() {
            if let msgloop::rudp::Event::Message { data, .. } = ev {
                delivered.push(u32::from_le_bytes(data[..4].try_into().unwrap()));
            }
        }
        while a.poll_event().is_some() {}
    }
    assert!(sent > 0);
    assert!(
        !delivered.is_empty(),
        "nothing delivered while the clock jumped"
    );
    assert!(
        delivered.windows(2).all(|w| w[1] == w[0] + 1),
        "Delivery stream out of order or duplicated: {delivered:?}"
    );
}
