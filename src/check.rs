//! `greenlight check`: everything a deploy needs, checked before the first deploy,
//! each problem with how to fix it.

use std::time::Duration;

use crate::config::RuntimeKind;
use crate::config::{Config, NginxMode, ServiceConfig};
use crate::display::short_digest;
use crate::docker::Engine;
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

pub async fn run(config: &Config) -> Vec<Finding> {
    let mut out = vec![ok(
        "config",
        format!("{} service(s)", config.services.len()),
    )];
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
        nginx = Some(checked);
    }
    out.push(verify_server(config, nginx.as_ref()).await);
    out
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
        RuntimeKind::Swarm if swarm.manager => ok(
            what,
            format!("swarm: replicas are tasks of Swarm services; this engine is {}", swarm.describe()),
        ),
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
