//! Helpers shared by the supervisor's files: an instance's log files opened, exits
//! described and converted, times as milliseconds since the epoch, shared
//! environments and a spec with its secrets redacted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use fleet_config::AppSpec;
use nix::sys::signal::Signal;

use super::{Instance, SECRET_KEY_PARTS};
use crate::core::Exit;
use crate::logs::{DateFormat, InstanceLogs, LineFormat, LogHub};

type Env = Arc<BTreeMap<String, String>>;

/// Opens an instance's log files (shared with other instances writing the same path).
pub(in crate::supervisor) fn instance_logs(
    hub: &LogHub,
    instance: &Instance,
) -> Result<Arc<InstanceLogs>, String> {
    let rotation = &instance.spec.logs.rotation;
    let open = |path: &Option<std::path::PathBuf>| -> Result<_, String> {
        path.as_ref()
            .map(|p| {
                hub.file(p, rotation)
                    .map_err(|e| format!("cannot open the log file {}: {e}", p.display()))
            })
            .transpose()
    };
    Ok(Arc::new(InstanceLogs {
        id: instance.id,
        app: Arc::from(instance.spec.name.as_str()),
        namespace: Arc::from(instance.spec.namespace.as_str()),
        instance: instance.instance,
        out: open(&instance.logs.out)?,
        err: open(&instance.logs.err)?,
        combined: open(&instance.logs.combined)?,
        format: LineFormat {
            date: instance
                .spec
                .logs
                .log_date_format
                .as_deref()
                .map(DateFormat::parse),
            json: instance.spec.logs.log_type == fleet_config::LogType::Json,
            app: instance.spec.name.clone(),
            id: instance.id,
        },
    }))
}

/// `code 1`, `signal SIGKILL`, or the spawn error, for messages.
pub fn describe_exit(exit: &Exit) -> String {
    match exit {
        Exit::Code(code) => format!("code {code}"),
        Exit::Signal(signal) => match Signal::try_from(*signal) {
            Ok(signal) => format!("signal {}", signal.as_str()),
            Err(_) => format!("signal {signal}"),
        },
        Exit::SpawnError(error) => error.clone(),
        Exit::Unknown => "unknown (it was no longer the agent's child)".into(),
    }
}

pub(in crate::supervisor) fn exit_of(status: std::process::ExitStatus) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(signal)) => Exit::Signal(signal),
        (None, None) => Exit::Code(-1),
    }
}

pub(in crate::supervisor) fn millis_since_epoch(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Replaces `env` with the first of `held` equal to it.
pub(in crate::supervisor) fn share_env<'a>(mut held: impl Iterator<Item = &'a Env>, env: &mut Env) {
    if let Some(same) = held.find(|held| Arc::ptr_eq(held, env) || *held == env) {
        *env = same.clone();
    }
}

/// The spec as JSON with secret-looking environment values replaced.
pub(in crate::supervisor) fn redacted(spec: &AppSpec) -> serde_json::Value {
    let mut value = serde_json::to_value(spec).unwrap_or(serde_json::Value::Null);
    for field in ["env", "inherited_env"] {
        if let Some(serde_json::Value::Object(map)) = value.get_mut(field) {
            for (key, value) in map.iter_mut() {
                let upper = key.to_ascii_uppercase();
                if SECRET_KEY_PARTS.iter().any(|part| upper.contains(part)) {
                    *value = serde_json::Value::String("[redacted]".into());
                } else if let Some(text) = value.as_str()
                    && let Some(hidden) = without_url_passwords(text)
                {
                    *value = serde_json::Value::String(hidden);
                }
            }
        }
    }
    value
}

/// `postgres://user:secret@db/app` as `postgres://user:[redacted]@db/app`, for every URL
/// in `text`; `None` when there is no password to hide.
pub(in crate::supervisor) fn without_url_passwords(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut changed = false;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        // The authority ends at the first '/', '?', '#' or whitespace.
        let end = after
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority
            .rfind('@')
            .and_then(|a| authority[..a].find(':').map(|colon| (colon, a)))
        {
            Some((colon, a)) => {
                out.push_str(&authority[..=colon]);
                out.push_str("[redacted]");
                out.push_str(&authority[a..]);
                changed = true;
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_environments_are_held_once() {
        let env = |pairs: &[(&str, &str)]| -> Env {
            Arc::new(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let held = [env(&[("A", "1")]), env(&[("A", "1"), ("B", "2")])];
        let mut new = env(&[("A", "1"), ("B", "2")]);
        share_env(held.iter(), &mut new);
        assert!(Arc::ptr_eq(&new, &held[1]));
        let mut other = env(&[("A", "2")]);
        share_env(held.iter(), &mut other);
        assert!(!held.iter().any(|h| Arc::ptr_eq(h, &other)));
        assert_eq!(other["A"], "2");
    }

    #[test]
    fn passwords_inside_urls_are_hidden() {
        assert_eq!(
            without_url_passwords("postgres://app:s3cr3t@db:5432/app?ssl=1").as_deref(),
            Some("postgres://app:[redacted]@db:5432/app?ssl=1")
        );
        assert_eq!(
            without_url_passwords("a=redis://:pw@r1 b=amqp://u:p@q/").as_deref(),
            Some("a=redis://:[redacted]@r1 b=amqp://u:[redacted]@q/")
        );
        assert_eq!(without_url_passwords("https://example.com/a@b"), None);
        assert_eq!(without_url_passwords("https://user@example.com"), None);
        assert_eq!(without_url_passwords("plain"), None);
    }

    #[test]
    fn secrets_are_redacted() {
        let mut spec = AppSpec::with_defaults("api".into(), "api.js".into(), "/".into());
        spec.env.insert("DB_PASSWORD".into(), "hunter2".into());
        spec.env.insert("PORT".into(), "80".into());
        Arc::make_mut(&mut spec.inherited_env).insert("AWS_SECRET_ACCESS_KEY".into(), "x".into());
        let value = redacted(&spec);
        assert_eq!(value["env"]["DB_PASSWORD"], "[redacted]");
        assert_eq!(value["env"]["PORT"], "80");
        assert_eq!(
            value["inherited_env"]["AWS_SECRET_ACCESS_KEY"],
            "[redacted]"
        );
    }
}
