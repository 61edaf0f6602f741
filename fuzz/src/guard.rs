//! The memory limit of a fuzz run: a global allocator that refuses any single allocation above
//! [`ALLOC_LIMIT`] and any growth of the live heap above [`LIVE_LIMIT`]. Inputs are at most tens of
//! kilobytes, so a reader asking for more is allocating from a length or count it read and did not
//! check. Before refusing, the allocator writes the input being run to its artifact file and says so
//! on stderr; the refusal then aborts the process (Rust's allocation-error handler), with that file
//! named just above the abort.
//!
//! The test binary installs it: `#[global_allocator] static A: fuzz::guard::Guarded = fuzz::guard::Guarded;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

/// The largest single allocation a reader may make for an input of a fuzz run.
pub const ALLOC_LIMIT: usize = 256 << 20;
/// The largest live heap of the fuzz process (the driver's inputs included).
pub const LIVE_LIMIT: usize = 2 << 30;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static TRIPPED: AtomicBool = AtomicBool::new(false);

/// The input being run and where to save it: set by the driver around each input (one driver at a
/// time), read by the allocator only on the way to an abort.
static INPUT_PTR: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static INPUT_LEN: AtomicUsize = AtomicUsize::new(0);
/// A NUL-terminated path.
static DUMP_PATH: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());

/// Names the input that the next allocations are made for, and the file to save it to if one of
/// them is refused. The input and path must stay alive until [`clear_input`].
pub fn set_input(input: &[u8], dump_path: &std::ffi::CStr) {
    INPUT_LEN.store(input.len(), Ordering::SeqCst);
    INPUT_PTR.store(input.as_ptr() as *mut u8, Ordering::SeqCst);
    DUMP_PATH.store(dump_path.as_ptr() as *mut u8, Ordering::SeqCst);
}

pub fn clear_input() {
    INPUT_PTR.store(std::ptr::null_mut(), Ordering::SeqCst);
    DUMP_PATH.store(std::ptr::null_mut(), Ordering::SeqCst);
}

pub struct Guarded;

/// Whether an allocation of `size` bytes that grows the live heap by `growth` stays in the limits;
/// reports the first one that does not.
fn allowed(size: usize, growth: usize) -> bool {
    if size > ALLOC_LIMIT || LIVE.load(Ordering::Relaxed).saturating_add(growth) > LIVE_LIMIT {
        report(size);
        return false;
    }
    true
}

unsafe impl GlobalAlloc for Guarded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !allowed(layout.size(), layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !allowed(layout.size(), layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !allowed(new_size, new_size.saturating_sub(layout.size())) {
            return std::ptr::null_mut();
        }
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

/// A message built on the stack (the allocator cannot allocate).
struct StackText {
    buf: [u8; 256],
    n: usize,
}

impl StackText {
    fn put(&mut self, s: &[u8]) {
        for &b in s {
            if self.n < self.buf.len() {
                self.buf[self.n] = b;
                self.n += 1;
            }
        }
    }

    fn number(&mut self, mut v: u64) {
        let mut d = [0u8; 20];
        let mut i = d.len();
        loop {
            i -= 1;
            d[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.put(&d[i..]);
    }
}

/// Writes bytes to a file descriptor, without allocating.
///
/// # Safety
/// `p` must point to `len` readable bytes.
unsafe fn write_all(fd: libc::c_int, p: *const u8, len: usize) {
    let mut done = 0;
    while done < len {
        let k = libc::write(fd, p.add(done) as *const libc::c_void, len - done);
        if k <= 0 {
            return;
        }
        done += k as usize;
    }
}

/// Saves the running input and says why on stderr, without allocating (this runs inside the
/// allocator). Only the first refusal reports.
fn report(size: usize) {
    if TRIPPED.swap(true, Ordering::SeqCst) {
        return;
    }
    let mut msg = StackText {
        buf: [0; 256],
        n: 0,
    };
    msg.put(b"\nfuzz: a reader asked for ");
    msg.number(size as u64);
    msg.put(b" bytes (the limits: ");
    msg.number(ALLOC_LIMIT as u64);
    msg.put(b" in one allocation, ");
    msg.number(LIVE_LIMIT as u64);
    msg.put(b" live); ");
    let path = DUMP_PATH.load(Ordering::SeqCst);
    let input = INPUT_PTR.load(Ordering::SeqCst);
    let len = INPUT_LEN.load(Ordering::SeqCst);
    // Safety: the driver keeps the input and the NUL-terminated path alive while they are set; only
    // libc calls are made, no allocation.
    unsafe {
        if path.is_null() || input.is_null() {
            msg.put(b"no input was running\n");
            write_all(2, msg.buf.as_ptr(), msg.n);
            return;
        }
        let fd = libc::open(
            path as *const libc::c_char,
            libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC,
            0o644,
        );
        if fd >= 0 {
            write_all(fd, input, len);
            libc::close(fd);
        }
        msg.put(b"the input is saved at ");
        write_all(2, msg.buf.as_ptr(), msg.n);
        write_all(2, path, libc::strlen(path as *const libc::c_char));
        write_all(2, b"\n".as_ptr(), 1);
    }
}
