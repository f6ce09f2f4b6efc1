//! Test support: a global allocator that watches what this thread frees for a secret.
//!
//! Install [`Watch`] as a test binary's `#[global_allocator]`, then run the code under test
//! inside [`freed_holding`]: it counts the heap blocks that were freed, or reallocated, while
//! still holding the secret's bytes, on the calling thread. A copy of a key that the code
//! forgot to zeroize shows up as a count above zero, and so does a buffer holding the key
//! that grows by reallocation (which may leave a copy in freed memory, depending on the
//! allocator's state).
//!
//! What it cannot see: copies on the stack, copies made on other threads, and copies still
//! alive when the closure returns (drop them inside it). It reads freed blocks just before
//! handing them to the system allocator; it never changes what the program computes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static SECRET: Cell<Option<[u8; 32]>> = const { Cell::new(None) };
    static FOUND: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, plus the check of freed blocks while [`freed_holding`] runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Watch;

/// Whether the `len` bytes at `ptr` contain `secret`. Volatile reads: the block is about to
/// be freed and the compiler must not reason about its contents.
///
/// # Safety
/// `ptr` must be valid for reads of `len` bytes.
unsafe fn holds(ptr: *const u8, len: usize, secret: &[u8; 32]) -> bool {
    if len < secret.len() {
        return false;
    }
    (0..=len - secret.len()).any(|start| {
        secret.iter().enumerate().all(|(i, want)| {
            // SAFETY: start + i < len, and the caller guarantees `len` readable bytes.
            unsafe { std::ptr::read_volatile(ptr.add(start + i)) == *want }
        })
    })
}

/// The secret being watched on this thread, if any. Never allocates (const thread local
/// without a destructor), so it is safe to ask from inside the allocator.
fn watched() -> Option<[u8; 32]> {
    SECRET.try_with(Cell::get).ok().flatten()
}

fn found() {
    let _ = FOUND.try_with(|f| f.set(f.get() + 1));
}

// SAFETY: every allocation is the system allocator's; the extra reads stay within blocks
// the caller still owns.
unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(secret) = watched() {
            // SAFETY: the block is still ours until `System.dealloc` below.
            if unsafe { holds(ptr, layout.size(), &secret) } {
                found();
            }
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A reallocation may move the block and leave its old bytes behind in freed
        // memory; whether it moves is the allocator's choice of the moment (it differs
        // between a quiet test and a busy one). So every reallocation of a block that
        // holds the secret counts, moved or not: the code that grows such a buffer is the
        // finding.
        if let Some(secret) = watched() {
            // SAFETY: the block (all `layout.size()` bytes) is still ours here.
            if unsafe { holds(ptr, layout.size(), &secret) } {
                found();
            }
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Run `f` while watching this thread's frees for `secret`; returns `f`'s result and the
/// number of heap blocks freed while still holding the secret. Needs [`Watch`] installed
/// as the global allocator (otherwise the count is always 0: see [`installed`]).
pub fn freed_holding<R>(secret: [u8; 32], f: impl FnOnce() -> R) -> (R, usize) {
    FOUND.with(|c| c.set(0));
    SECRET.with(|s| s.set(Some(secret)));
    let result = f();
    SECRET.with(|s| s.set(None));
    (result, FOUND.with(Cell::get))
}

/// Whether [`Watch`] is this binary's global allocator: frees a block holding a secret and
/// checks that it was seen. A test built on [`freed_holding`] asserts this first, so it
/// cannot pass vacuously.
pub fn installed() -> bool {
    let secret = [0x5a; 32];
    let ((), count) = freed_holding(secret, || {
        let block = std::hint::black_box(vec![0x5a_u8; 64]);
        drop(block);
    });
    count > 0
}
