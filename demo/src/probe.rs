//! `greenlight-demo --probe URL`: a health check for images without a shell.
//!
//! A `FROM scratch` image has no curl or wget, so a Docker `HEALTHCHECK` has to run the
//! binary itself: `HEALTHCHECK CMD ["/greenlight-demo","--probe","http://127.0.0.1:8080/healthz"]`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Connect, write and read timeout of one probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a probe goes, from an `http://host[:port][/path]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl ProbeTarget {
    pub fn parse(url: &str) -> Result<ProbeTarget, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("only http:// URLs can be probed, got {url:?}"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (
                host,
                port.parse::<u16>()
                    .map_err(|_| format!("bad port in {url:?}"))?,
            ),
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("no host in {url:?}"));
        }
        Ok(ProbeTarget {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }
}

/// GETs the URL; `Ok(status)` if an HTTP response came back.
pub fn probe(url: &str) -> Result<u16, String> {
    let target = ProbeTarget::parse(url)?;
    let addr = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
        .next()
        .ok_or_else(|| format!("no address for {}", target.host))?;
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let io = |e: std::io::Error| format!("probe of {url} failed: {e}");
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT)).map_err(io)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: greenlight-demo-probe\r\nConnection: close\r\n\r\n",
        target.path, target.host
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut status_line = Vec::new();
    let mut byte = [0u8; 1];
    while !status_line.ends_with(b"\n") && status_line.len() < 256 {
        if stream.read(&mut byte).map_err(io)? == 0 {
            break;
        }
        status_line.push(byte[0]);
    }
    let status_line = String::from_utf8_lossy(&status_line);
    status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.trim().parse().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("no HTTP response from {url}: {:?}", status_line.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_probe_urls() {
        let t = ProbeTarget::parse("http://127.0.0.1:8080/healthz").unwrap();
        assert_eq!(
            t,
            ProbeTarget {
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/healthz".into()
            }
        );
        let t = ProbeTarget::parse("http://localhost").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        let t = ProbeTarget::parse("http://[::1]:81/x?y=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 81, "/x?y=1")
        );
        assert!(ProbeTarget::parse("https://example.com/").is_err());
        assert!(ProbeTarget::parse("http://host:port/").is_err());
    }
}
