//! Shared by the end-to-end tests and the benchmarks: a headless Chromium driven over
//! the DevTools protocol (`browser`). The tests' own harness lives in `it/harness.rs`.

pub mod browser;
