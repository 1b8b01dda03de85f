//! A TCP proxy that can be made to misbehave, to put in front of a real server
//! (the registry): pass traffic through, answer `503`, cut connections, or accept
//! and then say nothing (a stall). The mode applies to connections accepted after
//! it is set; stalled connections stay open until the proxy is dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Forward both ways.
    Pass = 0,
    /// Answer every request `503 Service Unavailable` and close.
    Unavailable = 1,
    /// Close each connection as soon as it is accepted.
    Reset = 2,
    /// Accept and never answer.
    Stall = 3,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::Unavailable,
            2 => Mode::Reset,
            3 => Mode::Stall,
            _ => Mode::Pass,
        }
    }
}

pub struct FaultProxy {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    accepted: Arc<std::sync::atomic::AtomicU64>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub fn start(target: SocketAddr, mode: Mode) -> Result<FaultProxy> {
        let listener = TcpListener::bind(("127.0.0.1", crate::env::free_port()))
            .or_else(|_| TcpListener::bind("127.0.0.1:0"))
            .context("binding the fault proxy")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let proxy = FaultProxy {
            addr,
            mode: Arc::new(AtomicU8::new(mode as u8)),
            stop: Arc::new(AtomicBool::new(false)),
            held: Arc::default(),
            accepted: Arc::default(),
        };
        let (mode, stop, held, accepted) = (
            proxy.mode.clone(),
            proxy.stop.clone(),
            proxy.held.clone(),
            proxy.accepted.clone(),
        );
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(_) => continue,
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let _ = client.set_nonblocking(false);
                match Mode::from_u8(mode.load(Ordering::SeqCst)) {
                    Mode::Pass => {
                        if let Ok(server) = TcpStream::connect(target) {
                            splice(client, server);
                        }
                    }
                    Mode::Unavailable => {
                        thread::spawn(move || answer_503(client));
                    }
                    Mode::Reset => drop(client),
                    Mode::Stall => held.lock().unwrap().push(client),
                }
            }
        });
        Ok(proxy)
    }

    /// `127.0.0.1:<port>`, as an image reference's registry host.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
        if mode != Mode::Stall {
            // Let stalled clients see their connection end.
            for c in self.held.lock().unwrap().drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }

    /// Connections accepted so far (every mode).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for c in self.held.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn splice(client: TcpStream, server: TcpStream) {
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    thread::spawn(move || copy(client, server));
    thread::spawn(move || copy(s2, c2));
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

fn answer_503(mut client: TcpStream) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
    // Read the request head, then answer.
    let mut buf = [0u8; 8192];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let body = "{\"errors\":[{\"code\":\"UNAVAILABLE\",\"message\":\"service unavailable (fault proxy)\"}]}";
    let _ = write!(
        client,
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.shutdown(Shutdown::Both);
}

/// A Unix-socket proxy in front of the Docker engine's socket that can freeze:
/// while frozen, bytes on every connection (new and already open) are held, so
/// every Docker API call hangs, as with an engine that stopped answering.
pub struct SocketProxy {
    path: std::path::PathBuf,
    frozen: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl SocketProxy {
    pub fn start(target: &str) -> Result<SocketProxy> {
        use std::os::unix::net::{UnixListener, UnixStream};
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&path).context("binding the socket proxy")?;
        listener.set_nonblocking(true)?;
        let frozen = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, st, target) = (frozen.clone(), stop.clone(), target.to_string());
        thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(_) => continue,
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = UnixStream::connect(&target) else {
                    continue;
                };
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                let (f1, f2) = (f.clone(), f.clone());
                thread::spawn(move || copy_unless_frozen(client, server, f1));
                thread::spawn(move || copy_unless_frozen(s2, c2, f2));
            }
        });
        Ok(SocketProxy {
            path,
            frozen,
            stop,
            _dir: dir,
        })
    }

    /// `unix://<path>`, for `[docker] socket`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    pub fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }
}

impl Drop for SocketProxy {
    fn drop(&mut self) {
        self.frozen.store(false, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn copy_unless_frozen(
    mut from: std::os::unix::net::UnixStream,
    mut to: std::os::unix::net::UnixStream,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(10));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_pass_refuse_and_stall() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = server.local_addr().unwrap();
        thread::spawn(move || {
            for mut s in server.incoming().flatten() {
                let _ = s.write_all(b"hello");
            }
        });
        let proxy = FaultProxy::start(target, Mode::Pass).unwrap();
        let read_all = || {
            let mut c = TcpStream::connect(proxy.addr).unwrap();
            c.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut out = Vec::new();
            let _ = c.write_all(b"GET / HTTP/1.1\r\n\r\n");
            let _ = c.read_to_end(&mut out);
            String::from_utf8_lossy(&out).to_string()
        };
        assert_eq!(read_all(), "hello");
        proxy.set_mode(Mode::Unavailable);
        assert!(read_all().starts_with("HTTP/1.1 503"));
        proxy.set_mode(Mode::Reset);
        assert_eq!(read_all(), "");
        proxy.set_mode(Mode::Stall);
        let start = std::time::Instant::now();
        assert_eq!(read_all(), "");
        assert!(
            start.elapsed() >= Duration::from_millis(400),
            "a stall answers nothing until the read times out"
        );
        assert_eq!(proxy.accepted(), 4);
    }
}
