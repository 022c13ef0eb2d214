//! One reactor vs two (`SO_REUSEPORT`, one thread each) on the same port.
//!
//! - `udp_ingest_shards`: two sender threads (distinct source ports, so the
//!   kernel's hash spreads them) blast 64 B datagrams with `sendmmsg`;
//!   datagrams/s received in total.
//! - `tcp_frames_shards`: four connections, each fed 64 B frames in 64 KiB
//!   batches by its own thread; frames/s received in total.
//!
//! `msgloop` is the two-reactor figure, `baseline` the one-reactor figure.
//! On a 2-core machine the senders compete with the reactors for the same
//! cores, so this shows the sharding works and what it costs, not how far
//! it scales on a big machine.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use msgloop::framing::FrameConfig;
use msgloop::{Ctx, Datagram, DgramOptions, Handler, Reactor, SocketId, TcpOptions};

use super::{median, report, PAYLOAD};

const WINDOW: Duration = Duration::from_millis(600);

struct Counter(Arc<AtomicU64>);

impl Handler for Counter {
    fn on_datagram(&mut self, _cx: &mut Ctx, _s: SocketId, _m: Datagram<'_>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn on_frame(&mut self, _cx: &mut Ctx, _c: SocketId, _f: &[u8]) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Starts `n` reactor threads, each set up by `setup` (which binds with
/// reuse_port on `addr`); returns the shared counter and the stop flag.
fn start_shards(
    n: usize,
    setup: impl Fn(&mut Reactor) -> Result<(), msgloop::Error> + Send + Sync + Clone + 'static,
) -> (
    Arc<AtomicU64>,
    Arc<AtomicBool>,
    Vec<std::thread::JoinHandle<()>>,
) {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let threads = (0..n)
        .map(|_| {
            let (count, stop, setup, tx) = (count.clone(), stop.clone(), setup.clone(), tx.clone());
            std::thread::spawn(move || {
                let mut r = Reactor::new().expect("reactor");
                setup(&mut r).expect("bind");
                tx.send(()).expect("ready");
                let mut h = Counter(count);
                while !stop.load(Ordering::Relaxed) {
                    r.run_once(&mut h, Some(Duration::from_millis(5)))
                        .expect("run_once");
                }
            })
        })
        .collect();
    for _ in 0..n {
        rx.recv().expect("shard ready");
    }
    (count, stop, threads)
}

fn measure(count: &AtomicU64) -> f64 {
    std::thread::sleep(Duration::from_millis(100)); // warm-up
    let (c0, t0) = (count.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(WINDOW);
    (count.load(Ordering::Relaxed) - c0) as f64 / t0.elapsed().as_secs_f64()
}

/// A port free for UDP (and nothing else bound to it now).
fn free_udp_port() -> io::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A port free for a TCP listener: a probe listener that never had a
/// connection leaves no TIME_WAIT behind.
fn free_tcp_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn udp_run(shards: usize) -> io::Result<f64> {
    let port = free_udp_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let (count, stop, threads) = start_shards(shards, move |r| {
        let opts = DgramOptions::default()
            .reuse_port(true)
            .recv_buffer_size(Some(4 << 20));
        r.bind_udp_with(addr, &opts).map(drop)
    });
    let senders: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let s = UdpSocket::bind("127.0.0.1:0").expect("sender");
                s.connect(addr).expect("connect");
                let batch: [&[u8]; 32] = [&PAYLOAD; 32];
                while !stop.load(Ordering::Relaxed) {
                    let _ = msgloop::batch::send_batch(&s, &batch, None);
                }
            })
        })
        .collect();
    let rate = measure(&count);
    stop.store(true, Ordering::Relaxed);
    for t in senders.into_iter().chain(threads) {
        t.join().map_err(|_| io::Error::other("thread panicked"))?;
    }
    Ok(rate)
}

fn tcp_run(shards: usize) -> io::Result<f64> {
    let port = free_tcp_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let (count, stop, threads) = start_shards(shards, move |r| {
        let opts = TcpOptions::new(FrameConfig::default()).reuse_port(true);
        r.listen_tcp_with(addr, &opts).map(drop)
    });
    let mut batch = Vec::new();
    while batch.len() + 68 <= 64 * 1024 {
        FrameConfig::default()
            .encode_into(&PAYLOAD, &mut batch)
            .expect("fits");
    }
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (stop, batch) = (stop.clone(), batch.clone());
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.set_write_timeout(Some(Duration::from_millis(100))).ok();
                while !stop.load(Ordering::Relaxed) {
                    if s.write_all(&batch).is_err() && stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            })
        })
        .collect();
    let rate = measure(&count);
    stop.store(true, Ordering::Relaxed);
    for t in senders.into_iter().chain(threads) {
        t.join().map_err(|_| io::Error::other("thread panicked"))?;
    }
    Ok(rate)
}

pub(crate) fn run(rounds: usize, want: &dyn Fn(&str) -> bool) -> io::Result<()> {
    type Run = fn(usize) -> io::Result<f64>;
    for (name, f, unit) in [
        ("udp_ingest_shards", udp_run as Run, "datagrams/s"),
        ("tcp_frames_shards", tcp_run as Run, "frames/s"),
    ] {
        if !want(name) {
            continue;
        }
        let (mut two, mut one, mut r) = (vec![], vec![], vec![]);
        for _ in 0..rounds.min(3) {
            let b = f(1)?;
            let a = f(2)?;
            one.push(b);
            two.push(a);
            r.push(a / b);
        }
        report(
            name,
            median(two),
            median(one),
            median(r),
            unit,
            "1_reactor",
            "msgloop_is=2_reactors payload=64",
        );
    }
    let _ = io::stdout().flush();
    Ok(())
}
