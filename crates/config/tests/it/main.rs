//! fleet-config's integration tests, one binary: the format fixtures, error reporting,
//! PM2 compatibility (aliases, loose types, env stages, `--only`) and script resolution
//! through config files. `harness` holds the shared helpers.

mod errors;
mod fixtures;
mod harness;
mod javascript;
mod options;
mod pm2_keys;
mod properties;
