//! `interpreter = "node@20.12.2"` (or `node@20`): PM2 runs the script with that Node
//! version from nvm; fleet finds it where nvm, fnm, volta or n install Node versions,
//! the newest match of a partial version first, and says where it looked when none is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The interpreter's version when it is `node@<version>`.
pub(crate) fn requested(interpreter: &str) -> Option<&str> {
    interpreter.strip_prefix("node@")
}

/// The `node` binary of `version` (`20`, `20.12` or `20.12.2`, with or without a `v`).
pub(crate) fn find(
    version: &str,
    env: &BTreeMap<String, String>,
    home: Option<&str>,
) -> Result<PathBuf, (String, String)> {
    let version = version.strip_prefix('v').unwrap_or(version);
    let valid = !version.is_empty()
        && version.split('.').count() <= 3
        && version
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    if !valid {
        return Err((
            format!("node@{version} is not a version"),
            "write numbers and dots, like node@20 or node@20.12.2".to_string(),
        ));
    }
    let wanted: Vec<u64> = version.split('.').filter_map(|p| p.parse().ok()).collect();
    let var = |key: &str| env.get(key).filter(|v| !v.is_empty()).map(PathBuf::from);
    let home = home.map(PathBuf::from);
    let under_home = |rest: &str| home.as_ref().map(|h| h.join(rest));
    // (versions directory, how a version's directory is named, the binary inside it)
    let managers: Vec<(Option<PathBuf>, &str, &str)> = vec![
        (
            var("NVM_DIR")
                .or(under_home(".nvm"))
                .map(|d| d.join("versions/node")),
            "v",
            "bin/node",
        ),
        (
            var("FNM_DIR")
                .or(under_home(".local/share/fnm"))
                .map(|d| d.join("node-versions")),
            "v",
            "installation/bin/node",
        ),
        (
            var("VOLTA_HOME")
                .or(under_home(".volta"))
                .map(|d| d.join("tools/image/node")),
            "",
            "bin/node",
        ),
        (
            Some(var("N_PREFIX").unwrap_or_else(|| PathBuf::from("/usr/local")))
                .map(|d| d.join("n/versions/node")),
            "",
            "bin/node",
        ),
    ];
    let mut best: Option<(Vec<u64>, PathBuf)> = None;
    let mut looked = Vec::new();
    for (dir, prefix, binary) in managers {
        let Some(dir) = dir else { continue };
        looked.push(dir.display().to_string());
        for (found, path) in versions_in(&dir, prefix, binary) {
            if found.starts_with(&wanted) && best.as_ref().is_none_or(|(b, _)| found > *b) {
                best = Some((found, path));
            }
        }
    }
    best.map(|(_, path)| path).ok_or_else(|| {
        (
            format!(
                "node@{version} is not installed here (looked in {})",
                looked.join(", ")
            ),
            format!("install it (`nvm install {version}`), or set `interpreter` to a node binary"),
        )
    })
}

/// Every installed version under `dir` whose binary exists, as numbers.
fn versions_in(dir: &Path, prefix: &str, binary: &str) -> Vec<(Vec<u64>, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let numbers: Vec<u64> = name
                .strip_prefix(prefix)?
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            let path = entry.path().join(binary);
            path.is_file().then_some((numbers, path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(root: &Path, dir: &str) -> PathBuf {
        let path = root.join(dir);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        path
    }

    #[test]
    fn the_newest_match_across_managers_wins() {
        let home = tempfile::tempdir().unwrap();
        let root = home.path();
        install(root, ".nvm/versions/node/v20.11.1/bin/node");
        let newest = install(root, ".volta/tools/image/node/20.12.2/bin/node");
        let eighteen = install(
            root,
            ".local/share/fnm/node-versions/v18.19.0/installation/bin/node",
        );
        let env = BTreeMap::new();
        let home = root.to_str();
        assert_eq!(find("20", &env, home), Ok(newest.clone()));
        assert_eq!(find("20.12.2", &env, home), Ok(newest));
        assert_eq!(find("v18", &env, home), Ok(eighteen));
        let (missing, _) = find("22", &env, home).unwrap_err();
        assert!(missing.contains(".nvm/versions/node"), "{missing}");
        assert!(find("20/../../bin", &env, home).is_err());
        assert!(find("", &env, home).is_err());
    }

    #[test]
    fn nvm_dir_overrides_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let node = install(dir.path(), "versions/node/v22.1.0/bin/node");
        let env = BTreeMap::from([("NVM_DIR".to_string(), dir.path().display().to_string())]);
        assert_eq!(find("22", &env, None), Ok(node));
    }
}
