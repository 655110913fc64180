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
