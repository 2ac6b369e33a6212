//! A minimal HTTP/1.1 request-head parser: the request line and the headers up to the
//! blank line, and the few header values the test server acts on (`Connection`,
//! `Content-Length`). Request bodies are the server's business; chunked ones are refused.

/// The largest request head accepted; a longer one is answered with 431. Far above what
/// the tests and wrk send (under 200 bytes), small enough that a stuck client costs little.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The parts of a request head the server uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target as sent: a path with an optional `?query`.
    pub target: String,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub minor_version: u8,
    /// Whether the connection may carry another request after this one: HTTP/1.1
    /// unless `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// Bytes of body that follow the head (`Content-Length`, 0 when absent).
    pub content_length: u64,
}

impl Request {
    /// The target without its query string.
    pub fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(&self.target, |(path, _)| path)
    }

    /// The value of query parameter `name`, if present (`/slow?ms=200` → `"200"`).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        let (_, query) = self.target.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then_some(value)
        })
    }
}

/// Why a request head could not be parsed; each maps to one response status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// No blank line within [`MAX_HEAD_BYTES`].
    HeadTooLarge,
    /// Not `METHOD SP target SP HTTP/1.x`, or a header line without a colon.
    Malformed,
    /// `HTTP/2.0` and the like.
    UnsupportedVersion,
    /// A `Content-Length` that is not a number, or two that disagree.
    BadContentLength,
    /// `Transfer-Encoding` on a request: this server reads no chunked bodies.
    TransferEncoding,
}

impl ParseError {
    /// The status line answering this error.
    pub fn status(self) -> (u16, &'static str) {
        match self {
            ParseError::HeadTooLarge => (431, "Request Header Fields Too Large"),
            ParseError::Malformed | ParseError::BadContentLength => (400, "Bad Request"),
            ParseError::UnsupportedVersion => (505, "HTTP Version Not Supported"),
            ParseError::TransferEncoding => (501, "Not Implemented"),
        }
    }
}

/// Parses one request head from the start of `buf`.
///
/// Returns `Ok(None)` when the head is not complete yet (read more and call again), or
/// the request and the number of bytes the head took (the body, if any, follows). Lines
/// end in CRLF; a bare LF is accepted too, and empty lines before the request line are
/// skipped, as RFC 9112 §2.2 allows.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, ParseError> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut end = None;
    while let Some(offset) = buf[start..].iter().position(|&b| b == b'\n') {
        let line_end = start + offset;
        let line = buf[start..line_end]
            .strip_suffix(b"\r")
            .unwrap_or(&buf[start..line_end]);
        start = line_end + 1;
        if line.is_empty() {
            if lines.is_empty() {
                continue; // a stray CRLF before the request line
            }
            end = Some(start);
            break;
        }
        lines.push(line);
        if start > MAX_HEAD_BYTES {
            return Err(ParseError::HeadTooLarge);
        }
    }
    let Some(end) = end else {
        return if buf.len() > MAX_HEAD_BYTES {
            Err(ParseError::HeadTooLarge)
        } else {
            Ok(None)
        };
    };
    if end > MAX_HEAD_BYTES {
        return Err(ParseError::HeadTooLarge);
    }

    let request_line = std::str::from_utf8(lines[0]).map_err(|_| ParseError::Malformed)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Malformed);
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) || target.is_empty() {
        return Err(ParseError::Malformed);
    }
    let minor_version = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        v if v.starts_with("HTTP/") => return Err(ParseError::UnsupportedVersion),
        _ => return Err(ParseError::Malformed),
    };

    let mut close = false;
    let mut keep_alive_token = false;
    let mut content_length: Option<u64> = None;
    for line in &lines[1..] {
        let line = std::str::from_utf8(line).map_err(|_| ParseError::Malformed)?;
        let (name, value) = line.split_once(':').ok_or(ParseError::Malformed)?;
        if name.is_empty() || name.ends_with([' ', '\t']) {
            return Err(ParseError::Malformed); // RFC 9112 §5.1: no space before the colon
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                close |= token.eq_ignore_ascii_case("close");
                keep_alive_token |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<u64>()
                .map_err(|_| ParseError::BadContentLength)?;
            if content_length.is_some_and(|previous| previous != n) {
                return Err(ParseError::BadContentLength);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ParseError::TransferEncoding);
        }
    }
    let keep_alive = !close && (minor_version == 1 || keep_alive_token);
    let request = Request {
        method: method.to_string(),
        target: target.to_string(),
        minor_version,
        keep_alive,
        content_length: content_length.unwrap_or(0),
    };
    Ok(Some((request, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<(Request, usize)>, ParseError> {
        parse_head(s.as_bytes())
    }

    fn complete(s: &str) -> Request {
        let (request, used) = parse(s).expect("parses").expect("complete");
        assert_eq!(used, s.len(), "the head is the whole input");
        request
    }

    #[test]
    fn simple_get_is_keep_alive_in_http_1_1() {
        let r = complete("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.method, "GET");
        assert_eq!(r.target, "/");
        assert_eq!(r.minor_version, 1);
        assert!(r.keep_alive);
        assert_eq!(r.content_length, 0);
    }

    #[test]
    fn connection_close_ends_keep_alive() {
        assert!(!complete("GET / HTTP/1.1\r\nconnection: Close\r\n\r\n").keep_alive);
        assert!(!complete("GET / HTTP/1.1\r\nConnection: upgrade, close\r\n\r\n").keep_alive);
    }

    #[test]
    fn http_1_0_needs_keep_alive_to_keep_the_connection() {
        assert!(!complete("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(complete("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    }

    #[test]
    fn incomplete_head_asks_for_more() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: x\r\n\r"), Ok(None));
    }

    #[test]
    fn reports_the_head_length_so_pipelined_requests_stay_buffered() {
        let two = "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        let (first, used) = parse(two).unwrap().unwrap();
        assert_eq!(first.target, "/a");
        let (second, rest) = parse_head(&two.as_bytes()[used..]).unwrap().unwrap();
        assert_eq!(second.target, "/b");
        assert_eq!(used + rest, two.len());
    }

    #[test]
    fn content_length_is_read_and_must_agree() {
        let r = complete("POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(r.content_length, 5);
        assert_eq!(
            parse("POST / HTTP/1.1\r\nContent-Length: five\r\n\r\n"),
            Err(ParseError::BadContentLength)
        );
        assert_eq!(
            parse("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            Err(ParseError::BadContentLength)
        );
        complete("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
    }

    #[test]
    fn chunked_bodies_are_refused() {
        let err = parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err();
        assert_eq!(err, ParseError::TransferEncoding);
        assert_eq!(err.status().0, 501);
    }

    #[test]
    fn bare_lf_and_leading_blank_lines_are_tolerated() {
        let r = complete("\r\n\nGET /health HTTP/1.1\nHost: x\n\n");
        assert_eq!(r.target, "/health");
    }

    #[test]
    fn malformed_request_lines_are_rejected() {
        for bad in [
            "GET /\r\n\r\n",
            "GET  / HTTP/1.1\r\n\r\n",
            "get / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1 extra\r\n\r\n",
            "GET / FTP/1.0\r\n\r\n",
            "GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        ] {
            assert_eq!(parse(bad), Err(ParseError::Malformed), "{bad:?}");
        }
        assert_eq!(
            parse("GET / HTTP/2.0\r\n\r\n"),
            Err(ParseError::UnsupportedVersion)
        );
    }

    #[test]
    fn oversized_heads_are_rejected_without_waiting_for_the_end() {
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(parse(&long), Err(ParseError::HeadTooLarge));
        let long_lines = format!(
            "GET / HTTP/1.1\r\n{}",
            "X: y\r\n".repeat(MAX_HEAD_BYTES / 4)
        );
        assert_eq!(parse(&long_lines), Err(ParseError::HeadTooLarge));
    }

    #[test]
    fn path_and_query_parameters() {
        let r = complete("GET /slow?x=1&ms=250&flag HTTP/1.1\r\n\r\n");
        assert_eq!(r.path(), "/slow");
        assert_eq!(r.query_param("ms"), Some("250"));
        assert_eq!(r.query_param("flag"), Some(""));
        assert_eq!(r.query_param("missing"), None);
        assert_eq!(
            complete("GET /health HTTP/1.1\r\n\r\n").query_param("ms"),
            None
        );
    }
}
