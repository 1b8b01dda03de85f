//! Accepting connections and draining them on shutdown.
//!
//! One thread per connection. Every open connection is registered with a `busy` flag
//! (a request is being read or answered). Shutdown stops accepting at once, closes the
//! read side of idle keep-alive connections (so they cannot hold the process open) and
//! waits for busy ones to finish their response, which then goes out with
//! `Connection: close`.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use crate::app::App;
use crate::http::{parse_head, read_body, read_head, ReadError, Response};

/// How long a connection may sit idle (or stall mid-request) before it is closed.
/// Longer than nginx's default upstream `keepalive_timeout` (60 s), so that nginx, not
/// the app, closes idle upstream connections and never reuses one the app just closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How long writing a response may block.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A bound server; [`Server::run`] serves until [`ShutdownHandle::shutdown`] is called.
pub struct Server {
    listener: TcpListener,
    app: Arc<App>,
    shared: Arc<Shared>,
}

/// Starts a graceful shutdown of a running [`Server`]; cheap to clone.
#[derive(Clone)]
pub struct ShutdownHandle(Arc<Shared>);

struct Shared {
    shutting_down: AtomicBool,
    connections: Mutex<Connections>,
    /// Signalled whenever a connection ends.
    connection_closed: Condvar,
    /// Where to connect to wake up a blocked `accept`.
    wake_addr: SocketAddr,
}

#[derive(Default)]
struct Connections {
    next_id: u64,
    open: HashMap<u64, Connection>,
}

struct Connection {
    stream: TcpStream,
    busy: bool,
}

impl Server {
    /// Binds the listening socket (port 0 picks a free port; see [`Server::local_addr`]).
    pub fn bind(addr: SocketAddr, app: App) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        let wake_ip = match local.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => [127, 0, 0, 1].into(),
            ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
            ip => ip,
        };
        Ok(Server {
            listener,
            app: Arc::new(app),
            shared: Arc::new(Shared {
                shutting_down: AtomicBool::new(false),
                connections: Mutex::new(Connections::default()),
                connection_closed: Condvar::new(),
                wake_addr: SocketAddr::new(wake_ip, local.port()),
            }),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shared.clone())
    }

    /// Serves until shutdown, then returns once every request in flight is answered.
    pub fn run(self) {
        for stream in self.listener.incoming() {
            if self.shared.is_shutting_down() {
                break;
            }
            match stream {
                Ok(stream) => self.spawn_connection(stream),
                Err(err) => {
                    eprintln!("demo: accept failed: {err}");
                    // Out of file descriptors and the like: do not spin.
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
        // Closing the listening socket refuses new connections from now on.
        drop(self.listener);
        let mut connections = self.shared.lock();
        while !connections.open.is_empty() {
            connections = self
                .shared
                .connection_closed
                .wait(connections)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    fn spawn_connection(&self, stream: TcpStream) {
        let Ok(registered) = stream.try_clone() else {
            return;
        };
        let id = {
            let mut connections = self.shared.lock();
            if self.shared.is_shutting_down() {
                // Accepted just before the shutdown flag was set but after shutdown closed
                // the idle connections: close this one the same way.
                let _ = stream.shutdown(Shutdown::Read);
            }
            let id = connections.next_id;
            connections.next_id += 1;
            connections.open.insert(
                id,
                Connection {
                    stream: registered,
                    busy: false,
                },
            );
            id
        };
        let app = self.app.clone();
        let shared = self.shared.clone();
        let spawned = thread::Builder::new()
            .name(format!("conn-{id}"))
            .spawn(move || {
                let _registration = Registration {
                    shared: &shared,
                    id,
                };
                serve_connection(&app, &shared, id, stream);
            });
        if let Err(err) = spawned {
            eprintln!("demo: cannot start a connection thread: {err}");
            self.shared.lock().open.remove(&id);
        }
    }
}

impl ShutdownHandle {
    /// Stops accepting, closes idle connections and lets busy ones finish. Idempotent.
    pub fn shutdown(&self) {
        let shared = &self.0;
        if shared.shutting_down.swap(true, Ordering::SeqCst) {
            return;
        }
        for connection in shared.lock().open.values().filter(|c| !c.busy) {
            // Wakes the connection's blocked read with end-of-file; writes still work.
            let _ = connection.stream.shutdown(Shutdown::Read);
        }
        // `accept` does not notice the flag on its own: give it a connection to return.
        let _ = TcpStream::connect_timeout(&shared.wake_addr, Duration::from_secs(1));
    }

    /// Number of open connections and how many of them are busy (for logging).
    pub fn connection_counts(&self) -> (usize, usize) {
        let connections = self.0.lock();
        let busy = connections.open.values().filter(|c| c.busy).count();
        (connections.open.len(), busy)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    fn mark_busy(&self, id: u64) {
        if let Some(connection) = self.lock().open.get_mut(&id) {
            connection.busy = true;
        }
    }

    /// Marks the connection idle; false if the server is shutting down and the connection
    /// must close instead. Under the lock, so `shutdown` sees every connection either busy
    /// (it will close itself after answering) or idle (shutdown closes it).
    fn mark_idle(&self, id: u64) -> bool {
        let mut connections = self.lock();
        if self.is_shutting_down() {
            return false;
        }
        if let Some(connection) = connections.open.get_mut(&id) {
            connection.busy = false;
        }
        true
    }
}

/// Removes a connection from the registry when its thread ends, however it ends.
struct Registration<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.shared.lock().open.remove(&self.id);
        self.shared.connection_closed.notify_all();
    }
}

fn serve_connection(app: &App, shared: &Shared, id: u64, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    if stream.set_read_timeout(Some(IDLE_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
        return;
    }
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    loop {
        // Idle until the first byte of the next request (or EOF, timeout, shutdown).
        match reader.fill_buf() {
            Ok(bytes) if !bytes.is_empty() => {}
            _ => return,
        }
        shared.mark_busy(id);
        let keep_alive = match serve_request(app, shared, &mut reader, &mut writer) {
            Ok(Next::Upgraded) => {
                // Idle as far as a shutdown goes: it closes the read side,
                // which ends the WebSocket.
                if shared.mark_idle(id) {
                    crate::ws::echo(app, writer);
                }
                return;
            }
            Ok(Next::KeepAlive) => true,
            Ok(Next::Close) => false,
            Err(ReadError::Malformed(why)) => {
                let response = Response::text(400, &format!("bad request: {why}\n"));
                let _ = response.write_to(&mut writer, &app.identity_headers(), false, false);
                false
            }
            Err(ReadError::Io(_)) => false,
        };
        if !keep_alive || !shared.mark_idle(id) {
            return;
        }
    }
}

/// What a connection does after a request.
enum Next {
    KeepAlive,
    Close,
    /// It is a WebSocket now (`GET /ws`).
    Upgraded,
}

/// Reads one request and answers it; says what the connection does next.
fn serve_request<R: BufRead, W: Write>(
    app: &App,
    shared: &Shared,
    reader: &mut R,
    writer: &mut W,
) -> Result<Next, ReadError> {
    let Some(head_bytes) = read_head(reader)? else {
        return Ok(Next::Close);
    };
    let head = parse_head(&head_bytes)?;
    if head.path == "/ws" && !shared.is_shutting_down() {
        if let Some(accept) = crate::ws::accept_key(&head) {
            writer.write_all(
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\
                     X-Demo-Version: {}\r\n\r\n",
                    app.config().version
                )
                .as_bytes(),
            )?;
            writer.flush()?;
            return Ok(Next::Upgraded);
        }
    }
    if head.expect_continue {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        writer.flush()?;
    }
    let body_len = read_body(reader, head.body)?;
    let response = app.handle(&head, body_len);
    // Decided after handling: a shutdown during a slow request closes the connection.
    let keep_alive = head.keep_alive && !shared.is_shutting_down();
    response.write_to(
        writer,
        &app.identity_headers(),
        keep_alive,
        head.method == "HEAD",
    )?;
    Ok(if keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    })
}
