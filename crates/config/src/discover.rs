//! Which config file a command reads when none is named: `FLEET_CONFIG`, else the first
//! of fleet's and PM2's usual names in the working directory. The CLI and the deploy
//! code (which looks for a release's app config on a host) share this one list.

use std::path::{Path, PathBuf};

/// The config files searched, in order: fleet's own name, then PM2's.
pub const CONFIG_NAMES: &[&str] = &[
    "fleet.toml",
    "ecosystem.config.js",
    "ecosystem.config.cjs",
    "ecosystem.config.mjs",
    "ecosystem.json",
    "ecosystem.yaml",
    "ecosystem.yml",
];

/// `FLEET_CONFIG` when set, else the first of `CONFIG_NAMES` that is a file in `dir`.
pub fn discover(dir: &Path) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FLEET_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    first_in(dir)
}

/// As `discover`, but never a JavaScript file found by name: asking whether a word
/// names a stage (`fleet logs api`) must not run code nobody named. `FLEET_CONFIG`
/// names its file, so it is taken as it is.
pub fn discover_data(dir: &Path) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FLEET_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    CONFIG_NAMES
        .iter()
        .filter(|name| !is_javascript(name))
        .map(|name| dir.join(name))
        .find(|path| path.is_file())
}

/// Whether a config file is JavaScript (evaluated with node).
pub fn is_javascript(name: &str) -> bool {
    [".js", ".cjs", ".mjs"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// The first of `CONFIG_NAMES` that is a file in `dir`.
pub fn first_in(dir: &Path) -> Option<PathBuf> {
    CONFIG_NAMES
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_toml_comes_before_pm2_names() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(first_in(dir.path()), None);
        std::fs::write(dir.path().join("ecosystem.config.js"), "").expect("write");
        assert_eq!(
            first_in(dir.path()),
            Some(dir.path().join("ecosystem.config.js"))
        );
        std::fs::write(dir.path().join("fleet.toml"), "").expect("write");
        assert_eq!(first_in(dir.path()), Some(dir.path().join("fleet.toml")));
    }
}
