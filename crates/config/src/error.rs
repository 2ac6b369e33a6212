//! Configuration errors: one `ConfigError` per problem (file, line, key path, message,
//! optional hint) and `ConfigErrors`, the non-empty list a whole file's validation
//! returns. Rendering is short and lower-case; colour is the caller's business.

use std::path::PathBuf;

/// One problem in a config file or a `fleet start` command line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_error(self))]
pub struct ConfigError {
    /// The file as the user named it; empty for command-line input.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<u32>,
    /// Dotted key path such as `apps.api.instances` or `deploy.production.host[1]`.
    pub key: String,
    pub message: String,
    pub hint: Option<String>,
}

impl ConfigError {
    pub fn new(
        file: impl Into<PathBuf>,
        line: Option<u32>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: file.into(),
            line,
            key: key.into(),
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> ConfigError {
        self.hint = Some(hint.into());
        self
    }
}

/// `fleet.toml:12: apps.api.instancs: unknown key`, then `  hint: ...` when known.
fn render_error(error: &ConfigError) -> String {
    let mut out = String::new();
    if !error.file.as_os_str().is_empty() {
        out.push_str(&error.file.display().to_string());
        if let Some(line) = error.line {
            out.push_str(&format!(":{line}"));
        }
        out.push_str(": ");
    }
    if !error.key.is_empty() {
        out.push_str(&error.key);
        out.push_str(": ");
    }
    out.push_str(&error.message);
    if let Some(hint) = &error.hint {
        out.push_str("\n  hint: ");
        out.push_str(hint);
    }
    out
}

/// Every problem found in one file; never empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_errors(&self.errors))]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> ConfigErrors {
        ConfigErrors {
            errors: vec![error],
        }
    }
}

fn render_errors(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(render_error)
        .collect::<Vec<_>>()
        .join("\n")
}
