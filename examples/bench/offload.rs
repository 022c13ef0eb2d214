//! Plain UDP with segmentation and receive offload.
//!
//! - `udp_ingest_gro`: 1,200 B datagrams per second received from a sender
//!   that sends trains with segmentation offload (`UDP_SEGMENT`, 54
//!   datagrams a train) without pause, on another thread. msgloop reads
//!   with receive offload (`DgramOptions::offload`) and delivers every
//!   datagram on its own. Baseline (`ratio`): a `recvmmsg` loop without
//!   receive offload, 32 datagrams a call, on the same socket with
//!   `UDP_GRO` turned off for its slices; also reported: a hand-written
//!   receive-offload loop (`recvmsg` of one 64 KiB train at a time, its
//!   segment size from the control message) — the limit — and the ratio to
//!   it (`ratio_vs_gro`).
//! - `udp_send_gso`: 1,200 B datagrams per second sent to one destination.
//!   msgloop: `Ctx::send_batch` of 256 at a time with offload on (trains,
//!   no copy). Baseline (`ratio`): `sendmmsg` of 64 single datagrams; also
//!   reported: hand-written `sendmsg` trains of 54 datagrams from one
//!   contiguous buffer — the limit — and `ratio_vs_gso`.
//!
//! The sides alternate in slices on the same sockets; figures are medians.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use msgloop::{Ctx, Datagram, DgramOptions, Handler, Reactor, SocketId, Transmit};
use nix::sys::socket::{self as nixsock, sockopt, ControlMessage, ControlMessageOwned, MsgFlags};

use super::{median, report, SIDE};

const SIZE: usize = 1200;
/// Datagrams per train: as many 1,200 B datagrams as fit one 64 KiB send.
const TRAIN: usize = 54;
const WINDOW: Duration = Duration::from_millis(40);

pub(crate) fn run(slices: usize, want: &dyn Fn(&str) -> bool) -> io::Result<()> {
    if want("udp_ingest_gro") {
        let (a, b, c, r, rc) = ingest_gro(slices)?;
        report(
            "udp_ingest_gro",
            a,
            b,
            r,
            "datagrams/s",
            "recvmmsg_without_gro",
            &format!(
                "gro_recvmsg={c:.0} ratio_vs_gro={rc:.3} payload={SIZE} train={TRAIN} \
                 slices={slices}x{}ms",
                WINDOW.as_millis()
            ),
        );
    }
    if want("udp_send_gso") {
        let (a, b, c, r, rc) = send_gso(slices)?;
        report(
            "udp_send_gso",
            a,
            b,
            r,
            "datagrams/s",
            "sendmmsg_64",
            &format!(
                "gso_sendmsg={c:.0} ratio_vs_gso={rc:.3} payload={SIZE} train={TRAIN} \
                 slices={slices}x{}ms",
                WINDOW.as_millis()
            ),
        );
    }
    Ok(())
}

struct Count(u64);
impl Handler for Count {
    fn on_datagram(&mut self, _cx: &mut Ctx, _sock: SocketId, msg: Datagram<'_>) {
        self.0 += u64::from(msg.len() == SIZE);
    }
}

/// Waits (at most 1 ms, like the reactor) until `sock` is readable. The raw
/// loops sleep on an empty queue as msgloop does: spinning on `recvmsg`
/// would fight the sender for the queue's lock and slow it down.
fn wait_readable(sock: &UdpSocket) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::from(1u8))?;
    Ok(())
}

/// Sends trains to `to` until `stop`.
fn spawn_gso_sender(
    to: SocketAddr,
    stop: Arc<AtomicBool>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.connect(to)?;
    Ok(std::thread::spawn(move || {
        let train = vec![0x5au8; SIZE * TRAIN];
        let seg = SIZE as u16;
        while !stop.load(Ordering::Relaxed) {
            let iov = [IoSlice::new(&train)];
            let cmsg = [ControlMessage::UdpGsoSegments(&seg)];
            match nixsock::sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None) {
                Ok(_) => {}
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::ENOBUFS) => {
                    std::thread::yield_now()
                }
                Err(e) => panic!("GSO sender: {e}"),
            }
        }
    }))
}

/// (msgloop, recvmmsg without GRO, hand-written GRO, ratio, ratio to GRO).
fn ingest_gro(slices: usize) -> io::Result<(f64, f64, f64, f64, f64)> {
    let side = SIDE.get().cloned().flatten();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())?;
    let to = sock.local_addr()?.as_socket().expect("inet");
    let raw: UdpSocket = sock.try_clone()?.into();
    let mut reactor = Reactor::new()?;
    let opts = DgramOptions::new().recv_buffer_size(4 << 20).offload(true);
    reactor.add_udp_with(sock, &opts)?; // non-blocking, GRO on (shared)
                                        // Receive offload on or off for the next slice; what was queued under
                                        // the other setting is read and discarded first, so that no side
                                        // inherits the other's packets.
    let gro = |on: bool| -> io::Result<()> {
        nixsock::setsockopt(&raw, sockopt::UdpGroSegment, &on).map_err(io::Error::from)?;
        let mut sink = [0u8; 65536];
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(20) {
            match raw.recv(&mut sink) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    let mut count = Count(0);
    let mut storage = vec![[0u8; 2048]; 32];
    let mut meta = vec![msgloop::batch::RecvMeta::default(); 32];
    let mut big = vec![0u8; 65536];

    let stop = Arc::new(AtomicBool::new(false));
    let sender = spawn_gso_sender(to, stop.clone())?;
    let mut ours = |window: Duration| -> io::Result<f64> {
        gro(true)?;
        count.0 = 0;
        let start = Instant::now();
        while start.elapsed() < window {
            reactor.run_once(&mut count, Some(Duration::from_millis(1)))?;
        }
        Ok(count.0 as f64 / start.elapsed().as_secs_f64())
    };
    let mut recvmmsg = |window: Duration| -> io::Result<f64> {
        gro(false)?;
        let (start, mut n) = (Instant::now(), 0u64);
        let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|b| &mut b[..]).collect();
        while start.elapsed() < window {
            match msgloop::batch::recv_batch(&raw, &mut bufs, &mut meta) {
                Ok(got) => n += got as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_readable(&raw)?,
                Err(e) => return Err(e),
            }
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    };
    let mut gro_recvmsg = |window: Duration| -> io::Result<f64> {
        gro(true)?;
        let (start, mut n) = (Instant::now(), 0u64);
        let mut cmsg = nix::cmsg_space!(i32);
        while start.elapsed() < window {
            let mut iov = [IoSliceMut::new(&mut big)];
            match nixsock::recvmsg::<()>(
                raw.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(m) => {
                    let seg = m.cmsgs().ok().and_then(|mut c| {
                        c.find_map(|c| match c {
                            ControlMessageOwned::UdpGroSegments(s) => Some(s as usize),
                            _ => None,
                        })
                    });
                    n += match seg {
                        Some(s) if s > 0 => m.bytes.div_ceil(s) as u64,
                        _ => 1,
                    };
                }
                Err(nix::errno::Errno::EAGAIN) => wait_readable(&raw)?,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    };
    let (mut a, mut b, mut c, mut r, mut rc) = (vec![], vec![], vec![], vec![], vec![]);
    let result = (|| -> io::Result<()> {
        ours(WINDOW)?;
        recvmmsg(WINDOW)?;
        gro_recvmsg(WINDOW)?;
        for _ in 0..slices {
            let ra = if side.as_deref() != Some("baseline") {
                ours(WINDOW)?
            } else {
                f64::NAN
            };
            let rb = if side.as_deref() != Some("msgloop") {
                recvmmsg(WINDOW)?
            } else {
                f64::NAN
            };
            let rg = if side.is_none() {
                gro_recvmsg(WINDOW)?
            } else {
                f64::NAN
            };
            a.push(ra);
            b.push(rb);
            c.push(rg);
            r.push(ra / rb);
            rc.push(ra / rg);
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    sender
        .join()
        .map_err(|_| io::Error::other("sender panicked"))?;
    result?;
    Ok((median(a), median(b), median(c), median(r), median(rc)))
}

/// (msgloop, sendmmsg, hand-written GSO, ratio, ratio to GSO).
fn send_gso(slices: usize) -> io::Result<(f64, f64, f64, f64, f64)> {
    let side = SIDE.get().cloned().flatten();
    // A receiver that drains nothing: loopback drops what does not fit,
    // and sending never blocks.
    let sink = UdpSocket::bind("127.0.0.1:0")?;
    let to = sink.local_addr()?;
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())?;
    let raw: UdpSocket = sock.try_clone()?.into();
    let mut reactor = Reactor::new()?;
    let opts = DgramOptions::new().send_buffer_size(4 << 20).offload(true);
    let id = reactor.add_udp_with(sock, &opts)?;
    let payload = vec![0x5au8; SIZE];
    let train = vec![0x5au8; SIZE * TRAIN];
    let dest = socket2::SockAddr::from(to);
    let batch: Vec<Transmit<'_>> = (0..256).map(|_| Transmit::new(&payload, to)).collect();

    let mut ours = |window: Duration| -> io::Result<f64> {
        let (start, mut n) = (Instant::now(), 0u64);
        while start.elapsed() < window {
            match reactor.send_batch(id, &batch) {
                Ok(k) => n += k as u64,
                Err(msgloop::Error::WouldBlock) => std::thread::yield_now(),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    };
    let singles: Vec<&[u8]> = (0..64).map(|_| &payload[..]).collect();
    let sendmmsg = |window: Duration| -> io::Result<f64> {
        let (start, mut n) = (Instant::now(), 0u64);
        while start.elapsed() < window {
            match msgloop::batch::send_batch(&raw, &singles, Some(&dest)) {
                Ok(k) => n += k as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => return Err(e),
            }
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    };
    let addr = nixsock::SockaddrIn::from(match to {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => unreachable!("bound to 127.0.0.1"),
    });
    let gso_sendmsg = |window: Duration| -> io::Result<f64> {
        let (start, mut n) = (Instant::now(), 0u64);
        let seg = SIZE as u16;
        while start.elapsed() < window {
            let iov = [IoSlice::new(&train)];
            let cmsg = [ControlMessage::UdpGsoSegments(&seg)];
            match nixsock::sendmsg(raw.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), Some(&addr)) {
                Ok(_) => n += TRAIN as u64,
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::ENOBUFS) => {
                    std::thread::yield_now()
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    };
    let (mut a, mut b, mut c, mut r, mut rc) = (vec![], vec![], vec![], vec![], vec![]);
    ours(WINDOW)?;
    sendmmsg(WINDOW)?;
    gso_sendmsg(WINDOW)?;
    for _ in 0..slices {
        let ra = if side.as_deref() != Some("baseline") {
            ours(WINDOW)?
        } else {
            f64::NAN
        };
        let rb = if side.as_deref() != Some("msgloop") {
            sendmmsg(WINDOW)?
        } else {
            f64::NAN
        };
        let rg = if side.is_none() {
            gso_sendmsg(WINDOW)?
        } else {
            f64::NAN
        };
        a.push(ra);
        b.push(rb);
        c.push(rg);
        r.push(ra / rb);
        rc.push(ra / rg);
    }
    drop(sink);
    Ok((median(a), median(b), median(c), median(r), median(rc)))
}
