//! The controller's allocator: jemalloc, returning freed pages to the kernel within a
//! second (`MALLOC_CONF`), so what a burst of connections cost (the abuse run opens
//! 250 at once) does not stay in its RSS. Several arenas, unlike the agent's: a
//! thousand sessions are served from every thread.

#![allow(unsafe_code)] // jemalloc reads its options from an exported symbol.

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation: dirty pages purged after a
/// second, muzzy ones at once.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8] = b"dirty_decay_ms:1000,muzzy_decay_ms:0\0";
