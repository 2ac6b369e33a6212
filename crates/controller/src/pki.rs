//! The controller's certificate authority and secrets: creating or loading the CA and
//! the server certificate in the data directory, signing agents' CSRs (`Join`), reading
//! a peer certificate's host name, and making and hashing tokens. The TLS handshake
//! itself is tonic's and rustls'.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::error::Error;

/// The CA outlives many agent certificates; ten years is what small private CAs
/// (for example step-ca's default root) use.
const CA_VALIDITY_DAYS: i64 = 3650;
/// Agent certificates last a year (the brief's choice); re-joining renews one.
pub const AGENT_CERT_VALIDITY_DAYS: i64 = 90;
/// The server certificate is reissued at start when it has less than this left.
const SERVER_CERT_RENEW_BEFORE_DAYS: i64 = 30;
/// The server certificate lasts a year and is renewed by restarting the controller.
const SERVER_CERT_VALIDITY_DAYS: i64 = 365;
/// Certificates start a day early so an agent whose clock is behind accepts them.
const CLOCK_SKEW_DAYS: i64 = 1;
/// Random bytes in an API or join token: 256 bits, like a GitHub token's entropy.
const TOKEN_BYTES: usize = 32;
/// Private keys and the directory holding them are readable by the owner only.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
const PUBLIC_FILE_MODE: u32 = 0o644;

/// Prefix of API tokens (`fct_`: fleet controller token), so they are recognisable in a
/// secret scanner and in a misplaced environment variable.
pub const API_TOKEN_PREFIX: &str = "fct_";
/// Prefix of one-time join tokens (`fjt_`: fleet join token).
pub const JOIN_TOKEN_PREFIX: &str = "fjt_";

/// The files of the controller's PKI inside its data directory.
#[derive(Debug, Clone)]
pub struct PkiPaths {
    pub ca_key: PathBuf,
    pub ca_cert: PathBuf,
    pub server_key: PathBuf,
    pub server_cert: PathBuf,
}

impl PkiPaths {
    pub fn new(data_dir: &Path) -> PkiPaths {
        PkiPaths {
            ca_key: data_dir.join("ca.key"),
            ca_cert: data_dir.join("ca.pem"),
            server_key: data_dir.join("server.key"),
            server_cert: data_dir.join("server.pem"),
        }
    }
}

/// The loaded CA and the server's identity, ready for TLS and for signing CSRs.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

impl Pki {
    /// Loads the CA from the data directory, creating it on first start, and makes sure
    /// the server certificate covers `sans` (reissuing it when it does not, or expires
    /// soon). The CA never changes once created: agents and CLIs trust it.
    ///
    /// `shared` is the CA a shared store holds (`store_ca`): then the data directory
    /// gets only a copy of its certificate, for operators to hand to the CLI.
    pub fn load_or_create(
        paths: &PkiPaths,
        sans: &BTreeSet<String>,
        shared: Option<(String, KeyPair)>,
    ) -> Result<Pki, Error> {
        let (ca_pem, ca_key) = match shared {
            Some((pem, key)) => {
                if read_if_exists(&paths.ca_cert)?.as_deref() != Some(pem.as_str()) {
                    write_file(&paths.ca_cert, &pem, PUBLIC_FILE_MODE)?;
                }
                (pem, key)
            }
            None => load_or_create_ca(paths)?,
        };
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
            .map_err(|source| Error::certificate(&paths.ca_cert, source))?;
        let existing = read_if_exists(&paths.server_cert)?
            .zip(read_if_exists(&paths.server_key)?)
            .filter(|(cert, _)| server_cert_is_current(cert, &ca_pem, sans));
        let (server_cert_pem, server_key_pem) = match existing {
            Some(pair) => pair,
            None => {
                let (cert, key) = issue_server_cert(&issuer, sans)
                    .map_err(|source| Error::certificate(&paths.server_cert, source))?;
                write_file(&paths.server_key, &key, PRIVATE_FILE_MODE)?;
                write_file(&paths.server_cert, &cert, PUBLIC_FILE_MODE)?;
                tracing::info!(sans = ?sans, "issued a new server certificate");
                (cert, key)
            }
        };
        Ok(Pki {
            issuer,
            ca_pem,
            server_cert_pem,
            server_key_pem,
        })
    }

    /// Signs an agent's CSR. Only the CSR's public key is used: the subject (CN = host),
    /// validity and usages are the controller's, whatever the request asked for.
    pub fn sign_agent_csr(
        &self,
        csr: &CertificateSigningRequestParams,
        host: &str,
        lifetime: std::time::Duration,
    ) -> Result<AgentCertificate, rcgen::Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(host);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        // A random serial (positive: the top bit clear), recorded as the host's current
        // certificate.
        let mut serial = [0u8; 16];
        SystemRandom::new()
            .fill(&mut serial)
            .expect("the system random source does not fail");
        serial[0] = (serial[0] & 0x7f) | 0x01;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let now = jiff::Timestamp::now().as_second();
        let expires = now.saturating_add(lifetime.as_secs().min(i64::MAX as u64) as i64);
        // The lifetime is checked (`config::check_agent_cert_lifetime`): both fit.
        let at = |second: i64| {
            time::OffsetDateTime::from_unix_timestamp(second)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        };
        params.not_before = at(now - CLOCK_SKEW_DAYS * 86_400);
        params.not_after = at(expires);
        let request = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key.clone(),
        };
        Ok(AgentCertificate {
            pem: request.signed_by(&self.issuer)?.pem(),
            serial: hex(&serial),
            expires_ms: (expires as u64).saturating_mul(1000),
        })
    }
}

/// An agent's certificate as `Join` or a renewal issues it.
#[derive(Clone, Debug)]
pub struct AgentCertificate {
    pub pem: String,
    /// The serial, lowercase hex, as `certificate_identity` reads it back.
    pub serial: String,
    pub expires_ms: u64,
}

/// A client certificate's host (its common name), serial (lowercase hex) and expiry.
pub fn certificate_identity(der: &[u8]) -> Option<(String, String, u64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    let host = cn.as_str().ok()?.to_owned();
    let serial = hex(cert.raw_serial());
    let expires = cert.validity().not_after.timestamp().max(0) as u64 * 1000;
    Some((host, serial, expires))
}

/// Parses a PEM CSR and checks its signature (the agent holds the key it asks for).
pub fn parse_csr(pem: &str) -> Result<CertificateSigningRequestParams, rcgen::Error> {
    CertificateSigningRequestParams::from_pem(pem)
}

/// A new random token with `prefix`, hex encoded.
pub fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source does not fail");
    format!("{prefix}{}", hex(&bytes))
}

/// The SHA-256 of a token: the only form in which tokens are stored.
pub fn token_hash(token: &str) -> Vec<u8> {
    digest::digest(&digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

/// Compares two hashes without leaking where they differ.
pub fn hashes_equal(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

fn load_or_create_ca(paths: &PkiPaths) -> Result<(String, KeyPair), Error> {
    match (
        read_if_exists(&paths.ca_cert)?,
        read_if_exists(&paths.ca_key)?,
    ) {
        (Some(cert), Some(key)) => {
            let key = KeyPair::from_pem(&key)
                .map_err(|source| Error::certificate(&paths.ca_key, source))?;
            Ok((cert, key))
        }
        (None, None) => {
            let (cert, key) =
                new_ca().map_err(|source| Error::certificate(&paths.ca_cert, source))?;
            // The key first: a CA certificate without its key is the worse half-state.
            write_file(&paths.ca_key, &key.serialize_pem(), PRIVATE_FILE_MODE)?;
            write_file(&paths.ca_cert, &cert, PUBLIC_FILE_MODE)?;
            tracing::info!(ca = %paths.ca_cert.display(), "created the controller's CA");
            Ok((cert, key))
        }
        (Some(_), None) => Err(Error::HalfCa {
            present: paths.ca_cert.clone(),
            missing: paths.ca_key.clone(),
        }),
        (None, Some(_)) => Err(Error::HalfCa {
            present: paths.ca_key.clone(),
            missing: paths.ca_cert.clone(),
        }),
    }
}

/// A new CA: its certificate (PEM) and key.
pub fn new_ca() -> Result<(String, KeyPair), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name("fleet-controller CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY_DAYS);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key))
}

/// What the CA's key is sealed as (`seal`'s associated data).
pub const SEALED_CA_KEY: &str = "fleet CA key";

/// The CA from a shared store, made and stored by the first controller to ask (one
/// insert wins when several start at once; the others read the winner's).
pub async fn shared_ca(
    store: &crate::store::Store,
    seal: &crate::seal::SealKey,
) -> Result<(String, KeyPair), Error> {
    let stored = store.call(|db| crate::store::stored_ca(db)).await?;
    let (pem, sealed) = match stored {
        Some(found) => found,
        None => {
            let (pem, key) = new_ca().map_err(|source| Error::Certificate {
                path: "the store's CA".into(),
                source,
            })?;
            let sealed = seal.seal(SEALED_CA_KEY, key.serialize_pem().as_bytes());
            let (p, s) = (pem.clone(), sealed.clone());
            let now = crate::now_unix_ms();
            let ours = store
                .call(move |db| crate::store::store_ca(db, &p, &s, now))
                .await?;
            if ours {
                tracing::info!("created the fleet's CA in the store");
                return Ok((pem, key));
            }
            store
                .call(|db| crate::store::stored_ca(db))
                .await?
                .ok_or_else(|| Error::Invalid("the store's CA vanished while read".into()))?
        }
    };
    ca_from_sealed(&pem, &sealed, seal)
}

/// The CA from the store: its certificate, and its key opened with the seal key.
pub fn ca_from_sealed(
    pem: &str,
    sealed: &[u8],
    seal: &crate::seal::SealKey,
) -> Result<(String, KeyPair), Error> {
    let key_pem = String::from_utf8(seal.open(SEALED_CA_KEY, sealed)?)
        .map_err(|_| Error::Invalid("the store's CA key is not PEM".into()))?;
    let key = KeyPair::from_pem(&key_pem).map_err(|source| Error::Certificate {
        path: "the store's CA key".into(),
        source,
    })?;
    Ok((pem.to_owned(), key))
}

fn issue_server_cert(
    issuer: &Issuer<'static, KeyPair>,
    sans: &BTreeSet<String>,
) -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name("fleet-controller");
    params.subject_alt_names = sans
        .iter()
        .map(|san| match san.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(san.as_str().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    set_validity(&mut params, SERVER_CERT_VALIDITY_DAYS);
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Whether the stored server certificate was signed by the CA, names every SAN asked
/// for and is not about to expire.
fn server_cert_is_current(pem: &str, ca_pem: &str, sans: &BTreeSet<String>) -> bool {
    let (Ok((_, pem)), Ok((_, ca_pem))) = (
        x509_parser::pem::parse_x509_pem(pem.as_bytes()),
        x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()),
    ) else {
        return false;
    };
    let (Ok(cert), Ok(ca)) = (pem.parse_x509(), ca_pem.parse_x509()) else {
        return false;
    };
    if cert.verify_signature(Some(ca.public_key())).is_err() {
        return false;
    }
    let renew_at = jiff::Timestamp::now().as_second() + SERVER_CERT_RENEW_BEFORE_DAYS * 86_400;
    if cert.validity().not_after.timestamp() < renew_at {
        return false;
    }
    let mut names = BTreeSet::new();
    if let Ok(Some(extension)) = cert.subject_alternative_name() {
        for name in &extension.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => {
                    names.insert((*dns).to_owned());
                }
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.insert(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    sans.is_subset(&names)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "fleet");
    name.push(DnType::CommonName, common_name);
    name
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let start = today
        .checked_sub(jiff::Span::new().days(CLOCK_SKEW_DAYS))
        .unwrap_or(today);
    let end = today
        .checked_add(jiff::Span::new().days(days))
        .unwrap_or(today);
    params.not_before =
        rcgen::date_time_ymd(start.year().into(), start.month() as u8, start.day() as u8);
    params.not_after = rcgen::date_time_ymd(end.year().into(), end.month() as u8, end.day() as u8);
}

fn read_if_exists(path: &Path) -> Result<Option<String>, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::io(path, source)),
    }
}

/// Writes a file whole (temp file and rename), created with `mode` so a private key is
/// never readable by others, not even for a moment.
pub fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), Error> {
    let temp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_file(&temp);
        let mut file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    };
    write().map_err(|source| Error::io(path, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_random_hex_and_hash_to_32_bytes() {
        let a = new_token(API_TOKEN_PREFIX);
        let b = new_token(API_TOKEN_PREFIX);
        assert!(a.starts_with("fct_"));
        assert_eq!(a.len(), 4 + 64);
        assert_ne!(a, b);
        assert_eq!(token_hash(&a).len(), 32);
        assert!(hashes_equal(&token_hash(&a), &token_hash(&a)));
        assert!(!hashes_equal(&token_hash(&a), &token_hash(&b)));
    }

    #[test]
    fn the_server_certificate_is_reused_until_the_sans_change() {
        let dir = tempfile::tempdir().unwrap();
        let paths = PkiPaths::new(dir.path());
        let sans: BTreeSet<String> = ["localhost".into(), "127.0.0.1".into()].into();
        let first = Pki::load_or_create(&paths, &sans, None).unwrap();
        let again = Pki::load_or_create(&paths, &sans, None).unwrap();
        assert_eq!(first.ca_pem, again.ca_pem);
        assert_eq!(first.server_cert_pem, again.server_cert_pem);
        let more: BTreeSet<String> =
            ["localhost".into(), "127.0.0.1".into(), "ctl.example".into()].into();
        let reissued = Pki::load_or_create(&paths, &more, None).unwrap();
        assert_eq!(first.ca_pem, reissued.ca_pem);
        assert_ne!(first.server_cert_pem, reissued.server_cert_pem);
    }

    #[test]
    fn a_server_certificate_from_a_replaced_ca_is_reissued() {
        let dir = tempfile::tempdir().unwrap();
        let paths = PkiPaths::new(dir.path());
        let sans: BTreeSet<String> = ["localhost".into()].into();
        let first = Pki::load_or_create(&paths, &sans, None).unwrap();
        std::fs::remove_file(&paths.ca_cert).unwrap();
        std::fs::remove_file(&paths.ca_key).unwrap();
        let second = Pki::load_or_create(&paths, &sans, None).unwrap();
        assert_ne!(first.ca_pem, second.ca_pem);
        assert_ne!(first.server_cert_pem, second.server_cert_pem);
    }

    #[test]
    fn an_agent_certificate_names_the_host_not_what_the_csr_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(&PkiPaths::new(dir.path()), &BTreeSet::new(), None).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name("someone-else");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let lifetime = std::time::Duration::from_secs(3600);
        let cert = pki
            .sign_agent_csr(&parse_csr(&csr).unwrap(), "web-1", lifetime)
            .unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert.pem.as_bytes()).unwrap();
        let (host, serial, expires) = certificate_identity(&pem.contents).unwrap();
        assert_eq!(host, "web-1");
        assert_eq!(serial, cert.serial, "the serial reads back as issued");
        assert_eq!(serial.len(), 32);
        assert_eq!(expires, cert.expires_ms);
        let in_an_hour = crate::now_unix_ms() + 3_600_000;
        assert!(
            expires.abs_diff(in_an_hour) < 5_000,
            "{expires} vs {in_an_hour}"
        );
    }
}
