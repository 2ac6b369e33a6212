//! Public-key authentication, in this order: ssh-agent identities (with
//! IdentitiesOnly, only the configured keys' copies), the configured key and
//! IdentityFiles, or when none is configured the default keys (~/.ssh/id_ed25519,
//! id_ecdsa, id_rsa), as OpenSSH does. Encrypted key files are skipped (fleet never
//! prompts); load them into ssh-agent. A key file others may read or write is refused,
//! as OpenSSH refuses it. Key material never reaches a message: only paths and
//! fingerprints do.

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
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return KeyFile::Missing,
        Ok(meta) if meta.mode() & 0o077 != 0 => {
            return KeyFile::Unreadable(format!(
                "permissions {:04o} are too open: others may read it; chmod 600 it",
                meta.mode() & 0o7777
            ));
        }
        _ => {}
    }
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

/// What was offered so far: for the error's list and to offer no key twice.
#[derive(Default)]
struct Attempts {
    tried: Vec<String>,
    offered: Vec<PublicKey>,
    /// The server's RSA signature algorithm, asked once.
    rsa_hash: Option<Option<HashAlg>>,
}

/// How an attempt ended, when it did not just go on to the next key.
enum Outcome {
    Accepted,
    /// The server takes no more public keys.
    NoMoreKeys,
}

/// Tries each identity until the server accepts one: the agent's (the configured
/// keys' copies first), then the key files.
pub async fn authenticate(
    handle: &mut Handle<Checker>,
    resolved: &Resolved,
    label: &str,
) -> Result<(), SshError> {
    let user = resolved.user.as_str();
    let mut attempts = Attempts::default();
    let files = key_files(resolved);
    let wanted: Vec<PublicKey> = files
        .iter()
        .filter_map(|(_, explicit, key)| match key {
            KeyFile::Usable(key) if *explicit => Some(key.public_key().clone()),
            KeyFile::Encrypted(public) if *explicit => Some(public.clone()),
            _ => None,
        })
        .collect();
    match try_agent(handle, resolved, &wanted, &mut attempts).await {
        Some(Outcome::Accepted) => return Ok(()),
        Some(Outcome::NoMoreKeys) => return Err(auth_error(label, user, attempts.tried)),
        None => {}
    }
    if try_files(handle, user, label, files, &mut attempts).await? {
        return Ok(());
    }
    Err(auth_error(label, user, attempts.tried))
}

/// Configured files first, defaults after, each read once (`true`: configured).
fn key_files(resolved: &Resolved) -> Vec<(PathBuf, bool, KeyFile)> {
    let mut files: Vec<(PathBuf, bool)> = resolved
        .identity_files
        .iter()
        .map(|f| (f.clone(), true))
        .collect();
    // The defaults only when nothing is configured (OpenSSH's rule).
    if let Some(home) = std::env::home_dir().filter(|_| files.is_empty()) {
        for default in DEFAULT_KEYS {
            let path = home.join(default);
            if !files.iter().any(|(f, _)| *f == path) {
                files.push((path, false));
            }
        }
    }
    files
        .into_iter()
        .map(|(path, explicit)| {
            let key = read_key_file(&path);
            (path, explicit, key)
        })
        .collect()
}

/// The agent's identities; the copies of the configured keys go first, since sshd
/// allows only MaxAuthTries (6) attempts. With IdentitiesOnly, only those.
async fn try_agent(
    handle: &mut Handle<Checker>,
    resolved: &Resolved,
    wanted: &[PublicKey],
    attempts: &mut Attempts,
) -> Option<Outcome> {
    let user = resolved.user.as_str();
    let mut agent = connect_agent(&mut attempts.tried).await?;
    let identities = match agent.request_identities().await {
        Ok(identities) => identities,
        Err(error) => {
            (attempts.tried).push(format!("ssh-agent (cannot list keys: {error})"));
            return None;
        }
    };
    let mut keys: Vec<PublicKey> = identities
        .into_iter()
        .filter_map(|identity| match identity {
            AgentIdentity::PublicKey { key, .. } => Some(key),
            // User certificates are not supported yet.
            AgentIdentity::Certificate { .. } => None,
        })
        .collect();
    keys.sort_by_key(|key| !wanted.iter().any(|w| w.key_data() == key.key_data()));
    if resolved.identities_only {
        keys.retain(|key| wanted.iter().any(|w| w.key_data() == key.key_data()));
    }
    for key in keys {
        let hash = hash_for(handle, &key, &mut attempts.rsa_hash).await;
        let described = format!("agent key {}", fingerprint(&key));
        let result = handle
            .authenticate_publickey_with(user, key.clone(), hash, &mut agent)
            .await;
        attempts.offered.push(key);
        match result {
            Ok(AuthResult::Success) => return Some(Outcome::Accepted),
            Ok(AuthResult::Failure {
                remaining_methods, ..
            }) => {
                attempts.tried.push(described);
                if !remaining_methods.contains(&MethodKind::PublicKey) {
                    return Some(Outcome::NoMoreKeys);
                }
            }
            Err(error) => {
                (attempts.tried).push(format!("{described} (agent: {error})"));
            }
        }
    }
    None
}

/// The key files not already offered through the agent; `true` once one is accepted.
async fn try_files(
    handle: &mut Handle<Checker>,
    user: &str,
    label: &str,
    files: Vec<(PathBuf, bool, KeyFile)>,
    attempts: &mut Attempts,
) -> Result<bool, SshError> {
    for (path, explicit, key) in files {
        let shown = path.display();
        let offered = |public: &PublicKey, attempts: &Attempts| {
            (attempts.offered.iter()).any(|o| o.key_data() == public.key_data())
        };
        let key = match key {
            KeyFile::Usable(key) => key,
            KeyFile::Missing if explicit => {
                attempts.tried.push(format!("{shown} (not found)"));
                continue;
            }
            KeyFile::Missing => continue,
            KeyFile::Encrypted(public) => {
                if !offered(&public, attempts) {
                    let note = format!("{shown} (encrypted, skipped: add it to ssh-agent)");
                    attempts.tried.push(note);
                }
                continue;
            }
            KeyFile::Unreadable(reason) => {
                (attempts.tried).push(format!("{shown} (unreadable: {reason})"));
                continue;
            }
        };
        let public = key.public_key().clone();
        if offered(&public, attempts) {
            continue;
        }
        let hash = hash_for(handle, &public, &mut attempts.rsa_hash).await;
        let result = handle
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(*key), hash))
            .await;
        attempts.offered.push(public);
        match result {
            Ok(AuthResult::Success) => return Ok(true),
            Ok(AuthResult::Failure {
                remaining_methods, ..
            }) => {
                attempts.tried.push(shown.to_string());
                if !remaining_methods.contains(&MethodKind::PublicKey) {
                    return Ok(false);
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
    Ok(false)
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
