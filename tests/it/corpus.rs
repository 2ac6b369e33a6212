//! The PM2 corpus (`tests/corpus/pm2`): ecosystem files in the shapes public projects
//! use, each with stand-in scripts, started with `fleet start` from the directory the
//! project would run pm2 from. Each entry's `corpus.toml` says the command (default
//! `start <the ecosystem file>`), the instances expected online (`name=count, ...`), or,
//! for a file PM2 refuses, what fleet's refusal must mention.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::{Fleet, by_name};

const TIMEOUT: Duration = Duration::from_secs(20);

struct Entry {
    name: String,
    dir: PathBuf,
    command: Vec<String>,
    expect: Vec<(String, usize)>,
    refused: Option<String>,
}

fn corpus() -> Vec<Entry> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/pm2");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/corpus/pm2")
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    dirs.into_iter().map(entry).collect()
}

fn entry(dir: PathBuf) -> Entry {
    let meta = std::fs::read_to_string(dir.join("corpus.toml")).unwrap_or_default();
    let value = |key: &str| -> Option<String> {
        meta.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .map(|v| serde_json::from_str(v).expect("a quoted string"))
    };
    let command = value("command").unwrap_or_else(|| {
        let file = fleet_config_name(&dir);
        format!("start {file}")
    });
    let expect = value("expect")
        .unwrap_or_default()
        .split(", ")
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (name, count) = pair.rsplit_once('=').expect("name=count");
            (name.to_string(), count.parse().expect("a count"))
        })
        .collect();
    Entry {
        name: dir.file_name().unwrap().to_string_lossy().into_owned(),
        command: command.split(' ').map(str::to_string).collect(),
        expect,
        refused: value("refused"),
        dir,
    }
}

/// The ecosystem file of an entry without a command: the one PM2's name it has.
fn fleet_config_name(dir: &Path) -> String {
    [
        "ecosystem.config.js",
        "ecosystem.config.cjs",
        "ecosystem.config.mjs",
        "ecosystem.json",
        "ecosystem.yaml",
    ]
    .into_iter()
    .find(|name| dir.join(name).is_file())
    .unwrap_or_else(|| panic!("{}: no ecosystem file", dir.display()))
    .to_string()
}

/// Copies an entry into the test's work directory (modes kept).
fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for item in std::fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        let target = to.join(item.file_name());
        if item.file_type().unwrap().is_dir() {
            copy(&item.path(), &target);
        } else {
            std::fs::copy(item.path(), &target).unwrap();
        }
    }
}

#[test]
fn every_corpus_file_starts_as_under_pm2() {
    let fleet = Fleet::new();
    let entries = corpus();
    assert!(
        entries.len() >= 30,
        "the corpus has {} files",
        entries.len()
    );
    for entry in entries {
        let project = fleet.path(&entry.name);
        copy(&entry.dir, &project);
        let args: Vec<&str> = entry.command.iter().map(String::as_str).collect();
        let mut command = fleet.command(&args);
        command.current_dir(&project);
        let output = fleet.run_with(command);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if let Some(refused) = &entry.refused {
            assert_eq!(output.status.code(), Some(2), "{}: {stderr}", entry.name);
            assert!(
                stderr.contains(refused.as_str()),
                "{}: {stderr}",
                entry.name
            );
            continue;
        }
        assert!(output.status.success(), "{}: {stderr}", entry.name);
        let described = format!("{}: {:?}", entry.name, entry.expect);
        let list = fleet.wait_list(&described, TIMEOUT, |list| {
            let total: usize = entry.expect.iter().map(|(_, n)| n).sum();
            list.len() == total
                && entry.expect.iter().all(|(name, count)| {
                    let instances = by_name(list, name);
                    instances.len() == *count && instances.iter().all(|p| p["status"] == "online")
                })
        });
        assert!(!list.is_empty(), "{}", entry.name);
        fleet.ok(&["delete", "all"]);
        fleet.wait_list("the entry's apps gone", TIMEOUT, |l| l.is_empty());
    }
}
