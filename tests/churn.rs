//! Churn soak: 100,000 open/close cycles across every socket kind and
//! 100,000 timer set/cancel cycles; afterwards the process's open fds, the
//! reactor's socket table and the heap are back at their baseline.
//!
//! A counting allocator (`util::alloc`, counting the test thread, which
//! does all the work) measures the net heap. The soak runs once as a
//! warm-up, so every table reaches its steady capacity, and then again for
//! the measurement: the second run must not grow the heap.

mod util;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use msgloop::framing::FrameConfig;
use msgloop::net::UnixSeqpacket;
use msgloop::rudp::RudpConfig;
use msgloop::{CloseReason, Ctx, Handler, Reactor, SocketId, UnixAddr};

#[global_allocator]
static GLOBAL: util::alloc::Counting = util::alloc::Counting;

#[derive(Default)]
struct App {
    accepted: Vec<SocketId>,
    closed: u64,
}

impl Handler for App {
    fn on_accept(&mut self, _cx: &mut Ctx, _l: SocketId, conn: SocketId, _p: &msgloop::PeerAddr) {
        self.accepted.push(conn);
    }
    fn on_close(&mut self, _cx: &mut Ctx, _s: SocketId, _r: CloseReason) {
        self.closed += 1;
    }
}

/// One round of churn; returns the number of open/close cycles done.
fn churn(r: &mut Reactor, app: &mut App, scale: u32) -> u64 {
    let mut cycles = 0u64;
    let pid = std::process::id();
    // UDP.
    for _ in 0..35 * scale {
        let id = r.bind_udp("127.0.0.1:0").unwrap();
        r.close(id).unwrap();
        cycles += 1;
    }
    // Unix datagram, abstract names (no files to clean up).
    for i in 0..20 * scale {
        let name = format!("msgloop-churn-{pid}-{i}");
        let id = r
            .bind_unix_datagram_with(
                UnixAddr::from_abstract_name(name.as_bytes()).unwrap(),
                &Default::default(),
            )
            .unwrap();
        r.close(id).unwrap();
        cycles += 1;
    }
    // Seqpacket pairs, both ends in the reactor.
    for _ in 0..10 * scale {
        let (a, b) = UnixSeqpacket::pair().unwrap();
        let a = r.add_seqpacket(a).unwrap();
        let b = r.add_seqpacket(b).unwrap();
        r.close(a).unwrap();
        r.close(b).unwrap();
        cycles += 2;
    }
    // Reliable-UDP sockets with an endpoint each.
    for _ in 0..10 * scale {
        let id = r.bind_rudp("127.0.0.1:0", RudpConfig::default()).unwrap();
        r.close(id).unwrap();
        cycles += 1;
    }
    // TCP listeners, and connections accepted by the reactor (closed by the
    // client with a reset: no TIME_WAIT piles up on loopback).
    let l = r.listen_tcp("127.0.0.1:0", FrameConfig::default()).unwrap();
    let addr = r.local_addr(l).unwrap().as_inet().unwrap();
    for _ in 0..5 * scale {
        let c = TcpStream::connect(addr).unwrap();
        socket2::SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        let start = Instant::now();
        while app.accepted.is_empty() {
            assert!(start.elapsed() < Duration::from_secs(5), "accept stalled");
            r.run_once(app, Some(Duration::from_millis(10))).unwrap();
        }
        for id in app.accepted.drain(..) {
            r.close(id).unwrap();
        }
        drop(c);
        cycles += 2;
    }
    r.close(l).unwrap();
    for _ in 0..5 * scale {
        let id = r.listen_tcp("127.0.0.1:0", FrameConfig::default()).unwrap();
        r.close(id).unwrap();
        cycles += 1;
    }
    // Timers.
    for i in 0..100 * scale {
        let t = r.set_timer(Duration::from_secs(60 + u64::from(i % 13)));
        assert!(r.cancel_timer(t));
    }
    // Let the reactor see the closes.
    r.run_once(app, Some(Duration::ZERO)).unwrap();
    cycles
}

#[test]
fn a_hundred_thousand_open_close_cycles_leave_nothing_behind() {
    let _g = util::serial();
    let fds_before = util::open_fds();
    let mut r = Reactor::new().unwrap();
    let mut app = App::default();
    // Warm-up: tables, the receive buffer and the allocator reach their
    // steady sizes.
    churn(&mut r, &mut app, 10);
    let heap_before = util::alloc::counts().net_bytes;
    let start = Instant::now();
    // 1,000 × 100 cycles: 100,000 socket open/close cycles and 100,000
    // timer set/cancel cycles.
    let cycles = util::alloc::counted(|| churn(&mut r, &mut app, 1000));
    let secs = start.elapsed().as_secs_f64();
    let heap_after = util::alloc::counts().net_bytes;
    println!(
        "churn: {cycles} socket open/close cycles and 100000 timer cycles in {secs:.1} s; \
         heap {heap_before} -> {heap_after} B; sockets {}; timers {}",
        r.socket_count(),
        r.reactor_stats().pending_timers
    );
    assert!(cycles >= 100_000, "only {cycles} cycles");
    assert_eq!(r.socket_count(), 0, "sockets left in the table");
    assert_eq!(r.reactor_stats().pending_timers, 0);
    assert_eq!(r.reactor_stats().open_sockets, 0);
    let growth = heap_after - heap_before;
    assert!(
        growth.abs() < 64 * 1024,
        "the heap grew by {growth} B over the soak"
    );
    drop(r);
    assert_eq!(util::open_fds(), fds_before, "fds leaked by the churn");
}
