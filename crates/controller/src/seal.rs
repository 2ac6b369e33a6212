//! The seal key: what controllers sharing a PostgreSQL store encrypt the CA's private key
//! with before it goes into the database, so the database alone (a dump, a replica,
//! its administrators) never holds a key that can sign agent certificates. A file of
//! 32 random bytes (hex, owner-only) each controller is given (`--seal-key`); the first
//! controller on an empty store makes it. AES-256-GCM from aws-lc-rs, the crypto
//! backend the controller already uses; the nonce is random per sealing, and the
//! associated data names what is sealed, so a sealed value cannot stand in for another.

use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::error::Error;

const KEY_BYTES: usize = 32;
/// The sealed form's version, first in every sealed value.
const VERSION: &[u8] = b"fs1";

/// A loaded seal key.
pub struct SealKey {
    key: LessSafeKey,
    path: PathBuf,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealKey({})", self.path.display())
    }
}

impl SealKey {
    /// Reads the key at `path`; with `create`, makes one there (mode 0600) when the
    /// file does not exist.
    pub fn load(path: &Path, create: bool) -> Result<SealKey, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && create => {
                let mut bytes = [0u8; KEY_BYTES];
                aws_lc_rs::rand::fill(&mut bytes)
                    .map_err(|_| Error::Invalid("no randomness for the seal key".into()))?;
                let text = format!("{}\n", hex(&bytes));
                crate::pki::write_file(path, &text, crate::pki::PRIVATE_FILE_MODE)?;
                tracing::info!(key = %path.display(), "made the seal key: give every controller of this store a copy");
                text
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Invalid(format!(
                    "no seal key at {}: the store's CA key is sealed with the key the first controller made\nhint: copy that controller's seal key here (mode 0600), or pass --seal-key FILE",
                    path.display()
                )));
            }
            Err(source) => return Err(Error::io(path, source)),
        };
        let bytes = unhex(text.trim())
            .filter(|b| b.len() == KEY_BYTES)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: a seal key is {} hex digits",
                    path.display(),
                    KEY_BYTES * 2
                ))
            })?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| Error::Invalid(format!("{}: not an AES-256 key", path.display())))?;
        Ok(SealKey {
            key: LessSafeKey::new(key),
            path: path.to_owned(),
        })
    }

    /// `secret` sealed; `what` names it (the associated data).
    pub fn seal(&self, what: &str, secret: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("the system's randomness");
        let mut sealed = secret.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(what.as_bytes()),
                &mut sealed,
            )
            .expect("AES-GCM seals any length the CA key has");
        [VERSION, &nonce, &sealed].concat()
    }

    /// Opens what `seal` made of `what`; an error says the key is not the one it was
    /// sealed with (or the value was changed).
    pub fn open(&self, what: &str, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        let wrong = || {
            Error::Invalid(format!(
                "the {what} in the store does not open with the seal key {}\nhint: every controller of a store needs the same seal key as the first one",
                self.path.display()
            ))
        };
        let rest = sealed.strip_prefix(VERSION).ok_or_else(wrong)?;
        if rest.len() < NONCE_LEN {
            return Err(wrong());
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
        let mut body = body.to_vec();
        let opened = self
            .key
            .open_in_place(nonce, Aad::from(what.as_bytes()), &mut body)
            .map_err(|_| wrong())?;
        Ok(opened.to_vec())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seal.key");
        assert!(
            SealKey::load(&path, false).is_err(),
            "not made unless asked"
        );
        let key = SealKey::load(&path, true).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = key.seal("ca key", b"-----BEGIN PRIVATE KEY-----");
        assert!(!sealed.windows(5).any(|w| w == b"BEGIN"));
        let again = SealKey::load(&path, false).unwrap();
        assert_eq!(
            again.open("ca key", &sealed).unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        assert!(again.open("other", &sealed).is_err());
        let mut changed = sealed.clone();
        *changed.last_mut().unwrap() ^= 1;
        assert!(again.open("ca key", &changed).is_err());
        let other = dir.path().join("other.key");
        let error = SealKey::load(&other, true)
            .unwrap()
            .open("ca key", &sealed)
            .unwrap_err();
        assert!(error.to_string().contains("same seal key"), "{error}");
        std::fs::write(&other, "zz").unwrap();
        assert!(SealKey::load(&other, false).is_err());
    }
}
