//! Unix socket files: the one rule for removing what msgloop created, and
//! for clearing a stale file before binding.
//!
//! - A socket file msgloop creates by binding is removed when the socket
//!   closes — if the path still names the very file it created (same
//!   device and inode), so a file another process bound since is left
//!   alone. Opting out: `unlink_on_close(false)`.
//! - Binding never removes an existing file, unless asked to remove a
//!   *stale* one: a socket file nobody is bound to any more.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::error::context;

/// A socket file this process created; removed on drop if unchanged.
#[derive(Debug)]
pub(crate) struct SocketFile {
    /// `None` once [`keep`](SocketFile::keep) disarmed it.
    path: Option<PathBuf>,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// Remembers the file now at `path` (just bound).
    pub(crate) fn capture(path: &Path) -> Option<SocketFile> {
        let md = std::fs::symlink_metadata(path).ok()?;
        Some(SocketFile {
            path: Some(path.to_path_buf()),
            dev: md.dev(),
            ino: md.ino(),
        })
    }

    /// Leaves the file in place (its socket lives on elsewhere).
    pub(crate) fn keep(mut self) {
        self.path = None;
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let Some(path) = self.path.take() else {
            return;
        };
        if let Ok(md) = fs::symlink_metadata(&path) {
            if md.dev() == self.dev && md.ino() == self.ino {
                if let Err(e) = fs::remove_file(&path) {
                    log::warn!("removing {}: {e}", path.display());
                }
            }
        }
    }
}

/// Removes `path` if it is a socket file nothing is bound to any more (the
/// leftover of a process that exited without removing it), so that a new
/// socket can bind there. Never removes a live socket's file, of any type,
/// nor anything that is not a socket.
///
/// | at `path` | probe `connect` (datagram socket) | result |
/// | --- | --- | --- |
/// | nothing | — | `Ok(())`, nothing to do |
/// | not a socket (file, directory, symlink, fifo…) | — | `AlreadyExists` "… exists and is not a socket", kept |
/// | socket file, nothing bound | `ECONNREFUSED` | removed, `Ok(())` |
/// | live datagram socket | succeeds | `AddrInUse` "… is in use by a live socket", kept |
/// | live datagram socket connected to another | `EPERM` | `AddrInUse`, kept |
/// | live stream or seqpacket socket (listening or only bound) | `EPROTOTYPE` | `AddrInUse`, kept |
/// | socket file gone since it was inspected | `ENOENT` | `Ok(())` |
/// | anything else (`EACCES`: no write permission on the file, …) | other | that error's kind, naming the path, kept |
///
/// The probe is a **datagram** socket whatever the type of the socket to be
/// bound. Linux looks the socket up by the file's inode first: with nothing
/// bound there, every socket type gets `ECONNREFUSED`; with a socket of
/// another type bound there, `EPROTOTYPE`, before any connection is made.
/// So a datagram probe tells stale from live for every type without side
/// effects, where a probe of the listener's own type would not:
///
/// - a stream or seqpacket probe reaching a live listener *connects* to it,
///   leaving a spurious connection in its accept queue;
/// - a stream or seqpacket socket that is bound but not yet listening
///   refuses a probe of its own type with `ECONNREFUSED`, exactly like a
///   stale file — its file would be removed under it;
/// - a full backlog answers `EAGAIN`, one more case to read as "live".
///
/// A datagram probe reaching a live datagram socket connects only the probe
/// (the target sees nothing); one reaching a datagram socket connected to a
/// third socket is refused with `EPERM`, which also means "live".
///
/// Inspection, probe and removal are separate steps. The file is removed
/// only if it is still the one probed (same device and inode), but a process
/// that replaces it between that check and the removal loses its file:
/// processes that may bind the same path at the same time must coordinate
/// (a lock file) whatever this function does.
pub(crate) fn remove_stale(path: &Path) -> io::Result<()> {
    let inspected = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(context(e, format_args!("inspecting {}", path.display()))),
    };
    if !inspected.file_type().is_socket() {
        return Err(not_a_socket(path));
    }
    match probe(path).map_err(|e| context(e, format_args!("probing {}", path.display())))? {
        Probe::Live => return Err(in_use(path)),
        Probe::Gone => return Ok(()),
        Probe::Stale => {}
    }
    match fs::symlink_metadata(path) {
        Ok(m) if (m.dev(), m.ino()) == (inspected.dev(), inspected.ino()) => {}
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{} was replaced while it was probed: not removing it",
                    path.display()
                ),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(context(e, format_args!("inspecting {}", path.display()))),
    }
    match fs::remove_file(path) {
        Ok(()) => {
            log::debug!("removed stale socket file {}", path.display());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(context(
            e,
            format_args!("removing stale socket file {}", path.display()),
        )),
    }
}

/// What a probe `connect` found at a socket file.
enum Probe {
    /// Nothing is bound to it.
    Stale,
    /// A socket of some type is bound to it.
    Live,
    /// The file is gone.
    Gone,
}

/// Connects a datagram socket to `path`; see [`remove_stale`].
fn probe(path: &Path) -> io::Result<Probe> {
    let addr = SockAddr::unix(path)?;
    let probe = Socket::new(Domain::UNIX, Type::DGRAM.nonblocking().cloexec(), None)?;
    match probe.connect(&addr) {
        Ok(()) => Ok(Probe::Live),
        Err(e) => match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => Ok(Probe::Stale),
            Some(libc::EPROTOTYPE) | Some(libc::EPERM) => Ok(Probe::Live),
            Some(libc::ENOENT) => Ok(Probe::Gone),
            _ => Err(e),
        },
    }
}

fn in_use(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::AddrInUse,
        format!(
            "{} is in use by a live socket: not removing it",
            path.display()
        ),
    )
}

fn not_a_socket(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "{} exists and is not a socket: not removing it",
            path.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixDatagram, UnixListener};
    use std::path::PathBuf;

    use crate::net::{UnixSeqpacket, UnixSeqpacketListener};

    /// A fresh path in the temporary directory, removed on drop.
    struct TempPath(PathBuf);

    impl TempPath {
        fn new(tag: &str) -> TempPath {
            let name = format!("msgloop-unix-path-{}-{tag}", std::process::id());
            let p = std::env::temp_dir().join(name);
            let _ = fs::remove_file(&p);
            TempPath(p)
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }

    fn assert_in_use(path: &Path) {
        let e = remove_stale(path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
        assert!(e.to_string().contains("live socket"), "{e}");
        let kind = fs::symlink_metadata(path).unwrap().file_type();
        assert!(kind.is_socket(), "{} was touched", path.display());
    }

    #[test]
    fn nothing_there_is_nothing_to_do() {
        let p = TempPath::new("absent");
        remove_stale(&p.0).unwrap();
        assert!(!p.0.exists());
    }

    #[test]
    fn stale_files_of_every_type_are_removed() {
        for ty in [Type::SEQPACKET, Type::STREAM, Type::DGRAM] {
            let p = TempPath::new("stale");
            let s = Socket::new(Domain::UNIX, ty, None).unwrap();
            s.bind(&SockAddr::unix(&p.0).unwrap()).unwrap();
            drop(s);
            assert!(fs::symlink_metadata(&p.0).unwrap().file_type().is_socket());
            remove_stale(&p.0).unwrap();
            assert!(!p.0.exists(), "{ty:?}: stale file kept");
        }
    }

    #[test]
    fn live_sockets_of_every_type_are_kept() {
        // Seqpacket: listening, and only bound (a same-type probe would see
        // that as stale); the probe leaves nothing in the accept queue.
        let p = TempPath::new("live-seq");
        let listener = UnixSeqpacketListener::bind(&p.0).unwrap();
        assert_in_use(&p.0);
        let e = listener.accept().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "the probe connected");
        drop(listener);

        let p = TempPath::new("bound-seq");
        let bound = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        bound.bind(&SockAddr::unix(&p.0).unwrap()).unwrap();
        assert_in_use(&p.0);
        bound.listen(1).unwrap();
        UnixSeqpacket::connect(&p.0).unwrap();

        // Stream: listening, and only bound.
        let p = TempPath::new("live-stream");
        let listener = UnixListener::bind(&p.0).unwrap();
        listener.set_nonblocking(true).unwrap();
        assert_in_use(&p.0);
        let e = listener.accept().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "the probe connected");
        drop(listener);

        let p = TempPath::new("bound-stream");
        let bound = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        bound.bind(&SockAddr::unix(&p.0).unwrap()).unwrap();
        assert_in_use(&p.0);

        // Datagram: unconnected, and connected to a third socket (EPERM).
        let p = TempPath::new("live-dgram");
        let dgram = UnixDatagram::bind(&p.0).unwrap();
        assert_in_use(&p.0);
        let q = TempPath::new("live-dgram-peer");
        let peer = UnixDatagram::bind(&q.0).unwrap();
        dgram.connect(&q.0).unwrap();
        assert_in_use(&p.0);
        // It still receives.
        peer.send_to(b"still here", &p.0).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(dgram.recv(&mut buf).unwrap(), 10);
    }

    #[test]
    fn what_is_not_a_socket_is_kept() {
        let p = TempPath::new("regular");
        fs::write(&p.0, b"precious").unwrap();
        let e = remove_stale(&p.0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert!(e.to_string().contains(&*p.0.to_string_lossy()), "{e}");
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(fs::read(&p.0).unwrap(), b"precious");

        // A symlink to a stale socket file: neither is removed.
        let target = TempPath::new("link-target");
        let s = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        s.bind(&SockAddr::unix(&target.0).unwrap()).unwrap();
        drop(s);
        let link = TempPath::new("link");
        std::os::unix::fs::symlink(&target.0, &link.0).unwrap();
        let e = remove_stale(&link.0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert!(fs::symlink_metadata(&link.0).unwrap().is_symlink());
        assert!(fs::symlink_metadata(&target.0)
            .unwrap()
            .file_type()
            .is_socket());
    }
}
