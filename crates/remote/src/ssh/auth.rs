//! Public-key authentication, in this order: ssh-agent identities, the configured
//! key and IdentityFiles, then the default keys (~/.ssh/id_ed25519, id_ecdsa,
//! id_rsa). Encrypted key files are skipped (fleet never prompts); load them into
//! ssh-agent. Key material never reaches a message: only paths and fingerprints do.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::MethodKind;
use russh::client::{AuthResult, Handle};
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::ssh_key::PrivateKey;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey};

use super::SshError;
use super::connect::Checker;
use super::known_hosts::fingerprint;
use super::options::Resolved;

/// Default identities, in OpenSSH's order (without the DSA and security-key ones
/// fleet cannot use).
const DEFAULT_KEYS: [&str; 3] = [".ssh/id_ed25519", ".ssh/id_ecdsa", ".ssh/id_rsa"];

/// A key file as found on disk.
enum KeyFile {
    Usable(Box<PrivateKey>),
    /// Encrypted: only its public half can be used (to ask the agent first).
    Encrypted(PublicKey),
    Unreadable(String),
    Missing,
}

fn read_key_file(path: &Path) -> KeyFile {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return KeyFile::Missing,
        Err(error) => return KeyFile::Unreadable(error.kind().to_string()),
    };
    // The OpenSSH format keeps the public key in the clear even when encrypted.
    if let Ok(key) = PrivateKey::from_openssh(&text) {
        return if key.is_encrypted() {
            KeyFile::Encrypted(key.public_key().clone())
        } else {
            KeyFile::Usable(Box::new(key))
        };
    }
    match russh::keys::decode_secret_key(&text, None) {
        Ok(key) => KeyFile::Usable(Box::new(key)),
        Err(russh::keys::Error::KeyIsEncrypted) => match public_key_beside(path) {
            Some(public) => KeyFile::Encrypted(public),
            None => KeyFile::Unreadable("encrypted".to_string()),
        },
        // The error names the format problem, never the key's content.
        Err(error) => KeyFile::Unreadable(error.to_string().to_lowercase()),
    }
}

fn public_key_beside(path: &Path) -> Option<PublicKey> {
    let mut public = path.as_os_str().to_owned();
    public.push(".pub");
    russh::keys::load_public_key(PathBuf::from(public)).ok()
}

/// Tries each identity until the server accepts one.
pub async fn authenticate(
    handle: &mut Handle<Checker>,
    resolved: &Resolved,
    label: &str,
) -> Result<(), SshError> {
    let user = resolved.user.as_str();
    let mut tried: Vec<String> = Vec::new();
    let mut offered: Vec<PublicKey> = Vec::new();
    let mut rsa_hash: Option<Option<HashAlg>> = None;

    // Configured files first, defaults after: read once, used for the agent's order.
    let mut files: Vec<(PathBuf, bool)> = resolved
        .identity_files
        .iter()
        .map(|f| (f.clone(), true))
        .collect();
    if let Some(home) = std::env::home_dir() {
        for default in DEFAULT_KEYS {
            let path = home.join(default);
            if !files.iter().any(|(f, _)| *f == path) {
                files.push((path, false));
            }
        }
    }
    let files: Vec<(PathBuf, bool, KeyFile)> = files
        .into_iter()
        .map(|(path, explicit)| {
            let key = read_key_file(&path);
            (path, explicit, key)
        })
        .collect();
    let wanted: Vec<PublicKey> = files
        .iter()
        .filter_map(|(_, explicit, key)| match key {
            KeyFile::Usable(key) if *explicit => Some(key.public_key().clone()),
            KeyFile::Encrypted(public) if *explicit => Some(public.clone()),
            _ => None,
        })
        .collect();

    if let Some(mut agent) = connect_agent(&mut tried).await {
        match agent.request_identities().await {
            Ok(identities) => {
                let mut keys: Vec<PublicKey> = identities
                    .into_iter()
                    .filter_map(|identity| match identity {
                        AgentIdentity::PublicKey { key, .. } => Some(key),
                        // User certificates are not supported yet.
                        AgentIdentity::Certificate { .. } => None,
                    })
                    .collect();
                // The agent's copies of the configured keys go first: sshd allows
                // only MaxAuthTries (6) attempts. With IdentitiesOnly, only those.
                keys.sort_by_key(|key| !wanted.iter().any(|w| w.key_data() == key.key_data()));
                if resolved.identities_only {
                    keys.retain(|key| wanted.iter().any(|w| w.key_data() == key.key_data()));
                }
                for key in keys {
                    let hash = hash_for(handle, &key, &mut rsa_hash).await;
                    let described = format!("agent key {}", fingerprint(&key));
                    let result = handle
                        .authenticate_publickey_with(user, key.clone(), hash, &mut agent)
                        .await;
                    offered.push(key);
                    match result {
                        Ok(AuthResult::Success) => return Ok(()),
                        Ok(AuthResult::Failure {
                            remaining_methods, ..
                        }) => {
                            tried.push(described);
                            if !remaining_methods.contains(&MethodKind::PublicKey) {
                                return Err(auth_error(label, user, tried));
                            }
                        }
                        Err(error) => {
                            tried.push(format!("{described} (agent: {error})"));
                        }
                    }
                }
            }
            Err(error) => tried.push(format!("ssh-agent (cannot list keys: {error})")),
        }
    }

    for (path, explicit, key) in files {
        let shown = path.display();
        let key = match key {
            KeyFile::Usable(key) => key,
            KeyFile::Missing if explicit => {
                tried.push(format!("{shown} (not found)"));
                continue;
            }
            KeyFile::Missing => continue,
            KeyFile::Encrypted(public) => {
                if !offered.iter().any(|o| o.key_data() == public.key_data()) {
                    tried.push(format!("{shown} (encrypted, skipped: add it to ssh-agent)"));
                }
                continue;
            }
            KeyFile::Unreadable(reason) => {
                tried.push(format!("{shown} (unreadable: {reason})"));
                continue;
            }
        };
        let public = key.public_key().clone();
        if offered.iter().any(|o| o.key_data() == public.key_data()) {
            continue;
        }
        let hash = hash_for(handle, &public, &mut rsa_hash).await;
        let result = handle
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(*key), hash))
            .await;
        offered.push(public);
        match result {
            Ok(AuthResult::Success) => return Ok(()),
            Ok(AuthResult::Failure {
                remaining_methods, ..
            }) => {
                tried.push(shown.to_string());
                if !remaining_methods.contains(&MethodKind::PublicKey) {
                    break;
                }
            }
            Err(error) => {
                return Err(SshError::Connect {
                    host: label.to_string(),
                    source: format!("during authentication: {error}").to_lowercase(),
                });
            }
        }
    }
    Err(auth_error(label, user, tried))
}

fn auth_error(label: &str, user: &str, tried: Vec<String>) -> SshError {
    SshError::Auth {
        host: label.to_string(),
        user: user.to_string(),
        tried,
    }
}

/// ssh-agent when `SSH_AUTH_SOCK` names one; a broken socket is noted and skipped.
async fn connect_agent(tried: &mut Vec<String>) -> Option<AgentClient<tokio::net::UnixStream>> {
    let socket = std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty())?;
    match AgentClient::connect_uds(&socket).await {
        Ok(agent) => Some(agent),
        Err(error) => {
            tried.push(format!(
                "ssh-agent at {} (cannot connect: {error})",
                Path::new(&socket).display()
            ));
            None
        }
    }
}

/// RSA signs with the best SHA-2 the server accepts (OpenSSH 8.8+ refuses SHA-1);
/// asked once per connection, as the answer may take the server a round trip.
async fn hash_for(
    handle: &Handle<Checker>,
    key: &PublicKey,
    cache: &mut Option<Option<HashAlg>>,
) -> Option<HashAlg> {
    if !key.algorithm().is_rsa() {
        return None;
    }
    if let Some(hash) = cache {
        return *hash;
    }
    let hash = match handle.best_supported_rsa_hash().await {
        Ok(Some(hash)) => hash,
        // No server-sig-algs: an old server, which only knows ssh-rsa (SHA-1).
        Ok(None) => None,
        Err(_) => Some(HashAlg::Sha256),
    };
    *cache = Some(hash);
    hash
}
