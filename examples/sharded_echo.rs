//! sharded_echo — one reactor per thread on the same addresses.
//!
//! ```text
//! cargo run --release --example sharded_echo                    # one shard per core
//! cargo run --release --example sharded_echo -- --shards 4 --duration 10
//! ```
//!
//! msgloop's model for more cores: a reactor is one thread; run one per
//! core, each binding the same UDP and TCP addresses with `SO_REUSEPORT`,
//! and the kernel spreads peers over them (by the hash of their address, so
//! a peer stays with its shard). Shards share nothing. Past one machine,
//! put ordinary load balancers in front.
//!
//! The main thread blocks SIGINT/SIGTERM before spawning the shards (they
//! inherit the mask) and watches them with a reactor of its own; on a
//! signal it raises a stop flag and wakes every shard through its
//! [`Waker`](msgloop::Waker). Each shard prints its counters as it ends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use msgloop::framing::FrameConfig;
use msgloop::{Ctx, Datagram, DgramOptions, Handler, Reactor, SocketId, TcpOptions};

struct Shard {
    stop: Arc<AtomicBool>,
    datagrams: u64,
    frames: u64,
}

impl Handler for Shard {
    fn on_datagram(&mut self, cx: &mut Ctx, sock: SocketId, msg: Datagram<'_>) {
        self.datagrams += 1;
        let _ = cx.send_to(sock, msg.data(), msg.from());
    }

    fn on_frame(&mut self, cx: &mut Ctx, conn: SocketId, frame: &[u8]) {
        self.frames += 1;
        let _ = cx.send_frame(conn, frame);
    }

    fn on_wake(&mut self, _cx: &mut Ctx) {
        // The only reason anyone wakes us: check the stop flag (below).
    }
}

struct Stopper(bool);

impl Handler for Stopper {
    fn on_signal(&mut self, _cx: &mut Ctx, _w: SocketId, signal: i32) {
        eprintln!("sharded_echo: signal {signal}: stopping the shards");
        self.0 = true;
    }
    fn on_timer(&mut self, _cx: &mut Ctx, _t: msgloop::TimerId) {
        self.0 = true; // --duration elapsed
    }
}

fn main() -> Result<(), msgloop::Error> {
    let mut shards = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut udp: SocketAddr = "127.0.0.1:7100".parse().expect("addr");
    let mut tcp: SocketAddr = "127.0.0.1:7101".parse().expect("addr");
    let mut duration = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--shards" => shards = v().parse().unwrap_or_else(|_| usage()),
            "--udp" => udp = v().parse().unwrap_or_else(|_| usage()),
            "--tcp" => tcp = v().parse().unwrap_or_else(|_| usage()),
            "--duration" => {
                duration = Some(Duration::from_secs(v().parse().unwrap_or_else(|_| usage())))
            }
            _ => usage(),
        }
    }

    // Signals first, so the shard threads inherit the blocked mask.
    let mut control = Reactor::new()?;
    control.watch_signals(&[libc::SIGINT, libc::SIGTERM])?;
    if let Some(d) = duration {
        control.set_timer(d);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (wakers_tx, wakers_rx) = mpsc::channel();
    let mut threads = Vec::new();
    for n in 0..shards {
        let stop = stop.clone();
        let wakers_tx = wakers_tx.clone();
        threads.push(std::thread::spawn(move || -> Result<(), msgloop::Error> {
            let mut reactor = Reactor::new()?;
            let dopts = DgramOptions::default().reuse_port(true);
            reactor.bind_udp_with(udp, &dopts)?;
            let topts = TcpOptions::new(FrameConfig::default()).reuse_port(true);
            reactor.listen_tcp_with(tcp, &topts)?;
            wakers_tx
                .send(reactor.waker()?)
                .expect("main thread listening");
            let mut shard = Shard {
                stop,
                datagrams: 0,
                frames: 0,
            };
            while !shard.stop.load(Ordering::Relaxed) {
                reactor.run_once(&mut shard, None)?;
            }
            println!(
                "shard {n}: {} datagrams and {} frames echoed; {}",
                shard.datagrams,
                shard.frames,
                reactor.reactor_stats().totals
            );
            Ok(())
        }));
    }
    drop(wakers_tx);
    let wakers: Vec<msgloop::Waker> = wakers_rx.iter().take(shards).collect();
    eprintln!("sharded_echo: {shards} shards on udp {udp} and tcp {tcp} (SO_REUSEPORT)");

    let mut stopper = Stopper(false);
    while !stopper.0 && !threads.iter().any(|t| t.is_finished()) {
        control.run_once(&mut stopper, Some(Duration::from_millis(200)))?;
    }
    stop.store(true, Ordering::Relaxed);
    for w in &wakers {
        w.wake()?;
    }
    for t in threads {
        t.join().expect("shard thread")?;
    }
    Ok(())
}

fn usage() -> ! {
    eprintln!("usage: sharded_echo [--shards N] [--udp ADDR] [--tcp ADDR] [--duration SECS]");
    std::process::exit(2)
}
