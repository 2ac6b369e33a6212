//! The `[alerts]` section of the controller's config file (`--config`): the rules'
//! thresholds and where alerts go (webhooks: generic JSON or Slack-compatible; email
//! over SMTP). Unknown keys are refused with the file and line; URLs must be https
//! (or http to a loopback address), SMTP must use TLS (or go to a loopback address).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::rules::RuleConfig;

/// The controller's config file: only `[alerts]` today.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    alerts: Option<Section>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    #[serde(default = "yes")]
    errored: bool,
    #[serde(default)]
    crash_loop: Option<CrashLoop>,
    /// A duration, or `false` for no such alert.
    #[serde(default)]
    host_unreachable: Option<toml::Value>,
    #[serde(default)]
    memory: Option<Memory>,
    #[serde(default = "yes")]
    deploy_failed: bool,
    #[serde(default)]
    webhook: Vec<WebhookSection>,
    #[serde(default)]
    email: Vec<EmailSection>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CrashLoop {
    restarts: u32,
    within: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Memory {
    above: String,
    #[serde(rename = "for")]
    lasting: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookSection {
    name: Option<String>,
    url: String,
    #[serde(default)]
    format: Format,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailSection {
    name: Option<String>,
    smtp: String,
    from: String,
    to: Vec<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
}

/// A webhook's payload: fleet's own JSON, or `{"text": ...}` as Slack (and Mattermost,
/// Rocket.Chat, Discord's /slack endpoint) take it.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Slack,
}

/// Where alerts go.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Webhook {
        name: String,
        url: http::Uri,
        format: Format,
        ca_pem: Option<String>,
    },
    Email {
        name: String,
        host: String,
        port: u16,
        /// `smtps://`: TLS from the start; else STARTTLS, required unless loopback.
        implicit_tls: bool,
        loopback: bool,
        from: String,
        to: Vec<String>,
        credentials: Option<(String, String)>,
        ca_pem: Option<String>,
    },
}

impl Target {
    /// What the audit log and `alerts test` call it (never its URL: a Slack URL is a
    /// secret).
    pub fn name(&self) -> &str {
        match self {
            Target::Webhook { name, .. } | Target::Email { name, .. } => name,
        }
    }
}

/// Alerts as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct Alerts {
    pub rules: RuleConfig,
    pub targets: Vec<Target>,
}

/// Reads the config file at `path`; `None` when it has no `[alerts]`.
pub fn load(path: &Path) -> Result<Option<Alerts>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text, path)
}

/// Parses a config file's text; errors name the file, and the line and key where the
/// TOML reader can tell.
pub fn parse(text: &str, path: &Path) -> Result<Option<Alerts>, String> {
    let file: File = toml::from_str(text).map_err(|e| format!("{}: {e}", path.display()))?;
    let Some(section) = file.alerts else {
        return Ok(None);
    };
    let at = |key: &str, error: String| format!("{}: [alerts] {key}: {error}", path.display());
    let duration = |key: &str, text: &str| {
        fleet_config::parse_duration_ms(text)
            .map(Duration::from_millis)
            .map_err(|e| at(key, e))
    };
    let crash_loop = match section.crash_loop {
        Some(c) if c.restarts == 0 => {
            return Err(at("crash_loop.restarts", "must be at least 1".into()));
        }
        Some(c) => Some((c.restarts, duration("crash_loop.within", &c.within)?)),
        None => Some((5, Duration::from_secs(600))),
    };
    let host_unreachable = match section.host_unreachable {
        None => Some(Duration::from_secs(120)),
        Some(toml::Value::Boolean(false)) => None,
        Some(toml::Value::String(text)) => Some(duration("host_unreachable", &text)?),
        Some(other) => {
            return Err(at(
                "host_unreachable",
                format!(
                    "expected a duration like \"2m\" or false, got a {}",
                    other.type_str()
                ),
            ));
        }
    };
    let memory = match section.memory {
        Some(m) => Some((
            fleet_config::parse_bytes(&m.above).map_err(|e| at("memory.above", e))?,
            duration("memory.for", &m.lasting)?,
        )),
        None => None,
    };
    let mut targets = Vec::new();
    for (n, hook) in section.webhook.into_iter().enumerate() {
        targets.push(webhook(n, hook, &at)?);
    }
    for (n, section) in section.email.into_iter().enumerate() {
        targets.push(email(n, section, &at)?);
    }
    Ok(Some(Alerts {
        rules: RuleConfig {
            errored: section.errored,
            crash_loop,
            host_unreachable,
            memory,
            deploy_failed: section.deploy_failed,
        },
        targets,
    }))
}

/// One `[[alerts.webhook]]`, the `n`th.
fn webhook(
    n: usize,
    hook: WebhookSection,
    at: &dyn Fn(&str, String) -> String,
) -> Result<Target, String> {
    let key = format!("webhook[{n}]");
    let url: http::Uri = hook
        .url
        .parse()
        .map_err(|e| at(&format!("{key}.url"), format!("{e}")))?;
    let host = url.host().unwrap_or_default();
    match url.scheme_str() {
        Some("https") => {}
        Some("http") if is_loopback(host) => {}
        _ => {
            return Err(at(
                &format!("{key}.url"),
                "only https:// (http:// to a loopback address)".into(),
            ));
        }
    }
    Ok(Target::Webhook {
        name: target_name(hook.name, "webhook", n, &key, at)?,
        url,
        format: hook.format,
        ca_pem: read_ca(hook.ca_file.as_deref(), &key, at)?,
    })
}

/// One `[[alerts.email]]`, the `n`th.
fn email(
    n: usize,
    email: EmailSection,
    at: &dyn Fn(&str, String) -> String,
) -> Result<Target, String> {
    let key = format!("email[{n}]");
    let url: http::Uri = email
        .smtp
        .parse()
        .map_err(|e| at(&format!("{key}.smtp"), format!("{e}")))?;
    let host = url.host().unwrap_or_default().to_owned();
    let implicit_tls = match url.scheme_str() {
        Some("smtps") => true,
        Some("smtp") => false,
        _ => {
            return Err(at(
                &format!("{key}.smtp"),
                "expected smtps://host[:465] or smtp://host[:587] (STARTTLS)".into(),
            ));
        }
    };
    if email.to.is_empty() {
        return Err(at(&format!("{key}.to"), "names no recipient".into()));
    }
    for address in std::iter::once(&email.from).chain(&email.to) {
        address
            .parse::<lettre::Address>()
            .map_err(|e| at(&key, format!("{address:?} is not an email address: {e}")))?;
    }
    let credentials = match (email.username, email.password_file) {
        (Some(user), Some(file)) => {
            let password = std::fs::read_to_string(&file).map_err(|e| {
                at(
                    &format!("{key}.password_file"),
                    format!("{}: {e}", file.display()),
                )
            })?;
            Some((user, password.trim_end_matches(['\r', '\n']).to_owned()))
        }
        (None, None) => None,
        _ => return Err(at(&key, "username and password_file go together".into())),
    };
    Ok(Target::Email {
        name: target_name(email.name, "email", n, &key, at)?,
        port: url
            .port_u16()
            .unwrap_or(if implicit_tls { 465 } else { 587 }),
        loopback: is_loopback(&host),
        host,
        implicit_tls,
        from: email.from,
        to: email.to,
        credentials,
        ca_pem: read_ca(email.ca_file.as_deref(), &key, at)?,
    })
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn target_name(
    name: Option<String>,
    kind: &str,
    n: usize,
    key: &str,
    at: &dyn Fn(&str, String) -> String,
) -> Result<String, String> {
    let name = name.unwrap_or_else(|| format!("{kind}-{}", n + 1));
    crate::tokens::check_name(&name).map_err(|e| at(&format!("{key}.name"), e))?;
    Ok(name)
}

fn read_ca(
    file: Option<&Path>,
    key: &str,
    at: &dyn Fn(&str, String) -> String,
) -> Result<Option<String>, String> {
    file.map(|file| {
        std::fs::read_to_string(file).map_err(|e| {
            at(
                &format!("{key}.ca_file"),
                format!("{}: {e}", file.display()),
            )
        })
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Option<Alerts>, String> {
        parse(text, Path::new("controller.toml"))
    }

    #[test]
    fn defaults_and_targets_are_read() {
        let alerts = parse_text(
            "[alerts]\nmemory = { above = \"512M\", for = \"5m\" }\n\
             [[alerts.webhook]]\nurl = \"https://hooks.slack.com/services/T/B/X\"\nformat = \"slack\"\n\
             [[alerts.webhook]]\nname = \"local\"\nurl = \"http://127.0.0.1:9000/hook\"\n\
             [[alerts.email]]\nsmtp = \"smtps://mail.example.com\"\nfrom = \"fleet@example.com\"\nto = [\"ops@example.com\"]\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(alerts.rules.crash_loop, Some((5, Duration::from_secs(600))));
        assert_eq!(
            alerts.rules.host_unreachable,
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            alerts.rules.memory,
            Some((512 << 20, Duration::from_secs(300)))
        );
        let names: Vec<&str> = alerts.targets.iter().map(Target::name).collect();
        assert_eq!(names, ["webhook-1", "local", "email-1"]);
        assert!(matches!(
            &alerts.targets[2],
            Target::Email {
                port: 465,
                implicit_tls: true,
                ..
            }
        ));
        assert!(
            parse_text("[other]\n")
                .unwrap_err()
                .contains("unknown field")
        );
        assert_eq!(parse_text("").unwrap(), None);
    }

    #[test]
    fn the_example_config_file_is_valid() {
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/fleet-controller.toml");
        let password = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(password.path(), "secret\n").unwrap();
        let text = std::fs::read_to_string(&example).unwrap().replace(
            "/etc/fleet/smtp-password",
            password.path().to_str().unwrap(),
        );
        let alerts = parse(&text, &example).unwrap().unwrap();
        let names: Vec<&str> = alerts.targets.iter().map(Target::name).collect();
        assert_eq!(names, ["ops-slack", "pager", "ops-mail"]);
        assert!(
            matches!(&alerts.targets[2], Target::Email { credentials: Some((_, p)), .. } if p == "secret")
        );
        assert_eq!(
            alerts.rules.memory,
            Some((1 << 30, Duration::from_secs(300)))
        );
    }

    #[test]
    fn bad_input_names_the_file_line_and_key() {
        let error = parse_text("[alerts]\n\nerored = true\n").unwrap_err();
        assert!(
            error.contains("controller.toml")
                && error.contains("line 3")
                && error.contains("erored"),
            "{error}"
        );
        let error =
            parse_text("[alerts]\n[[alerts.webhook]]\nurl = \"http://hooks.example.com/x\"\n")
                .unwrap_err();
        assert!(
            error.contains("webhook[0].url") && error.contains("only https://"),
            "{error}"
        );
        let error =
            parse_text("[alerts]\ncrash_loop = { restarts = 3, within = \"soon\" }\n").unwrap_err();
        assert!(error.contains("crash_loop.within"), "{error}");
        let error = parse_text(
            "[alerts]\n[[alerts.email]]\nsmtp = \"smtp://m\"\nfrom = \"nope\"\nto = [\"a@b.c\"]\n",
        )
        .unwrap_err();
        assert!(
            error.contains("email[0]") && error.contains("\"nope\""),
            "{error}"
        );
        let error = parse_text("[alerts]\nhost_unreachable = 5\n").unwrap_err();
        assert!(error.contains("host_unreachable"), "{error}");
        assert_eq!(
            parse_text("[alerts]\nhost_unreachable = false\n")
                .unwrap()
                .unwrap()
                .rules
                .host_unreachable,
            None
        );
    }
}
