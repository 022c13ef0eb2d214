//! TCP frame workloads.
//!
//! - `tcp_frames_64`: 64 B frames one way (frames/s). A sender thread
//!   writes pre-encoded frames in 64 KiB batches; the receiver is a reactor
//!   connection, against a raw blocking framer (1 MiB reads, every frame in
//!   a read parsed in place).
//! - `tcp_echo_64`: 64 B frame round trips, both ends in one reactor (one
//!   core), against the same two sockets driven in lock step by blocking
//!   reads and writes (no poll at all: the floor of four system calls).
//! - `tcp_frames_64k`: 64 KiB frames one way (GB/s of payload), against
//!   raw bulk TCP with no framing at all (1 MiB writes and reads): the
//!   ceiling.
//!
//! Rounds alternate msgloop and the baseline on fresh connections; the
//! ratio is the median of the per-round ratios.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use msgloop::framing::FrameConfig;
use msgloop::{Ctx, Handler, Reactor, SocketId, TcpOptions};

use super::{median, report};

fn pair() -> io::Result<(TcpStream, TcpStream)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let c = TcpStream::connect(l.local_addr()?)?;
    let (s, _) = l.accept()?;
    c.set_nodelay(true)?;
    s.set_nodelay(true)?;
    Ok((c, s))
}

/// Runs `a` and `b` alternately `rounds` times; (median a, median b,
/// median of per-round a/b).
fn paired(
    rounds: usize,
    mut a: impl FnMut() -> io::Result<f64>,
    mut b: impl FnMut() -> io::Result<f64>,
) -> io::Result<(f64, f64, f64)> {
    let (mut va, mut vb, mut vr) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let x = a()?;
        let y = b()?;
        va.push(x);
        vb.push(y);
        vr.push(x / y);
    }
    Ok((median(va), median(vb), median(vr)))
}

// ---- one-way ---------------------------------------------------------------

/// A sender thread writing `batch` `count` times.
fn spawn_writer(
    mut s: TcpStream,
    batch: Vec<u8>,
    count: usize,
) -> std::thread::JoinHandle<io::Result<()>> {
    std::thread::spawn(move || {
        for _ in 0..count {
            s.write_all(&batch)?;
        }
        Ok(())
    })
}

struct CountFrames {
    frames: u64,
    bytes: u64,
}

impl Handler for CountFrames {
    fn on_frame(&mut self, _cx: &mut Ctx, _conn: SocketId, frame: &[u8]) {
        self.frames += 1;
        self.bytes += frame.len() as u64;
    }
}

/// msgloop receives `frames` frames written as `batch` × `batches`;
/// returns (frames/s, payload bytes/s).
fn recv_msgloop(
    batch: Vec<u8>,
    batches: usize,
    frames: u64,
    max_frame: usize,
) -> io::Result<(f64, f64)> {
    let (client, server) = pair()?;
    let mut reactor = Reactor::new()?;
    let opts = TcpOptions::new(FrameConfig::new().with_max_frame_len(max_frame));
    reactor.add_tcp_with(server, &opts)?;
    let mut app = CountFrames {
        frames: 0,
        bytes: 0,
    };
    let start = Instant::now();
    let writer = spawn_writer(client, batch, batches);
    // A pass that only buffers part of a frame makes no callback, so
    // progress is judged over time, not per call.
    let mut last = (0, Instant::now());
    while app.frames < frames {
        reactor.run_once(&mut app, Some(Duration::from_millis(500)))?;
        if app.bytes != last.0 {
            last = (app.bytes, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) {
            return Err(io::Error::other("tcp receive stalled"));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    writer
        .join()
        .map_err(|_| io::Error::other("writer panicked"))??;
    Ok((app.frames as f64 / secs, app.bytes as f64 / secs))
}

/// The raw framer: 1 MiB blocking reads, frames parsed in place, the
/// trailing partial frame moved to the front.
fn recv_raw_framer(batch: Vec<u8>, batches: usize, frames: u64) -> io::Result<f64> {
    let (client, mut server) = pair()?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut len, mut count) = (0usize, 0u64);
    let start = Instant::now();
    let writer = spawn_writer(client, batch, batches);
    while count < frames {
        let n = server.read(&mut buf[len..])?;
        if n == 0 {
            return Err(io::Error::other("raw framer: early EOF"));
        }
        len += n;
        let mut off = 0;
        while len - off >= 4 {
            let flen = u32::from_be_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            if len - off - 4 < flen {
                break;
            }
            std::hint::black_box(&buf[off + 4..off + 4 + flen]);
            count += 1;
            off += 4 + flen;
        }
        buf.copy_within(off..len, 0);
        len -= off;
    }
    let secs = start.elapsed().as_secs_f64();
    writer
        .join()
        .map_err(|_| io::Error::other("writer panicked"))??;
    Ok(count as f64 / secs)
}

/// Raw bulk TCP: 1 MiB writes and reads, no framing; bytes/s.
fn recv_raw_bulk(total: usize) -> io::Result<f64> {
    let (client, mut server) = pair()?;
    let chunk = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let writer = spawn_writer(client, chunk, total.div_ceil(1 << 20));
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0usize;
    let want = total.div_ceil(1 << 20) << 20;
    while got < want {
        let n = server.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::other("bulk: early EOF"));
        }
        got += n;
    }
    let secs = start.elapsed().as_secs_f64();
    writer
        .join()
        .map_err(|_| io::Error::other("writer panicked"))??;
    Ok(got as f64 / secs)
}

fn encode_batch(payload: usize, batch_bytes: usize) -> (Vec<u8>, u64) {
    let cfg = FrameConfig::new().with_max_frame_len(payload.max(1));
    let body = vec![0x5au8; payload];
    let mut out = Vec::with_capacity(batch_bytes + payload + 8);
    let mut n = 0;
    while out.len() + 4 + payload <= batch_bytes.max(4 + payload) {
        cfg.encode_into(&body, &mut out).expect("frame fits");
        n += 1;
        if out.len() >= batch_bytes {
            break;
        }
    }
    (out, n)
}

// ---- echo ------------------------------------------------------------------

struct Echo {
    server: SocketId,
    client: SocketId,
    remaining: u64,
}

impl Handler for Echo {
    fn on_frame(&mut self, cx: &mut Ctx, conn: SocketId, frame: &[u8]) {
        if conn == self.server {
            cx.send_frame(conn, frame).expect("echo");
        } else {
            self.remaining -= 1;
            if self.remaining > 0 {
                cx.send_frame(self.client, &super::PAYLOAD).expect("ping");
            }
        }
    }
}

const ECHO_ROUND_TRIPS: u64 = 20_000;

fn echo_msgloop() -> io::Result<f64> {
    let (client, server) = pair()?;
    let mut reactor = Reactor::new()?;
    let server = reactor.add_tcp(server, FrameConfig::new())?;
    let client = reactor.add_tcp(client, FrameConfig::new())?;
    let mut app = Echo {
        server,
        client,
        remaining: ECHO_ROUND_TRIPS,
    };
    let start = Instant::now();
    reactor.send_frame(client, &super::PAYLOAD)?;
    while app.remaining > 0 {
        if reactor.run_once(&mut app, Some(Duration::from_secs(5)))? == 0 {
            return Err(io::Error::other("tcp echo stalled"));
        }
    }
    Ok(ECHO_ROUND_TRIPS as f64 / start.elapsed().as_secs_f64())
}

fn echo_lockstep() -> io::Result<f64> {
    let (mut client, mut server) = pair()?;
    let mut frame = Vec::new();
    FrameConfig::new()
        .encode_into(&super::PAYLOAD, &mut frame)
        .expect("fits");
    let mut buf = vec![0u8; 1 << 16];
    let start = Instant::now();
    for _ in 0..ECHO_ROUND_TRIPS {
        client.write_all(&frame)?;
        read_frame(&mut server, &mut buf)?;
        server.write_all(&frame)?;
        read_frame(&mut client, &mut buf)?;
    }
    Ok(ECHO_ROUND_TRIPS as f64 / start.elapsed().as_secs_f64())
}

fn read_frame(s: &mut TcpStream, buf: &mut [u8]) -> io::Result<()> {
    let mut have = 0;
    loop {
        have += s.read(&mut buf[have..])?;
        if have >= 4 {
            let l = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
            if have >= 4 + l {
                return Ok(());
            }
        }
    }
}

// ---- entry -----------------------------------------------------------------

pub(crate) fn run(rounds: usize, want: &dyn Fn(&str) -> bool) -> io::Result<()> {
    if want("tcp_frames_64") {
        let (batch, per_batch) = encode_batch(64, 64 * 1024);
        let batches = 4000; // ~3.85 million frames (about 250 MB) per round
        let frames = per_batch * batches as u64;
        let (a, b, r) = paired(
            rounds,
            || Ok(recv_msgloop(batch.clone(), batches, frames, 64)?.0),
            || recv_raw_framer(batch.clone(), batches, frames),
        )?;
        report(
            "tcp_frames_64",
            a,
            b,
            r,
            "frames/s",
            "blocking_read_in_place_framer",
            &format!("payload=64 frames_per_round={frames} rounds={rounds}"),
        );
    }
    if want("tcp_echo_64") {
        let (a, b, r) = paired(rounds, echo_msgloop, echo_lockstep)?;
        report(
            "tcp_echo_64",
            a,
            b,
            r,
            "round_trips/s",
            "blocking_lockstep",
            &format!("payload=64 round_trips={ECHO_ROUND_TRIPS} rounds={rounds}"),
        );
    }
    if want("tcp_frames_64k") {
        let (batch, per_batch) = encode_batch(64 * 1024, 1 << 20);
        let batches = 256; // 256 MiB of payload per round
        let frames = per_batch * batches as u64;
        let total = frames as usize * 64 * 1024;
        let (a, b, r) = paired(
            rounds,
            || Ok(recv_msgloop(batch.clone(), batches, frames, 64 * 1024)?.1 / 1e9),
            || Ok(recv_raw_bulk(total)? / 1e9),
        )?;
        report(
            "tcp_frames_64k",
            a * 1e3,
            b * 1e3,
            r,
            "MB/s",
            "raw_bulk_1MiB_reads",
            &format!("payload=65536 bytes_per_round={total} rounds={rounds}"),
        );
    }
    Ok(())
}
