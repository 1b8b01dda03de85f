//! The test environment itself, against the real registry, Docker and nginx.

use std::time::Instant;

use greenlight_testkit::env::*;

/// Status and the `X-Greenlight-Upstream` header of a GET through nginx.
async fn get(url: &str, service: Option<&str>) -> (u16, Option<String>) {
    let client = greenlight_testkit::http();
    let mut request = client.get(url);
    if let Some(service) = service {
        request = request.header("X-Greenlight-Service", service);
    }
    let response = request.send().await.expect("nginx answers");
    let upstream = response
        .headers()
        .get("x-greenlight-upstream")
        .map(|v| v.to_str().unwrap().to_string());
    (response.status().as_u16(), upstream)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_demo_image_is_pushed_to_a_fresh_registry() {
    // Stable tags: removing test images would also drop their build cache.
    let tag_v1 = "greenlight-test-demo:env-v1".to_string();
    let tag_v2 = "greenlight-test-demo:env-v2-healthcheck".to_string();

    let receiver = NotificationReceiver::start();
    let started = Instant::now();
    let registry = Registry::start(RegistryOpts {
        notify: Some(NotifyEndpoint {
            url: format!("http://127.0.0.1:{}/hooks/registry", receiver.port),
            token: "t0ken".into(),
        }),
        ..Default::default()
    })
    .unwrap();
    eprintln!("registry up in {:?}", started.elapsed());

    let started = Instant::now();
    demo_binary();
    eprintln!("demo binary ready in {:?}", started.elapsed());
    let started = Instant::now();
    build_demo_image(&tag_v1, "v1", DemoImageOpts::default()).unwrap();
    build_demo_image(
        &tag_v2,
        "v2",
        DemoImageOpts {
            healthcheck: true,
            env: vec![("DEMO_START_DELAY_MS".into(), "100".into())],
        },
    )
    .unwrap();
    eprintln!("two demo images built in {:?}", started.elapsed());

    let env = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Env}}",
        &tag_v2,
    ])
    .unwrap();
    assert!(env.contains("DEMO_VERSION=v2"), "{env}");
    assert!(env.contains("DEMO_START_DELAY_MS=100"), "{env}");

    let started = Instant::now();
    let v1 = registry.push(&tag_v1, "demo/app", "latest").unwrap();
    let v2 = registry.push(&tag_v2, "demo/app", "next").unwrap();
    eprintln!("two pushes in {:?}", started.elapsed());
    assert!(v1.starts_with("sha256:") && v1.len() == 71, "{v1}");
    assert_ne!(v1, v2, "distinct versions give distinct digests");
    assert_eq!(
        registry.digest("demo/app", "latest").unwrap().as_deref(),
        Some(v1.as_str())
    );
    assert_eq!(registry.digest("demo/app", "missing").unwrap(), None);
    // The push tag is gone locally, so a deployer has to pull.
    assert!(docker(&[
        "image",
        "inspect",
        &format!("{}/demo/app:latest", registry.host())
    ])
    .is_err());
    let log = registry.log();
    assert!(log.contains("PUT /v2/demo/app/manifests/latest"), "{log}");

    // The registry notifies with the configured bearer token.
    let notification = receiver
        .requests
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("a notification arrives");
    assert!(
        notification.starts_with("POST /hooks/registry "),
        "{notification}"
    );
    assert!(
        notification.contains("Authorization: Bearer t0ken\r\n"),
        "{notification}"
    );
    assert!(
        notification.contains("application/vnd.docker.distribution.events.v1+json"),
        "{notification}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn host_nginx_answers_502_until_an_upstream_exists() {
    let prefix = unique_prefix("env-host-nginx");
    let app = format!("{prefix}app");
    let api = format!("{prefix}api");

    let started = Instant::now();
    let nginx = Nginx::host(&prefix, &[&app, &api]).unwrap();
    eprintln!("host nginx up in {:?}", started.elapsed());
    assert_eq!(nginx.container_name(), None);
    assert_eq!(nginx.config_path_in_runtime(), nginx.conf_path());
    assert!(nginx.upstreams_dir().is_dir());
    assert!(nginx.dir().join("conf.d").is_dir());

    assert_eq!(get(&nginx.url(), None).await.0, 502);
    assert_eq!(get(&format!("{}/{api}/x", nginx.url()), None).await.0, 502);
    assert_eq!(get(&nginx.verify_url(), Some(&app)).await.0, 502);

    // An upstream file plus a reload routes the service, on both servers.
    let demo = std::process::Command::new(demo_binary())
        .env("PORT", free_port().to_string())
        .env("DEMO_VERSION", "host")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut demo = KillOnDrop(demo);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(demo.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port = line.trim().rsplit(':').next().unwrap();
    std::fs::write(
        nginx.upstreams_dir().join(format!("{app}.conf")),
        format!("upstream {app} {{ server 127.0.0.1:{port}; }}\n"),
    )
    .unwrap();
    let reload = std::process::Command::new(NGINX_BINARY)
        .arg("-c")
        .arg(nginx.config_path_in_runtime())
        .args(["-s", "reload"])
        .output()
        .unwrap();
    assert!(reload.status.success(), "{reload:?}");
    // Old workers may still accept for a moment after a new one answered: wait
    // for several answers in a row.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    let mut in_a_row = 0;
    while in_a_row < 10 {
        let (status, upstream) = get(&nginx.url(), None).await;
        if status == 200 {
            assert_eq!(
                upstream.as_deref(),
                Some(format!("127.0.0.1:{port}").as_str())
            );
            in_a_row += 1;
        } else {
            in_a_row = 0;
        }
        assert!(Instant::now() < deadline, "reload never took effect");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(get(&nginx.verify_url(), Some(&app)).await.0, 200);
    assert_large_post_passes(&nginx.url()).await;
    assert!(
        nginx.error_log().contains("reconfiguring"),
        "{}",
        nginx.error_log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn container_nginx_answers_502_and_sees_files_written_on_the_host() {
    let prefix = unique_prefix("env-container-nginx");
    let _cleanup = DockerCleanup::new(&prefix);
    let app = format!("{prefix}app");
    let network = format!("{prefix}net");

    let started = Instant::now();
    let image = host_nginx_image().unwrap();
    eprintln!("nginx image in {:?}", started.elapsed());
    let started = Instant::now();
    let nginx = Nginx::container(&prefix, &[&app], &network, &image).unwrap();
    eprintln!("container nginx up in {:?}", started.elapsed());
    let name = nginx.container_name().unwrap().to_string();
    assert_eq!(name, format!("{}-nginx", prefix.trim_end_matches('-')));
    assert_eq!(
        nginx.config_path_in_runtime(),
        std::path::Path::new("/etc/greenlight-nginx/nginx.conf")
    );
    assert_eq!(get(&nginx.url(), None).await.0, 502);
    assert_eq!(get(&nginx.verify_url(), Some(&app)).await.0, 502);

    // A demo container on the network, routed by an upstream file written on the host
    // and a reload inside the container.
    build_demo_image(
        "greenlight-test-demo:env-v1",
        "v1",
        DemoImageOpts::default(),
    )
    .unwrap();
    let blue = format!("{prefix}app-blue");
    docker(&[
        "run",
        "--detach",
        "--name",
        &blue,
        "--network",
        &network,
        "--label",
        &format!("{SERVICE_LABEL}={app}"),
        "greenlight-test-demo:env-v1",
    ])
    .unwrap();
    let ip = docker(&[
        "inspect",
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        &blue,
    ])
    .unwrap();
    std::fs::write(
        nginx.upstreams_dir().join(format!("{app}.conf")),
        format!("upstream {app} {{ server {ip}:8080; }}\n"),
    )
    .unwrap();
    let config = nginx.config_path_in_runtime();
    docker(&[
        "exec",
        &name,
        "/usr/sbin/nginx",
        "-c",
        config.to_str().unwrap(),
        "-s",
        "reload",
    ])
    .unwrap();
    // Old workers may still accept for a moment after the first answer of a new
    // one, so wait for several answers in a row.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    let mut in_a_row = 0;
    while in_a_row < 10 {
        in_a_row = if get(&nginx.url(), None).await.0 == 200 {
            in_a_row + 1
        } else {
            0
        };
        assert!(
            Instant::now() < deadline,
            "reload never took effect: {}",
            nginx.error_log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        get(&nginx.verify_url(), Some(&app)).await.1.as_deref(),
        Some(format!("{ip}:8080").as_str())
    );
    assert_large_post_passes(&nginx.url()).await;
    docker(&["rm", "--force", &blue]).unwrap();

    // The directory mount shows host writes inside; a broken conf.d file fails `nginx -t`.
    std::fs::write(
        nginx.dir().join("conf.d/broken.conf"),
        "this is not nginx;\n",
    )
    .unwrap();
    let test = std::process::Command::new("docker")
        .args(["exec", &name, "/usr/sbin/nginx", "-t", "-c"])
        .arg(nginx.config_path_in_runtime())
        .output()
        .unwrap();
    assert!(!test.status.success(), "nginx -t passed a broken config");
    assert!(String::from_utf8_lossy(&test.stderr).contains("broken.conf"));

    drop(nginx);
    assert!(
        docker(&["inspect", &name]).is_err(),
        "container left behind"
    );
    assert!(
        docker(&["network", "inspect", &network]).is_err(),
        "network left behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_cleanup_removes_labelled_containers_and_networks() {
    let prefix = unique_prefix("env-cleanup");
    build_demo_image(
        "greenlight-test-demo:cleanup",
        "cleanup",
        DemoImageOpts::default(),
    )
    .unwrap();
    let network = format!("{prefix}net");
    {
        let _cleanup = DockerCleanup::new(&prefix);
        docker(&["network", "create", &network]).unwrap();
        docker(&[
            "run",
            "-d",
            "--name",
            &format!("unrelated-name-{prefix}x"),
            "--label",
            &format!("{SERVICE_LABEL}={prefix}app"),
            "greenlight-test-demo:cleanup",
        ])
        .unwrap();
        docker(&[
            "run",
            "-d",
            "--name",
            &format!("{prefix}direct"),
            "--network",
            &network,
            "greenlight-test-demo:cleanup",
        ])
        .unwrap();
    }
    let left = docker(&["ps", "-a", "--format", "{{.Names}}"]).unwrap();
    assert!(!left.contains(&prefix), "left behind: {left}");
    assert!(docker(&["network", "inspect", &network]).is_err());
}

/// A body larger than nginx's in-memory buffer goes through its client body temp dir,
/// which the unprivileged worker must be able to write.
async fn assert_large_post_passes(base: &str) {
    let response = greenlight_testkit::http()
        .post(format!("{base}/echo"))
        .body(vec![b'x'; 300_000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(body.contains("\"body_length\":300000"), "{body}");
}

/// Accepts HTTP requests on a free port, answers 200 and hands over each request head.
struct NotificationReceiver {
    port: u16,
    requests: std::sync::mpsc::Receiver<String>,
}

impl NotificationReceiver {
    fn start() -> NotificationReceiver {
        use std::io::{BufRead, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (sender, requests) = std::sync::mpsc::channel();
        // The thread ends with the test process; it only ever blocks in accept.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = std::io::BufReader::new(&stream);
                let mut head = String::new();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                    head.push_str(&line);
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let _ = (&stream).write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                let _ = sender.send(head);
            }
        });
        NotificationReceiver { port, requests }
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
