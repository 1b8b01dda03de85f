//! The one TLS setup of greenlight's outgoing clients (src/tls.rs), against a
//! real TLS server (openssl s_server) whose certificate a private CA signed.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use greenlight_testkit::env::{certificates, free_port};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `openssl s_server -www` on 127.0.0.1:`port` with `cert`/`key`, once it accepts.
fn serve(dir: &std::path::Path, port: u16) -> Server {
    let child = Command::new("openssl")
        .args(["s_server", "-www", "-quiet", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-cert", "server.pem", "-key", "server.key"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl (apt-get install openssl)");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

#[tokio::test]
async fn a_private_ca_is_trusted_only_when_named() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _, _) = certificates(dir.path());
    let port = free_port();
    let _server = serve(dir.path(), port);
    let url = format!("https://127.0.0.1:{port}/");

    // The default trust (system + bundled roots) refuses the private CA.
    let refused = greenlight::tls::builder()
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await
        .expect_err("an unknown CA must be refused");
    let why = greenlight::display::error_chain(&refused);
    assert!(
        why.contains("UnknownIssuer") || why.contains("certificate"),
        "{why}"
    );

    // Named as [[registry]] ca_file, it is trusted.
    let extra = greenlight::tls::read_certificates(&ca).unwrap();
    let resp = greenlight::tls::builder_trusting(&extra)
        .unwrap()
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
