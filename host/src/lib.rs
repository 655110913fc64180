//! Schoolbell: a scheduler service for school back-office jobs. Vendors
//! ship notifiers and import mappings as sandboxed WebAssembly components;
//! admins write the rules that select records as rhai scripts; the host
//! keeps everything in an embedded sled store.

#![warn(missing_docs, unreachable_pub)]
// The OpenAPI document is one `json!` literal, deeper than the default limit.
#![recursion_limit = "256"]

pub mod api;
pub mod app;
pub mod audit;
pub mod config;
pub mod console;
pub mod imports;
pub mod metrics;
pub mod notify;
pub mod plugins;
pub mod privacy;
pub mod records;
pub mod rules;
pub mod runs;
pub mod schedule;
pub mod secrets;
pub mod sources;
pub mod store;
pub mod tasks;
pub mod users;
pub mod views;

// The service allocates and frees millions of small values per import (rows,
// keys, sled's nodes) from several threads; glibc's malloc spent a third of
// an import's time consolidating its free lists. Every binary built from this
// crate (the service, its benchmarks and tests) uses the same allocator, so
// the benchmarks measure what the service does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process; every binary built
/// from this crate calls it first thing.
///
/// mimalloc asks the kernel for huge pages on each region it maps
/// (`madvise`), and with the kernel's default `defrag=madvise` a fault in such a
/// region may first compact memory, on the faulting thread. The scheduler
/// loop met those faults as 20-70 ms stalls in one tick of five, which was
/// the fire-lateness p99 (2-14 ms without them, on the same machine); the
/// service also holds about 50 MiB less. Best effort: a kernel without
/// the switch keeps its pages as they are.
pub fn without_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}
