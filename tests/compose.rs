//! The compose quickstart comes up with locally built images (greenlight, the
//! host's nginx, the demo app) and serves the demo app through nginx.

use std::process::Command;
use std::time::{Duration, Instant};

use greenlight_testkit::env::{
    build_demo_image, docker, free_port, host_nginx_image, workspace_root, DemoImageOpts,
};

struct Compose {
    project: String,
    env: Vec<(String, String)>,
}

impl Compose {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker-compose")
            .current_dir(workspace_root())
            .args(["-p", &self.project])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("running docker-compose")
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.run(&["logs", "--no-color", "--tail", "80"]);
            eprintln!(
                "--- compose logs ---\n{}",
                String::from_utf8_lossy(&logs.stdout)
            );
        }
        let _ = self.run(&["down", "-v", "--remove-orphans"]);
        // The demo containers greenlight made are not compose's.
        if let Ok(ids) = docker(&["ps", "-aq", "--filter", "label=greenlight.service=demo"]) {
            for id in ids.split_whitespace() {
                let _ = docker(&["rm", "-f", id]);
            }
        }
        // The demo containers kept the app network (named explicitly) alive.
        let _ = docker(&["network", "rm", &format!("{}-app", self.project)]);
        let _ = docker(&["network", "rm", &format!("{}-control", self.project)]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_quickstart_serves_the_demo_app() {
    let prefix = format!("glq{}", std::process::id() % 100_000);
    let gl_image = format!("{prefix}-greenlight:test");
    let out = Command::new(workspace_root().join("scripts/build-image.sh"))
        .arg(&gl_image)
        .env("GREENLIGHT_BINARY", env!("CARGO_BIN_EXE_greenlight"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nginx_image = host_nginx_image().unwrap();
    let demo_repo = format!("{prefix}-demo");
    build_demo_image(&format!("{demo_repo}:v1"), "v1", DemoImageOpts::default()).unwrap();

    let http_port = free_port();
    let gl_port = free_port();
    let token = "compose-test-token-0123456789";
    let compose = Compose {
        project: prefix.clone(),
        env: vec![
            ("GL_PREFIX".into(), prefix.clone()),
            ("HTTP_PORT".into(), http_port.to_string()),
            ("GREENLIGHT_PORT".into(), gl_port.to_string()),
            ("NGINX_IMAGE".into(), nginx_image),
            ("GREENLIGHT_IMAGE".into(), gl_image.clone()),
            ("DEMO_IMAGE".into(), demo_repo.clone()),
            ("GREENLIGHT_TOKEN".into(), token.into()),
        ],
    };
    let up = compose.run(&["up", "-d"]);
    assert!(
        up.status.success(),
        "compose up: {}",
        String::from_utf8_lossy(&up.stderr)
    );

    let http = greenlight_testkit::http_builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let gl = format!("http://127.0.0.1:{gl_port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(http.get(format!("{gl}/healthz")).send().await, Ok(r) if r.status().is_success())
    {
        assert!(Instant::now() < deadline, "greenlight did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let resp = http
        .post(format!("{gl}/api/services/demo/deploy"))
        .bearer_auth(token)
        .json(&serde_json::json!({"tag": "v1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<serde_json::Value>().await.unwrap()["deployment"]
        .as_i64()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let d = loop {
        let d: serde_json::Value = http
            .get(format!("{gl}/api/deployments/{id}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !d["finished_at"].is_null() {
            break d;
        }
        assert!(Instant::now() < deadline, "deployment did not finish: {d}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(d["state"], "succeeded", "{d:#}");

    let resp = http
        .get(format!("http://127.0.0.1:{http_port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-demo-version"], "v1");
    assert_eq!(resp.headers()["x-demo-colour"], "blue");
    drop(compose);
    let _ = docker(&["rmi", "-f", &gl_image, &format!("{demo_repo}:v1")]);
}
