//! glibc's allocator tuned for a small daemon that lives for months: one arena for
//! every thread, and freed memory handed back to the kernel now and then.
//!
//! glibc gives each thread that allocates an arena of its own and keeps what is freed
//! in it; the agent's few threads gain nothing from that and its RSS grew with each
//! start and delete of 100 apps (bench/agent: 9.7 MB after the first round, 10.7 after
//! the third, every byte of it reusable but never returned).
//!
//! Blocks of 64 KiB and more (a log pump's read buffer grows to 1 MiB while an app
//! floods) are mapped on their own and unmapped when freed. glibc would otherwise
//! raise that threshold to the largest block freed so far, and from then on carve such
//! buffers out of the heap, where the small allocations around them keep the heap
//! from shrinking: the soak's RSS crept by 0.2 MB a minute while the live heap
//! (heaptrack) stayed at 2.2 MB.

#![allow(unsafe_code)] // mallopt(3) and malloc_trim(3) have no safe wrapper.

use std::time::Duration;

/// How often freed memory is returned to the kernel.
const TRIM_EVERY: Duration = Duration::from_secs(10);
/// Blocks from this size up are mapped on their own (a fixed threshold: glibc's
/// dynamic one only grows).
const MMAP_THRESHOLD: i32 = 64 * 1024;

/// One arena for all threads and a fixed mmap threshold, unless `MALLOC_ARENA_MAX` or
/// `MALLOC_MMAP_THRESHOLD_` say otherwise. Call before any thread is started.
pub fn configure() {
    #[cfg(target_env = "gnu")]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a parameter of the allocator; no thread runs yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
    #[cfg(target_env = "gnu")]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: as above.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}

/// Returns free memory to the kernel every [`TRIM_EVERY`], for the agent's lifetime.
pub async fn trim_periodically() {
    let mut every = tokio::time::interval(TRIM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim takes the allocator's own locks; any thread may call it.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
