//! fleet's configuration: `fleet.toml` and PM2 ecosystem files (`.config.js` through
//! `node`, `.json`, `.yaml`) parsed into validated, resolved `AppSpec`s. Shared by the
//! CLI (which resolves), the agent (which stores and runs) and the controller.
//!
//! Pipeline: `tree` parses any format into one line-carrying tree (`js` evaluates
//! JavaScript first), `load` walks the document, `app` and `deploy` validate their keys
//! with `reader`'s helpers, and `resolve` decides what to execute.

mod app;

pub use app::{MAX_INSTANCES, file_name_of, runs_on_node, validate_spec};
mod deploy;
mod discover;
pub mod envfile;
mod error;
mod js;
mod load;
mod node_version;
mod reader;
mod resolve;
mod script;
pub mod spec;
mod tree;
mod units;

pub use deploy::{
    Batch, DEFAULT_KEEP_RELEASES, DEFAULT_LOCK_TTL_MS, DeployStage, DeployStrategy, DeployTarget,
    HostOverride, runs_pm2_start,
};
pub use discover::{CONFIG_NAMES, discover, discover_data, first_in, is_javascript};
pub use error::{ConfigError, ConfigErrors};
pub use load::{
    ConfigFile, ControllerSection, Format, LoadOptions, is_config_file, load, load_str,
    load_unresolved,
};
pub use resolve::{Resolved, default_name, resolve_command};
pub use script::{ScriptError, ScriptOptions, parse_instances, script_app};
pub use spec::*;
pub use units::{parse_bytes, parse_duration_ms, parse_signal, split_shell_words};
