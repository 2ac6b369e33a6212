//! A bare HTTP/1.1 client over real TCP (and TLS trusting the controller's CA), for
//! the HTTP face's tests: whole exchanges, and Server-Sent Events read until a pattern.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A whole HTTP/1.1 exchange: status code, head and body.
pub struct Answer {
    pub code: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// A header's value (the first, case-blind name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then_some(value.trim())
        })
    }
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection to `address`: TLS for `localhost` trusting `ca` when given.
pub async fn connect(address: SocketAddr, ca: Option<&str>) -> Box<dyn Io> {
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let Some(ca) = ca else {
        return Box::new(stream);
    };
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(certificate.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    Box::new(connector.connect(name, stream).await.unwrap())
}

fn parse(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Answer {
        code,
        head: head.to_owned(),
        body: unchunk(head, body),
    }
}

/// Sends `request` (which should say `Connection: close`) and reads the whole answer.
pub async fn exchange(address: SocketAddr, ca: Option<&str>, request: &[u8]) -> Answer {
    let mut stream = connect(address, ca).await;
    stream.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    parse(&raw)
}

/// `method path` with `headers` and `body` (`Connection: close`), the whole answer.
pub async fn send(
    address: SocketAddr,
    ca: Option<&str>,
    (method, path): (&str, &str),
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let extra: String = (headers.iter())
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    exchange(address, ca, request.as_bytes()).await
}

/// Sends `request` and reads the answer until its text holds `pattern` or `timeout`
/// passes (an event stream never ends on its own); what arrived either way.
pub async fn read_until(
    address: SocketAddr,
    ca: Option<&str>,
    request: &[u8],
    pattern: &str,
    timeout: Duration,
) -> Answer {
    let mut stream = connect(address, ca).await;
    stream.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(timeout, async {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => raw.extend_from_slice(&buffer[..n]),
            }
            if String::from_utf8_lossy(&raw).contains(pattern) {
                return;
            }
        }
    })
    .await;
    parse(&raw)
}

/// The body of a chunked response, joined.
pub fn unchunk(head: &str, body: &str) -> String {
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_owned();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}
