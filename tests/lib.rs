//! Shared by the end-to-end tests, the controller's tests and the benchmarks: a headless
//! Chromium driven over the DevTools protocol (`browser`) and Prometheus' `promtool`
//! (`promtool`). The end-to-end tests' own harness lives in `it/harness.rs`.

pub mod browser;
pub mod promtool;
