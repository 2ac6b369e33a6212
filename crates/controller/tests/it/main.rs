//! The controller in-process: `serve` on a temp data directory and port 0, real TLS over
//! loopback, the CLI's calls through the generated client and agents played by tests
//! (a real certificate from `Join`, a hand-driven session). Compiled into one binary.

mod harness;
mod http;

mod abuse;
mod alerts;
mod audit;
mod auth;
mod certificates;
mod command;
mod dashboard;
mod dashboard_bench;
mod ha_bench;
mod logs;
mod metrics;
mod peers_http;
mod postgres;
mod restart;
mod scale;
mod session;
