//! Which certificate authority the CLI trusts for a controller. A controller's
//! certificate comes from its own CA, so the public web PKI is never trusted by
//! default: `FLEET_CA` names the CA's PEM file (`FLEET_CA=system` opts into the
//! operating system's roots, for a controller behind a public certificate), else the
//! CA pinned for that controller by `fleet controller trust URL` once the user
//! confirmed its fingerprint (`$XDG_CONFIG_HOME/fleet/controllers/HOST_PORT.pem`,
//! owner-only), else the connection is refused before anything is sent.
//!
//! `fetch_ca` is the one connection made without verifying the certificate: it only
//! reads the chain the controller presents (its certificate, then its CA) so the user
//! can compare the CA's fingerprint with `openssl x509 -fingerprint -sha256 -in ca.pem`
//! on the controller's machine. No token travels on it.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::StageError;

/// What to verify a controller's certificate against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// A CA certificate, PEM.
    Pem(String),
    /// The operating system's roots (`FLEET_CA=system`).
    System,
}

const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The CA to trust for `url`: `FLEET_CA`, else the pinned one.
pub fn resolve(url: &str, fleet_ca: Option<&Path>) -> Result<Trust, StageError> {
    if let Some(ca) = fleet_ca {
        if ca.as_os_str() == "system" {
            return Ok(Trust::System);
        }
        let pem = std::fs::read_to_string(ca).map_err(|e| {
            StageError::Config(format!("cannot read FLEET_CA {}: {e}", ca.display()))
        })?;
        return Ok(Trust::Pem(pem));
    }
    let pinned = pinned_path(url).map_err(StageError::Config)?;
    match std::fs::read_to_string(&pinned) {
        Ok(pem) => Ok(Trust::Pem(pem)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(StageError::Config(format!(
                "no CA to verify the controller at {url} with\nhint: `fleet controller trust {url}` shows its CA's fingerprint to confirm and pins it; or set FLEET_CA to the controller's ca.pem"
            )))
        }
        Err(error) => Err(StageError::Config(format!(
            "cannot read the pinned CA {}: {error}",
            pinned.display()
        ))),
    }
}

/// Where the CA pinned for `url` is kept.
pub fn pinned_path(url: &str) -> Result<PathBuf, String> {
    let (host, port) = host_port(url)?;
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::home_dir().map(|home| home.join(".config")))
        .ok_or("cannot find the home directory to keep pinned CAs in")?;
    Ok(base
        .join("fleet/controllers")
        .join(format!("{host}_{port}.pem")))
}

/// The host and port of an `https://` URL, the host made safe for a file name.
fn host_port(url: &str) -> Result<(String, u16), String> {
    fleet_proto::ops::check_controller_url(url)?;
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|e| format!("bad controller url {url}: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("{url} names no host"))?;
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok((host, uri.port_u16().unwrap_or(443)))
}

/// The CA certificate a controller presents (the last of its chain), as DER, without
/// verifying it: for the user to confirm, then `pin`.
pub async fn fetch_ca(url: &str) -> Result<Vec<u8>, String> {
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|e| format!("bad controller url {url}: {e}"))?;
    let (_, port) = host_port(url)?;
    let name = uri
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_string();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let seen = Arc::new(Recorder {
        provider: provider.clone(),
        chain: std::sync::Mutex::new(Vec::new()),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(seen.clone())
        .with_no_client_auth();
    let server_name = ServerName::try_from(name.clone()).map_err(|e| format!("{name}: {e}"))?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((name.as_str(), port))
            .await
            .map_err(|e| format!("cannot reach {url}: {e}"))?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("TLS with {url} failed: {e}"))
    };
    let _tls = tokio::time::timeout(FETCH_TIMEOUT, connect)
        .await
        .map_err(|_| format!("{url} did not answer within {FETCH_TIMEOUT:?}"))??;
    let chain = seen.chain.lock().map_err(|_| "poisoned")?.clone();
    match chain.as_slice() {
        [] => Err(format!("{url} presented no certificate")),
        [_only] => Err(format!(
            "{url} presents its certificate without its CA (a controller before this version?)\nhint: set FLEET_CA to the controller's ca.pem instead"
        )),
        [.., ca] => Ok(ca.clone()),
    }
}

/// `AB:CD:…`, the SHA-256 of a certificate as `openssl x509 -fingerprint -sha256`
/// prints it.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(der);
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Keeps `der` as the CA of the controller at `url` (PEM, owner-only). Returns where.
pub fn pin(url: &str, der: &[u8]) -> Result<PathBuf, String> {
    use base64ct::{Base64, Encoding};
    let path = pinned_path(url)?;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let body = Base64::encode_string(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    let temp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temp);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(pem.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// Accepts any certificate and records the chain; the handshake's signatures are
/// still checked (the peer holds the key of the certificate it shows).
#[derive(Debug)]
struct Recorder {
    provider: Arc<rustls::crypto::CryptoProvider>,
    chain: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut chain) = self.chain.lock() {
            *chain = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|c| c.as_ref().to_vec())
                .collect();
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_cas_are_kept_per_host_and_port() {
        let dir = tempfile::tempdir().unwrap();
        let path = |url: &str| {
            let (host, port) = host_port(url).unwrap();
            dir.path().join(format!("{host}_{port}.pem"))
        };
        assert_eq!(
            path("https://ctl.example:7443"),
            dir.path().join("ctl.example_7443.pem")
        );
        assert_eq!(
            path("https://[::1]:7443"),
            dir.path().join("___1__7443.pem")
        );
        assert_eq!(
            path("https://ctl.example"),
            dir.path().join("ctl.example_443.pem")
        );
        assert!(host_port("http://ctl.example").is_err(), "https only");
        assert_eq!(fingerprint(b"x").len(), 32 * 3 - 1);
    }
}
