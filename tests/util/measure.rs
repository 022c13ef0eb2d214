//! What a test under load measures about this process: CPU time of a
//! thread or of the whole process, resident memory, and the round trips of
//! a client probing a server at a steady rate (for the hostile-peer tests,
//! tests/hostile.rs).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The calling thread's id (`gettid`), read from `/proc/thread-self`.
pub fn thread_id() -> u32 {
    let link = std::fs::read_link("/proc/thread-self").expect("readlink /proc/thread-self");
    // "<pid>/task/<tid>"
    link.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected /proc/thread-self: {}", link.display()))
}

/// CPU time thread `tid` of this process has run (user and system), from
/// its `schedstat` (nanoseconds).
pub fn thread_cpu(tid: u32) -> Duration {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .unwrap_or_else(|e| panic!("read schedstat of thread {tid}: {e}"));
    let ns: u64 = s
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .expect("schedstat: run time");
    Duration::from_nanos(ns)
}

/// CPU time of the whole process, every thread (utime + stime of
/// `/proc/self/stat`, in clock ticks).
pub fn process_cpu() -> Duration {
    let s = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    // The fields after the command name (which may hold spaces) start
    // with the state, field 3; utime and stime are fields 14 and 15.
    let rest = &s[s.rfind(')').expect("stat: comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// CPU used over an idle stretch: by one thread, and by the process.
#[derive(Debug, Clone, Copy)]
pub struct IdleCpu {
    pub over: Duration,
    pub thread: Duration,
    pub process: Duration,
}

impl std::fmt::Display for IdleCpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CPU over {:.1} s idle: server thread {:.1} ms, process {:.0} ms",
            self.over.as_secs_f64(),
            ms(self.thread),
            ms(self.process)
        )
    }
}

/// Sleeps `over` and reports the CPU thread `tid` and the whole process
/// used meanwhile.
pub fn idle_cpu(tid: u32, over: Duration) -> IdleCpu {
    let (t0, p0) = (thread_cpu(tid), process_cpu());
    std::thread::sleep(over);
    IdleCpu {
        over,
        thread: thread_cpu(tid) - t0,
        process: process_cpu() - p0,
    }
}

/// A `/proc/self/status` field in kB, as bytes.
fn status_kb(field: &str) -> usize {
    let s = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("/proc/self/status has no {field}"))
        * 1024
}

/// Resident memory of the process now (`VmRSS`).
pub fn vm_rss() -> usize {
    status_kb("VmRSS")
}

/// The most resident memory since the process started or
/// [`reset_peak_rss`] (`VmHWM`).
pub fn peak_rss() -> usize {
    status_kb("VmHWM")
}

/// Resets `VmHWM` to the current resident size (`/proc/self/clear_refs`);
/// `false` where the kernel does not allow it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Gives the heap's free memory back to the system (glibc's `malloc_trim`,
/// every arena), so that a baseline taken after it does not include memory
/// earlier tests freed — which later allocations would reuse without
/// growing `VmRSS`. A no-op on other C libraries.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's
    // arenas; it takes no pointer.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bytes the allocator has handed out and not had back (glibc's
/// `mallinfo2`: in use in every arena, and chunks of their own mapping):
/// memory growth that memory kept by the allocator for reuse — which
/// `VmRSS` does not see grow again — cannot hide. `None` on other C
/// libraries.
pub fn heap_in_use() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no argument and returns a plain struct.
        let m = unsafe { libc::mallinfo2() };
        Some(m.uordblks + m.hblkhd)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Samples `VmRSS` (and [`heap_in_use`]) every `every` on a thread of its
/// own until stopped.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(usize, Option<usize>)>,
}

impl RssSampler {
    pub fn start(every: Duration) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut rss = vm_rss();
            let mut heap = heap_in_use();
            loop {
                rss = rss.max(vm_rss());
                heap = heap.max(heap_in_use());
                if flag.load(Ordering::SeqCst) {
                    return (rss, heap);
                }
                std::thread::sleep(every);
            }
        });
        RssSampler { stop, thread }
    }

    /// The largest `VmRSS` sampled.
    pub fn finish(self) -> usize {
        self.finish_all().0
    }

    /// The largest `VmRSS` and [`heap_in_use`] sampled.
    pub fn finish_all(self) -> (usize, Option<usize>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("RSS sampler panicked")
    }
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The round trips of one probing client, and what went wrong.
#[derive(Debug, Clone)]
pub struct RoundTrips {
    pub name: String,
    /// Every successful round trip, in order.
    pub rtts: Vec<Duration>,
    /// Failed probes: when (since the start) and why.
    pub failures: Vec<String>,
}

impl RoundTrips {
    pub fn worst(&self) -> Duration {
        self.rtts.iter().copied().max().unwrap_or_default()
    }

    pub fn median(&self) -> Duration {
        let mut v = self.rtts.clone();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }

    /// Prints the figures (all of them) and asserts that every probe was
    /// answered, at least `min_probes` were made, and none took longer
    /// than `within`.
    pub fn assert_served(&self, within: Duration, min_probes: usize) {
        let all: Vec<String> = self.rtts.iter().map(|d| format!("{:.1}", ms(*d))).collect();
        println!(
            "legit client, {}: {} round trips, worst {:.1} ms, median {:.1} ms; all (ms): [{}]",
            self.name,
            self.rtts.len(),
            ms(self.worst()),
            ms(self.median()),
            all.join(", ")
        );
        assert!(
            self.failures.is_empty(),
            "{}: {} probes failed: {:?}",
            self.name,
            self.failures.len(),
            self.failures
        );
        assert!(
            self.rtts.len() >= min_probes,
            "{}: only {} probes (expected at least {min_probes})",
            self.name,
            self.rtts.len()
        );
        assert!(
            self.worst() <= within,
            "{}: worst round trip {:.1} ms > {:.0} ms",
            self.name,
            ms(self.worst()),
            ms(within)
        );
    }
}

/// A client probing a server every `every` on a thread of its own: each
/// probe is one call of its closure, timed.
pub struct Prober {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<RoundTrips>,
}

impl Prober {
    /// Starts probing at once. `probe` does one round trip (and checks
    /// what came back); an `Err` is a failed probe.
    pub fn start(
        name: &str,
        every: Duration,
        probe: impl FnMut() -> Result<(), String> + Send + 'static,
    ) -> Prober {
        Prober::start_with(name, every, move || Ok(probe))
    }

    /// Like [`start`](Prober::start), with the probe built on the probe's
    /// thread by `setup` (for a client that cannot move between threads,
    /// such as a `Reactor`); `setup` is not timed. Its `Err` is a failed
    /// probe, and probing stops.
    pub fn start_with<P>(
        name: &str,
        every: Duration,
        setup: impl FnOnce() -> Result<P, String> + Send + 'static,
    ) -> Prober
    where
        P: FnMut() -> Result<(), String>,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let name = name.to_string();
        let thread = std::thread::Builder::new()
            .name("probe".into())
            .spawn(move || {
                let mut out = RoundTrips {
                    name,
                    rtts: Vec::new(),
                    failures: Vec::new(),
                };
                let start = Instant::now();
                let mut probe = match setup() {
                    Ok(p) => p,
                    Err(e) => {
                        out.failures.push(format!("setting up the client: {e}"));
                        return out;
                    }
                };
                let mut next = Instant::now();
                while !flag.load(Ordering::SeqCst) {
                    let t = Instant::now();
                    match probe() {
                        Ok(()) => out.rtts.push(t.elapsed()),
                        Err(e) => out.failures.push(format!(
                            "at {:.0} ms (after {:.0} ms): {e}",
                            ms(t - start),
                            ms(t.elapsed())
                        )),
                    }
                    next += every;
                    while !flag.load(Ordering::SeqCst) {
                        let now = Instant::now();
                        if now >= next {
                            break;
                        }
                        std::thread::sleep((next - now).min(Duration::from_millis(10)));
                    }
                }
                // The probe (and the client it holds) goes before the
                // figures are handed over.
                drop(probe);
                out
            })
            .expect("spawn the probe thread");
        Prober { stop, thread }
    }

    /// Stops probing and returns the figures.
    pub fn finish(self) -> RoundTrips {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the probe thread panicked")
    }
}
