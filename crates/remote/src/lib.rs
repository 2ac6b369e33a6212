//! fleet's remote operations, as a library the CLI (and later the controller and a
//! web dashboard) drive: `ssh` (the transport: one connection per host, strict host
//! keys, ssh_config, ProxyJump), `stage` (a `[deploy.<stage>]` and the one trait,
//! `StageApi`, through which status, commands and logs reach its hosts over SSH or
//! through the controller) and `deploy` (releases as a pure plan and one executor).
//!
//! Nothing here prints or picks an exit code: operations return typed errors and
//! send `deploy::Event`s; the caller renders them.

pub mod deploy;
pub mod ssh;
pub mod stage;
pub mod unit;
