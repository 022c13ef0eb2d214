//! Unix seqpacket workloads.
//!
//! - `seqpacket_pingpong`: 64 B round trips over a seqpacket pair, both ends
//!   in one reactor. Baseline: the same pair (`UnixSeqpacket::pair`) in a
//!   plain `mio::Poll`, reading each message the way a hand-written server
//!   must to do the same job — `recvmsg` with room for credentials and
//!   descriptors (nix), end of stream told from an empty message by the
//!   missing credentials — until `WouldBlock`.
//! - `seqpacket_pingpong_plain_recv` (reported with it): the same loop with
//!   plain `recv`, which can neither receive descriptors nor tell an empty
//!   message from end of stream: what the kernel's ancillary path costs.
//! - `seqpacket_oneway`: 64 B messages/s from a blocking sender thread.
//!   Baseline: a raw blocking `recv` loop (again strictly less work).

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use msgloop::net::UnixSeqpacket;
use msgloop::{Ctx, Handler, Reactor, SeqpacketMessage, SocketId};
use socket2::Socket;

use super::{interleave, median, report, Side, PAYLOAD, SLICE_ROUND_TRIPS};

struct Ping {
    server: SocketId,
    client: SocketId,
    remaining: u64,
}

impl Handler for Ping {
    fn on_seqpacket(&mut self, cx: &mut Ctx, conn: SocketId, msg: SeqpacketMessage<'_>) {
        if conn == self.server {
            cx.send_seqpacket(conn, msg.data()).expect("echo");
        } else {
            self.remaining -= 1;
            if self.remaining > 0 {
                cx.send_seqpacket(self.client, &PAYLOAD).expect("ping");
            }
        }
    }
}

struct ReactorSide {
    reactor: Reactor,
    app: Ping,
}

impl Side for ReactorSide {
    fn run(&mut self, n: u64) -> io::Result<Duration> {
        let start = Instant::now();
        self.app.remaining = n;
        self.reactor.send_seqpacket(self.app.client, &PAYLOAD)?;
        while self.app.remaining > 0 {
            if self
                .reactor
                .run_once(&mut self.app, Some(Duration::from_secs(2)))?
                == 0
            {
                return Err(io::Error::other("seqpacket ping-pong stalled"));
            }
        }
        Ok(start.elapsed())
    }
}

struct MioSide {
    poll: Poll,
    events: Events,
    server: Socket,
    client: Socket,
    buf: Vec<u8>,
    /// `Some`: read with `recvmsg` into this control buffer; `None`: `recv`.
    control: Option<Vec<u8>>,
}

/// One non-blocking read: `Some(len)`, or `None` on `WouldBlock`.
fn recv_nb(s: &Socket, buf: &mut [u8], control: Option<&mut Vec<u8>>) -> io::Result<Option<usize>> {
    let res = match control {
        None => (&*s).read(buf),
        Some(control) => recv_ancillary(s, buf, control),
    };
    match res {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// What a hand-written seqpacket reader does per message to receive
/// descriptors and credentials and to tell end of stream from an empty
/// message (`SO_PASSCRED` is set on the pair): `recvmsg` with a control
/// buffer, then a walk over the control messages.
fn recv_ancillary(s: &Socket, buf: &mut [u8], control: &mut [u8]) -> io::Result<usize> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut iov = [io::IoSliceMut::new(buf)];
    let flags = MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT;
    let msg = recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(control), flags)?;
    let mut creds = false;
    for c in msg.cmsgs()? {
        match c {
            ControlMessageOwned::ScmCredentials(_) => creds = true,
            ControlMessageOwned::ScmRights(_) => {
                return Err(io::Error::other("baseline: no descriptors are sent"))
            }
            _ => {}
        }
    }
    if msg.bytes == 0 && !creds {
        return Err(io::Error::other("baseline: unexpected end of stream"));
    }
    Ok(msg.bytes)
}

impl Side for MioSide {
    fn run(&mut self, n: u64) -> io::Result<Duration> {
        let start = Instant::now();
        let mut remaining = n;
        self.client.send(&PAYLOAD)?;
        while remaining > 0 {
            self.poll
                .poll(&mut self.events, Some(Duration::from_secs(2)))?;
            if self.events.is_empty() {
                return Err(io::Error::other("baseline ping-pong stalled"));
            }
            for ev in self.events.iter() {
                if ev.token() == Token(0) {
                    while let Some(k) = recv_nb(&self.server, &mut self.buf, self.control.as_mut())?
                    {
                        self.server.send(&self.buf[..k])?;
                    }
                } else {
                    while recv_nb(&self.client, &mut self.buf, self.control.as_mut())?.is_some() {
                        remaining -= 1;
                        if remaining > 0 {
                            self.client.send(&PAYLOAD)?;
                        }
                    }
                }
            }
        }
        Ok(start.elapsed())
    }
}

/// "The same pair": msgloop's seqpacket pair (`SO_PASSCRED` set, as on
/// every msgloop seqpacket socket), driven with plain `recv`/`send`.
fn raw_pair() -> io::Result<(Socket, Socket)> {
    let (a, b) = UnixSeqpacket::pair()?;
    let a = Socket::from(std::os::fd::OwnedFd::from(a));
    let b = Socket::from(std::os::fd::OwnedFd::from(b));
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    Ok((a, b))
}

fn mio_side(control: Option<Vec<u8>>) -> io::Result<MioSide> {
    let (server, client) = raw_pair()?;
    let poll = Poll::new()?;
    poll.registry().register(
        &mut SourceFd(&server.as_raw_fd()),
        Token(0),
        Interest::READABLE,
    )?;
    poll.registry().register(
        &mut SourceFd(&client.as_raw_fd()),
        Token(1),
        Interest::READABLE,
    )?;
    Ok(MioSide {
        poll,
        events: Events::with_capacity(64),
        server,
        client,
        buf: vec![0; 65536],
        control,
    })
}

struct CountMessages(u64);

impl Handler for CountMessages {
    fn on_seqpacket(&mut self, _cx: &mut Ctx, _conn: SocketId, _msg: SeqpacketMessage<'_>) {
        self.0 += 1;
    }
}

const ONEWAY_MESSAGES: u64 = 200_000;

fn spawn_sender(s: UnixSeqpacket) -> std::thread::JoinHandle<io::Result<()>> {
    std::thread::spawn(move || {
        s.set_nonblocking(false)?;
        for _ in 0..ONEWAY_MESSAGES {
            s.send(&PAYLOAD)?;
        }
        Ok(())
    })
}

fn oneway_msgloop() -> io::Result<f64> {
    let (a, b) = UnixSeqpacket::pair()?;
    let mut r = Reactor::new()?;
    r.add_seqpacket(b)?;
    let mut app = CountMessages(0);
    let start = Instant::now();
    let sender = spawn_sender(a);
    let mut last = (0, Instant::now());
    while app.0 < ONEWAY_MESSAGES {
        r.run_once(&mut app, Some(Duration::from_millis(200)))?;
        if app.0 != last.0 {
            last = (app.0, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) {
            return Err(io::Error::other("seqpacket one-way stalled"));
        }
    }
    let rate = app.0 as f64 / start.elapsed().as_secs_f64();
    sender
        .join()
        .map_err(|_| io::Error::other("sender panicked"))??;
    Ok(rate)
}

fn oneway_raw() -> io::Result<f64> {
    let (a, b) = UnixSeqpacket::pair()?;
    let b = Socket::from(std::os::fd::OwnedFd::from(b));
    b.set_nonblocking(false)?;
    let mut buf = vec![0u8; 65536];
    let start = Instant::now();
    let sender = spawn_sender(a);
    let mut got = 0u64;
    while got < ONEWAY_MESSAGES {
        if (&b).read(&mut buf)? != PAYLOAD.len() {
            return Err(io::Error::other("raw reader: unexpected message size"));
        }
        got += 1;
    }
    let rate = got as f64 / start.elapsed().as_secs_f64();
    sender
        .join()
        .map_err(|_| io::Error::other("sender panicked"))??;
    Ok(rate)
}

pub(crate) fn run(rounds: usize, slices: usize, want: &dyn Fn(&str) -> bool) -> io::Result<()> {
    if want("seqpacket_pingpong") {
        let (a, b) = UnixSeqpacket::pair()?;
        let mut reactor = Reactor::new()?;
        let server = reactor.add_seqpacket(a)?;
        let client = reactor.add_seqpacket(b)?;
        let mut ours = ReactorSide {
            reactor,
            app: Ping {
                server,
                client,
                remaining: 0,
            },
        };
        // Room for credentials and the most descriptors Linux passes, as
        // msgloop has.
        let room = nix::cmsg_space!(libc::ucred, [std::os::fd::RawFd; msgloop::SCM_MAX_FD]);
        let mut base = mio_side(Some(room))?;
        let (a, b, r) = interleave(slices, SLICE_ROUND_TRIPS, &mut ours, &mut base)?;
        report(
            "seqpacket_pingpong",
            a,
            b,
            r,
            "round_trips/s",
            "mio_recvmsg",
            &format!("payload=64 slices={slices}x{SLICE_ROUND_TRIPS}"),
        );
        let mut plain = mio_side(None)?;
        let (a, b, r) = interleave(slices, SLICE_ROUND_TRIPS, &mut ours, &mut plain)?;
        report(
            "seqpacket_pingpong_plain_recv",
            a,
            b,
            r,
            "round_trips/s",
            "mio_recv",
            &format!("payload=64 slices={slices}x{SLICE_ROUND_TRIPS}"),
        );
    }
    if want("seqpacket_oneway") {
        let (mut va, mut vb, mut vr) = (vec![], vec![], vec![]);
        for _ in 0..rounds {
            let a = oneway_msgloop()?;
            let b = oneway_raw()?;
            va.push(a);
            vb.push(b);
            vr.push(a / b);
        }
        report(
            "seqpacket_oneway",
            median(va),
            median(vb),
            median(vr),
            "messages/s",
            "blocking_recv",
            &format!("payload=64 messages={ONEWAY_MESSAGES} rounds={rounds}"),
        );
    }
    Ok(())
}
