//! A counting global allocator (`util::alloc`): the reactor's steady state
//! allocates nothing per datagram (UDP, Unix) or TCP frame received and
//! echoed, and timer set/cancel cycles do not grow the heap.
//!
//! Only allocations made on the measuring thread while its flag is set are
//! counted, so the test harness's other threads do not disturb the counts.

mod util;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use msgloop::framing::FrameConfig;
use msgloop::{CloseReason, Ctx, Datagram, Handler, PeerAddr, Reactor, SocketId, UnixAddr};
use util::alloc::{measure, Counts};

#[global_allocator]
static GLOBAL: util::alloc::Counting = util::alloc::Counting;

#[test]
fn the_counter_counts() {
    let _t = util::guard();
    let c = measure(|| {
        let v = std::hint::black_box(vec![1u8; 100]);
        drop(v);
    });
    assert_eq!(c.allocs, 1);
    assert_eq!(c.net_bytes, 0);
}

/// Replies to each datagram with its own bytes; counts without allocating.
#[derive(Default)]
struct Echo {
    echoed: u64,
    errors: u64,
}

impl Handler for Echo {
    fn on_datagram(&mut self, cx: &mut Ctx, sock: SocketId, msg: Datagram<'_>) {
        match cx.send_to(sock, msg.data(), msg.from()) {
            Ok(_) => self.echoed += 1,
            Err(_) => self.errors += 1,
        }
    }
}

/// One round trip: `send`, run the reactor until the echo went out, `recv`.
fn round_trip(
    reactor: &mut Reactor,
    echo: &mut Echo,
    send: &mut dyn FnMut(),
    recv: &mut dyn FnMut() -> usize,
    len: usize,
) {
    let want = echo.echoed + 1;
    send();
    let mut calls = 0;
    while echo.echoed < want {
        reactor
            .run_once(echo, Some(Duration::from_secs(1)))
            .expect("run_once");
        calls += 1;
        assert!(calls < 100 && echo.errors == 0, "echo failed");
    }
    assert_eq!(recv(), len);
}

fn check_zero_alloc(
    reactor: &mut Reactor,
    send: &mut dyn FnMut(),
    recv: &mut dyn FnMut() -> usize,
    len: usize,
) {
    let mut echo = Echo::default();
    for _ in 0..100 {
        round_trip(reactor, &mut echo, send, recv, len);
    }
    let counts = measure(|| {
        for _ in 0..1000 {
            round_trip(reactor, &mut echo, send, recv, len);
        }
    });
    assert_eq!(echo.echoed, 1100);
    assert_eq!(
        counts,
        Counts {
            allocs: 0,
            reallocs: 0,
            net_bytes: 0
        },
        "1,000 echo round trips must not allocate"
    );
}

#[test]
fn udp_echo_allocates_nothing_per_message() {
    let _t = util::guard();
    let mut reactor = Reactor::new().unwrap();
    let server = reactor.bind_udp("127.0.0.1:0").unwrap();
    let to = reactor.local_addr(server).unwrap().as_inet().unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let payload = [0x5au8; 200];
    let mut buf = [0u8; 512];
    check_zero_alloc(
        &mut reactor,
        &mut || {
            client.send_to(&payload, to).unwrap();
        },
        &mut || {
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!(from, to);
            n
        },
        payload.len(),
    );
}

#[test]
fn unix_echo_allocates_nothing_per_message() {
    let _t = util::guard();
    let spath = util::temp_path("alloc-server.sock");
    let cpath = util::temp_path("alloc-client.sock");
    let _rm = util::RemoveOnDrop(cpath.clone());
    let mut reactor = Reactor::new().unwrap();
    let opts = util::opts(|o| o.unlink_on_close = true);
    reactor
        .bind_unix_datagram_with(UnixAddr::from_pathname(&spath).unwrap(), &opts)
        .unwrap();
    let client = UnixDatagram::bind(&cpath).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let payload = [0xa5u8; 300];
    let mut buf = [0u8; 512];
    check_zero_alloc(
        &mut reactor,
        &mut || {
            client.send_to(&payload, &spath).unwrap();
        },
        &mut || client.recv(&mut buf).unwrap(),
        payload.len(),
    );
    drop(reactor);
    assert!(!spath.exists());
}

#[test]
fn timer_set_cancel_cycles_do_not_grow_the_heap() {
    let _t = util::guard();
    let mut reactor = Reactor::new().unwrap();
    let keep: Vec<_> = (0..3)
        .map(|i| reactor.set_timer(Duration::from_secs(3600 + i)))
        .collect();
    let cycle = |n: u64, r: &mut Reactor| {
        for i in 0..n {
            let t = r.set_timer(Duration::from_secs(60 + i % 7));
            assert!(r.cancel_timer(t));
        }
    };
    cycle(1000, &mut reactor);
    let counts = measure(|| cycle(100_000, &mut reactor));
    eprintln!("100,000 set/cancel cycles: {counts:?}");
    assert!(
        counts.net_bytes <= 4096,
        "heap grew by {} B over 100,000 set/cancel cycles",
        counts.net_bytes
    );
    assert!(
        counts.allocs + counts.reallocs <= 100,
        "{counts:?}: allocation per cycle"
    );
    assert_eq!(reactor.reactor_stats().pending_timers, keep.len());
}

// ---- TCP frames ----------------------------------------------------------

/// Echoes every frame on the connection it accepted; counts without
/// allocating.
#[derive(Default)]
struct FrameEcho {
    conn: Option<SocketId>,
    echoed: u64,
    errors: u64,
    closed: u64,
}

impl Handler for FrameEcho {
    fn on_accept(&mut self, _cx: &mut Ctx, _l: SocketId, conn: SocketId, _peer: &PeerAddr) {
        self.conn = Some(conn);
    }

    fn on_frame(&mut self, cx: &mut Ctx, conn: SocketId, frame: &[u8]) {
        match cx.send_frame(conn, frame) {
            Ok(()) => self.echoed += 1,
            Err(_) => self.errors += 1,
        }
    }

    fn on_close(&mut self, _cx: &mut Ctx, _sock: SocketId, _reason: CloseReason) {
        self.closed += 1;
    }
}

const FRAME_PAYLOAD: usize = 64;
const WIRE: usize = 4 + FRAME_PAYLOAD;

/// One round trip: the client writes a 64-byte frame, the reactor runs
/// until the echo went out, the client reads the 68-byte reply.
fn tcp_round_trip(reactor: &mut Reactor, echo: &mut FrameEcho, client: &mut TcpStream, i: u32) {
    let mut frame = [0u8; WIRE];
    frame[..4].copy_from_slice(&(FRAME_PAYLOAD as u32).to_be_bytes());
    frame[4..8].copy_from_slice(&i.to_be_bytes());
    frame[8..].fill(i as u8);
    client.write_all(&frame).unwrap();
    let want = echo.echoed + 1;
    let mut calls = 0;
    while echo.echoed < want {
        reactor
            .run_once(echo, Some(Duration::from_secs(1)))
            .expect("run_once");
        calls += 1;
        assert!(
            calls < 100 && echo.errors == 0 && echo.closed == 0,
            "echo failed"
        );
    }
    let mut reply = [0u8; WIRE];
    client.read_exact(&mut reply).unwrap();
    assert!(reply == frame, "round trip {i}: the echo differs");
}

#[test]
fn tcp_echo_allocates_nothing_per_frame() {
    let _t = util::guard();
    let mut reactor = Reactor::new().unwrap();
    let l = reactor
        .listen_tcp("127.0.0.1:0", FrameConfig::new())
        .unwrap();
    let addr = reactor.local_addr(l).unwrap().as_inet().unwrap();
    let mut client = TcpStream::connect(addr).unwrap();
    client.set_nodelay(true).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut echo = FrameEcho::default();
    for _ in 0..100 {
        if echo.conn.is_some() {
            break;
        }
        reactor
            .run_once(&mut echo, Some(Duration::from_millis(50)))
            .unwrap();
    }
    let conn = echo.conn.expect("not accepted");
    // Warm up: buffers reach their steady size.
    for i in 0..100 {
        tcp_round_trip(&mut reactor, &mut echo, &mut client, i);
    }
    let counts = measure(|| {
        for i in 100..1100 {
            tcp_round_trip(&mut reactor, &mut echo, &mut client, i);
        }
    });
    assert_eq!(echo.echoed, 1100);
    assert_eq!(
        counts,
        Counts {
            allocs: 0,
            reallocs: 0,
            net_bytes: 0
        },
        "1,000 TCP echo round trips must not allocate"
    );
    let st = reactor.stats(conn).unwrap();
    assert_eq!(st.messages_in, 1100);
    assert_eq!(st.messages_out, 1100);
    assert_eq!(reactor.buffered_bytes(conn).unwrap(), 0);
}

#[test]
fn a_headroom_buffer_prepends_and_strips_without_allocating() {
    let _t = util::guard();
    let mut out = msgloop::HeadroomBuf::new(64, 1500);
    let mut inp = msgloop::HeadroomBuf::new(0, 1500);
    let c = measure(|| {
        for i in 0..1000u32 {
            // Sending: payload, then two headers in front of it.
            out.clear(64);
            out.extend_from_slice(&[7u8; 1200]);
            let payload_at = out.as_ptr() as usize;
            out.prepend(&i.to_be_bytes()).unwrap();
            out.prepend(&[1, 2]).unwrap();
            assert_eq!(out.as_ptr() as usize + 6, payload_at, "the payload moved");
            // Receiving: the same bytes, headers stripped one at a time.
            inp.clear(0);
            let n = inp
                .recv_with(|buf| {
                    buf[..out.len()].copy_from_slice(&out);
                    Ok(out.len())
                })
                .unwrap();
            assert_eq!(n, 1206);
            assert_eq!(inp.strip(2), Some(&[1u8, 2][..]));
            assert_eq!(inp.strip(4), Some(&i.to_be_bytes()[..]));
            assert_eq!(inp.len(), 1200);
        }
    });
    assert_eq!(c.allocs, 0, "prepend and strip allocate nothing: {c:?}");
}
