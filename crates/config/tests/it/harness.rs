//! Temp projects with fake interpreters on PATH, so resolution does not depend on what
//! the test machine has installed (except real `node` for JavaScript files).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use fleet_config::{ConfigErrors, ConfigFile, Format, LoadOptions};

pub const HOME: &str = "/home/tester";

/// Interpreters faked in every project's `bin/`. `node` is faked only when the machine
/// has none, since a real one is needed to evaluate JavaScript configs.
const FAKE_PROGRAMS: &[&str] = &["python3", "bash", "ruby", "bun", "redis-server"];

pub fn node_available() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("node").is_file()))
}

pub struct Project {
    pub dir: tempfile::TempDir,
    pub opts: LoadOptions,
}

impl Project {
    pub fn new() -> Project {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join(".fakebin");
        fs::create_dir(&bin).unwrap();
        let mut programs = FAKE_PROGRAMS.to_vec();
        if !node_available() {
            programs.push("node");
        }
        for program in programs {
            write_executable(&bin.join(program), "#!/bin/sh\n");
        }
        let path = match std::env::var("PATH") {
            Ok(real) => format!("{}:{real}", bin.display()),
            Err(_) => bin.display().to_string(),
        };
        let inherited_env = BTreeMap::from([
            ("PATH".to_string(), path),
            ("HOME".to_string(), HOME.to_string()),
            ("SECRET_TOKEN".to_string(), "s3cret".to_string()),
            ("LANG".to_string(), "C.UTF-8".to_string()),
        ]);
        let opts = LoadOptions {
            env_stage: None,
            only: Vec::new(),
            inherited_env: inherited_env.into(),
            cwd: dir.path().to_path_buf(),
        };
        Project { dir, opts }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file (creating directories) and returns its absolute path.
    pub fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.path().join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        path
    }

    pub fn executable(&self, name: &str, content: &str) -> PathBuf {
        let path = self.file(name, content);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    pub fn with_stage(mut self, stage: &str) -> Project {
        self.opts.env_stage = Some(stage.to_string());
        self
    }

    pub fn with_only(mut self, only: &[&str]) -> Project {
        self.opts.only = only.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Loads `text` as `fleet.toml` (or `ecosystem.json`, `ecosystem.yaml`) in the project.
    pub fn load(&self, format: Format, text: &str) -> Result<ConfigFile, ConfigErrors> {
        let name = match format {
            Format::Toml => "fleet.toml",
            Format::Json => "ecosystem.json",
            Format::Yaml => "ecosystem.yaml",
        };
        fleet_config::load_str(text, format, Path::new(name), &self.opts)
    }

    pub fn toml(&self, text: &str) -> Result<ConfigFile, ConfigErrors> {
        self.load(Format::Toml, text)
    }

    pub fn json(&self, text: &str) -> Result<ConfigFile, ConfigErrors> {
        self.load(Format::Json, text)
    }

    pub fn yaml(&self, text: &str) -> Result<ConfigFile, ConfigErrors> {
        self.load(Format::Yaml, text)
    }

    /// Writes `name` and loads it from disk.
    pub fn load_file(&self, name: &str, text: &str) -> Result<ConfigFile, ConfigErrors> {
        self.file(name, text);
        fleet_config::load(Path::new(name), &self.opts)
    }
}

pub fn write_executable(path: &Path, content: &str) {
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

pub fn display(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// `(line, key, message)` of every error, for compact assertions.
pub fn summary(errors: &ConfigErrors) -> Vec<(Option<u32>, String, String)> {
    errors
        .errors
        .iter()
        .map(|e| (e.line, e.key.clone(), e.message.clone()))
        .collect()
}

#[track_caller]
pub fn expect_errors(result: Result<ConfigFile, ConfigErrors>) -> ConfigErrors {
    match result {
        Ok(file) => panic!("expected errors, loaded {} apps", file.apps.len()),
        Err(errors) => errors,
    }
}

#[track_caller]
pub fn expect_ok(result: Result<ConfigFile, ConfigErrors>) -> ConfigFile {
    match result {
        Ok(file) => file,
        Err(errors) => panic!("expected a valid config, got:\n{errors}"),
    }
}
