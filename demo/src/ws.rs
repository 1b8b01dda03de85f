//! `GET /ws`: a WebSocket (upgraded by the server after its own HTTP reading)
//! that sends `hello <version>` and echoes every text message as
//! `<version>: <message>`, until the client closes it or the demo stops
//! (SIGTERM closes its read side, as for an idle keep-alive connection).

use std::net::TcpStream;

use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

use crate::app::App;
use crate::http::Head;

/// The `Sec-WebSocket-Accept` of an upgrade request, or `None` when it is not one.
pub fn accept_key(head: &Head) -> Option<String> {
    let upgrade = head.header("upgrade")?;
    let connection = head.header("connection")?;
    let wants = upgrade.eq_ignore_ascii_case("websocket")
        && connection
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        && head.method == "GET";
    let key = head.header("sec-websocket-key")?;
    wants.then(|| derive_accept_key(key.trim().as_bytes()))
}

/// Serves the WebSocket on `stream` (the 101 already sent) until it ends.
pub fn echo(app: &App, stream: TcpStream) {
    // Long-lived by design: no idle timeout of the HTTP side.
    let _ = stream.set_read_timeout(None);
    let version = app.config().version.clone();
    let mut ws = WebSocket::from_raw_socket(stream, Role::Server, None);
    if ws.send(Message::text(format!("hello {version}"))).is_err() {
        return;
    }
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => {
                if ws
                    .send(Message::text(format!("{version}: {}", text.as_str())))
                    .is_err()
                {
                    return;
                }
            }
            Ok(Message::Close(_)) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_is_rfc_6455s() {
        let head = crate::http::parse_head(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        // RFC 6455 section 1.3's example.
        assert_eq!(
            accept_key(&head).as_deref(),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        let plain = crate::http::parse_head(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(accept_key(&plain), None);
    }
}
