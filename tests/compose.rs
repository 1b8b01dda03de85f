//! The compose quickstart comes up with locally built images (greenlight, the
//! host's nginx, the demo app) and serves the demo app through nginx.

use std::process::Command;
use std::time::{Duration, Instant};

use greenlight_testkit::env::{docker, free_port, host_nginx_image, workspace_root};

struct Compose {
    project: String,
    env_file: String,
    env: Vec<(String, String)>,
}

impl Compose {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker-compose")
            .current_dir(workspace_root())
            .args(["--env-file", &self.env_file, "-p", &self.project])
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

#[test]
fn the_compose_file_has_no_obsolete_version_key() {
    let file = std::fs::read_to_string(workspace_root().join("docker-compose.yml")).unwrap();
    assert!(
        !file.lines().any(|l| l.starts_with("version:")),
        "the Compose Specification has no `version:`; compose v2 warns about it"
    );
}

/// The quickstart's three commands, as the README gives them: build the
/// images (and the token), `up -d`, `exec greenlight greenlight deploy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_quickstart_serves_the_demo_app() {
    let prefix = format!("glq{}", std::process::id() % 100_000);
    let gl_image = format!("{prefix}-greenlight:test");
    let nginx_image = host_nginx_image().unwrap();
    let demo_repo = format!("{prefix}-demo");
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join(".env");
    let out = Command::new(workspace_root().join("compose/build-images.sh"))
        .env("GREENLIGHT_BINARY", env!("CARGO_BIN_EXE_greenlight"))
        .env("GREENLIGHT_IMAGE", &gl_image)
        .env("NGINX_IMAGE", &nginx_image)
        .env("DEMO_IMAGE", &demo_repo)
        .env("ENV_FILE", &env_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = std::fs::read_to_string(&env_file).unwrap();
    let token = env
        .lines()
        .find_map(|l| l.strip_prefix("GREENLIGHT_TOKEN="))
        .expect("a token in the env file")
        .to_string();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&env_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the env file holds the admin token");

    let http_port = free_port();
    let gl_port = free_port();
    let compose = Compose {
        project: prefix.clone(),
        env_file: env_file.display().to_string(),
        env: vec![
            ("GL_PREFIX".into(), prefix.clone()),
            ("HTTP_PORT".into(), http_port.to_string()),
            ("GREENLIGHT_PORT".into(), gl_port.to_string()),
            ("NGINX_IMAGE".into(), nginx_image),
            ("GREENLIGHT_IMAGE".into(), gl_image.clone()),
            ("DEMO_IMAGE".into(), demo_repo.clone()),
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

    // The README's third command (no --config: the image's GREENLIGHT_CONFIG).
    let deploy = compose.run(&[
        "exec",
        "-T",
        "greenlight",
        "greenlight",
        "deploy",
        "demo",
        "--tag",
        "v1",
    ]);
    assert!(
        deploy.status.success(),
        "deploy: {}{}",
        String::from_utf8_lossy(&deploy.stdout),
        String::from_utf8_lossy(&deploy.stderr)
    );
    let history: serde_json::Value = http
        .get(format!("{gl}/api/deployments"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history[0]["state"], "succeeded", "{history:#}");

    let resp = http
        .get(format!("http://127.0.0.1:{http_port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-demo-version"], "v1");
    assert_eq!(resp.headers()["x-demo-colour"], "blue");
    // The image's HEALTHCHECK (`greenlight healthz`) finds the server healthy.
    let container = format!("{prefix}-greenlight");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health = docker(&[
            "inspect",
            "--format",
            "{{.State.Health.Status}}",
            &container,
        ])
        .unwrap_or_default();
        if health == "healthy" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{container} is {health:?}, not healthy"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(compose);
    let _ = docker(&["rmi", "-f", &gl_image, &format!("{demo_repo}:v1")]);
}
