//! Helpers shared by the socket integration tests.
//!
//! Every socket test starts with
//!
//! ```ignore
//! let _t = util::guard();
//! ```
//!
//! which holds the binary's test lock ([`serial`]) and checks that the
//! process's open-fd count is the same when the test ends ([`FdCheck`]).
//! Tests of one binary run on parallel threads, so the open-fd count is
//! only meaningful while fd-checked tests run one at a time. A test that
//! needs only one of the two takes it alone: [`serial`] for a test that
//! counts fds itself or runs in a network namespace ([`netns`]),
//! [`FdCheck`] for a check around part of a test.
//!
//! A test that cannot run here (a missing tool, no permission, no IPv6
//! loopback) says so with [`skip`] or [`require`]: never silently, and
//! never under `CI=true`, where it fails instead.
#![allow(dead_code)]

use std::fmt::Display;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use msgloop::{Handler, Reactor};

pub mod alloc;
pub mod conn;
pub mod fds;
pub mod measure;
pub mod netns;

/// The number of open file descriptors of this process, not counting
/// files under `/proc`.
///
/// The directory handle of the listing itself shows up in it (on every
/// call, so counts would compare equal anyway). And glibc's malloc reads
/// `/proc/sys/vm/overcommit_memory` once, the first time it shrinks a
/// thread's heap — which can happen on another test's thread as it exits,
/// just as this one counts: an fd that is neither ours nor a leak.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| !target.starts_with("/proc"))
        .count()
}

/// Records the open-fd count when created; asserts it is unchanged when
/// dropped (unless the test is already failing).
#[derive(Debug)]
pub struct FdCheck {
    before: usize,
}

impl FdCheck {
    pub fn new() -> FdCheck {
        FdCheck { before: open_fds() }
    }
}

impl Drop for FdCheck {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let after = open_fds();
        assert_eq!(
            self.before, after,
            "open fds before the test: {}, after: {} (leak or double close)",
            self.before, after
        );
    }
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Serializes the tests of one binary (a failed test does not poison it).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// What [`guard`] returns: the test lock and the fd check, for the whole
/// test.
#[derive(Debug)]
#[must_use = "the guard checks and unlocks when dropped: bind it (`let _t = ...`)"]
pub struct Guard {
    // Fields drop in declaration order: the fd count is checked while the
    // lock is still held, before another test can open or close fds.
    _fds: FdCheck,
    _serial: MutexGuard<'static, ()>,
}

/// The opening of every socket test: takes the binary's test lock
/// ([`serial`]), then records the open-fd count ([`FdCheck`]); when the
/// returned guard is dropped, the count is checked first and the lock
/// released after.
pub fn guard() -> Guard {
    let serial = serial();
    Guard {
        _fds: FdCheck::new(),
        _serial: serial,
    }
}

/// Whether tests run under CI (`CI=true`), where `.ci/run` installs what
/// they need and a test that cannot run is a failure.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Reports that `test_name` (or a part of it) cannot run here because of
/// `reason`; the caller then returns (or leaves out the part).
///
/// Under `CI=true` it panics instead: in CI a skipped test is a failed
/// test. Otherwise it writes `SKIPPED <test_name>: <reason>` straight to
/// the process's stderr — not with `eprintln!`, whose output the test
/// harness captures and, for a passing test, never shows.
pub fn skip(test_name: &str, reason: impl Display) {
    assert!(
        !ci(),
        "CI=true: {test_name} cannot run here ({reason}); in CI a skip is a failure"
    );
    let line = format!("SKIPPED {test_name}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// `ok`, or else [`skip`]`(test_name, reason)` and `false`:
///
/// ```ignore
/// if !util::require(python3_found, "my_test", "python3 is not installed") {
///     return;
/// }
/// ```
pub fn require(ok: bool, test_name: &str, reason: impl Display) -> bool {
    if !ok {
        skip(test_name, reason);
    }
    ok
}

static PATH_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh socket path in the temp directory, unique per process and call;
/// nothing exists there yet.
pub fn temp_path(name: &str) -> PathBuf {
    let n = PATH_SEQ.fetch_add(1, Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!("msgloop-{}-{n}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// Removes the file at `path` when dropped (for paths the test binds itself).
#[derive(Debug)]
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn set_int_opt(fd: i32, opt: libc::c_int, val: usize) -> std::io::Result<()> {
    let v: libc::c_int = val.min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: `v` is a live c_int and its exact size is passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn get_int_opt(fd: i32, opt: libc::c_int) -> usize {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are live and `len` is `v`'s size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "getsockopt: {}", std::io::Error::last_os_error());
    v as usize
}

/// Sets `SO_RCVBUF` to `bytes`, forcing it past `net.core.rmem_max` with
/// `SO_RCVBUFFORCE` (the tests run as root). Returns the size the kernel
/// reports afterwards (Linux doubles the request for bookkeeping).
pub fn force_rcvbuf<S: AsRawFd>(socket: &S, bytes: usize) -> usize {
    let fd = socket.as_raw_fd();
    set_int_opt(fd, libc::SO_RCVBUF, bytes).expect("SO_RCVBUF");
    if get_int_opt(fd, libc::SO_RCVBUF) < bytes {
        if let Err(e) = set_int_opt(fd, libc::SO_RCVBUFFORCE, bytes) {
            eprintln!("SO_RCVBUFFORCE {bytes}: {e}");
        }
    }
    rcvbuf(socket)
}

/// Sets `SO_SNDBUF`, forcing it past `net.core.wmem_max` if needed.
pub fn force_sndbuf<S: AsRawFd>(socket: &S, bytes: usize) -> usize {
    let fd = socket.as_raw_fd();
    set_int_opt(fd, libc::SO_SNDBUF, bytes).expect("SO_SNDBUF");
    if get_int_opt(fd, libc::SO_SNDBUF) < bytes {
        if let Err(e) = set_int_opt(fd, libc::SO_SNDBUFFORCE, bytes) {
            eprintln!("SO_SNDBUFFORCE {bytes}: {e}");
        }
    }
    get_int_opt(fd, libc::SO_SNDBUF)
}

/// The socket's `SO_RCVBUF` as the kernel reports it.
pub fn rcvbuf<S: AsRawFd>(socket: &S) -> usize {
    get_int_opt(socket.as_raw_fd(), libc::SO_RCVBUF)
}

/// `SO_RCVBUF` of a raw fd.
pub fn rcvbuf_fd(fd: i32) -> usize {
    get_int_opt(fd, libc::SO_RCVBUF)
}

/// Polls `fd` for `events` with `libc::poll`; `true` if any were reported
/// within `timeout`.
pub fn poll_fd(fd: i32, events: libc::c_short, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    loop {
        // SAFETY: one live pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r == -1 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            panic!("poll: {e}");
        }
        return r > 0 && p.revents & events != 0;
    }
}

/// The per-call timeout `run_until` uses.
pub const STEP: Duration = Duration::from_millis(50);

/// Calls `run_once(handler, Some(STEP))` until `cond` holds, at most
/// `max_iters` times; fails the test (rather than hanging) if it never does.
/// `cond` is checked before the first call too. Returns the number of
/// `run_once` calls made.
pub fn run_until<H: Handler>(
    reactor: &mut Reactor,
    handler: &mut H,
    mut cond: impl FnMut(&mut Reactor, &mut H) -> bool,
    max_iters: usize,
) -> usize {
    for i in 0..max_iters {
        if cond(reactor, handler) {
            return i;
        }
        reactor
            .run_once(handler, Some(STEP))
            .expect("run_once failed");
    }
    if cond(reactor, handler) {
        return max_iters;
    }
    panic!(
        "condition not reached after {max_iters} run_once calls ({:?} each)",
        STEP
    );
}

/// A payload of `len` bytes whose content depends on `seed` and position,
/// so a shifted, cut or mixed-up message is detected.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(31)
                .wrapping_add(u32::from(seed) * 7 + (i as u32 >> 8)) as u8
        })
        .collect()
}

/// One thing a [`Recorder`] saw, in order.
pub enum Event {
    Datagram {
        sock: msgloop::SocketId,
        data: Vec<u8>,
        from: msgloop::PeerAddr,
    },
    Error {
        sock: msgloop::SocketId,
        error: msgloop::Error,
    },
    Writable(msgloop::SocketId),
    Close {
        sock: msgloop::SocketId,
        local: bool,
    },
    Timer(msgloop::TimerId),
    Wake,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Datagram { sock, data, from } => write!(
                f,
                "Datagram({sock:?}, {} B {:?}.., from {from})",
                data.len(),
                &data[..data.len().min(8)]
            ),
            Event::Error { sock, error } => write!(f, "Error({sock:?}, {error:?})"),
            Event::Writable(s) => write!(f, "Writable({s:?})"),
            Event::Close { sock, local } => write!(f, "Close({sock:?}, local: {local})"),
            Event::Timer(t) => write!(f, "Timer({t:?})"),
            Event::Wake => f.write_str("Wake"),
        }
    }
}

/// A handler that records every callback and, with `echo`, sends each
/// datagram back to its sender (send errors are recorded too).
#[derive(Debug, Default)]
pub struct Recorder {
    pub echo: bool,
    pub events: Vec<Event>,
    pub echo_errors: Vec<msgloop::Error>,
}

impl Recorder {
    pub fn echo() -> Recorder {
        Recorder {
            echo: true,
            ..Recorder::default()
        }
    }

    /// The datagrams received on `sock`, in order.
    pub fn datagrams(&self, sock: msgloop::SocketId) -> Vec<&[u8]> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Datagram { sock: s, data, .. } if *s == sock => Some(&data[..]),
                _ => None,
            })
            .collect()
    }

    /// How many datagrams were received, on any socket.
    pub fn datagram_count(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::Datagram { .. }))
            .count()
    }

    /// The errors reported to `on_error`.
    pub fn errors(&self) -> Vec<(msgloop::SocketId, &msgloop::Error)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Error { sock, error } => Some((*sock, error)),
                _ => None,
            })
            .collect()
    }

    pub fn writable_count(&self, sock: msgloop::SocketId) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::Writable(s) if *s == sock))
            .count()
    }

    pub fn close_count(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::Close { .. }))
            .count()
    }
}

impl Handler for Recorder {
    fn on_datagram(
        &mut self,
        cx: &mut msgloop::Ctx,
        sock: msgloop::SocketId,
        msg: msgloop::Datagram<'_>,
    ) {
        if self.echo {
            if let Err(e) = cx.send_to(sock, msg.data(), msg.from()) {
                self.echo_errors.push(e);
            }
        }
        self.events.push(Event::Datagram {
            sock,
            data: msg.data().to_vec(),
            from: msg.from().clone(),
        });
    }

    fn on_error(&mut self, _cx: &mut msgloop::Ctx, sock: msgloop::SocketId, error: msgloop::Error) {
        self.events.push(Event::Error { sock, error });
    }

    fn on_writable(&mut self, _cx: &mut msgloop::Ctx, sock: msgloop::SocketId) {
        self.events.push(Event::Writable(sock));
    }

    fn on_close(
        &mut self,
        _cx: &mut msgloop::Ctx,
        sock: msgloop::SocketId,
        reason: msgloop::CloseReason,
    ) {
        self.events.push(Event::Close {
            sock,
            local: matches!(reason, msgloop::CloseReason::Local),
        });
    }

    fn on_timer(&mut self, _cx: &mut msgloop::Ctx, timer: msgloop::TimerId) {
        self.events.push(Event::Timer(timer));
    }

    fn on_wake(&mut self, _cx: &mut msgloop::Ctx) {
        self.events.push(Event::Wake);
    }
}

/// `DgramOptions` with some fields changed (the struct is `#[non_exhaustive]`:
/// no struct literal outside the crate).
pub fn opts(f: impl FnOnce(&mut msgloop::DgramOptions)) -> msgloop::DgramOptions {
    let mut o = msgloop::DgramOptions::default();
    f(&mut o);
    o
}

/// `Config` with some fields changed (`#[non_exhaustive]` too).
pub fn config(f: impl FnOnce(&mut msgloop::Config)) -> msgloop::Config {
    let mut c = msgloop::Config::default();
    f(&mut c);
    c
}

/// Whether this kernel has UDP segmentation and receive offload (Linux
/// 4.18 and 5.0); without them the reactor sends and reads single
/// datagrams, and only delivery can be checked: the train counts of
/// `test_name` are [`skip`]ped.
pub fn kernel_has_offload(test_name: &str) -> bool {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let ok = getsockopt(&s, sockopt::UdpGsoSegment).is_ok()
        && setsockopt(&s, sockopt::UdpGroSegment, &true).is_ok();
    require(
        ok,
        test_name,
        "this kernel has no UDP GSO/GRO: train counts not checked (delivery was)",
    )
}

/// Whether the IPv6 loopback `[::1]` can be bound here; if not, [`skip`]s
/// `test_name`.
pub fn ipv6_loopback(test_name: &str) -> bool {
    match std::net::UdpSocket::bind("[::1]:0") {
        Ok(_) => true,
        Err(e) => {
            skip(
                test_name,
                format_args!("no IPv6 loopback: cannot bind [::1]:0: {e}"),
            );
            false
        }
    }
}

/// A UDP socket bound on `ip` (`"127.0.0.1"`, `"[::1]"`), port chosen by
/// the kernel, whose blocking reads give up after 5 s.
pub fn udp_client(ip: &str) -> std::net::UdpSocket {
    let c = std::net::UdpSocket::bind(format!("{ip}:0")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c
}
