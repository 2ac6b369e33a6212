//! The controller's own SSH identity for the deploys it runs: `deploy_key` (ed25519,
//! made on first use unless `--deploy-key FILE` brings one; `fleet-controller ssh-key
//! show` prints the public half to authorize on hosts), `known_hosts` (learned only with
//! `fleet-controller known-hosts add` or `--accept-new-host-keys` on a submission) and
//! an empty ssh_config (never the account's `~/.ssh`). All owner-only in the data
//! directory.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::Error;

/// The deployer's files.
#[derive(Clone, Debug)]
pub struct Files {
    /// The data directory.
    pub dir: PathBuf,
    pub deploy_key: PathBuf,
    /// Whether `deploy_key` was brought (`--deploy-key`), not made here.
    pub brought: bool,
    pub known_hosts: PathBuf,
    pub ssh_config: PathBuf,
}

impl Files {
    pub fn new(data_dir: &Path, deploy_key: Option<&Path>) -> Files {
        Files {
            dir: data_dir.to_owned(),
            deploy_key: deploy_key.map_or_else(|| data_dir.join("deploy_key"), Path::to_owned),
            brought: deploy_key.is_some(),
            known_hosts: data_dir.join("known_hosts"),
            ssh_config: data_dir.join("ssh_config"),
        }
    }

    /// Makes what is missing: the key (unless brought: then it must exist), the empty
    /// ssh_config and the directory of uploaded releases.
    pub fn prepare(&self) -> Result<(), Error> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.dir.join("deploys"))
            .map_err(|e| Error::io(&self.dir.join("deploys"), e))?;
        if !self.ssh_config.exists() {
            crate::pki::write_file(
                &self.ssh_config,
                "# fleet-controller: no ssh_config\n",
                0o600,
            )?;
        }
        if self.deploy_key.exists() {
            return Ok(());
        }
        if self.brought {
            return Err(Error::Invalid(format!(
                "--deploy-key {}: no such file",
                self.deploy_key.display()
            )));
        }
        let (private, public) =
            fleet_remote::ssh::keys::new_ed25519("fleet-controller").map_err(Error::Invalid)?;
        crate::pki::write_file(&self.deploy_key, &private, 0o600)?;
        crate::pki::write_file(&self.deploy_key.with_extension("pub"), &public, 0o644)?;
        tracing::info!(key = %self.deploy_key.display(), "made the controller's deploy key");
        Ok(())
    }

    /// The deploy key's public half, an `authorized_keys` line.
    pub fn public_key(&self) -> Result<String, Error> {
        let private = std::fs::read_to_string(&self.deploy_key)
            .map_err(|e| Error::io(&self.deploy_key, e))?;
        fleet_remote::ssh::keys::public_of(&private)
            .map_err(|e| Error::Invalid(format!("{}: {e}", self.deploy_key.display())))
    }

    /// Appends checked known_hosts lines (`ssh-keyscan` output); each entry's hosts and
    /// fingerprint. Nothing is written when a line is wrong.
    pub fn add_known_hosts(&self, text: &str) -> Result<Vec<(String, String)>, Error> {
        let found = fleet_remote::ssh::keys::check_known_hosts(text)
            .map_err(|e| Error::Invalid(format!("known hosts: {e}")))?;
        if found.is_empty() {
            return Err(Error::Invalid(
                "no known_hosts line given\nhint: ssh-keyscan <host> | fleet-controller known-hosts add".into(),
            ));
        }
        let lines: String = (text.lines())
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.known_hosts)
            .map_err(|e| Error::io(&self.known_hosts, e))?;
        file.write_all(lines.as_bytes())
            .map_err(|e| Error::io(&self.known_hosts, e))?;
        Ok(found)
    }

    /// Every known host entry: hosts and fingerprint.
    pub fn known_hosts(&self) -> Result<Vec<(String, String)>, Error> {
        match std::fs::read_to_string(&self.known_hosts) {
            Ok(text) => fleet_remote::ssh::keys::check_known_hosts(&text)
                .map_err(|e| Error::Invalid(format!("{}: {e}", self.known_hosts.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io(&self.known_hosts, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_is_made_once_owner_only_and_known_hosts_are_checked_before_written() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(dir.path(), None);
        files.prepare().unwrap();
        let public = files.public_key().unwrap();
        files.prepare().unwrap();
        assert_eq!(files.public_key().unwrap(), public, "made once");
        let mode = std::fs::metadata(&files.deploy_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let key = public.rsplit_once(' ').unwrap().0;
        assert!(files.add_known_hosts("h1 not-a-key\n").is_err());
        assert!(files.known_hosts().unwrap().is_empty(), "nothing written");
        files
            .add_known_hosts(&format!("# keyscan\nh1 {key}\n"))
            .unwrap();
        assert_eq!(files.known_hosts().unwrap()[0].0, "h1");
        let brought = Files::new(dir.path(), Some(&dir.path().join("missing")));
        assert!(brought.prepare().is_err());
    }
}
