//! `fleet-agent`: supervises apps on one host, PM2's daemon done again. The binary in
//! `main.rs` only parses arguments and calls `daemon::run`; everything lives here.

pub mod account;
pub mod alloc;
pub mod child;
pub mod cluster;
pub mod core;
pub mod daemon;
pub mod error;
pub mod fdstore;
pub mod handoff;
pub mod hostmetrics;
pub mod link;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod operations;
pub mod process;
pub mod prometheus;
pub mod readiness;
pub mod runtime;
pub mod schedule;
pub mod sd_notify;
pub mod service;
pub mod settings;
pub mod store;
pub mod supervisor;
pub mod target;
pub mod update;
pub mod watch;
