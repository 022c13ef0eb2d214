//! A counting global allocator, for the tests that measure the heap.
//!
//! Only allocations made on a thread while its counting flag is set are
//! counted (see [`counted`]), so the test harness's other threads do not
//! disturb the counts. A test binary installs it with
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: util::alloc::Counting = util::alloc::Counting;
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Forwards every call to the system allocator and counts the calls made
/// on a thread inside [`counted`].
pub struct Counting;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static REALLOCS: Cell<u64> = const { Cell::new(0) };
    static NET_BYTES: Cell<i64> = const { Cell::new(0) };
}

fn measuring() -> bool {
    MEASURING.try_with(Cell::get).unwrap_or(false)
}

fn bump(c: &'static std::thread::LocalKey<Cell<u64>>) {
    let _ = c.try_with(|c| c.set(c.get() + 1));
}

fn add_bytes(n: i64) {
    let _ = NET_BYTES.try_with(|c| c.set(c.get() + n));
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping touches only const-initialised thread-locals (no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if measuring() {
            bump(&ALLOCS);
            add_bytes(layout.size() as i64);
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if measuring() {
            bump(&ALLOCS);
            add_bytes(layout.size() as i64);
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if measuring() {
            add_bytes(-(layout.size() as i64));
        }
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if measuring() {
            bump(&REALLOCS);
            add_bytes(new_size as i64 - layout.size() as i64);
        }
        System.realloc(ptr, layout, new_size)
    }
}

/// This thread's counts since the last [`reset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// `alloc` and `alloc_zeroed` calls.
    pub allocs: u64,
    pub reallocs: u64,
    /// Bytes allocated minus bytes freed (a realloc counts its growth).
    pub net_bytes: i64,
}

/// Runs `f` with this thread's allocations counted; returns its result.
/// The counts add up over calls until [`reset`].
pub fn counted<T>(f: impl FnOnce() -> T) -> T {
    MEASURING.with(|m| m.set(true));
    let t = f();
    MEASURING.with(|m| m.set(false));
    t
}

/// This thread's counts.
pub fn counts() -> Counts {
    Counts {
        allocs: ALLOCS.with(Cell::get),
        reallocs: REALLOCS.with(Cell::get),
        net_bytes: NET_BYTES.with(Cell::get),
    }
}

/// Sets this thread's counts to zero.
pub fn reset() {
    ALLOCS.with(|c| c.set(0));
    REALLOCS.with(|c| c.set(0));
    NET_BYTES.with(|c| c.set(0));
}

/// Runs `f` with counting on for this thread, from zero; returns the
/// counts.
pub fn measure(f: impl FnOnce()) -> Counts {
    reset();
    counted(f);
    counts()
}
