//! `greenlight check`: everything a deploy needs, checked before the first deploy,
//! each problem with how to fix it.

use std::time::Duration;

use crate::config::live::Loaded;
use crate::config::RuntimeKind;
use crate::config::{Config, NginxMode, ServiceConfig};
use crate::display::short_digest;
use crate::docker::Engine;
use crate::domain::plan::Strategy;
use crate::proxy::Nginx;
use crate::runtime::swarm::swarm_state;
use crate::runtime::Runtime;
use crate::store::Store;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub ok: bool,
    pub what: String,
    pub detail: String,
    pub fix: Option<String>,
}

fn ok(what: &str, detail: impl Into<String>) -> Finding {
    Finding {
        ok: true,
        what: what.into(),
        detail: detail.into(),
        fix: None,
    }
}

fn bad(what: &str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        ok: false,
        what: what.into(),
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

pub async fn run(loaded: &Loaded) -> Vec<Finding> {
    let config = &*loaded.config;
    let mut out = vec![ok(
        "config",
        format!("{} service(s)", config.services.len()),
    )];
    out.push(running_config(loaded).await);
    out.push(match Store::open(&config.server.state) {
        Ok(_) => ok("state", config.server.state.display().to_string()),
        Err(e) => bad(
            "state",
            e.to_string(),
            "make server.state a writable path (its directory is created if missing)",
        ),
    });
    let engine = match Engine::connect(&config.docker).await {
        Ok(engine) => {
            out.push(ok(
                "docker",
                engine.version().await.unwrap_or_else(|e| e.to_string()),
            ));
            out.push(runtime_finding(config, &engine).await);
            out.extend(secrets_finding(config, &engine).await);
            Some(engine)
        }
        Err(e) => {
            out.push(bad(
                "docker",
                e.to_string(),
                "start the Docker daemon, or point [docker] socket / DOCKER_HOST at it; greenlight needs read-write access to the socket",
            ));
            None
        }
    };
    let dir = &config.nginx.upstreams_dir;
    out.push(
        match tempfile::Builder::new()
            .prefix(".greenlight-tmp")
            .tempfile_in(dir)
        {
            Ok(_) => ok("upstreams_dir", dir.display().to_string()),
            Err(e) => bad(
                "upstreams_dir",
                format!("cannot write in {}: {e}", dir.display()),
                format!(
                    "mkdir -p {} and include it from nginx's http block: include {}/*.conf;",
                    dir.display(),
                    dir.display()
                ),
            ),
        },
    );
    let mut nginx = None;
    if let Some(engine) = engine {
        if config.nginx.mode == NginxMode::Container {
            let name = config.nginx.container.as_deref().unwrap_or_default();
            out.push(match engine.status(name).await {
                Ok(Some(s)) if s.running => ok("nginx container", format!("{name} is running")),
                Ok(Some(s)) => bad(
                    "nginx container",
                    format!("{name} is {}", s.status),
                    format!("docker start {name}"),
                ),
                Ok(None) => bad(
                    "nginx container",
                    format!("no container named {name}"),
                    "set [nginx] container to the name of the nginx container",
                ),
                Err(e) => bad("nginx container", e.to_string(), "check the Docker engine"),
            });
        }
        let checked = Nginx::new(config.nginx.clone(), engine.clone());
        out.push(match checked.test().await {
            Ok(_) => ok("nginx -t", "configuration is valid"),
            Err(e) => bad(
                "nginx -t",
                e.to_string(),
                "fix the nginx configuration it names, then run greenlight check again",
            ),
        });
        let runtime = Runtime::new(&config.runtime, engine.clone());
        for svc in &config.services {
            out.push(live_replicas(&runtime, &checked, svc).await);
        }
        let canaries: Vec<&ServiceConfig> = config
            .services
            .iter()
            .filter(|s| s.rollout.strategy == Strategy::Canary)
            .collect();
        if !canaries.is_empty() {
            match checked.dump().await {
                Ok(text) => {
                    for svc in canaries {
                        out.push(canary_site(&text, &svc.name));
                    }
                }
                Err(e) => out.push(bad(
                    "canary site",
                    format!("nginx -T failed, so the sites could not be read: {e}"),
                    "fix what nginx -t says, then run greenlight check again",
                )),
            }
        }
        nginx = Some(checked);
    }
    out.push(verify_server(config, nginx.as_ref()).await);
    for svc in &config.services {
        out.extend(hooks(svc));
    }
    out
}

/// Whether nginx's configuration (`nginx -T`) is ready for a canary of
/// `service` (pure): a site proxies to the group greenlight's split picks,
/// nginx gives users the id the split hashes, and the access log has what
/// the analysis reads.
pub fn canary_site(dump: &str, service: &str) -> Finding {
    let what = format!("canary site {service}");
    let var = crate::domain::routing::Routing::upstream_variable(service);
    let lines: Vec<&str> = dump
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .collect();
    let mut missing = Vec::new();
    if !lines
        .iter()
        .any(|l| l.starts_with("proxy_pass") && l.contains(&format!("${var}")))
    {
        missing.push(format!("a site location with `proxy_pass http://${var};`"));
    }
    if !lines
        .iter()
        .any(|l| l.starts_with("userid") && l.contains(" on"))
    {
        missing.push(
            "`userid on; userid_name greenlight_uid; userid_path /; userid_expires 365d;` where it proxies (the user id the split hashes; without it every user goes to stable)"
                .to_string(),
        );
    }
    if !dump.contains("$upstream_response_time") || !dump.contains("log_format greenlight") {
        missing.push(
            "the access log format of nginx/greenlight-log.conf (include it in the http block, log the site with it)"
                .to_string(),
        );
    }
    if missing.is_empty() {
        ok(&what, format!("the site proxies to ${var}; userid is on"))
    } else {
        bad(
            &what,
            format!("nginx's configuration lacks {}", missing.join("; and ")),
            "change the site as the README's \"Canary releases\" says (after greenlight's first deployment of the service rendered its file), reload nginx",
        )
    }
}

/// The config the running greenlight (at `server.listen`, asked with the
/// admin token) loaded, and whether this file still says the same.
async fn running_config(loaded: &Loaded) -> Finding {
    const WHAT: &str = "running config";
    let server = &loaded.config.server;
    let listen = server
        .listen
        .replace("0.0.0.0", "127.0.0.1")
        .replace("[::]", "[::1]");
    let http = crate::tls::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("static reqwest client config");
    let answer = http
        .get(format!("http://{listen}/api/config"))
        .bearer_auth(&server.admin_token)
        .send()
        .await;
    let running: serde_json::Value = match answer {
        Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
        Ok(r) => {
            return bad(
                WHAT,
                format!("greenlight at {listen} answered {} to GET /api/config", r.status()),
                "is it another greenlight, or one with another admin token? check server.listen and server.admin_token",
            )
        }
        Err(_) => return ok(WHAT, format!("no greenlight answers at {listen} (not running)")),
    };
    let at = running["loaded_at"]
        .as_i64()
        .map(crate::display::timestamp)
        .unwrap_or_else(|| "?".into());
    if running["file_digest"].as_str() == Some(loaded.file_digest.as_str()) {
        ok(
            WHAT,
            format!("greenlight at {listen} runs this file (loaded {at})"),
        )
    } else {
        bad(
            WHAT,
            format!("the file differs from the config greenlight at {listen} loaded {at}"),
            "greenlight reload (or systemctl reload greenlight) applies it",
        )
    }
}

/// Each hook's program is there and may be run (a hook that cannot run fails
/// its deployment at `pre_switch`, or goes unheard after it).
fn hooks(svc: &ServiceConfig) -> Vec<Finding> {
    svc.hooks
        .each()
        .map(|(name, argv)| {
            let what = format!("service {} hooks.{name}", svc.name);
            let program = &argv[0];
            match find_program(program) {
                Some(path) => ok(&what, format!("{} ({})", argv.join(" "), path.display())),
                None => bad(
                    &what,
                    format!(
                        "{program:?} is not an executable file{}",
                        if program.contains('/') {
                            ""
                        } else {
                            " on PATH"
                        }
                    ),
                    "install it, give its absolute path, or make it executable (chmod +x)",
                ),
            }
        })
        .collect()
}

/// `program` as the hook runner finds it: a path, or a name on PATH.
fn find_program(program: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = std::path::PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

/// Which engine `[runtime] kind` names, and whether this Docker engine can be
/// it: a Swarm manager when kind = "swarm".
async fn runtime_finding(config: &Config, engine: &Engine) -> Finding {
    let kind = config.runtime.kind;
    let what = "runtime";
    let swarm = match swarm_state(engine).await {
        Ok(s) => s,
        Err(e) => {
            return bad(
                what,
                format!("cannot read the engine's Swarm state: {e}"),
                "check the Docker engine",
            )
        }
    };
    match kind {
        RuntimeKind::Docker => ok(
            what,
            format!("docker: replicas are containers of this engine, which is {}", swarm.describe()),
        ),
        RuntimeKind::Swarm if swarm.manager => {
            let rolling: Vec<String> = config
                .services
                .iter()
                .filter(|s| s.rollout.strategy == Strategy::Rolling)
                .map(|s| format!("{} ({} tasks)", s.name, 2 * s.replicas))
                .collect();
            let capacity = if rolling.is_empty() {
                String::new()
            } else {
                format!(
                    "; a rolling update on Swarm stops the old tasks together at its end, so it \
                     needs room for twice the replicas: {}",
                    rolling.join(", ")
                )
            };
            ok(
                what,
                format!(
                    "swarm: replicas are tasks of Swarm services; this engine is {}{capacity}",
                    swarm.describe()
                ),
            )
        }
        RuntimeKind::Swarm => bad(
            what,
            format!(
                "[runtime] kind = \"swarm\", but this engine is {}",
                swarm.describe()
            ),
            "run `docker swarm init --advertise-addr <this host's address>` here (or `docker swarm join` \
             as a manager), or point [docker] socket at a Swarm manager",
        ),
    }
}

/// Whether each Swarm secret a service names exists (`None`: no service
/// names one, or the runtime is not Swarm: the config refuses them there).
async fn secrets_finding(config: &Config, engine: &Engine) -> Option<Finding> {
    if config.runtime.kind != RuntimeKind::Swarm {
        return None;
    }
    let names: std::collections::BTreeSet<String> = config
        .services
        .iter()
        .flat_map(|s| s.secrets.iter().map(|f| f.file().source))
        .collect();
    if names.is_empty() {
        return None;
    }
    let swarm = crate::runtime::Services::new(engine.clone(), config.runtime.swarm.clone());
    let mut missing = Vec::new();
    for name in &names {
        if let Err(e) = swarm.secret_id(name).await {
            missing.push(e.message);
        }
    }
    let found: Vec<&str> = names.iter().map(String::as_str).collect();
    Some(if missing.is_empty() {
        ok(
            "secrets",
            format!("Swarm secrets found: {}", found.join(", ")),
        )
    } else {
        bad(
            "secrets",
            missing.join("; "),
            "create each missing secret on a manager (docker secret create <name> -), or remove it from the service",
        )
    })
}

/// What nginx routes the service to, and whether each of those replicas
/// still runs.
async fn live_replicas(runtime: &Runtime, nginx: &Nginx, svc: &ServiceConfig) -> Finding {
    let what = format!("service {}", svc.name);
    let routing = match nginx.current(&svc.name) {
        Ok(Some(routing)) => routing,
        Ok(None) => return ok(&what, "nothing deployed yet"),
        Err(why) => {
            return bad(
                &what,
                why,
                "deploys and start-up reconcile are refused until it reads",
            )
        }
    };
    let versions: Vec<&str> = routing.digests().into_iter().map(short_digest).collect();
    let live = format!(
        "live: {} replica(s) of {}",
        routing.backends.len(),
        versions.join(" and ")
    );
    let replicas = match runtime.replicas(svc).await {
        Ok(r) => r,
        Err(e) => {
            return bad(
                &what,
                format!("{live}; cannot list its replicas: {e}"),
                "check the Docker engine",
            )
        }
    };
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    for b in &routing.backends {
        let found = replicas.iter().find(|r| {
            r.id == b.id
                || (b.id.is_empty()
                    && r.deployment == Some(b.deployment)
                    && r.colour == Some(b.colour))
        });
        match found {
            Some(r) if r.running => {}
            Some(r) => {
                problems.push(format!("{} at {} is {}", r.name, b.address, r.state));
                fixes.push(format!("docker start {}", r.name));
            }
            None => problems.push(format!(
                "{} at {} is gone (removed outside greenlight)",
                b.name, b.address
            )),
        }
    }
    if problems.is_empty() {
        return ok(&what, live);
    }
    let digest = routing
        .digests()
        .last()
        .map(|d| d.to_string())
        .unwrap_or_default();
    fixes.push(format!(
        "greenlight deploy {} --digest {digest} (or push again): it starts new replicas and switches to them",
        svc.name
    ));
    bad(
        &what,
        format!(
            "{live}, but {}: nginx answers 502 for what it sends there",
            problems.join("; ")
        ),
        fixes.join(", or "),
    )
}

/// The verify server (nginx/greenlight-verify.conf): it answers, refuses an
/// address that is not a service name, and proves a live service.
async fn verify_server(config: &Config, nginx: Option<&Nginx>) -> Finding {
    const WHAT: &str = "verify server";
    let url = &config.nginx.verify_url;
    let fix =
        "include the shipped nginx/greenlight-verify.conf in nginx's http block (replacing an \
               older copy), reload nginx, and set [nginx] verify_url to its address";
    let http = crate::tls::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("static reqwest client config");
    // A harmless target: a listener of our own on loopback that answers nothing.
    // A verify server that connects to it (or says it tried) proxies to any
    // address it is given.
    let trap = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => {
            return bad(
                WHAT,
                format!("cannot open a local port to test it: {e}"),
                fix,
            )
        }
    };
    let target = trap.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let probe = http
        .get(url)
        .header(crate::proxy::SERVICE_HEADER, &target)
        .send();
    let (answer, reached) = tokio::join!(probe, async {
        tokio::time::timeout(Duration::from_secs(3), trap.accept())
            .await
            .is_ok_and(|r| r.is_ok())
    });
    let resp = match answer {
        Ok(r) => r,
        Err(e) => {
            return bad(
                WHAT,
                format!("{url} does not answer: {}", crate::display::error_chain(&e)),
                fix,
            )
        }
    };
    let tried = resp
        .headers()
        .get(crate::proxy::UPSTREAM_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    if reached || tried.is_some() {
        return bad(
            WHAT,
            format!(
                "{url} proxied a request to {target}, an address that is not a service name: \
                 it is an open proxy (to greenlight's API, a Docker socket, cloud metadata...)"
            ),
            fix,
        );
    }
    if resp.status() != reqwest::StatusCode::BAD_REQUEST {
        return bad(
            WHAT,
            format!(
                "{url} answers HTTP {} to an address that is not a service name, not the \
                 shipped file's 400",
                resp.status()
            ),
            fix,
        );
    }
    // A live service proves the way greenlight will use it.
    let live = nginx
        .into_iter()
        .flat_map(|n| {
            config
                .services
                .iter()
                .filter_map(|s| n.current(&s.name).ok().flatten())
        })
        .next();
    let Some(live) = live else {
        return ok(
            WHAT,
            format!("{url} refuses addresses; no service is live to prove"),
        );
    };
    let path = config
        .service(&live.service)
        .map_or("/", |s| s.health.path.as_str());
    match http
        .get(format!("{}{path}", url.trim_end_matches('/')))
        .header(crate::proxy::SERVICE_HEADER, &live.service)
        .send()
        .await
    {
        Ok(r) if r.status().is_server_error() => bad(
            WHAT,
            format!(
                "{url} answers HTTP {} for service {}",
                r.status(),
                live.service
            ),
            fix,
        ),
        Ok(r) => match r.headers().get(crate::proxy::UPSTREAM_HEADER) {
            Some(addr) => ok(
                WHAT,
                format!(
                    "{url} refuses addresses and routes {} to {}",
                    live.service,
                    addr.to_str().unwrap_or("?")
                ),
            ),
            None => bad(
                WHAT,
                format!(
                    "{url} answers {} without {}",
                    r.status(),
                    crate::proxy::UPSTREAM_HEADER
                ),
                fix,
            ),
        },
        Err(e) => bad(
            WHAT,
            format!("{url} does not answer: {}", crate::display::error_chain(&e)),
            fix,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canary_site_check_names_what_is_missing() {
        let log = "log_format greenlight escape=json '{\"upstream_response_time\":\"$upstream_response_time\"}';\n";
        let site =
            "location / {\n  userid on;\n  proxy_pass http://$greenlight_my_app_upstream;\n}\n";
        let found = canary_site(&format!("{log}{site}"), "my-app");
        assert!(found.ok, "{found:?}");
        let found = canary_site(
            &format!("{log}location / {{ proxy_pass http://my-app; }}\n"),
            "my-app",
        );
        assert!(!found.ok);
        assert!(
            found
                .detail
                .contains("proxy_pass http://$greenlight_my_app_upstream;"),
            "{}",
            found.detail
        );
        assert!(found.detail.contains("userid on"), "{}", found.detail);
        // A commented-out line does not count.
        let commented = "# userid on;\nproxy_pass http://$greenlight_my_app_upstream;\n";
        let found = canary_site(&format!("{log}{commented}"), "my-app");
        assert!(found.detail.contains("userid on"), "{}", found.detail);
        let found = canary_site(site, "my-app");
        assert!(
            found.detail.contains("greenlight-log.conf"),
            "{}",
            found.detail
        );
    }

    #[test]
    fn a_hook_program_is_found_on_path_or_by_path_and_must_be_executable() {
        assert!(find_program("sh").is_some());
        assert!(find_program("/bin/sh").is_some());
        assert!(find_program("no-such-hook-program").is_none());
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("purge");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert!(
            find_program(script.to_str().unwrap()).is_none(),
            "not executable"
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_program(script.to_str().unwrap()), Some(script));
    }
}
