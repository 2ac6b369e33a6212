//! An app from a command line instead of a file (`fleet start app.js -i 4 --name api`,
//! `fleet-runtime server.js`): the script resolved as a config file's would be, with
//! the few settings a command line gives. One definition for the CLI and the runtime.

use std::ffi::OsStr;

use crate::load::LoadOptions;
use crate::resolve::{default_name, resolve_command};
use crate::spec::{AppSpec, Instances};

/// What a command line says about a script it starts.
#[derive(Clone, Debug, Default)]
pub struct ScriptOptions {
    pub name: Option<String>,
    pub interpreter: Option<String>,
    /// Arguments after `--`.
    pub args: Vec<String>,
    /// `-i`: a number, `max` or `-N`.
    pub instances: Option<String>,
    pub namespace: Option<String>,
    pub no_autorestart: bool,
}

/// Why a command line's script cannot become an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptError {
    /// A malformed option (`-i two`): bad usage.
    Usage(String),
    /// The script or its interpreter cannot be found or run here.
    Resolve(String),
}

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScriptError::Usage(message) | ScriptError::Resolve(message) => f.write_str(message),
        }
    }
}

/// The spec of `script` started from `opts.cwd`; errors are for the user.
pub fn script_app(
    script: &str,
    options: &ScriptOptions,
    load: &LoadOptions,
    path_env: Option<&OsStr>,
) -> Result<AppSpec, ScriptError> {
    let resolved = resolve_command(
        script,
        options.interpreter.as_deref(),
        &[],
        &options.args,
        &load.cwd,
        path_env,
    )
    .map_err(|e| ScriptError::Resolve(e.to_string()))?;
    let name = options.name.clone().unwrap_or_else(|| default_name(script));
    let mut spec = AppSpec::with_defaults(name, resolved.script, load.cwd.clone());
    spec.command = resolved.command;
    spec.interpreter = resolved.interpreter;
    spec.args = options.args.clone();
    spec.inherited_env = load.inherited_env.clone();
    spec.autorestart = !options.no_autorestart;
    if let Some(namespace) = &options.namespace {
        spec.namespace = namespace.clone();
    }
    if let Some(instances) = &options.instances {
        spec.instances = parse_instances(instances).map_err(ScriptError::Usage)?;
    }
    Ok(spec)
}

/// PM2's `-i`: a number, `max` (or 0) for one per CPU, `-N` for all CPUs but N.
pub fn parse_instances(value: &str) -> Result<Instances, String> {
    match value {
        "max" => Ok(Instances::Max),
        _ => match value.parse::<i64>() {
            Ok(0) => Ok(Instances::Max),
            Ok(n) if n > 0 => Ok(Instances::Count(n as u32)),
            Ok(n) => Ok(Instances::MaxMinus(n.unsigned_abs() as u32)),
            Err(_) => Err(format!(
                "invalid value {value:?} for -i: expected a number, `max` or `-N`"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_flag_follows_pm2() {
        assert_eq!(parse_instances("4"), Ok(Instances::Count(4)));
        assert_eq!(parse_instances("max"), Ok(Instances::Max));
        assert_eq!(parse_instances("0"), Ok(Instances::Max));
        assert_eq!(parse_instances("-1"), Ok(Instances::MaxMinus(1)));
        assert!(
            parse_instances("two")
                .unwrap_err()
                .starts_with("invalid value")
        );
    }
}
