//! Unix socket files: the one rule for removing what msgloop created, and
//! for clearing a stale file before binding.
//!
//! - A socket file msgloop creates by binding is removed when the socket
//!   closes — if the path still names the very file it created (same
//!   device and inode), so a file another process bound since is left
//!   alone. Opting out: `unlink_on_close(false)`.
//! - Binding never removes an existing file, unless asked to remove a
//!   *stale* one: a socket file nobody is bound to any more.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A socket file this process created; removed on drop if unchanged.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// Remembers the file now at `path` (just bound).
    pub(crate) fn capture(path: &Path) -> Option<SocketFile> {
        let md = std::fs::symlink_metadata(path).ok()?;
        Some(SocketFile {
            path: path.to_path_buf(),
            dev: md.dev(),
            ino: md.ino(),
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(md) = std::fs::symlink_metadata(&self.path) {
            if md.dev() == self.dev && md.ino() == self.ino {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    log::warn!("removing {}: {e}", self.path.display());
                }
            }
        }
    }
}

/// Removes `path` if it is a socket file nobody is bound to any more: a
/// leftover of a process that exited without removing it. A live socket
/// there is never taken over (`AddrInUse`); anything that is not a socket
/// file is never removed (`AlreadyExists`); a missing path is fine.
pub(crate) fn remove_stale(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            if is_stale(path)? {
                std::fs::remove_file(path)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{} is in use by a live socket: not removing it",
                        path.display()
                    ),
                ))
            }
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket: not removing it",
                path.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// `true` when nothing is bound to the socket file at `path`: a probe
/// `connect` of each socket type is refused. A live socket of another type
/// answers `EPROTOTYPE`; a full backlog `EAGAIN` — someone is there.
fn is_stale(path: &Path) -> io::Result<bool> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let addr = SockAddr::unix(path)?;
    let probe = Socket::new(Domain::UNIX, Type::DGRAM.nonblocking().cloexec(), None)?;
    match probe.connect(&addr) {
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPROTOTYPE | libc::EAGAIN)) => Ok(false),
        Ok(()) => Ok(false),
        Err(e) => Err(e),
    }
}
