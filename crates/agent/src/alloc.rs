//! The agent's allocator: jemalloc, with one arena, no thread caches, and freed pages
//! returned to the kernel within a second of falling idle (`MALLOC_CONF` below). A
//! daemon that lives for months should hold what it uses and no more.
//!
//! glibc's malloc was tuned first (one arena, a fixed 64 KiB mmap threshold,
//! `malloc_trim` every 10 s) and still fragmented under the soak's churn of log
//! chunks and restarts: its RSS crept by about 0.2 MB a minute while heaptrack saw the
//! live heap flat at 2.2 MB (`bench/agent/soak.sh --heaptrack`). jemalloc's size
//! classes keep that churn on slabs it can reuse and purge; at the same start it
//! stays flat.
//!
//! Declared in the library, so the agent, `fleet-runtime` and the tests that run an
//! agent in-process all use it.

#![allow(unsafe_code)] // jemalloc reads its options from an exported symbol.

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its first allocation: one arena for the agent's
/// few threads, no per-thread caches (memory a thread freed is reused by all), and
/// dirty pages purged after a second, muzzy ones at once.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8] = b"narenas:1,tcache:false,dirty_decay_ms:1000,muzzy_decay_ms:0\0";
