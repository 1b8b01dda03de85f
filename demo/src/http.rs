//! Just enough HTTP/1.1: reading a request head and body, writing a response.
//!
//! Parsing (`parse_head`, `query_param`) is pure so it can be tested on bytes; reading
//! (`read_head`, `read_body`) works on any `BufRead`.

use std::fmt;
use std::io::{self, BufRead, Read, Write};

/// Longest request head (request line plus headers) accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A request line and headers, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// The path of the target, without the query.
    pub path: String,
    /// The raw query string (after `?`), empty if none.
    pub query: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<(String, String)>,
    pub body: BodyKind,
    /// Whether the client wants the connection kept open after the response.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent: answer `100 Continue` before reading the body.
    pub expect_continue: bool,
}

impl Head {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
}

/// Why a request could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The bytes are not a request we understand: answer 400 and close.
    Malformed(&'static str),
    /// The connection failed or closed mid-request: just close.
    Io(io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Malformed(why) => write!(f, "malformed request: {why}"),
            ReadError::Io(err) => write!(f, "connection error: {err}"),
        }
    }
}

impl From<io::Error> for ReadError {
    fn from(err: io::Error) -> Self {
        ReadError::Io(err)
    }
}

/// Reads a request head up to and including the empty line.
///
/// Returns `Ok(None)` when the connection is closed cleanly before a request starts
/// (the normal end of a keep-alive connection).
pub fn read_head<R: BufRead>(reader: &mut R) -> Result<Option<Vec<u8>>, ReadError> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = reader
            .by_ref()
            .take((MAX_HEAD_BYTES + 1 - before) as u64)
            .read_until(b'\n', &mut head)?;
        if n == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(ReadError::Malformed("request head too large"));
        }
        if !head.ends_with(b"\n") {
            return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        let line = &head[before..];
        let is_blank = line == b"\r\n" || line == b"\n";
        if is_blank {
            if before == 0 {
                // RFC 9112 2.2: ignore empty lines before the request line.
                head.clear();
                continue;
            }
            return Ok(Some(head));
        }
    }
}

/// Parses a request head as returned by [`read_head`].
pub fn parse_head(bytes: &[u8]) -> Result<Head, ReadError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ReadError::Malformed("head is not UTF-8"))?;
    let mut lines = text
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line));
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => return Err(ReadError::Malformed("bad request line")),
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(ReadError::Malformed("bad method"));
    }
    let minor_version = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        _ => return Err(ReadError::Malformed("unsupported HTTP version")),
    };
    if !target.starts_with('/') {
        return Err(ReadError::Malformed("request target must be a path"));
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, query),
        None => (target, ""),
    };

    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            return Err(ReadError::Malformed("obsolete header folding"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or(ReadError::Malformed("header without colon"))?;
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(ReadError::Malformed("bad header name"));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }

    let mut head = Head {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        minor_version,
        headers,
        body: BodyKind::None,
        keep_alive: false,
        expect_continue: false,
    };
    head.body = body_kind(&head)?;
    head.keep_alive = wants_keep_alive(&head);
    head.expect_continue = head
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        && minor_version == 1;
    Ok(head)
}

fn body_kind(head: &Head) -> Result<BodyKind, ReadError> {
    let encodings: Vec<&str> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let lengths: Vec<&str> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str())
        .collect();
    if !encodings.is_empty() {
        // Both framings at once is how request smuggling starts: refuse it.
        if !lengths.is_empty() {
            return Err(ReadError::Malformed(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        return match encodings.as_slice() {
            [.., last] if last.eq_ignore_ascii_case("chunked") => Ok(BodyKind::Chunked),
            _ => Err(ReadError::Malformed("unsupported transfer encoding")),
        };
    }
    let mut length = None;
    for value in lengths {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ReadError::Malformed("bad Content-Length"));
        }
        let n: u64 = value
            .parse()
            .map_err(|_| ReadError::Malformed("bad Content-Length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(ReadError::Malformed("conflicting Content-Length"));
        }
        length = Some(n);
    }
    Ok(match length {
        Some(0) | None => BodyKind::None,
        Some(n) => BodyKind::Length(n),
    })
}

fn wants_keep_alive(head: &Head) -> bool {
    let connection = head.header("connection").unwrap_or("");
    let has = |token: &str| {
        connection
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if head.minor_version == 1 {
        !has("close")
    } else {
        has("keep-alive")
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads and discards a request body, returning its length in bytes.
pub fn read_body<R: BufRead>(reader: &mut R, kind: BodyKind) -> Result<u64, ReadError> {
    match kind {
        BodyKind::None => Ok(0),
        BodyKind::Length(n) => {
            let copied = io::copy(&mut reader.by_ref().take(n), &mut io::sink())?;
            if copied < n {
                return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(n)
        }
        BodyKind::Chunked => read_chunked(reader),
    }
}

fn read_chunked<R: BufRead>(reader: &mut R) -> Result<u64, ReadError> {
    let mut total = 0u64;
    loop {
        let line = read_line(reader)?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| ReadError::Malformed("bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(reader)?.is_empty() {}
            return Ok(total);
        }
        let copied = io::copy(&mut reader.by_ref().take(size), &mut io::sink())?;
        if copied < size {
            return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        total += size;
        if !read_line(reader)?.is_empty() {
            return Err(ReadError::Malformed("chunk not followed by CRLF"));
        }
    }
}

/// One line without its line ending; short lines only (chunk sizes, trailers).
fn read_line<R: BufRead>(reader: &mut R) -> Result<String, ReadError> {
    let mut line = Vec::new();
    reader
        .by_ref()
        .take(8 * 1024)
        .read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\n") {
        return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    line.pop();
    if line.ends_with(b"\r") {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| ReadError::Malformed("line is not UTF-8"))
}

/// The value of a query parameter, percent-decoded (`+` is a space).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| percent_decode(key) == name)
        .map(|(_, value)| percent_decode(value))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 3 <= bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A response to write; the connection-level headers are added by [`Response::write_to`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: body.into_bytes(),
        }
    }

    pub fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
        }
    }

    /// Writes the response with a correct `Content-Length`, the given extra headers and
    /// a `Connection` header; `head_only` leaves out the body (for `HEAD`).
    pub fn write_to<W: Write>(
        &self,
        writer: &mut W,
        extra_headers: &[(&str, &str)],
        keep_alive: bool,
        head_only: bool,
    ) -> io::Result<()> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            reason_phrase(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in extra_headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(if keep_alive {
            "Connection: keep-alive\r\n\r\n"
        } else {
            "Connection: close\r\n\r\n"
        });
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        writer.write_all(&bytes)?;
        writer.flush()
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufReader, Cursor};

    fn head(text: &str) -> Result<Head, ReadError> {
        parse_head(text.as_bytes())
    }

    #[test]
    fn parses_a_get_with_query_and_headers() {
        let h = head("GET /slow?ms=250&x=1 HTTP/1.1\r\nHost: a\r\nX-Thing:  v \r\n\r\n").unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.path, "/slow");
        assert_eq!(h.query, "ms=250&x=1");
        assert_eq!(h.minor_version, 1);
        assert_eq!(h.header("x-thing"), Some("v"));
        assert_eq!(h.body, BodyKind::None);
        assert!(h.keep_alive);
        assert!(!h.expect_continue);
    }

    #[test]
    fn keep_alive_follows_version_and_connection_header() {
        assert!(
            !head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(!head("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(
            head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn body_framing() {
        let h = head("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert_eq!(h.body, BodyKind::Length(12));
        let h = head("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(h.body, BodyKind::Chunked);
        let h = head("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n").unwrap();
        assert_eq!(h.body, BodyKind::Length(3));
        let h =
            head("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n").unwrap();
        assert!(h.expect_continue);
    }

    #[test]
    fn rejects_malformed_heads() {
        for bad in [
            "GET /\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "GET  / HTTP/1.1\r\n\r\n",
            "GET example.com HTTP/1.1\r\n\r\n",
            "G(T / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        ] {
            assert!(
                matches!(head(bad), Err(ReadError::Malformed(_))),
                "accepted {bad:?}"
            );
        }
    }

    #[test]
    fn reads_pipelined_requests_and_bodies() {
        let wire =
            "\r\nPOST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n";
        let mut reader = BufReader::new(Cursor::new(wire));
        let first = parse_head(&read_head(&mut reader).unwrap().unwrap()).unwrap();
        assert_eq!(first.path, "/echo");
        assert_eq!(read_body(&mut reader, first.body).unwrap(), 5);
        let second = parse_head(&read_head(&mut reader).unwrap().unwrap()).unwrap();
        assert_eq!((second.method.as_str(), second.path.as_str()), ("GET", "/"));
        assert!(read_head(&mut reader).unwrap().is_none());
    }

    #[test]
    fn reads_a_chunked_body() {
        let wire = "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\nnext";
        let mut reader = BufReader::new(Cursor::new(wire));
        assert_eq!(read_body(&mut reader, BodyKind::Chunked).unwrap(), 11);
        let mut rest = String::new();
        reader.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "next");
    }

    #[test]
    fn a_short_body_is_an_io_error() {
        let mut reader = BufReader::new(Cursor::new("abc"));
        assert!(matches!(
            read_body(&mut reader, BodyKind::Length(10)),
            Err(ReadError::Io(_))
        ));
    }

    #[test]
    fn a_huge_head_is_refused() {
        let wire = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        let mut reader = BufReader::new(Cursor::new(wire));
        assert!(matches!(
            read_head(&mut reader),
            Err(ReadError::Malformed(_))
        ));
    }

    #[test]
    fn query_params_are_found_and_decoded() {
        assert_eq!(query_param("ms=250", "ms").as_deref(), Some("250"));
        assert_eq!(query_param("a=1&ms=7&ms=9", "ms").as_deref(), Some("7"));
        assert_eq!(query_param("a=x%20y+z", "a").as_deref(), Some("x y z"));
        assert_eq!(query_param("flag&b=2", "flag").as_deref(), Some(""));
        assert_eq!(query_param("m%73=5", "ms").as_deref(), Some("5"));
        assert_eq!(query_param("a=100%", "a").as_deref(), Some("100%"));
        assert_eq!(query_param("a=%zz", "a").as_deref(), Some("%zz"));
        assert_eq!(query_param("", "ms"), None);
        assert_eq!(query_param("msx=1", "ms"), None);
    }

    #[test]
    fn responses_carry_length_and_connection() {
        let mut out = Vec::new();
        Response::text(200, "ok")
            .write_to(&mut out, &[("X-Demo-Version", "v1")], false, false)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 2\r\n"), "{text}");
        assert!(text.contains("X-Demo-Version: v1\r\n"), "{text}");
        assert!(text.ends_with("Connection: close\r\n\r\nok"), "{text}");

        let mut out = Vec::new();
        Response::text(200, "ok")
            .write_to(&mut out, &[], true, true)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Content-Length: 2\r\n"), "{text}");
        assert!(text.ends_with("Connection: keep-alive\r\n\r\n"), "{text}");
    }
}
