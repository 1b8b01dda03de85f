//! Signed registry webhooks end to end: a real registry's notifications, GitHub-
//! and Docker Hub-shaped deliveries, the ledger, coalescing, the out-of-order
//! guard and redelivery, against real Docker, nginx and a registry.

mod common;

use std::time::Duration;

use common::{World, DOCKERHUB_TOKEN, GITHUB_SECRET, REGISTRY_TOKEN};
use serde_json::Value;

const NO_ENV: &[(&str, &str)] = &[];

async fn post(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, Value) {
    let mut req = greenlight_testkit::http()
        .post(url)
        .timeout(Duration::from_secs(30));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    match req.body(body).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (status, resp.json().await.unwrap_or(Value::Null))
        }
        Err(e) => panic!("POST {url}: {e}"),
    }
}

async fn deliveries(w: &World) -> Vec<Value> {
    w.gl.get("/api/deliveries?limit=500")
        .await
        .as_array()
        .unwrap()
        .clone()
}

async fn deployments(w: &World) -> Vec<Value> {
    let list =
        w.gl.get(&format!("/api/deployments?service={}&limit=100", w.service))
            .await;
    list.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_the_registry_goes_live_with_no_other_trigger() {
    let mut w = World::with_hooks("r", &[("v1", NO_ENV), ("v2", NO_ENV)], true);
    let d1 = w.push("v1");
    let live = w.wait_live("v1").await;
    assert_eq!(live["live"]["digest"], d1);
    assert_eq!(w.served().await, (200, "v1".into()));
    let d2 = w.push("v2");
    let live = w.wait_live("v2").await;
    assert_eq!(live["live"]["digest"], d2);
    assert_eq!(w.served().await, (200, "v2".into()));

    let ledger = deliveries(&w).await;
    let queued: Vec<_> = ledger.iter().filter(|d| d["verdict"] == "queued").collect();
    assert_eq!(queued.len(), 2, "one queued delivery per push: {ledger:#?}");
    assert!(queued.iter().all(|d| d["source"] == "registry"));
    // Blob pushes and greenlight's own pulls arrive too, and are ignored.
    assert!(
        ledger.iter().any(|d| d["verdict"] == "ignored"),
        "{ledger:#?}"
    );
    let deps = deployments(&w).await;
    assert_eq!(deps.len(), 2, "{deps:#?}");
    assert!(deps
        .iter()
        .all(|d| d["trigger"] == "registry" && d["state"] == "succeeded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_deliveries_deploy_coalesce_refuse_stale_pushes_and_redeliver() {
    let mut w = World::with_hooks(
        "g",
        &[("v1", NO_ENV), ("v2", NO_ENV), ("v3", NO_ENV)],
        false,
    );

    // A signed delivery deploys its digest.
    let d1 = w.push("v1");
    let v1_body = w.github_payload("v1", &d1, "2026-01-01T00:00:00Z");
    let (status, answer) = w.github("guid-v1", &v1_body).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (202, Some("queued")),
        "{answer}"
    );
    w.wait_live("v1").await;

    // One multi-arch push: a delivery per platform manifest (no tag) and one for
    // the index. One deployment.
    let d2 = w.push("v2");
    let platform_a = w.github_payload(
        "",
        &format!("sha256:{}", "a".repeat(64)),
        "2026-01-02T00:00:00Z",
    );
    let platform_b = w.github_payload(
        "",
        &format!("sha256:{}", "b".repeat(64)),
        "2026-01-02T00:00:00Z",
    );
    let index = w.github_payload("v2", &d2, "2026-01-02T00:00:00Z");
    let (_, a) = w.github("guid-v2-amd64", &platform_a).await;
    let (_, b) = w.github("guid-v2-arm64", &platform_b).await;
    let (_, i) = w.github("guid-v2-index", &index).await;
    assert_eq!(a["outcome"], "ignored", "{a}");
    assert!(a["detail"].as_str().unwrap().contains("no tag"), "{a}");
    assert_eq!(b["outcome"], "ignored");
    assert_eq!(i["outcome"], "queued", "{i}");
    // The index delivered twice (a sender's retry) while it deploys, or after.
    let (_, again) = w.github("guid-v2-index-retry", &index).await;
    assert!(
        matches!(
            again["outcome"].as_str(),
            Some("duplicate" | "already_live")
        ),
        "{again}"
    );
    w.wait_live("v2").await;
    assert_eq!(deployments(&w).await.len(), 2, "one deployment per push");

    // A late or replayed older delivery never downgrades.
    let (_, replay) = w.github("guid-v1-replayed", &v1_body).await;
    assert_eq!(replay["outcome"], "stale", "{replay}");
    let (_, redelivered) = w.github("guid-v1", &v1_body).await;
    assert_eq!(redelivered["outcome"], "stale", "{redelivered}");
    assert_eq!(redelivered["attempt"], 2);
    assert_eq!(w.served().await, (200, "v2".into()));
    assert_eq!(deployments(&w).await.len(), 2);

    // A delivery that arrives before its image is in the repository fails...
    let staging = format!("{}/staging", w.prefix);
    let d3 = w.push_as("v3", Some(&staging), "v3");
    let v3_body = w.github_payload("v3", &d3, "2026-01-03T00:00:00Z");
    let (_, first) = w.github("guid-v3", &v3_body).await;
    assert_eq!(first["outcome"], "queued", "{first}");
    let failed =
        w.gl.wait_done(first["deployments"][0].as_i64().unwrap())
            .await;
    assert_eq!(failed["state"], "failed", "{failed:#}");
    assert_eq!(failed["failed_step"], "pulling");
    assert_eq!(w.served().await, (200, "v2".into()));
    // ...and GitHub's redelivery (same GUID) deploys once the image is there.
    assert_eq!(w.push("v3"), d3, "same image, same digest");
    let (_, retry) = w.github("guid-v3", &v3_body).await;
    assert_eq!(retry["outcome"], "queued", "{retry}");
    assert_eq!(retry["attempt"], 2);
    w.wait_live("v3").await;
    assert_eq!(w.served().await, (200, "v3".into()));

    // An operator's redelivery of a live one is answered already_live.
    let out = w.gl.cli(&["redeliver", "guid-v3"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("already_live") && text.contains("attempt 3"),
        "{text}"
    );
    let ledger = w.gl.cli(&["deliveries", "--service", &w.service]);
    let text = String::from_utf8_lossy(&ledger.stdout);
    assert!(text.contains("guid-v3") && text.contains("stale"), "{text}");
    let one = w.gl.get("/api/deliveries/guid-v3").await;
    assert_eq!(one["attempt"], 3);
    assert!(one["redelivery_of"].is_i64(), "{one:#}");
    assert!(one["body"].as_str().unwrap().contains(&d3));
    assert!(
        one["headers"].get("x-hub-signature-256").is_none(),
        "signatures are not stored"
    );

    // A bad signature: 401, nothing stored.
    let before = deliveries(&w).await.len();
    let resp = greenlight_testkit::http()
        .post(format!("{}/hooks/github", w.gl.url()))
        .header("X-GitHub-Event", "package")
        .header(
            "X-Hub-Signature-256",
            greenlight::webhook::github::sign("not-the-secret", v3_body.as_bytes()),
        )
        .header("Content-Type", "application/json")
        .body(v3_body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(deliveries(&w).await.len(), before);
    let _ = GITHUB_SECRET;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_hub_delivery_deploys_the_digest_the_registry_resolves() {
    let mut w = World::with_hooks("d", &[("v1", NO_ENV)], false);
    let digest = w.push("v1");
    let mut doc: Value =
        serde_json::from_str(include_str!("fixtures/webhooks/dockerhub-push.json")).unwrap();
    doc["repository"]["repo_name"] = format!("{}/demo", w.prefix).into();
    doc["push_data"]["tag"] = "v1".into();
    doc["push_data"]["pushed_at"] = 1_790_000_000.into();
    let body = doc.to_string().into_bytes();
    let json = [("Content-Type", "application/json")];

    let before = deliveries(&w).await.len();
    let url = format!("{}/hooks/dockerhub/wrong-token", w.gl.url());
    let (status, _) = post(&url, &json, body.clone()).await;
    assert_eq!(status, 401);
    assert_eq!(deliveries(&w).await.len(), before, "nothing stored");

    let url = format!("{}/hooks/dockerhub/{DOCKERHUB_TOKEN}", w.gl.url());
    let (status, answer) = post(&url, &json, body.clone()).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (202, Some("queued")),
        "{answer}"
    );
    // Docker Hub calls more than once for one push.
    let (_, repeat) = post(&url, &json, body).await;
    assert_eq!(repeat["outcome"], "duplicate", "{repeat}");
    let live = w.wait_live("v1").await;
    assert_eq!(live["live"]["digest"], digest);
    assert_eq!(w.served().await, (200, "v1".into()));
    assert_eq!(deployments(&w).await.len(), 1);
}

/// Each bad input gets its documented status and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deliveries_get_their_status_and_change_nothing() {
    let w = World::with_hooks("b", &[], false);
    let base = w.gl.url();
    let fixture = |name: &str| {
        std::fs::read(format!(
            "{}/tests/fixtures/webhooks/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    let published = fixture("github-package-published.json");
    let sign = |body: &[u8]| greenlight::webhook::github::sign(GITHUB_SECRET, body);
    let good_sig = sign(&published);
    let huge = vec![b' '; 10 * 1024 * 1024];
    let npm = String::from_utf8(published.clone())
        .unwrap()
        .replace("\"CONTAINER\"", "\"npm\"")
        .into_bytes();
    let json_ct = "application/json";
    let dist_ct = "application/vnd.docker.distribution.events.v1+json";
    let bearer = format!("Bearer {REGISTRY_TOKEN}");

    struct Case {
        what: &'static str,
        path: String,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
        status: u16,
        stored: bool,
    }
    let gh = |what, event: &str, sig: String, ct: &str, body: Vec<u8>, status, stored| Case {
        what,
        path: "/hooks/github".into(),
        headers: vec![
            ("X-GitHub-Event", event.to_string()),
            (
                "X-GitHub-Delivery",
                if what == "a delivery id that is a path" {
                    "../services/x/rollback?from=".to_string()
                } else {
                    format!("guid-{}", what.replace(' ', "-"))
                },
            ),
            ("X-Hub-Signature-256", sig),
            ("Content-Type", ct.to_string()),
        ],
        body,
        status,
        stored,
    };
    let truncated = published[..published.len() / 2].to_vec();
    let mut cases = vec![
        gh(
            "wrong secret",
            "package",
            greenlight::webhook::github::sign("nope", &published),
            json_ct,
            published.clone(),
            401,
            false,
        ),
        gh(
            "signature of another body",
            "package",
            sign(b"{}"),
            json_ct,
            published.clone(),
            401,
            false,
        ),
        gh(
            "sha256= missing",
            "package",
            good_sig.trim_start_matches("sha256=").into(),
            json_ct,
            published.clone(),
            401,
            false,
        ),
        gh(
            "odd-length hex",
            "package",
            good_sig[..good_sig.len() - 1].into(),
            json_ct,
            published.clone(),
            401,
            false,
        ),
        gh(
            "empty signature",
            "package",
            String::new(),
            json_ct,
            published.clone(),
            401,
            false,
        ),
        gh(
            "truncated JSON",
            "package",
            sign(&truncated),
            json_ct,
            truncated.clone(),
            400,
            false,
        ),
        gh(
            "JSON of the wrong shape",
            "package",
            sign(b"[1,2,3]"),
            json_ct,
            b"[1,2,3]".to_vec(),
            400,
            false,
        ),
        gh(
            "wrong content type",
            "package",
            good_sig.clone(),
            "text/plain",
            published.clone(),
            400,
            false,
        ),
        gh(
            "a 10 MiB body",
            "package",
            sign(&huge),
            json_ct,
            huge.clone(),
            413,
            false,
        ),
        gh(
            "a delivery id that is a path",
            "package",
            good_sig.clone(),
            json_ct,
            published.clone(),
            400,
            false,
        ),
        gh(
            "an unknown event",
            "star",
            good_sig.clone(),
            json_ct,
            published.clone(),
            202,
            true,
        ),
        gh(
            "a non-container package",
            "package",
            sign(&npm),
            json_ct,
            npm.clone(),
            202,
            true,
        ),
        gh(
            "ping",
            "ping",
            sign(b"{\"zen\":\"hi\"}"),
            json_ct,
            b"{\"zen\":\"hi\"}".to_vec(),
            200,
            true,
        ),
        gh(
            "a repository no service deploys",
            "package",
            good_sig.clone(),
            json_ct,
            published.clone(),
            202,
            true,
        ),
    ];
    for name in ["github-package-empty-tag.json", "gitea-package.json"] {
        let body = fixture(name);
        cases.push(gh(
            "fixture",
            "package",
            sign(&body),
            json_ct,
            body,
            202,
            true,
        ));
    }
    let reg = |what, auth: Option<String>, ct: &str, body: Vec<u8>, status, stored| {
        let mut headers = vec![("Content-Type", ct.to_string())];
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        Case {
            what,
            path: "/hooks/registry".into(),
            headers,
            body,
            status,
            stored,
        }
    };
    let dist = fixture("distribution-push.json");
    cases.extend([
        reg(
            "registry: no token",
            None,
            dist_ct,
            dist.clone(),
            401,
            false,
        ),
        reg(
            "registry: wrong token",
            Some("Bearer nope".into()),
            dist_ct,
            dist.clone(),
            401,
            false,
        ),
        reg(
            "registry: wrong content type",
            Some(bearer.clone()),
            "text/plain",
            dist.clone(),
            400,
            false,
        ),
        reg(
            "registry: truncated JSON",
            Some(bearer.clone()),
            dist_ct,
            dist[..100].to_vec(),
            400,
            false,
        ),
        reg(
            "registry: a Harbor payload",
            Some(bearer.clone()),
            dist_ct,
            fixture("harbor-push.json"),
            400,
            false,
        ),
        reg(
            "registry: a 10 MiB body",
            Some(bearer.clone()),
            dist_ct,
            huge.clone(),
            413,
            false,
        ),
        reg(
            "registry: 65 events in one notification",
            Some(bearer.clone()),
            dist_ct,
            {
                let doc: Value = serde_json::from_slice(&dist).unwrap();
                serde_json::json!({ "events": vec![doc["events"][1].clone(); 65] })
                    .to_string()
                    .into_bytes()
            },
            400,
            false,
        ),
        reg(
            "registry: lower-case bearer scheme",
            Some(format!("bearer {REGISTRY_TOKEN}")),
            dist_ct,
            dist.clone(),
            202,
            true,
        ),
        reg(
            "registry: the fixture (no such service)",
            Some(bearer.clone()),
            dist_ct,
            dist.clone(),
            202,
            true,
        ),
    ]);
    let hub = |what, token: &str, body: Vec<u8>, status, stored| Case {
        what,
        path: format!("/hooks/dockerhub/{token}"),
        headers: vec![("Content-Type", json_ct.to_string())],
        body,
        status,
        stored,
    };
    let hub_body = fixture("dockerhub-push.json");
    cases.extend([
        hub(
            "dockerhub: wrong token",
            "not-the-token",
            hub_body.clone(),
            401,
            false,
        ),
        hub(
            "dockerhub: truncated JSON",
            DOCKERHUB_TOKEN,
            hub_body[..50].to_vec(),
            400,
            false,
        ),
        hub(
            "dockerhub: wrong shape",
            DOCKERHUB_TOKEN,
            fixture("harbor-push.json"),
            400,
            false,
        ),
        hub(
            "dockerhub: the fixture (no such service)",
            DOCKERHUB_TOKEN,
            hub_body.clone(),
            202,
            true,
        ),
    ]);

    for case in cases {
        let before = deliveries(&w).await.len();
        let headers: Vec<(&str, &str)> =
            case.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, answer) = post(&format!("{base}{}", case.path), &headers, case.body).await;
        assert_eq!(status, case.status, "{}: {answer}", case.what);
        if status >= 400 {
            assert!(
                answer["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{}: a reason: {answer}",
                case.what
            );
        } else {
            assert!(
                matches!(answer["outcome"].as_str(), Some("ignored")),
                "{}: {answer}",
                case.what
            );
        }
        let after = deliveries(&w).await.len();
        assert_eq!(
            after,
            before + usize::from(case.stored),
            "{}: ledger",
            case.what
        );
    }
    assert!(deployments(&w).await.is_empty(), "nothing was deployed");
    assert!(w.containers().is_empty());
    let log = w.gl.log();
    for secret in [GITHUB_SECRET, REGISTRY_TOKEN, DOCKERHUB_TOKEN] {
        assert!(!log.contains(secret), "a secret in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_push_supersedes_a_queued_one_so_the_latest_wins() {
    let slow: &[(&str, &str)] = &[("DEMO_START_DELAY_MS", "2500")];
    let mut w = World::with_hooks("s", &[("v1", slow), ("v2", NO_ENV), ("v3", NO_ENV)], false);
    let (d1, d2, d3) = (w.push("v1"), w.push("v2"), w.push("v3"));
    // v1 is in its health gate for a while; v2 and v3 arrive meanwhile.
    let (_, a) = w
        .github(
            "guid-s1",
            &w.github_payload("v1", &d1, "2026-02-01T00:00:00Z"),
        )
        .await;
    let (_, b) = w
        .github(
            "guid-s2",
            &w.github_payload("v2", &d2, "2026-02-02T00:00:00Z"),
        )
        .await;
    let (_, c) = w
        .github(
            "guid-s3",
            &w.github_payload("v3", &d3, "2026-02-03T00:00:00Z"),
        )
        .await;
    for answer in [&a, &b, &c] {
        assert_eq!(answer["outcome"], "queued", "{answer}");
    }
    let v2 = b["deployments"][0].as_i64().unwrap();
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("supersedes {v2}")),
        "{c}"
    );
    w.wait_live("v3").await;
    let superseded = w.gl.get(&format!("/api/deployments/{v2}")).await;
    assert_eq!(superseded["state"], "superseded", "{superseded:#}");
    let states: Vec<String> = deployments(&w)
        .await
        .iter()
        .map(|d| d["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        states,
        ["succeeded", "superseded", "succeeded"],
        "newest first: v3, v2, v1"
    );
    assert_eq!(w.served().await, (200, "v3".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_past_the_ledger_retention_keeps_its_record_but_not_its_body() {
    let mut w = World::with_hooks("ret", &[("v1", NO_ENV)], false);
    w.gl.edit_config(|c| c.replace("[server]\n", "[server]\nledger_retention = \"1s\"\n"));
    w.gl.restart();
    store_ignored(&w, "guid-old", 'c').await;
    let stored = w.gl.get("/api/deliveries/guid-old").await;
    assert!(
        !stored["body"].as_str().unwrap_or("").is_empty(),
        "{stored}"
    );
    // Once it is older than the retention, the next start drops its body.
    let received = stored["received_at"].as_i64().unwrap();
    while greenlight::store::now_ms() <= received + 1_000 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    w.gl.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let pruned = loop {
        let d = w.gl.get("/api/deliveries/guid-old").await;
        if d["body"].as_str().is_some_and(str::is_empty) {
            break d;
        }
        assert!(std::time::Instant::now() < deadline, "never pruned: {d}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(pruned["verdict"], stored["verdict"], "the record stays");
    let (status, answer) = redeliver(&w, "guid-old").await;
    assert_eq!(status, 410, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("ledger_retention"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_body_that_no_longer_unpacks_is_reported_not_redelivered_as_something_else() {
    let w = World::with_hooks("dmg", &[("v1", NO_ENV)], false);
    let body = store_ignored(&w, "guid-dmg", 'd').await;
    let stored = w.gl.get("/api/deliveries/guid-dmg").await;
    assert_eq!(stored["body"].as_str(), Some(body.as_str()), "kept whole");
    // Damage the packed body in the state file, as a bad disk would.
    let db = rusqlite::Connection::open(w.gl.dir.path().join("state.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    let changed = db
        .execute(
            "UPDATE delivery_bodies SET body = substr(body, 1, length(body) - 7) \
             WHERE codec = 'lz4' AND id = \
             (SELECT body_ref FROM deliveries WHERE delivery_id = 'guid-dmg')",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1, "the body is stored packed");
    let read = w.gl.get("/api/deliveries/guid-dmg").await;
    assert!(
        read["body_error"]
            .as_str()
            .unwrap_or("")
            .contains("damaged"),
        "{read:#}"
    );
    let (status, answer) = redeliver(&w, "guid-dmg").await;
    assert_eq!(status, 500, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("damaged"),
        "{answer}"
    );
    // Nothing was recorded for it.
    let again = w.gl.get("/api/deliveries/guid-dmg").await;
    assert_eq!(again["attempt"], 1, "{again:#}");
}

/// `POST /api/deliveries/{id}/redeliver`: status and answer.
async fn redeliver(w: &World, id: &str) -> (u16, serde_json::Value) {
    w.gl.api(
        reqwest::Method::POST,
        &format!("/api/deliveries/{id}/redeliver"),
        None,
    )
    .await
}

/// Delivers a platform manifest without a tag (digest `sha256:<c x 64>`): accepted,
/// stored, ignored. Returns the body sent.
async fn store_ignored(w: &World, id: &str, c: char) -> String {
    let body = w.github_payload(
        "",
        &format!("sha256:{}", c.to_string().repeat(64)),
        "2026-01-01T00:00:00Z",
    );
    let (status, answer) = w.github(id, &body).await;
    assert_eq!((status, answer["outcome"].as_str()), (202, Some("ignored")));
    body
}

/// Finding 2: a payload's push time is a claim. A Docker Hub delivery claiming
/// the year 3000 does not pin its version (its image's creation time counts),
/// and a GitHub one is held to its receipt time: later real pushes still deploy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_push_time_pins_nothing() {
    let mut w = World::with_hooks(
        "fut",
        &[("v1", NO_ENV), ("v2", NO_ENV), ("v3", NO_ENV)],
        false,
    );
    let d1 = w.push("v1");
    let mut doc: Value =
        serde_json::from_str(include_str!("fixtures/webhooks/dockerhub-push.json")).unwrap();
    doc["repository"]["repo_name"] = format!("{}/demo", w.prefix).into();
    doc["push_data"]["tag"] = "v1".into();
    doc["push_data"]["pushed_at"] = 32_503_680_000_i64.into(); // 3000-01-01
    let url = format!("{}/hooks/dockerhub/{DOCKERHUB_TOKEN}", w.gl.url());
    let (status, answer) = post(
        &url,
        &[("Content-Type", "application/json")],
        doc.to_string().into_bytes(),
    )
    .await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (202, Some("queued")),
        "{answer}"
    );
    let live = w.wait_live("v1").await;
    assert_eq!(live["live"]["digest"], d1);
    assert!(
        live["live"]["pushed_at"].is_null(),
        "the claim was not stored: {live}"
    );
    // A real push after it deploys.
    let d2 = w.push("v2");
    let (_, a) = w
        .github(
            "guid-fut-2",
            &w.github_payload("v2", &d2, "3000-01-01T00:00:00Z"),
        )
        .await;
    assert_eq!(a["outcome"], "queued", "{a}");
    let live = w.wait_live("v2").await;
    let pushed = live["live"]["pushed_at"].as_i64().unwrap();
    assert!(
        pushed <= greenlight::store::now_ms() + 5_000,
        "GitHub's year-3000 claim was held to its receipt: {pushed}"
    );
    // ...and so does the next one, with an honest time once the clamped claim
    // (receipt + 5 s at most) is past.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while greenlight::store::now_ms() <= pushed {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d3 = w.push("v3");
    let now = jiff::Timestamp::now().to_string();
    let (_, b) = w
        .github("guid-fut-3", &w.github_payload("v3", &d3, &now))
        .await;
    assert_eq!(b["outcome"], "queued", "not stale: {b}");
    w.wait_live("v3").await;
}

/// Finding 3: a webhook's tag meets the tag grammar: `../../../../_catalog`
/// is ignored as invalid (202, stored), nothing asks the registry for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_outside_the_grammar_is_ignored_and_never_reaches_the_registry() {
    let w = World::with_hooks("tag", &[("v1", NO_ENV)], false);
    let json = [("Content-Type", "application/json")];
    let url = format!("{}/hooks/dockerhub/{DOCKERHUB_TOKEN}", w.gl.url());
    for tag in [
        "../../../../_catalog",
        "v1\nforged",
        "v1%2F..%2F_catalog",
        "-rm",
    ] {
        let mut doc: Value =
            serde_json::from_str(include_str!("fixtures/webhooks/dockerhub-push.json")).unwrap();
        doc["repository"]["repo_name"] = format!("{}/demo", w.prefix).into();
        doc["push_data"]["tag"] = tag.into();
        let (status, answer) = post(&url, &json, doc.to_string().into_bytes()).await;
        assert_eq!(status, 202, "{tag:?}: {answer}");
        assert_eq!(answer["outcome"], "ignored", "{tag:?}: {answer}");
        assert!(
            answer["detail"]
                .as_str()
                .unwrap()
                .starts_with("invalid tag"),
            "{answer}"
        );
    }
    assert!(deployments(&w).await.is_empty());
    assert_eq!(deliveries(&w).await.len(), 4, "each is stored");
    let log = w.registry.log();
    assert!(!log.contains("_catalog"), "the registry was asked: {log}");
}

/// Finding 10: replays of one signed delivery are each recorded as an attempt,
/// at the cost of a new delivery, without storing the body again; a
/// redelivery of a failed deployment still runs (see the GitHub test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_delivery_stores_its_body_once() {
    let w = World::with_hooks("rep", &[], false);
    // A body of ~200 KB that does not compress (a replay stored anew would show).
    let mut doc: Value = serde_json::from_str(&w.github_payload(
        "",
        &format!("sha256:{}", "e".repeat(64)),
        "2026-01-01T00:00:00Z",
    ))
    .unwrap();
    // xorshift64: hex of pseudo-random bytes, which LZ4 cannot shrink.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: String = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{:02x}", x as u8)
        })
        .collect();
    doc["package"]["description"] = noise.into();
    let body = doc.to_string();
    let db = w.gl.dir.path().join("state.db");
    let size = || {
        ["", "-wal"]
            .iter()
            .map(|s| std::fs::metadata(format!("{}{s}", db.display())).map_or(0, |m| m.len()))
            .sum::<u64>()
    };
    let (_, first) = w.github("guid-replayed", &body).await;
    assert_eq!(first["attempt"], 1, "{first}");
    let before = size();
    for n in 2..=100 {
        let (status, answer) = w.github("guid-replayed", &body).await;
        assert_eq!(
            (status, answer["attempt"].as_i64()),
            (202, Some(n)),
            "{answer}"
        );
    }
    let grown = size().saturating_sub(before);
    assert!(
        grown < 2 * 1024 * 1024,
        "99 replays of a {} byte body grew the state by {grown} bytes",
        body.len()
    );
    let stored = w.gl.get("/api/deliveries/guid-replayed").await;
    assert_eq!(stored["attempt"], 100);
    assert_eq!(
        stored["body"].as_str(),
        Some(body.as_str()),
        "each attempt reads its body"
    );
}

/// Finding 5: what a sender writes cannot forge a log line or colour the log,
/// and a log that is not a terminal gets no escape codes at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_fields_cannot_forge_log_lines() {
    let w = World::with_hooks("log", &[], false);
    let forged = "2026-11-30T00:00:00.000000Z  INFO greenlight: admin logged in";
    let body = w
        .github_payload(
            "v1",
            &format!("sha256:{}", "f".repeat(64)),
            "2026-01-01T00:00:00Z",
        )
        .replace(
            "\"v1\"",
            &serde_json::to_string(&format!("v1\n{forged}\u{1b}[31m")).unwrap(),
        );
    let (status, answer) = w.github("guid-log", &body).await;
    assert_eq!(status, 202, "{answer}");
    let log = w.gl.log();
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a log file:\n{log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with(forged)),
        "a forged line:\n{log}"
    );
    assert!(
        log.contains("\\n2026-11-30"),
        "the newline is shown escaped:\n{log}"
    );
}
