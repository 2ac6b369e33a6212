//! HTTP clients for end-to-end tests: one request, and a load of clients (keep-alive
//! and new connections) counting every failed request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// One request on a new connection; the body.
pub fn get(address: &str, port: u16, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect((address, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("bad response: {response:?}")));
    }
    Ok(response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string())
}

/// Requests on one keep-alive connection; a response saying `Connection: close`
/// (a draining instance) is followed by a new connection, as any HTTP client does.
struct KeepAlive {
    address: String,
    port: u16,
    reader: Option<BufReader<TcpStream>>,
}

impl KeepAlive {
    fn request(&mut self) -> std::io::Result<()> {
        if self.reader.is_none() {
            let stream = TcpStream::connect((self.address.as_str(), self.port))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            self.reader = Some(BufReader::new(stream));
        }
        let reader = self.reader.as_mut().expect("connected above");
        reader
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")?;
        let mut status = String::new();
        reader.read_line(&mut status)?;
        if !status.starts_with("HTTP/1.1 200") {
            return Err(std::io::Error::other(format!("bad status {status:?}")));
        }
        let (mut length, mut close) = (0usize, false);
        loop {
            let mut header = String::new();
            reader.read_line(&mut header)?;
            let header = header.trim_end().to_ascii_lowercase();
            if header.is_empty() {
                break;
            }
            if let Some(v) = header.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if header == "connection: close" {
                close = true;
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        if close {
            self.reader = None;
        }
        Ok(())
    }
}

/// Clients hammering `port` until stopped: half on keep-alive connections, half on a
/// new connection per request. Counts successes and failures.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(address: &str, port: u16, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|n| {
                let (stop, ok, failed, errors) =
                    (stop.clone(), ok.clone(), failed.clone(), errors.clone());
                let address = address.to_string();
                std::thread::spawn(move || {
                    let mut keep_alive = KeepAlive {
                        address: address.clone(),
                        port,
                        reader: None,
                    };
                    while !stop.load(Ordering::Relaxed) {
                        let result = if n % 2 == 0 {
                            keep_alive.request()
                        } else {
                            get(&address, port, "/").map(|_| ())
                        };
                        match result {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(error) => {
                                keep_alive.reader = None;
                                errors.lock().unwrap().push(error.to_string());
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            errors,
            threads,
        }
    }

    /// Stops the clients; (successes, failures, first errors).
    pub fn finish(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        let errors = self
            .errors
            .lock()
            .unwrap()
            .iter()
            .take(5)
            .cloned()
            .collect();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}
