//! Host key checking against OpenSSH known_hosts files: plain and hashed (`|1|`)
//! names, `*`/`?` and `!` patterns, `[host]:port`, `@revoked`; and learning a new key,
//! hashed with `HashKnownHosts yes` as OpenSSH writes it. `@cert-authority` lines name
//! the CAs whose host certificates are trusted for the hosts they match.
//! russh's own `check_known_hosts_path` was not used: it matches exact names only,
//! splits on single spaces, fails on a line it cannot parse and reads a known key of
//! another algorithm as "unknown", which would let `accept-new` learn a second key.
//! Deciding what to do with the verdict is left to `connect`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use hmac::{KeyInit, Mac};
use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns, Marker};
use russh::keys::{Algorithm, HashAlg, PublicKey};

use super::options::pattern_list_matches;

/// What the known_hosts files say about a host's key.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Known,
    /// An `@revoked` line names this key.
    Revoked {
        file: PathBuf,
        line: usize,
    },
    /// Keys are known for the host, and this is none of them.
    Changed {
        file: PathBuf,
        line: usize,
    },
    Unknown,
}

/// One known_hosts line that names the host.
struct Known {
    file: PathBuf,
    line: usize,
    marker: Option<Marker>,
    key: PublicKey,
}

/// The name known_hosts files use for a host: `host`, or `[host]:port` off port 22.
pub fn host_name(host: &str, port: u16) -> String {
    if port == super::options::DEFAULT_PORT {
        host.to_ascii_lowercase()
    } else {
        format!("[{}]:{port}", host.to_ascii_lowercase())
    }
}

/// "ssh-ed25519 SHA256:…", as `ssh-keygen -l` shows a key.
pub fn fingerprint(key: &PublicKey) -> String {
    format!("{} {}", key.algorithm(), key.fingerprint(HashAlg::Sha256))
}

pub fn check(files: &[PathBuf], host: &str, port: u16, key: &PublicKey) -> Verdict {
    let entries = lookup(files, &host_name(host, port));
    if let Some(revoked) = entries
        .iter()
        .find(|e| e.marker == Some(Marker::Revoked) && e.key.key_data() == key.key_data())
    {
        return Verdict::Revoked {
            file: revoked.file.clone(),
            line: revoked.line,
        };
    }
    let host_keys: Vec<&Known> = entries.iter().filter(|e| e.marker.is_none()).collect();
    if host_keys.iter().any(|e| e.key.key_data() == key.key_data()) {
        return Verdict::Known;
    }
    // A known key of another algorithm counts as a change: `connect` asks for the
    // known algorithms first (as OpenSSH orders its HostKeyAlgorithms), so a server
    // that still had the known key would have shown it.
    match host_keys.first() {
        Some(first) => Verdict::Changed {
            file: first.file.clone(),
            line: first.line,
        },
        None => Verdict::Unknown,
    }
}

/// The algorithms of the keys known for the host, to ask the server for those first.
pub fn known_algorithms(files: &[PathBuf], host: &str, port: u16) -> Vec<Algorithm> {
    let mut algorithms: Vec<Algorithm> = Vec::new();
    for entry in lookup(files, &host_name(host, port)) {
        let algorithm = entry.key.algorithm();
        if entry.marker.is_none() && !algorithms.contains(&algorithm) {
            algorithms.push(algorithm);
        }
    }
    algorithms
}

/// The `@cert-authority` keys whose host certificates are trusted for the host.
pub fn cert_authorities(files: &[PathBuf], host: &str, port: u16) -> Vec<PublicKey> {
    let mut found = Vec::new();
    read_entries(files, |_, _, entry| {
        if entry.marker() == Some(&Marker::CertAuthority)
            && names_host(entry.host_patterns(), &host_name(host, port))
        {
            found.push(entry.public_key().clone());
        }
    });
    found
}

/// Whether an `@revoked` line names `key` (a certificate's key or its CA).
pub fn revoked(files: &[PathBuf], key: &russh::keys::ssh_key::public::KeyData) -> bool {
    let mut revoked = false;
    read_entries(files, |_, _, entry| {
        revoked |= entry.marker() == Some(&Marker::Revoked) && entry.public_key().key_data() == key;
    });
    revoked
}

/// Calls `each` with every line fleet can read, with its file and line number.
fn read_entries(files: &[PathBuf], mut each: impl FnMut(&Path, usize, &Entry)) {
    for file in files {
        // A missing or unreadable file knows no keys; strict checking then refuses.
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // ssh-key's parser wants single spaces; OpenSSH allows any blanks.
            let normalized = line.split_whitespace().collect::<Vec<_>>().join(" ");
            // Lines fleet cannot read (unsupported key types) are skipped, as ssh does.
            if let Ok(entry) = normalized.parse::<Entry>() {
                each(file, index + 1, &entry);
            }
        }
    }
}

fn lookup(files: &[PathBuf], name: &str) -> Vec<Known> {
    let mut found = Vec::new();
    read_entries(files, |file, line, entry| {
        if entry.marker() != Some(&Marker::CertAuthority) && names_host(entry.host_patterns(), name)
        {
            found.push(Known {
                file: file.to_path_buf(),
                line,
                marker: entry.marker().copied(),
                key: entry.public_key().clone(),
            });
        }
    });
    found
}

fn names_host(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::Patterns(patterns) => pattern_list_matches(name, &patterns.join(",")),
        HostPatterns::HashedName { salt, hash } => {
            match hmac::Hmac::<sha1::Sha1>::new_from_slice(salt) {
                Ok(mac) => mac.chain_update(name.as_bytes()).verify_slice(hash).is_ok(),
                Err(_) => false,
            }
        }
    }
}

/// Appends `[host]:port algorithm key` to `file` (created 0600 in a 0700 directory,
/// as ssh does), in one write so concurrent fleet runs do not interleave lines.
/// `|1|salt|HMAC-SHA1(salt, name)`, both base64: a known_hosts name that does not
/// say which host it is.
fn hashed_name(name: &str) -> std::io::Result<String> {
    use base64ct::{Base64, Encoding};
    let mut salt = [0u8; 20];
    getrandom::fill(&mut salt).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt)
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .chain_update(name.as_bytes())
        .finalize()
        .into_bytes();
    Ok(format!(
        "|1|{}|{}",
        Base64::encode_string(&salt),
        Base64::encode_string(&mac)
    ))
}

pub fn learn(
    file: &Path,
    host: &str,
    port: u16,
    key: &PublicKey,
    hashed: bool,
) -> std::io::Result<()> {
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut key = key.clone();
    key.set_comment("");
    let key = key.to_openssh().map_err(std::io::Error::other)?;
    let mut out = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(file)?;
    let mut line = String::new();
    if out.seek(SeekFrom::End(-1)).is_ok() {
        let mut last = [0u8; 1];
        out.read_exact(&mut last)?;
        if last[0] != b'\n' {
            line.push('\n');
        }
    }
    let name = host_name(host, port);
    line.push_str(&if hashed { hashed_name(&name)? } else { name });
    line.push(' ');
    line.push_str(key.trim_end());
    line.push('\n');
    out.write_all(line.as_bytes())
}
