//! `FLEET_HOME/agent.toml`: the agent's own settings, read when it starts (`fleet
//! kill`, then any command, starts it again with new ones). Today one key:
//!
//! ```toml
//! metrics_listen = 9209                 # Prometheus' /metrics on 127.0.0.1:9209
//! # metrics_listen = "0.0.0.0:9209"     # any address, when written out
//! ```
//!
//! Unknown keys and bad values are refused with the file, line and key, and the agent
//! starts without what they would have set (a typo never stops the apps).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use serde::Deserialize;

/// The file's name in `FLEET_HOME`.
pub const FILE: &str = "agent.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    metrics_listen: Option<toml::Value>,
}

/// What the settings file says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Where to serve Prometheus' `/metrics` (off when `None`).
    pub metrics_listen: Option<SocketAddr>,
}

/// Reads `home/agent.toml`; no file means the defaults.
pub fn load(home: &Path) -> Result<Settings, String> {
    let path = home.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text, &path),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
        Err(error) => Err(format!("{}: {error}", path.display())),
    }
}

pub fn parse(text: &str, path: &Path) -> Result<Settings, String> {
    let file: File = toml::from_str(text).map_err(|e| format!("{}: {e}", path.display()))?;
    let bad = |what: String| format!("{}: metrics_listen: {what}", path.display());
    let loopback = |port: i64| {
        u16::try_from(port)
            .ok()
            .filter(|port| *port > 0)
            .map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .ok_or_else(|| bad(format!("{port} is not a port")))
    };
    let metrics_listen = match file.metrics_listen {
        None => None,
        Some(toml::Value::Integer(port)) => Some(loopback(port)?),
        Some(toml::Value::String(text)) => Some(match text.parse::<i64>() {
            Ok(port) => loopback(port)?,
            Err(_) => text.parse::<SocketAddr>().map_err(|_| {
                bad(format!(
                    "{text:?} is not a port or an address like 127.0.0.1:9209"
                ))
            })?,
        }),
        Some(other) => {
            return Err(bad(format!(
                "expected a port or an address, got a {}",
                other.type_str()
            )));
        }
    };
    Ok(Settings { metrics_listen })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Settings, String> {
        parse(text, Path::new("/home/app/.fleet/agent.toml"))
    }

    #[test]
    fn a_port_means_loopback_and_an_address_is_taken_as_written() {
        assert_eq!(parse_text("").unwrap(), Settings::default());
        let port = parse_text("metrics_listen = 9209\n").unwrap();
        assert_eq!(port.metrics_listen, Some("127.0.0.1:9209".parse().unwrap()));
        assert_eq!(parse_text("metrics_listen = \"9209\"\n").unwrap(), port);
        let any = parse_text("metrics_listen = \"0.0.0.0:9300\"\n").unwrap();
        assert_eq!(any.metrics_listen, Some("0.0.0.0:9300".parse().unwrap()));
    }

    #[test]
    fn bad_values_name_the_file_line_and_key() {
        let error = parse_text("\nmetric_listen = 9209\n").unwrap_err();
        assert!(
            error.contains("agent.toml")
                && error.contains("line 2")
                && error.contains("metric_listen"),
            "{error}"
        );
        for bad in [
            "metrics_listen = 0",
            "metrics_listen = 70000",
            "metrics_listen = \"web:80\"",
            "metrics_listen = true",
        ] {
            let error = parse_text(bad).unwrap_err();
            assert!(error.contains("metrics_listen"), "{bad}: {error}");
        }
    }
}
