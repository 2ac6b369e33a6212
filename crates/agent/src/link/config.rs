//! Where a joined agent keeps its controller settings (`FLEET_HOME/controller/`): the
//! URL it joined, its host name, the CA, its certificate and key, and the controllers
//! the last welcome named, in the order the link tries them.

use std::path::PathBuf;

use anyhow::Context;

use super::MAX_CONTROLLERS;
use crate::store::{Home, write_atomic};

/// Where a joined agent keeps its controller settings: `FLEET_HOME/controller/`.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    pub url: String,
    pub host: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// Every controller sharing the joined one's store, as the last `Welcome` said
    /// (`controller/controllers`, a URL a line): where to turn when one is gone.
    pub controllers: Vec<String>,
}

pub(super) fn dir(home: &Home) -> PathBuf {
    home.root.join("controller")
}

impl LinkConfig {
    /// The saved settings, if this agent has joined a controller.
    pub fn load(home: &Home) -> anyhow::Result<Option<LinkConfig>> {
        let dir = dir(home);
        if !dir.join("url").exists() {
            return Ok(None);
        }
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .with_context(|| format!("cannot read {}", dir.join(name).display()))
        };
        Ok(Some(LinkConfig {
            url: read("url")?.trim().to_string(),
            host: read("host")?.trim().to_string(),
            ca_pem: read("ca.pem")?,
            cert_pem: read("agent.pem")?,
            key_pem: read("agent.key")?,
            controllers: std::fs::read_to_string(dir.join("controllers"))
                .map(|text| parse_controllers(&text))
                .unwrap_or_default(),
        }))
    }

    /// Where to try, in order: the controllers the last welcome named (the one that
    /// sent it first), then the URL joined with if it is not among them.
    pub(super) fn candidates(&self) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        for url in self.controllers.iter().chain(std::iter::once(&self.url)) {
            if !all.contains(url) {
                all.push(url.clone());
            }
        }
        all
    }

    /// Keeps the controllers a welcome named, when they changed.
    pub(super) fn save_controllers(&mut self, home: &Home, urls: &[String]) {
        let urls = parse_controllers(&urls.join("\n"));
        if urls.is_empty() || urls == self.controllers {
            return;
        }
        let text = urls.iter().map(|u| format!("{u}\n")).collect::<String>();
        match write_atomic(&dir(home).join("controllers"), text.as_bytes()) {
            Ok(()) => {
                tracing::info!(controllers = ?urls, "the controllers sharing this one's store")
            }
            Err(error) => tracing::warn!(%error, "cannot save the controllers' addresses"),
        }
        self.controllers = urls;
    }

    pub(super) fn save(&self, home: &Home) -> anyhow::Result<()> {
        let dir = dir(home);
        std::fs::create_dir_all(&dir)?;
        for (name, content) in [
            ("url", &self.url),
            ("host", &self.host),
            ("ca.pem", &self.ca_pem),
            ("agent.pem", &self.cert_pem),
            ("agent.key", &self.key_pem),
        ] {
            write_atomic(&dir.join(name), content.as_bytes())?;
        }
        // A new join forgets the controllers of an earlier one.
        if self.controllers.is_empty() {
            let _ = std::fs::remove_file(dir.join("controllers"));
        }
        Ok(())
    }
}

/// The https URLs of a `controllers` file or a welcome, at most `MAX_CONTROLLERS`;
/// anything else is ignored (never a plain-text controller).
fn parse_controllers(text: &str) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if fleet_proto::ops::check_controller_url(line).is_ok() && !urls.iter().any(|u| u == line) {
            urls.push(line.to_owned());
        }
        if urls.len() == MAX_CONTROLLERS {
            break;
        }
    }
    urls
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any `controllers` file: at most `MAX_CONTROLLERS` https URLs, never a panic.
        #[test]
        fn any_controllers_file_gives_at_most_the_bound_of_https_urls(text in "\\PC{0,2000}") {
            let urls = parse_controllers(&text);
            proptest::prop_assert!(urls.len() <= MAX_CONTROLLERS);
            proptest::prop_assert!(urls.iter().all(|u| u.starts_with("https://")));
        }
    }

    #[test]
    fn controllers_are_https_urls_tried_after_the_ones_a_welcome_named() {
        let text = "https://b:7443\nhttp://plain:7443\n\n https://a:7443 \nhttps://b:7443\n-x\n";
        assert_eq!(
            parse_controllers(text),
            ["https://b:7443", "https://a:7443"]
        );
        let many: String = (0..100).map(|i| format!("https://c{i}:7443\n")).collect();
        assert_eq!(parse_controllers(&many).len(), MAX_CONTROLLERS);
        let config = LinkConfig {
            url: "https://a:7443".into(),
            host: "web-1".into(),
            ca_pem: String::new(),
            cert_pem: String::new(),
            key_pem: String::new(),
            controllers: vec!["https://b:7443".into(), "https://c:7443".into()],
        };
        assert_eq!(
            config.candidates(),
            ["https://b:7443", "https://c:7443", "https://a:7443"]
        );
    }
}
