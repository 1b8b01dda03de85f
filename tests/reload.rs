//! Live config: `greenlight reload` and SIGHUP re-read the config file; a
//! service added deploys from a webhook without a restart, a file with an
//! error is refused and the running config stays, and `check` and the API say
//! whether the file on disk differs from what runs.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::World;
use serde_json::Value;

const NO_ENV: &[(&str, &str)] = &[];

/// `greenlight check --json` against this config file: the finding `what`.
fn check_finding(w: &World, what: &str) -> Value {
    let out = Command::new(common::binary())
        .args([
            "--config",
            w.gl.config_path.to_str().unwrap(),
            "--json",
            "check",
        ])
        .output()
        .unwrap();
    let findings: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    findings
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["what"] == what)
        .cloned()
        .unwrap_or_else(|| panic!("no {what} finding: {findings:#}"))
}

async fn config_view(w: &World) -> Value {
    w.gl.get("/api/config").await
}

/// Waits until the running config lists `n` services.
async fn wait_services(w: &World, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = config_view(w).await;
        if c["services"].as_array().map(Vec::len) == Some(n) {
            return c;
        }
        assert!(Instant::now() < deadline, "{c:#}\n{}", w.gl.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_added_by_reload_deploys_from_a_webhook_and_a_bad_file_is_refused() {
    let mut w = World::with_hooks("reload", &[("v1", NO_ENV), ("v2", NO_ENV)], true);
    w.push("v1");
    w.wait_live("v1").await;
    let before = config_view(&w).await;
    assert_eq!(before["file_differs"], false, "{before:#}");
    assert_eq!(check_finding(&w, "running config")["ok"], true);

    // A second service, on its own repository, added to the file.
    let other = format!("{}api", w.prefix);
    let repo = format!("{}/{}/demo2", w.registry.host(), w.prefix);
    let added = format!(
        "\n[[service]]\nname = \"{other}\"\nimage = \"{repo}\"\nport = 8080\nnetwork = \"{}-net\"\n\
         [service.health]\ninterval = \"100ms\"\ndeadline = \"10s\"\n\
         [service.rollout]\nstop_grace = \"5s\"\n",
        w.prefix
    );
    w.gl.edit_config(|c| format!("{c}{added}"));
    let differs = config_view(&w).await;
    assert_eq!(differs["file_differs"], true, "{differs:#}");
    let finding = check_finding(&w, "running config");
    assert_eq!(finding["ok"], false, "{finding:#}");
    assert!(
        finding["detail"]
            .as_str()
            .unwrap()
            .contains("the file differs"),
        "{finding:#}"
    );

    let out = w.gl.cli(&["reload"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains(&format!("added {other}")), "{said}");
    let after = config_view(&w).await;
    assert_eq!(after["file_differs"], false, "{after:#}");
    assert!(after["loaded_at"].as_i64() > before["loaded_at"].as_i64());
    assert_eq!(check_finding(&w, "running config")["ok"], true);

    // The registry's notification of a push to its repository deploys it.
    w.push_as("v2", Some(&format!("{}/demo2", w.prefix)), "v2");
    let deadline = Instant::now() + Duration::from_secs(120);
    let live = loop {
        let s = w.gl.get(&format!("/api/services/{other}")).await;
        if s["live"]["tag"] == "v2" && s["deploying"].is_null() {
            break s;
        }
        assert!(Instant::now() < deadline, "{s:#}\n{}", w.gl.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(live["replicas"][0]["running"], true, "{live:#}");
    let history = w.gl.get(&format!("/api/deployments?service={other}")).await;
    assert_eq!(history[0]["trigger"], "registry", "{history:#}");
    assert_eq!(history[0]["state"], "succeeded", "{history:#}");
    // nginx routes the new service (through the verify server's private route).
    let through = greenlight_testkit::http()
        .get(format!("{}/", w.nginx.verify_url()))
        .header("X-Greenlight-Service", &other)
        .send()
        .await
        .unwrap();
    assert_eq!(through.status(), 200);
    assert_eq!(through.headers()["x-demo-version"], "v2");

    // A file with an error: refused with the error, the running config stays.
    w.gl.edit_config(|c| c.replace("port = 8080\n", "port = 8080\nprot = 1\n"));
    let out = w.gl.cli(&["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown field `prot`") && err.contains("the running config stays"),
        "{err}"
    );
    assert_eq!(wait_services(&w, 2).await["file_differs"], true);
    // A section only a restart can change: refused too.
    w.gl.edit_config(|c| {
        c.replace("port = 8080\nprot = 1\n", "port = 8080\n")
            .replace("drain_timeout = \"20s\"", "drain_timeout = \"21s\"")
    });
    let out = w.gl.cli(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("[nginx] changed"),
        "{err}"
    );
    // The first service still deploys, from a webhook, with the running config.
    w.push("v2");
    w.wait_live("v2").await;

    // SIGHUP: the service removed again (and nginx's timeout put back).
    w.gl.edit_config(|c| {
        c.replace(&added, "")
            .replace("drain_timeout = \"21s\"", "drain_timeout = \"20s\"")
    });
    let status = Command::new("kill")
        .args(["-HUP", &w.gl.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let c = wait_services(&w, 1).await;
    let sum = Command::new("sha256sum")
        .arg(&w.gl.config_path)
        .output()
        .unwrap();
    assert_eq!(
        c["file_differs"],
        false,
        "{c:#}\n{}\n{}",
        String::from_utf8_lossy(&sum.stdout),
        std::fs::read_to_string(&w.gl.config_path).unwrap()
    );
    let (code, _) =
        w.gl.api(
            reqwest::Method::POST,
            &format!("/api/services/{other}/deploy"),
            Some(serde_json::json!({"tag": "v2"})),
        )
        .await;
    assert_eq!(code, 404);
    assert!(w.gl.log().contains("SIGHUP: config reloaded"));
}
