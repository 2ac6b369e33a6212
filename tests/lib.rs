//! Shared by the end-to-end tests, the controller's tests and the benchmarks: a headless
//! Chromium driven over the DevTools protocol (`browser`), Prometheus' `promtool`
//! (`promtool`) and a PostgreSQL server of the test's own (`postgres`). The end-to-end tests' own harness lives in `it/harness.rs`.

pub mod browser;
pub mod postgres;
pub mod promtool;
