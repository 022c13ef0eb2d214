//! File descriptors to pass, and a full fd table: for the fd-passing tests
//! (seqpacket, Unix datagram) and the out-of-fds tests.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

use msgloop::UCred;

/// This process's credentials, as a peer sees them.
pub fn own_ucred() -> UCred {
    // SAFETY: these calls cannot fail.
    unsafe {
        UCred {
            pid: libc::getpid(),
            uid: libc::getuid(),
            gid: libc::getgid(),
        }
    }
}

/// An unlinked temporary file: its own inode, unlike `/dev/null`.
pub fn tempfile() -> File {
    let path = super::temp_path("file");
    let f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f
}

/// `n` files open on `/dev/null`.
pub fn dev_null(n: usize) -> Vec<File> {
    (0..n)
        .map(|_| File::open("/dev/null").expect("open /dev/null"))
        .collect()
}

/// The fds of `files`, to pass.
pub fn borrowed(files: &[File]) -> Vec<BorrowedFd<'_>> {
    files.iter().map(|f| f.as_fd()).collect()
}

/// `(st_dev, st_ino)` of the file `fd` refers to.
pub fn file_id(fd: BorrowedFd<'_>) -> (u64, u64) {
    let md = File::from(fd.try_clone_to_owned().unwrap())
        .metadata()
        .unwrap();
    (md.dev(), md.ino())
}

/// The numbers of this process's open fds (without the one the listing
/// itself used).
pub fn fd_numbers() -> BTreeSet<RawFd> {
    let listed: BTreeSet<RawFd> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    listed
        .into_iter()
        // SAFETY: F_GETFD only reads flags; a closed number gives EBADF.
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1)
        .collect()
}

/// Lowers `RLIMIT_NOFILE` and fills every free fd below it, leaving exactly
/// `free` slots; restores the limit (and closes the fillers) when dropped.
pub struct FdLimit {
    old: libc::rlimit,
    fillers: Vec<OwnedFd>,
}

impl FdLimit {
    /// With `free` 0, the next call that creates an fd (`accept`, a
    /// received fd) fails with `EMFILE`.
    pub fn leave_free(free: usize) -> FdLimit {
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a live rlimit out-parameter.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
        let max_fd = *fd_numbers().iter().max().unwrap() as usize;
        let src = File::open("/dev/null").unwrap();
        let new = libc::rlimit {
            rlim_cur: (max_fd + 1 + free + 8) as libc::rlim_t,
            rlim_max: old.rlim_max,
        };
        // SAFETY: a live rlimit.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) }, 0);
        let mut guard = FdLimit {
            old,
            fillers: Vec::new(),
        };
        for _ in 0..100_000 {
            // SAFETY: dup of a live fd; the result is owned here.
            let fd = unsafe { libc::dup(src.as_raw_fd()) };
            if fd == -1 {
                let e = std::io::Error::last_os_error();
                assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                break;
            }
            // SAFETY: `fd` was just returned by dup; nobody else owns it.
            guard.fillers.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        drop(src);
        // `src` freed one slot; close fillers until `free` are free.
        assert!(guard.fillers.len() >= free);
        for _ in 1..free {
            guard.fillers.pop();
        }
        if free == 0 {
            // SAFETY: as above.
            let fd = unsafe { libc::dup(guard.fillers[0].as_raw_fd()) };
            assert!(fd >= 0);
            // SAFETY: as above.
            guard.fillers.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        guard
    }
}

impl Drop for FdLimit {
    fn drop(&mut self) {
        self.fillers.clear();
        // SAFETY: a live rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.old) };
    }
}

/// Whether `path` names a socket file (not following a symlink).
pub fn is_socket_file(path: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// Bytes a TCP socket has sent or queued that its peer has not yet
/// acknowledged (`SIOCOUTQ`).
#[allow(dead_code)]
pub fn unacked_bytes(s: &impl AsRawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: `SIOCOUTQ` writes one int through the pointer, which is valid.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    assert_eq!(rc, 0, "SIOCOUTQ: {}", std::io::Error::last_os_error());
    n.max(0) as usize
}
