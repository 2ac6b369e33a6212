//! Keys a controller deploys with: a new ed25519 key pair in OpenSSH's formats (its
//! `deploy_key`), and known_hosts lines checked before they are trusted
//! (`fleet-controller known-hosts add`, fed by `ssh-keyscan` or a known_hosts file).

use russh::keys::PrivateKey;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::known_hosts::KnownHosts;
use russh::keys::ssh_key::private::Ed25519Keypair;

/// The most a known_hosts line may hold (an RSA 16384 key is about 2.8 KB).
const MAX_LINE: usize = 8 * 1024;

/// A new ed25519 key pair: the private key in OpenSSH's PEM form and the public key
/// as an `authorized_keys` line ending in `comment`.
pub fn new_ed25519(comment: &str) -> Result<(String, String), String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("the system's random source: {e}"))?;
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    seed.fill(0);
    key.set_comment(comment);
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| format!("cannot encode the key: {e}"))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| format!("cannot encode the public key: {e}"))?;
    Ok((private.to_string(), public))
}

/// The public half of an OpenSSH private key, as an `authorized_keys` line.
pub fn public_of(private_openssh: &str) -> Result<String, String> {
    let key = PrivateKey::from_openssh(private_openssh)
        .map_err(|e| format!("not an OpenSSH private key: {e}"))?;
    if key.is_encrypted() {
        return Err("the key has a passphrase: a controller needs one without".into());
    }
    key.public_key()
        .to_openssh()
        .map_err(|e| format!("cannot encode the public key: {e}"))
}

/// Checks known_hosts text (comments and blank lines allowed): every other line must
/// parse as an entry. Returns each entry's host patterns and key fingerprint, or which
/// line is wrong.
pub fn check_known_hosts(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut found = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.len() > MAX_LINE {
            return Err(format!("line {}: longer than {MAX_LINE} bytes", index + 1));
        }
        match KnownHosts::new(line).next() {
            Some(Ok(entry)) => {
                let mut words = line.split_whitespace();
                let hosts = match entry.marker() {
                    Some(_) => words.nth(1),
                    None => words.next(),
                };
                let key = entry.public_key().clone();
                found.push((
                    hosts.unwrap_or("").to_string(),
                    super::known_hosts::fingerprint(&key),
                ));
            }
            Some(Err(e)) => return Err(format!("line {}: {e}", index + 1)),
            None => return Err(format!("line {}: not a known_hosts entry", index + 1)),
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_new_key_round_trips_and_its_public_half_is_an_authorized_keys_line() {
        let (private, public) = new_ed25519("fleet-controller@test").unwrap();
        assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        assert!(public.starts_with("ssh-ed25519 ") && public.ends_with(" fleet-controller@test"));
        assert_eq!(public_of(&private).unwrap(), public);
        assert_ne!(new_ed25519("x").unwrap().0, private, "a new key each time");
        assert!(public_of("not a key").is_err());
    }

    #[test]
    fn known_hosts_text_is_checked_line_by_line() {
        let (_, public) = new_ed25519("").unwrap();
        let key = public.trim();
        let text = format!("# from ssh-keyscan\n\n198.18.0.1 {key}\n[h2]:2222,h2b {key}\n");
        let found = check_known_hosts(&text).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].0, "[h2]:2222,h2b");
        assert!(
            found[0].1.starts_with("ssh-ed25519 SHA256:"),
            "{:?}",
            found[0]
        );
        let bad = format!("198.18.0.1 {key}\nh2 ssh-ed25519 AAAA-not-base64\n");
        assert!(check_known_hosts(&bad).unwrap_err().starts_with("line 2:"));
    }

    proptest! {
        #[test]
        fn any_text_is_checked_without_panic(text in ".{0,400}") {
            let _ = check_known_hosts(&text);
        }
    }
}
