//! host_loop — embedding a msgloop reactor in a program that owns its loop.
//!
//! ```text
//! cargo run --example host_loop                 # both styles, ~1 s each
//! cargo run --example host_loop -- tick         # a fixed-tick game loop
//! cargo run --example host_loop -- nested       # the reactor's fd in the host's own poll
//! ```
//!
//! 1. **Fixed tick.** A game server steps its world 60 times a second and
//!    spends the time left in each tick in `run_once`, so network messages
//!    are handled as they arrive and the tick never runs late because of
//!    the network.
//! 2. **Nested.** A host that already has its own poll loop (here a plain
//!    `mio::Poll` watching a socket of its own) registers the reactor's
//!    epoll fd in it (`Reactor` is `AsRawFd`). When the host's poll says the
//!    reactor is readable it calls `run_once(Some(ZERO))`; between events it
//!    sleeps at most until `reactor.next_deadline()` — which also reports
//!    "now" when the reactor has sockets left over from a read budget.
//!
//! Both run against a client that sends a datagram every few milliseconds,
//! and print what they handled.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use msgloop::{Ctx, Datagram, Handler, Reactor, SocketId};

/// The host's state: the reactor's callbacks update it directly.
#[derive(Default)]
struct World {
    messages: u64,
    ticks: u64,
}

impl Handler for World {
    fn on_datagram(&mut self, cx: &mut Ctx, sock: SocketId, msg: Datagram<'_>) {
        self.messages += 1;
        // Reply with the tick the message was seen in.
        let _ = cx.send_to(sock, &self.ticks.to_le_bytes(), msg.from());
    }
}

/// A client that sends `count` datagrams to `to`, one every 2 ms, from a
/// thread of its own (standing in for the players).
fn spawn_client(to: SocketAddr, count: u32) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let s = UdpSocket::bind("127.0.0.1:0").expect("client socket");
        s.set_read_timeout(Some(Duration::from_millis(200))).ok();
        let mut replies = 0;
        let mut buf = [0u8; 64];
        for i in 0..count {
            s.send_to(&i.to_le_bytes(), to).expect("send");
            if s.recv_from(&mut buf).is_ok() {
                replies += 1;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        replies
    })
}

/// 1. A fixed 60 Hz tick; the time left in each tick goes to `run_once`.
fn fixed_tick() -> std::io::Result<()> {
    const TICK: Duration = Duration::from_micros(16_667);
    let mut reactor = Reactor::new()?;
    let sock = reactor.bind_udp("127.0.0.1:0")?;
    let addr = reactor.local_addr(sock)?.as_inet().expect("udp");
    let client = spawn_client(addr, 200);
    let mut world = World::default();
    let mut next_tick = Instant::now() + TICK;
    let mut late = 0u32;
    let end = Instant::now() + Duration::from_secs(1);
    while Instant::now() < end {
        // Network until the tick is due (sub-millisecond waits sleep 1 ms
        // at most: never a busy loop)...
        loop {
            let now = Instant::now();
            if now >= next_tick {
                break;
            }
            reactor.run_once(&mut world, Some(next_tick - now))?;
        }
        // ...then the world steps.
        world.ticks += 1;
        if Instant::now() > next_tick + TICK / 2 {
            late += 1;
        }
        next_tick += TICK;
    }
    let replies = client.join().expect("client thread");
    println!(
        "tick:   {} ticks in 1 s ({} late by more than half a tick), {} messages handled, {} replies seen by the client",
        world.ticks, late, world.messages, replies
    );
    Ok(())
}

/// 2. The host's own poll loop, with the reactor nested in it.
fn nested() -> std::io::Result<()> {
    const REACTOR: Token = Token(0);
    const HOST_SOCKET: Token = Token(1);
    let mut reactor = Reactor::new()?;
    let sock = reactor.bind_udp("127.0.0.1:0")?;
    let addr = reactor.local_addr(sock)?.as_inet().expect("udp");

    // The host's own poll, watching a socket of its own and the reactor.
    let mut host_poll = Poll::new()?;
    let mut host_socket = mio::net::UdpSocket::bind("127.0.0.1:0".parse().expect("addr"))?;
    let host_addr = host_socket.local_addr()?;
    host_poll
        .registry()
        .register(&mut host_socket, HOST_SOCKET, Interest::READABLE)?;
    host_poll.registry().register(
        &mut SourceFd(&reactor.as_raw_fd()),
        REACTOR,
        Interest::READABLE,
    )?;

    let client = spawn_client(addr, 200);
    let poker = std::thread::spawn(move || {
        let s = UdpSocket::bind("127.0.0.1:0").expect("poker socket");
        for _ in 0..50 {
            s.send_to(b"host work", host_addr).expect("send");
            std::thread::sleep(Duration::from_millis(10));
        }
    });

    let mut world = World::default();
    let mut host_messages = 0u64;
    let mut events = Events::with_capacity(64);
    let mut buf = [0u8; 1500];
    let end = Instant::now() + Duration::from_secs(1);
    while Instant::now() < end {
        // Sleep no longer than the reactor's own next deadline (a timer, or
        // "now" if it has unread data left from a read budget).
        let until_end = end.saturating_duration_since(Instant::now());
        let timeout = match reactor.next_deadline() {
            Some(d) => d.saturating_duration_since(Instant::now()).min(until_end),
            None => until_end,
        };
        host_poll.poll(&mut events, Some(timeout))?;
        for ev in events.iter() {
            if ev.token() == HOST_SOCKET {
                while host_socket.recv_from(&mut buf).is_ok() {
                    host_messages += 1;
                }
            }
        }
        // Run the reactor whenever its fd fired or it asked for time; a
        // zero timeout never blocks the host.
        reactor.run_once(&mut world, Some(Duration::ZERO))?;
    }
    let replies = client.join().expect("client thread");
    poker.join().expect("poker thread");
    println!(
        "nested: {} reactor messages handled ({} replies seen by the client), {} host messages handled",
        world.messages, replies, host_messages
    );
    Ok(())
}

fn main() -> std::io::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("tick") => fixed_tick(),
        Some("nested") => nested(),
        None => {
            fixed_tick()?;
            nested()
        }
        Some(other) => {
            eprintln!("usage: host_loop [tick|nested] (got {other:?})");
            std::process::exit(2)
        }
    }
}
