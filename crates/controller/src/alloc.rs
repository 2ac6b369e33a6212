//! The controller's allocator: jemalloc, returning freed pages to the kernel within a
//! second (`MALLOC_CONF`), so what a burst of connections cost (the abuse run opens
//! 250 at once) does not stay in its RSS. One arena, like the agent's: a `Status` of a
//! thousand hosts allocates megabytes that it frees at once, and with an arena per
//! thread each one kept its own copy of those pages dirty (the scale run grew 17 MB
//! with the default arenas, 5 MB with one, at the same p99).

#![allow(unsafe_code)] // jemalloc reads its options from an exported symbol.

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation: one arena, dirty pages purged
/// after a second, muzzy ones at once.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8] = b"narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";
