//! End-to-end tests: the real `fleet` CLI and `fleet-agent` daemon supervising real
//! processes, each test with its own `FLEET_HOME`. Compiled into one binary
//! (`tests/it`) with a small harness.

mod harness;

mod agent_metrics;
mod cluster;
mod config;
mod controller;
mod controllers;
mod corpus;
mod dashboard;
mod deploy;
mod deploy_controller;
mod deploy_pm2;
mod deploy_secrets;
mod fleet;
mod host;
mod http;
mod lifecycle;
mod liveness;
mod logs;
mod logs_missed;
mod monit;
mod node;
mod persistence;
mod pm2;
mod runtime;
mod security;
mod start;
mod startup;
mod systemd;
mod testbed;
mod tidy;
mod triggers;
mod trust;
mod update;
