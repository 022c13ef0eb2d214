//! Anonymous network namespaces held by a file descriptor.
//!
//! A [`Netns`] is made by a short-lived thread that calls `unshare(2)` with
//! `CLONE_NEWNET` (which moves only that thread) and opens
//! `/proc/thread-self/ns/net`; the open file is what keeps the namespace
//! alive once the thread is gone. Nothing is mounted under `/run/netns` and
//! no name is registered anywhere, so nothing can be left behind: the
//! kernel destroys the namespace — and the TUN devices and routes in it —
//! when the last reference goes, which is when the [`Netns`] is dropped (or
//! the process dies, even by `SIGKILL`), provided no socket made in it and
//! no thread that entered it is still alive.
//!
//! Code runs "in" a namespace on a thread that `setns(2)`'d into it:
//! [`Netns::enter`] (a scoped thread, for making sockets — a socket keeps
//! the namespace it was created in, whichever thread uses it later),
//! [`Netns::spawn`] (a thread that lives there) and [`Netns::command`] (a
//! child process, which inherits the namespace of the thread that spawned
//! it).

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output};
use std::thread::JoinHandle;

use nix::sched::{setns, unshare, CloneFlags};

/// A network namespace of its own, destroyed when dropped (see the module
/// documentation for what else can keep it alive).
#[derive(Debug)]
pub struct Netns {
    file: File,
    label: String,
    inode: u64,
}

impl Netns {
    /// Creates an empty network namespace (only `lo`, down). `label` is a
    /// name for messages and thread names, nothing more.
    ///
    /// Needs `CAP_SYS_ADMIN` (root); fails with `EPERM` otherwise.
    pub fn new(label: &str) -> io::Result<Netns> {
        let file = std::thread::Builder::new()
            .name(format!("netns-new-{label}"))
            .spawn(|| -> io::Result<File> {
                unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                File::open("/proc/thread-self/ns/net")
            })?
            .join()
            .map_err(|_| io::Error::other("the unshare thread panicked"))??;
        let inode = file.metadata()?.ino();
        Ok(Netns {
            file,
            label: label.to_string(),
            inode,
        })
    }

    /// The label given to [`Netns::new`].
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The namespace's inode number: the `N` of `net:[N]` in
    /// `/proc/*/ns/net` links, which identifies it (see
    /// [`held_by_this_process`]).
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Runs `f` on a new thread that joined this namespace, and returns its
    /// result; a panic in `f` is resumed on the caller's thread. Sockets
    /// `f` creates belong to this namespace for good.
    ///
    /// Panics if `setns(2)` fails (it cannot, once [`Netns::new`]
    /// succeeded in the same process).
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        std::thread::scope(|s| {
            let h = std::thread::Builder::new()
                .name(format!("netns-{}", self.label))
                .spawn_scoped(s, || {
                    setns(&self.file, CloneFlags::CLONE_NEWNET)
                        .unwrap_or_else(|e| panic!("setns into netns {}: {e}", self.label));
                    f()
                })
                .expect("spawn a thread");
            match h.join() {
                Ok(r) => r,
                Err(payload) => std::panic::resume_unwind(payload),
            }
        })
    }

    /// Spawns a thread named `name` that lives in this namespace and runs
    /// `f`. The thread keeps the namespace alive until it ends: join it
    /// before dropping whatever owns the namespace.
    pub fn spawn<R: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> io::Result<JoinHandle<R>> {
        let file = self.file.try_clone()?;
        let label = self.label.clone();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns into netns {label}: {e}"));
                drop(file);
                f()
            })
    }

    /// Runs `cmd` to completion inside this namespace and returns its
    /// output (it is not checked: see [`Netns::run`]).
    pub fn command(&self, cmd: &mut Command) -> io::Result<Output> {
        self.enter(|| cmd.output())
    }

    /// Runs `program args…` inside this namespace; an error if it cannot
    /// be started or exits non-zero (its stderr is in the message).
    pub fn run(&self, program: &str, args: &[&str]) -> io::Result<()> {
        let out = self.command(Command::new(program).args(args))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "netns {}: `{program} {}` failed ({}): {}",
                self.label,
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Writes `value` to the sysctl `key` (dotted, e.g.
    /// `net.ipv4.tcp_no_metrics_save`) of this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.enter(|| std::fs::write(&path, value))
    }

    /// The content of `/proc/net/<file>` as seen from inside this namespace
    /// (e.g. `snmp`, `netstat`, `dev`).
    pub fn proc_net(&self, file: &str) -> io::Result<String> {
        let path = format!("/proc/thread-self/net/{file}");
        self.enter(|| std::fs::read_to_string(&path))
    }
}

/// Whether anything in this process still refers to the network namespace
/// with inode `inode`: an open file descriptor of it, or a thread living in
/// it. (A socket created in it also keeps it alive, and that cannot be seen
/// from here.) Used to check teardown.
pub fn held_by_this_process(inode: u64) -> bool {
    let want = format!("net:[{inode}]");
    let links = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    if links("/proc/self/fd").contains(&want) {
        return true;
    }
    let tasks: Vec<String> = std::fs::read_dir("/proc/self/task")
        .map(|rd| {
            rd.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    tasks.iter().any(|t| {
        std::fs::read_link(format!("/proc/self/task/{t}/ns/net"))
            .is_ok_and(|p| p.to_string_lossy() == want)
    })
}
