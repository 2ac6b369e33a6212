//! glibc's allocator tuned for a small daemon that lives for months: one arena for
//! every thread, and freed memory handed back to the kernel now and then.
//!
//! glibc gives each thread that allocates an arena of its own and keeps what is freed
//! in it; the agent's few threads gain nothing from that and its RSS grew with each
//! start and delete of 100 apps (bench/agent: 9.7 MB after the first round, 10.7 after
//! the third, every byte of it reusable but never returned).

#![allow(unsafe_code)] // mallopt(3) and malloc_trim(3) have no safe wrapper.

use std::time::Duration;

/// How often freed memory is returned to the kernel.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// One arena for all threads, unless `MALLOC_ARENA_MAX` says otherwise. Call before
/// any thread is started.
pub fn configure() {
    #[cfg(target_env = "gnu")]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a parameter of the allocator; no thread runs yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
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
