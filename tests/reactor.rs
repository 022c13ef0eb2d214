//! The `Reactor` itself: timers, the waker, idle blocking, stale ids,
//! close semantics, embedding, panics in handlers, read budgets and
//! carry-over (shown with UDP sockets).

mod util;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use msgloop::{Ctx, Datagram, Error, Handler, Reactor, SocketId, TimerId};
use util::{Event, Recorder};

/// Sends one datagram to `to` after `after` unless dropped first: turns a
/// `run_once(None)` that would hang into a failed assertion.
struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<bool>>,
}

impl Watchdog {
    fn new(to: SocketAddr, after: Duration) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || match rx.recv_timeout(after) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.send_to(b"watchdog", to).unwrap();
                true
            }
            _ => false,
        });
        Watchdog {
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let fired = t.join().unwrap_or(false);
            if fired && !std::thread::panicking() {
                panic!("watchdog fired: run_once did not return in time");
            }
        }
    }
}

fn udp_addr(r: &Reactor, s: SocketId) -> SocketAddr {
    r.local_addr(s).unwrap().as_inet().unwrap()
}

fn timers_fired(h: &Recorder) -> Vec<TimerId> {
    h.events
        .iter()
        .filter_map(|e| match e {
            Event::Timer(t) => Some(*t),
            _ => None,
        })
        .collect()
}

#[test]
fn timers_fire_in_deadline_order_and_cancelled_never_fire() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let delays = [37u64, 5, 49, 12, 23];
    let ids: Vec<TimerId> = delays
        .iter()
        .map(|&ms| r.set_timer(Duration::from_millis(ms)))
        .collect();
    let doomed = [
        r.set_timer(Duration::from_millis(3)),
        r.set_timer(Duration::from_millis(30)),
        r.set_timer(Duration::from_millis(60)),
    ];
    for t in doomed {
        assert!(r.cancel_timer(t));
        assert!(!r.cancel_timer(t), "cancel twice: false");
        assert_eq!(r.timer_deadline(t), None);
    }
    assert_eq!(r.reactor_stats().pending_timers, 5);
    let mut h = Recorder::default();
    util::run_until(&mut r, &mut h, |_, h| timers_fired(h).len() == 5, 200);
    let mut expected: Vec<(u64, TimerId)> =
        delays.iter().copied().zip(ids.iter().copied()).collect();
    expected.sort();
    let expected: Vec<TimerId> = expected.into_iter().map(|(_, t)| t).collect();
    assert_eq!(timers_fired(&h), expected, "deadline order");
    // The cancelled 60 ms timer's time passes: nothing fires.
    for _ in 0..3 {
        r.run_once(&mut h, Some(Duration::from_millis(20))).unwrap();
    }
    assert_eq!(
        h.events.len(),
        5,
        "only the live timers fired: {:?}",
        h.events
    );
    for t in ids {
        assert!(!r.cancel_timer(t), "cancelling a fired timer is false");
        assert_eq!(r.timer_deadline(t), None);
    }
    assert_eq!(r.reactor_stats().pending_timers, 0);
    assert_eq!(r.next_deadline(), None);
}

/// Two timers due in the same pass; the first cancels the second.
#[test]
fn timer_cancelled_by_earlier_timer_in_same_pass_does_not_fire() {
    #[derive(Default)]
    struct H {
        first: Option<TimerId>,
        second: Option<TimerId>,
        fired: Vec<TimerId>,
        cancel_result: Option<bool>,
    }
    impl Handler for H {
        fn on_timer(&mut self, cx: &mut Ctx, t: TimerId) {
            self.fired.push(t);
            if Some(t) == self.first {
                self.cancel_result = Some(cx.cancel_timer(self.second.unwrap()));
            }
        }
    }
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let at = Instant::now();
    let first = Some(r.set_timer_at(at));
    let second = Some(r.set_timer_at(at)); // same deadline: fires after `first`
    let mut h = H {
        first,
        second,
        ..H::default()
    };
    let third = r.set_timer_at(at);
    let n = r.run_once(&mut h, Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        h.cancel_result,
        Some(true),
        "the second timer was still pending"
    );
    assert_eq!(h.fired, vec![h.first.unwrap(), third]);
    assert_eq!(n, 2);
    assert_eq!(
        r.run_once(&mut h, Some(Duration::from_millis(10))).unwrap(),
        0
    );
    assert_eq!(r.reactor_stats().pending_timers, 0);
}

#[test]
fn timer_shortens_an_infinite_wait() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let s = r.bind_udp("127.0.0.1:0").unwrap();
    let t = r.set_timer(Duration::from_millis(20));
    let _dog = Watchdog::new(udp_addr(&r, s), Duration::from_secs(10));
    let mut h = Recorder::default();
    assert_eq!(r.run_once(&mut h, None).unwrap(), 1);
    assert_eq!(timers_fired(&h), vec![t]);
}

#[test]
fn next_deadline_reports_the_earliest_timer() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    assert_eq!(r.next_deadline(), None);
    let late = r.set_timer(Duration::from_secs(30));
    let early = r.set_timer(Duration::from_secs(10));
    let mid = r.set_timer(Duration::from_secs(20));
    assert_eq!(r.next_deadline(), r.timer_deadline(early));
    assert!(r.timer_deadline(early).unwrap() < r.timer_deadline(mid).unwrap());
    assert!(r.cancel_timer(early));
    assert_eq!(r.next_deadline(), r.timer_deadline(mid));
    assert!(r.cancel_timer(mid));
    assert_eq!(r.next_deadline(), r.timer_deadline(late));
    let at = Instant::now() + Duration::from_secs(5);
    let exact = r.set_timer_at(at);
    assert_eq!(r.timer_deadline(exact), Some(at));
    assert_eq!(r.next_deadline(), Some(at));
    assert!(r.cancel_timer(exact));
    assert!(r.cancel_timer(late));
    assert_eq!(r.next_deadline(), None);
}

#[test]
fn set_cancel_cycles_keep_timer_store_bounded() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let keep: Vec<TimerId> = (0..3)
        .map(|i| r.set_timer(Duration::from_secs(3600 + i)))
        .collect();
    for i in 0..100_000u64 {
        let t = r.set_timer(Duration::from_secs(60 + i % 7));
        assert!(r.cancel_timer(t));
        if i % 10_000 == 0 {
            assert_eq!(r.reactor_stats().pending_timers, 3);
        }
    }
    assert_eq!(r.reactor_stats().pending_timers, 3);
    assert_eq!(r.next_deadline(), r.timer_deadline(keep[0]));
    let mut h = Recorder::default();
    assert_eq!(r.run_once(&mut h, Some(Duration::ZERO)).unwrap(), 0);
    for t in keep {
        assert!(r.cancel_timer(t));
    }
    assert_eq!(r.reactor_stats().pending_timers, 0);
}

#[test]
fn waker_wakes_an_idle_infinite_wait() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let s = r.bind_udp("127.0.0.1:0").unwrap();
    let waker = r.waker().unwrap();
    let flag = Arc::new(AtomicBool::new(false));
    let dog = Watchdog::new(udp_addr(&r, s), Duration::from_secs(10));
    let t = {
        let flag = Arc::clone(&flag);
        let waker = waker.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            flag.store(true, Ordering::SeqCst);
            waker.wake().unwrap();
        })
    };
    let mut h = Recorder::default();
    let n = r.run_once(&mut h, None).unwrap();
    // Returned only because of the wake: the flag was set before it.
    assert!(
        flag.load(Ordering::SeqCst),
        "run_once returned before the wake"
    );
    assert_eq!(n, 1, "{:?}", h.events);
    assert!(matches!(h.events[..], [Event::Wake]), "{:?}", h.events);
    t.join().unwrap();
    drop(dog);

    // Wake-ups before run_once are coalesced into one on_wake.
    waker.wake().unwrap();
    waker.wake().unwrap();
    r.waker().unwrap().wake().unwrap();
    assert_eq!(r.run_once(&mut h, Some(Duration::from_secs(5))).unwrap(), 1);
    assert_eq!(h.events.len(), 2);
    // Idle again: a bounded wait with nothing ready makes no callback.
    assert_eq!(
        r.run_once(&mut h, Some(Duration::from_millis(200)))
            .unwrap(),
        0
    );
    assert_eq!(h.events.len(), 2);
    drop(waker);
}

#[test]
fn idle_run_once_returns_zero_without_error() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let _s = r.bind_udp("127.0.0.1:0").unwrap();
    let mut h = Recorder::default();
    assert_eq!(
        r.run_once(&mut h, Some(Duration::from_micros(500)))
            .unwrap(),
        0
    );
    assert_eq!(r.run_once(&mut h, Some(Duration::ZERO)).unwrap(), 0);
    assert_eq!(
        r.run_once(&mut h, Some(Duration::from_millis(200)))
            .unwrap(),
        0
    );
    // A timer far away does not wake it either.
    let t = r.set_timer(Duration::from_secs(60));
    assert_eq!(
        r.run_once(&mut h, Some(Duration::from_millis(50))).unwrap(),
        0
    );
    assert!(r.cancel_timer(t));
    assert!(h.events.is_empty());
    let st = r.reactor_stats();
    assert_eq!(st.run_once_calls, 4);
    assert_eq!(st.callbacks, 0);
}

#[test]
fn stale_id_is_rejected_even_when_the_slot_is_reused() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let a = r.bind_udp("127.0.0.1:0").unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let to = peer.local_addr().unwrap();
    r.close(a).unwrap();
    let check_stale = |r: &mut Reactor| {
        assert!(!r.contains(a));
        assert!(matches!(r.send_to(a, b"x", to), Err(Error::StaleId)));
        assert!(matches!(r.send(a, b"x"), Err(Error::StaleId)));
        assert!(matches!(r.close(a), Err(Error::StaleId)));
        assert!(matches!(r.stats(a), Err(Error::StaleId)));
        assert!(matches!(r.local_addr(a), Err(Error::StaleId)));
        assert!(matches!(r.kind(a), Err(Error::StaleId)));
        assert!(matches!(r.connect(a, to), Err(Error::StaleId)));
    };
    check_stale(&mut r);
    let b = r.bind_udp("127.0.0.1:0").unwrap();
    assert_eq!(b.index(), a.index(), "the slot is reused");
    assert_ne!(a, b);
    check_stale(&mut r);
    // The new socket is unaffected by any of that.
    assert!(r.contains(b));
    r.send_to(b, b"from b", to).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"from b");
    assert_eq!(from, udp_addr(&r, b));
    let st = r.stats(b).unwrap();
    assert_eq!(st.messages_out, 1);
    assert_eq!(st.send_errors, 0);
    assert_eq!(r.socket_ids().collect::<Vec<_>>(), vec![b]);
    let rs = r.reactor_stats();
    assert_eq!(rs.open_sockets, 1);
    assert_eq!(rs.closed_sockets, 1);
}

/// Closes the socket a datagram arrived on and checks what the id can do
/// afterwards inside the same callback.
#[derive(Default)]
struct CloseInCallback {
    log: Vec<String>,
    stats_after_close: Option<Result<msgloop::SocketStats, Error>>,
    kind_after_close: Option<Result<msgloop::SocketKind, Error>>,
}

impl Handler for CloseInCallback {
    fn on_datagram(&mut self, cx: &mut Ctx, sock: SocketId, msg: Datagram<'_>) {
        self.log.push(format!("datagram {:?}", msg.data()));
        cx.close(sock).unwrap();
        match cx.send_to(sock, b"late", msg.from()) {
            Err(Error::StaleId) => self.log.push("send: StaleId".into()),
            other => self.log.push(format!("send: {other:?}")),
        }
        assert!(matches!(cx.close(sock), Err(Error::StaleId)));
        assert!(!cx.contains(sock));
        assert!(matches!(cx.local_addr(sock), Err(Error::StaleId)));
        self.stats_after_close = Some(cx.stats(sock));
        self.kind_after_close = Some(cx.kind(sock));
        self.log.push("callback returns".into());
    }
    fn on_close(&mut self, _cx: &mut Ctx, sock: SocketId, reason: msgloop::CloseReason) {
        let local = matches!(reason, msgloop::CloseReason::Local);
        self.log.push(format!("on_close {sock:?} local={local}"));
    }
}

#[test]
fn close_inside_callback_is_immediate_for_the_id_and_reported_after() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let s = r.bind_udp("127.0.0.1:0").unwrap();
    let other = r.bind_udp("127.0.0.1:0").unwrap();
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    for p in [b"one", b"two", b"333"] {
        c.send_to(p, udp_addr(&r, s)).unwrap();
    }
    let mut h = CloseInCallback::default();
    util::run_until(&mut r, &mut h, |_, h| !h.log.is_empty(), 100);
    assert_eq!(
        h.log,
        vec![
            "datagram [111, 110, 101]".to_string(),
            "send: StaleId".to_string(),
            "callback returns".to_string(),
            format!("on_close {s:?} local=true"),
        ],
        "on_close exactly once, after the callback; later datagrams not delivered"
    );
    // Nothing was sent by the late send.
    let mut buf = [0u8; 8];
    assert!(c.recv_from(&mut buf).is_err());
    for _ in 0..3 {
        assert_eq!(
            r.run_once(&mut h, Some(Duration::from_millis(10))).unwrap(),
            0
        );
    }
    assert_eq!(h.log.len(), 4);
    assert!(!r.contains(s));
    assert!(matches!(r.stats(s), Err(Error::StaleId)));
    assert_eq!(r.socket_count(), 1);
    assert!(r.contains(other));
    assert_eq!(r.reactor_stats().closed_sockets, 1);
}

#[test]
fn stats_of_id_closed_in_this_callback_is_stale() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let s = r.bind_udp("127.0.0.1:0").unwrap();
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.send_to(b"x", udp_addr(&r, s)).unwrap();
    let mut h = CloseInCallback::default();
    util::run_until(&mut r, &mut h, |_, h| h.stats_after_close.is_some(), 100);
    let got = h.stats_after_close.take().unwrap();
    let kind = h.kind_after_close.take().unwrap();
    assert!(
        matches!(got, Err(Error::StaleId)) && matches!(kind, Err(Error::StaleId)),
        "after close in the same callback: stats {got:?}, kind {kind:?}"
    );
}

#[test]
fn close_between_calls_is_immediate_without_callback() {
    let _t = util::guard();
    let config = util::config(|o| o.read_budget = 4);
    let mut r = Reactor::with_config(config).unwrap();
    let s = r.bind_udp("127.0.0.1:0").unwrap();
    let carried = r.bind_udp("127.0.0.1:0").unwrap();
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..10u8 {
        c.send_to(&[i], udp_addr(&r, carried)).unwrap();
    }
    let mut h = Recorder::default();
    assert_eq!(r.run_once(&mut h, Some(Duration::from_secs(5))).unwrap(), 4);
    c.send_to(b"queued", udp_addr(&r, s)).unwrap();
    let before = super_fds();
    r.close(s).unwrap();
    r.close(carried).unwrap();
    assert_eq!(super_fds(), before - 2, "both fds closed at once");
    assert!(!r.contains(s) && !r.contains(carried));
    assert_eq!(r.socket_count(), 0);
    assert_eq!(r.reactor_stats().open_sockets, 0);
    assert_eq!(r.reactor_stats().closed_sockets, 2);
    for _ in 0..3 {
        assert_eq!(
            r.run_once(&mut h, Some(Duration::from_millis(10))).unwrap(),
            0
        );
    }
    assert_eq!(
        h.events.len(),
        4,
        "no on_close, no late datagrams: {:?}",
        h.events
    );
    assert_eq!(r.next_deadline(), None);
}

fn super_fds() -> usize {
    util::open_fds()
}

/// Inside one call: a callback closes socket A (which has datagrams
/// pending and a readiness event not yet dispatched) and binds socket B.
/// A's datagrams never reach B; the slot reused after the call neither.
#[test]
fn stale_events_never_reach_a_new_socket() {
    struct H {
        trigger: SocketId,
        victim: SocketId,
        new_sock: Option<SocketId>,
        got: Vec<(SocketId, Vec<u8>)>,
        closes: Vec<SocketId>,
    }
    impl Handler for H {
        fn on_datagram(&mut self, cx: &mut Ctx, sock: SocketId, msg: Datagram<'_>) {
            self.got.push((sock, msg.data().to_vec()));
            if sock == self.trigger && msg.data() == b"switch" {
                cx.close(self.victim).unwrap();
                let b = cx.bind_udp("127.0.0.1:0").unwrap();
                assert_ne!(b, self.victim);
                self.new_sock = Some(b);
            }
        }
        fn on_close(&mut self, _cx: &mut Ctx, sock: SocketId, _r: msgloop::CloseReason) {
            self.closes.push(sock);
        }
    }
    let _t = util::guard();
    let config = util::config(|o| o.read_budget = 4);
    let mut r = Reactor::with_config(config).unwrap();
    let trigger = r.bind_udp("127.0.0.1:0").unwrap();
    let victim = r.bind_udp("127.0.0.1:0").unwrap();
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    // The trigger is cut off by its budget, so the next call serves it
    // first, before the events that poll returns.
    for p in [&b"t1"[..], b"t2", b"t3", b"t4", b"switch"] {
        c.send_to(p, udp_addr(&r, trigger)).unwrap();
    }
    let mut h = H {
        trigger,
        victim,
        new_sock: None,
        got: Vec::new(),
        closes: Vec::new(),
    };
    assert_eq!(r.run_once(&mut h, Some(Duration::from_secs(5))).unwrap(), 4);
    // Now the victim becomes ready: its event is in the next poll.
    for p in [&b"for A 1"[..], b"for A 2"] {
        c.send_to(p, udp_addr(&r, victim)).unwrap();
    }
    r.run_once(&mut h, Some(Duration::from_secs(5))).unwrap();
    let b = h.new_sock.expect("the switch happened");
    assert_eq!(h.closes, vec![victim]);
    assert!(
        h.got.iter().all(|(_, d)| !d.starts_with(b"for A")),
        "a closed socket's datagrams were delivered: {:?}",
        h.got
    );
    // B gets its own traffic only.
    c.send_to(b"for B", udp_addr(&r, b)).unwrap();
    util::run_until(
        &mut r,
        &mut h,
        |_, h| h.got.iter().any(|(s, _)| *s == b),
        100,
    );
    let for_b: Vec<&[u8]> = h
        .got
        .iter()
        .filter(|(s, _)| *s == b)
        .map(|(_, d)| &d[..])
        .collect();
    assert_eq!(for_b, vec![&b"for B"[..]]);

    // After the call the victim's slot is free: a socket bound now reuses
    // it and sees nothing of the victim's.
    let reuse = r.bind_udp("127.0.0.1:0").unwrap();
    assert_eq!(reuse.index(), victim.index());
    c.send_to(b"for reuse", udp_addr(&r, reuse)).unwrap();
    util::run_until(
        &mut r,
        &mut h,
        |_, h| h.got.iter().any(|(s, _)| *s == reuse),
        100,
    );
    for _ in 0..2 {
        r.run_once(&mut h, Some(Duration::from_millis(10))).unwrap();
    }
    let for_reuse: Vec<&[u8]> = h
        .got
        .iter()
        .filter(|(s, _)| *s == reuse)
        .map(|(_, d)| &d[..])
        .collect();
    assert_eq!(for_reuse, vec![&b"for reuse"[..]]);
    assert!(h.got.iter().all(|(s, _)| *s != victim));
}

#[test]
fn epoll_fd_is_pollable_from_an_outer_loop() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let s = r.bind_udp("127.0.0.1:0").unwrap();
    let fd = r.as_raw_fd();
    assert!(
        !util::poll_fd(fd, libc::POLLIN, Duration::ZERO),
        "idle: not readable"
    );
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.send_to(b"knock", udp_addr(&r, s)).unwrap();
    assert!(
        util::poll_fd(fd, libc::POLLIN, Duration::from_secs(5)),
        "the epoll fd did not become readable for a datagram"
    );
    let mut h = Recorder::default();
    assert_eq!(r.run_once(&mut h, Some(Duration::ZERO)).unwrap(), 1);
    assert_eq!(h.datagrams(s), vec![&b"knock"[..]]);
    assert!(!util::poll_fd(fd, libc::POLLIN, Duration::ZERO), "consumed");

    // The waker makes it readable too.
    let w = r.waker().unwrap();
    w.wake().unwrap();
    assert!(util::poll_fd(fd, libc::POLLIN, Duration::from_secs(5)));
    assert_eq!(r.run_once(&mut h, Some(Duration::ZERO)).unwrap(), 1);
    assert!(matches!(h.events.last(), Some(Event::Wake)));
}

/// A handler that panics on a chosen payload.
struct Panicky;
impl Handler for Panicky {
    fn on_datagram(&mut self, cx: &mut Ctx, _sock: SocketId, msg: Datagram<'_>) {
        // A handler that looks at the pass's time, then fails.
        let _ = std::hint::black_box(cx.now());
        if msg.data() == b"boom" {
            panic!("handler panic (expected by the test)");
        }
    }
}

#[test]
fn handler_panic_unwinds_and_the_reactor_goes_on() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let s = r.bind_udp("127.0.0.1:0").unwrap();
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.send_to(b"boom", udp_addr(&r, s)).unwrap();
    c.send_to(b"left over", udp_addr(&r, s)).unwrap();
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        r.run_once(&mut Panicky, Some(Duration::from_secs(5)))
    }));
    assert!(res.is_err(), "the panic unwinds out of run_once");
    // New traffic: the socket is served again, left-over datagram included.
    c.send_to(b"new", udp_addr(&r, s)).unwrap();
    let mut h = Recorder::default();
    util::run_until(&mut r, &mut h, |_, h| h.datagram_count() >= 2, 100);
    assert_eq!(h.datagrams(s), vec![&b"left over"[..], &b"new"[..]]);
    drop(r); // fds released: checked by FdCheck
}

/// A reactor whose handler panicked in a callback (caught), plus a second,
/// idle socket.
fn reactor_after_panic() -> (Reactor, SocketId) {
    let mut r = Reactor::new().unwrap();
    let s = r.bind_udp("127.0.0.1:0").unwrap();
    let other = r.bind_udp("127.0.0.1:0").unwrap();
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.send_to(b"boom", udp_addr(&r, s)).unwrap();
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        r.run_once(&mut Panicky, Some(Duration::from_secs(5)))
    }));
    assert!(res.is_err());
    (r, other)
}

#[test]
fn close_between_calls_after_a_handler_panic() {
    let _t = util::guard();
    let (mut r, other) = reactor_after_panic();
    r.close(other).unwrap();
    assert_eq!(r.socket_count(), 1, "closed at once");
    // Any callback in a later call would be followed by the queued on_close.
    let s = r.socket_ids().next().unwrap();
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.send_to(b"after", udp_addr(&r, s)).unwrap();
    let mut h = Recorder::default();
    util::run_until(&mut r, &mut h, |_, h| h.datagram_count() == 1, 100);
    r.run_once(&mut h, Some(Duration::from_millis(10))).unwrap();
    assert_eq!(
        h.close_count(),
        0,
        "no on_close for a close between calls: {:?}",
        h.events
    );
}

#[test]
fn set_timer_between_calls_after_a_handler_panic() {
    let _t = util::guard();
    let (mut r, _other) = reactor_after_panic();
    std::thread::sleep(Duration::from_millis(50));
    let before = Instant::now();
    let t = r.set_timer(Duration::from_millis(30));
    let due = r.timer_deadline(t).unwrap();
    assert!(
        due >= before + Duration::from_millis(30),
        "timer due {:?} before the delay asked for",
        (before + Duration::from_millis(30)) - due
    );
}

#[test]
fn reactor_stats_count_calls_and_callbacks() {
    let _t = util::guard();
    let mut r = Reactor::new().unwrap();
    let s = r.bind_udp("127.0.0.1:0").unwrap();
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.send_to(b"abc", udp_addr(&r, s)).unwrap();
    c.send_to(b"de", udp_addr(&r, s)).unwrap();
    r.set_timer(Duration::ZERO);
    let mut h = Recorder::echo();
    let calls = util::run_until(&mut r, &mut h, |_, h| h.events.len() == 3, 100);
    let st = r.reactor_stats();
    assert_eq!(st.run_once_calls, calls as u64);
    assert_eq!(st.callbacks, 3);
    assert_eq!(st.open_sockets, 1);
    assert_eq!(st.totals.messages_in, 2);
    assert_eq!(st.totals.bytes_in, 5);
    assert_eq!(st.totals.messages_out, 2);
    assert_eq!(st.totals.bytes_out, 5);
    // Totals include closed sockets.
    r.close(s).unwrap();
    let st = r.reactor_stats();
    assert_eq!(st.totals.messages_in, 2);
    assert_eq!(st.totals.bytes_out, 5);
    assert_eq!(st.open_sockets, 0);
    assert_eq!(st.closed_sockets, 1);
    let mut buf = [0u8; 8];
    assert_eq!(c.recv(&mut buf).unwrap(), 3);
    assert_eq!(c.recv(&mut buf).unwrap(), 2);
}

// ---- read budgets and carry-over ----------------------------------------------

/// A socket2 UDP socket bound on loopback, and a duplicate of its fd to
/// inspect it after the reactor adopts the original.
fn udp_socket2() -> (socket2::Socket, socket2::Socket) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let dup = s.try_clone().unwrap();
    (s, dup)
}

const FLOOD: usize = 1000;
const FLOOD_LEN: usize = 1000;

/// A flooded socket (1,000 datagrams queued before the first call) and a
/// quiet one that gets one datagram before every call: the flood is read
/// at most `read_budget` per call, the quiet socket is served on every call.
#[test]
fn flooded_socket_does_not_starve_others() {
    let _t = util::guard();
    let mut reactor = Reactor::new().unwrap();
    let budget = reactor.config().read_budget;
    assert_eq!(budget, 64, "default read budget");

    let (a_sock, a_dup) = udp_socket2();
    let opts = util::opts(|o| o.recv_buffer_size = Some(8 << 20));
    let a = reactor.add_udp_with(a_sock, &opts).unwrap();
    let rcv = util::rcvbuf(&a_dup);
    drop(a_dup);
    // Linux charges ~2-3 KiB of buffer per 1 KB datagram on loopback.
    assert!(
        rcv >= FLOOD * 4096,
        "socket A's receive buffer is {rcv} B, too small to queue {FLOOD} datagrams of \
         {FLOOD_LEN} B (SO_RCVBUFFORCE refused? run as root / with CAP_NET_ADMIN)"
    );
    let b = reactor.bind_udp("127.0.0.1:0").unwrap();
    let a_addr = reactor.local_addr(a).unwrap().as_inet().unwrap();
    let b_addr = reactor.local_addr(b).unwrap().as_inet().unwrap();

    let c = util::udp_client("127.0.0.1");
    for i in 0..FLOOD as u32 {
        let mut p = util::pattern(FLOOD_LEN, i as u8);
        p[..4].copy_from_slice(&i.to_be_bytes());
        c.send_to(&p, a_addr).unwrap();
        if i % 100 == 99 {
            // Let loopback's receive processing keep up (its backlog queue
            // holds ~1,000 packets); nothing is read from A meanwhile.
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    let mut h = Recorder::default();
    let mut calls = 0u32;
    let mut a_seen = 0usize;
    while a_seen < FLOOD {
        calls += 1;
        assert!(
            calls <= 200,
            "only {a_seen} of {FLOOD} delivered after 200 calls"
        );
        c.send_to(&calls.to_be_bytes(), b_addr).unwrap();
        let before = h.events.len();
        reactor
            .run_once(&mut h, Some(Duration::from_secs(5)))
            .unwrap();
        let this_call = &h.events[before..];
        let mut a_now = 0;
        let mut b_now = Vec::new();
        for e in this_call {
            match e {
                Event::Datagram { sock, data, .. } if *sock == a => {
                    let seq = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
                    assert_eq!(seq, a_seen + a_now, "flood delivered in order, none lost");
                    assert_eq!(data.len(), FLOOD_LEN);
                    a_now += 1;
                }
                Event::Datagram { sock, data, .. } if *sock == b => b_now.push(data.clone()),
                other => panic!("call {calls}: unexpected {other:?}"),
            }
        }
        assert!(
            a_now <= budget,
            "call {calls}: {a_now} datagrams from A, budget is {budget}"
        );
        assert_eq!(
            b_now,
            vec![calls.to_be_bytes().to_vec()],
            "call {calls}: B must be served on every call"
        );
        a_seen += a_now;
    }
    let min_calls = FLOOD.div_ceil(budget) as u32;
    assert!(
        calls >= min_calls,
        "{FLOOD} datagrams in {calls} calls: budget not applied"
    );
    assert_eq!(reactor.stats(a).unwrap().messages_in, FLOOD as u64);
    assert_eq!(reactor.stats(b).unwrap().messages_in, u64::from(calls));
}

/// After a budget cut-off, the next call serves the rest without a new
/// readiness edge and without waiting for its timeout.
#[test]
fn carried_socket_is_served_without_new_edge() {
    let _t = util::guard();
    let config = util::config(|o| o.read_budget = 10);
    let mut reactor = Reactor::with_config(config).unwrap();
    let a = reactor.bind_udp("127.0.0.1:0").unwrap();
    let a_addr = reactor.local_addr(a).unwrap().as_inet().unwrap();
    let c = util::udp_client("127.0.0.1");
    for i in 0..25u8 {
        c.send_to(&[i; 16], a_addr).unwrap();
    }
    let mut h = Recorder::default();
    assert_eq!(
        reactor
            .run_once(&mut h, Some(Duration::from_secs(5)))
            .unwrap(),
        10
    );
    // Data is left: the reactor has work to do now.
    let d = reactor
        .next_deadline()
        .expect("a carried socket is due now");
    assert!(d <= std::time::Instant::now());
    // No new datagram arrives: a long timeout must not be waited out (the
    // count proves the carried socket was served, not just timed out).
    assert_eq!(
        reactor
            .run_once(&mut h, Some(Duration::from_secs(10)))
            .unwrap(),
        10
    );
    assert_eq!(
        reactor
            .run_once(&mut h, Some(Duration::from_secs(10)))
            .unwrap(),
        5
    );
    let got: Vec<u8> = h.datagrams(a).iter().map(|d| d[0]).collect();
    assert_eq!(got, (0..25).collect::<Vec<u8>>());
    assert_eq!(reactor.next_deadline(), None, "drained: nothing due");
    assert_eq!(
        reactor
            .run_once(&mut h, Some(Duration::from_millis(20)))
            .unwrap(),
        0
    );
}
