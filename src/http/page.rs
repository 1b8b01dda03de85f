//! The status page at `/` and its login: server-rendered HTML (maud escapes every
//! value), a little inline JavaScript for the buttons, which call the JSON admin
//! API with the session's CSRF token. The data comes from the same functions as
//! the API's (`service_view`, the store's deployment and delivery queries).

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;

use super::api::{self, ServiceView};
use super::errors;
use super::session::{self, Session, Sessions};
use super::AppState;
use crate::canary::{Check, Summary};
use crate::deploy::canary::Status as CanaryStatus;
use crate::display::{duration, short_digest, timestamp};
use crate::domain::deployment::State;
use crate::ledger::Delivery;
use crate::store::{now_ms, Deployment, Store};

/// How many deployments and deliveries the page lists.
const RECENT: usize = 15;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(status_page))
        .route("/login", web::get().to(login_form))
        .route("/login", web::post().to(login))
        .route("/logout", web::post().to(logout));
}

// ---------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------

fn see_other(location: &str) -> actix_web::HttpResponseBuilder {
    let mut b = HttpResponse::SeeOther();
    b.insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    b
}

/// An HTML answer: no caching (the page carries a CSRF token), no framing, and a
/// content security policy that runs only this response's own script and style.
fn html_page(status: StatusCode, nonce: &str, body: Markup) -> HttpResponse {
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; \
         base-uri 'none'"
    );
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::CONTENT_SECURITY_POLICY, csp))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "same-origin"))
        .body(body.into_string())
}

async fn login_form(req: HttpRequest, sessions: web::Data<Sessions>) -> HttpResponse {
    if sessions.of_request(&req).is_some() {
        return see_other("/").finish();
    }
    let nonce = crate::secret::random_token();
    html_page(StatusCode::OK, &nonce, login_view(&nonce, None))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    sessions: web::Data<Sessions>,
    form: web::Form<LoginForm>,
) -> HttpResponse {
    let nonce = crate::secret::random_token();
    let peer = super::auth::peer_for_log(&req);
    let client = super::auth::client_addr(&req, &state.trusted_proxies);
    if let Some(why) = session::cross_site(&req) {
        tracing::warn!(%peer, %why, "status page login refused: cross-site");
        let view = login_view(
            &nonce,
            Some("Login refused: the form was sent from another site."),
        );
        return html_page(StatusCode::FORBIDDEN, &nonce, view);
    }
    if let Some(wait) = state.throttle.refused(client) {
        tracing::warn!(%peer, "status page login refused: too many wrong tokens");
        let view = login_view(
            &nonce,
            Some(&format!(
                "Too many wrong tokens. Try again in {}s.",
                wait.as_secs().max(1)
            )),
        );
        return html_page(StatusCode::TOO_MANY_REQUESTS, &nonce, view);
    }
    if !crate::secret::matches(form.token.as_bytes(), state.admin_token.as_bytes()) {
        state.throttle.failed(client);
        tracing::warn!(%peer, "status page login refused: wrong admin token");
        let view = login_view(&nonce, Some("Wrong token. Use the server's admin token."));
        return html_page(StatusCode::UNAUTHORIZED, &nonce, view);
    }
    let (id, _) = sessions.create();
    tracing::info!(%peer, "status page login");
    see_other("/").cookie(session::cookie(&req, id)).finish()
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    req: HttpRequest,
    sessions: web::Data<Sessions>,
    form: web::Form<LogoutForm>,
) -> HttpResponse {
    if let Some(why) = session::cross_site(&req) {
        tracing::warn!(%why, "logout refused: cross-site");
        return errors::error(StatusCode::FORBIDDEN, "cross-site request refused");
    }
    if let Some((id, session)) = sessions.of_request(&req) {
        if !session::csrf_matches(&session, &form.csrf) {
            return errors::error(StatusCode::FORBIDDEN, "missing or wrong CSRF token");
        }
        sessions.remove(&id);
        tracing::info!("status page logout");
    }
    see_other("/login").cookie(session::removal(&req)).finish()
}

/// What the page shows, read the way the admin API reads it.
struct Snapshot {
    /// Each configured service; `None` when its state could not be read (logged).
    services: Vec<(String, Option<ServiceView>)>,
    deployments: Vec<Deployment>,
    deliveries: Vec<Delivery>,
    /// The running canaries.
    canaries: Vec<CanaryStatus>,
    /// When the running config was loaded, and whether its file now differs.
    config: Option<(i64, Option<bool>)>,
}

/// The newest deployments, each with its steps.
fn recent_deployments(store: &Store) -> crate::store::Result<Vec<Deployment>> {
    let mut out = Vec::new();
    for d in store.deployments(None, RECENT)? {
        out.push(store.deployment(d.id)?.unwrap_or(d));
    }
    Ok(out)
}

async fn status_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    sessions: web::Data<Sessions>,
) -> HttpResponse {
    let Some((_, session)) = sessions.of_request(&req) else {
        return see_other("/login").finish();
    };
    let mut services = Vec::new();
    for svc in &state.deployer.config().services {
        let view = api::service_view(&state, &svc.name).await.ok();
        services.push((svc.name.clone(), view));
    }
    let store = state.deployer.store();
    let deployments = match recent_deployments(store) {
        Ok(d) => d,
        Err(e) => return errors::internal(e),
    };
    let deliveries = match store.deliveries(None, RECENT) {
        Ok(d) => d,
        Err(e) => return errors::internal(e),
    };
    let loaded = state.deployer.loaded();
    let loaded_at = loaded.loaded_at;
    let differs = web::block(move || loaded.file_differs())
        .await
        .ok()
        .flatten();
    let snap = Snapshot {
        services,
        deployments,
        deliveries,
        canaries: state.deployer.canaries(),
        config: Some((loaded_at, differs)),
    };
    let nonce = crate::secret::random_token();
    html_page(
        StatusCode::OK,
        &nonce,
        status_view(&nonce, &session, &snap, now_ms()),
    )
}

// ---------------------------------------------------------------------------------
// Formatting (pure)
// ---------------------------------------------------------------------------------

/// `3m 12s ago`, with the exact time as a tooltip.
fn ago(ms: i64, now: i64) -> Markup {
    html! { time datetime=(timestamp(ms)) title=(timestamp(ms)) { (duration(now - ms)) " ago" } }
}

/// A CSS class for a deployment state: ok, bad, busy or muted.
fn state_class(s: State) -> &'static str {
    match s {
        State::Succeeded => "ok",
        State::Failed | State::RolledBack | State::Interrupted => "bad",
        State::Superseded | State::AlreadyLive | State::Stale => "muted",
        _ => "busy",
    }
}

fn verdict_class(verdict: &str) -> &'static str {
    match verdict {
        "queued" => "ok",
        "received" => "busy",
        "ignored" | "duplicate" | "stale" | "already_live" => "muted",
        _ => "bad",
    }
}

// ---------------------------------------------------------------------------------
// Views (pure)
// ---------------------------------------------------------------------------------

const STYLE: &str = r#"
:root{--bg:#f5f6f8;--fg:#1c2230;--muted:#667085;--line:#dde1e7;--ok:#12703a;--bad:#b42318;--busy:#1d4ed8}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;background:var(--bg);color:var(--fg)}
header{display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:center;justify-content:space-between;padding:.7rem 1rem;background:#101828;color:#fff}
header h1{font-size:1.15rem;margin:0}
header form{display:inline;margin:0}
header a{color:#d0d5dd}
main{max-width:1180px;margin:0 auto;padding:1rem}
section{margin:0 0 1.6rem}
h2{font-size:1.05rem;margin:0 0 .5rem}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;background:#fff;border:1px solid var(--line);border-radius:6px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.45rem .6rem;border-bottom:1px solid var(--line);white-space:nowrap;vertical-align:top}
th{font-weight:600;font-size:.8rem;color:var(--muted);background:#f9fafb;text-transform:uppercase;letter-spacing:.02em}
tr:last-child td{border-bottom:0}
td.wrap{white-space:normal;min-width:14rem;max-width:30rem}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85em}
.muted{color:var(--muted)}
.badge{display:inline-block;padding:.05rem .5rem;border-radius:999px;font-size:.8rem;font-weight:600;background:#eaecf0;color:#344054}
.badge.ok{background:#dcfae6;color:var(--ok)}
.badge.bad{background:#fee4e2;color:var(--bad)}
.badge.busy{background:#dbeafe;color:var(--busy)}
.dot{display:inline-block;width:.75rem;height:.75rem;border-radius:50%;margin-right:.3rem;vertical-align:-.08rem;border:1px solid rgba(0,0,0,.15)}
.dot.blue{background:#2563eb}.dot.green{background:#16a34a}
button{font:inherit;font-size:.9rem;padding:.25rem .7rem;border-radius:5px;border:1px solid #98a2b3;background:#fff;color:var(--fg);cursor:pointer}
button.primary{background:#101828;color:#fff;border-color:#101828}
header button{background:transparent;color:#fff;border-color:#667085}
button:disabled{opacity:.5;cursor:default}
.charts{display:flex;flex-wrap:wrap;gap:1rem}.charts figure{margin:0}
.canary-line{color:#d92d20}.stable-line{color:#667085}
ol.checks li.fail,ol.checks li.flagrant{color:#b42318}ol.checks li.pass{color:#067647}
input,select{font:inherit;padding:.3rem .45rem;border:1px solid #98a2b3;border-radius:5px;background:#fff;max-width:100%}
label{display:flex;flex-direction:column;gap:.15rem;font-size:.85rem;color:var(--muted)}
form.deploy{display:flex;flex-wrap:wrap;gap:.6rem;align-items:flex-end;background:#fff;border:1px solid var(--line);border-radius:6px;padding:.7rem}
#message{padding:.55rem .8rem;border-radius:6px;margin:0 0 1rem;font-weight:500;word-break:break-word}
#message.ok{background:#dcfae6;color:var(--ok)}
#message.err{background:#fee4e2;color:var(--bad)}
.dep{background:#fff;border:1px solid var(--line);border-left:4px solid #98a2b3;border-radius:6px;padding:.6rem .8rem;margin:0 0 .6rem}
.dep.ok{border-left-color:#17b26a}.dep.bad{border-left-color:#d92d20}.dep.busy{border-left-color:#2563eb}
.dep h3{font-size:.95rem;margin:0;display:flex;flex-wrap:wrap;gap:.3rem .6rem;align-items:baseline}
.dep .meta{font-size:.85rem;color:var(--muted)}
ol.timeline{list-style:none;display:flex;flex-wrap:wrap;gap:.3rem;padding:0;margin:.5rem 0 0}
ol.timeline li{padding:.1rem .5rem;border-radius:4px;font-size:.8rem;background:#ecfdf3;border:1px solid #abefc6}
ol.timeline li.error{background:#fee4e2;border-color:#fda29b;color:var(--bad);font-weight:700}
ol.timeline li.running{background:#dbeafe;border-color:#93c5fd;color:var(--busy);font-weight:600}
ol.timeline li.end{background:#f2f4f7;border-color:#d0d5dd}
ol.timeline li.end.bad{background:#d92d20;border-color:#d92d20;color:#fff}
ol.timeline li.end.ok{background:#17b26a;border-color:#17b26a;color:#fff}
ol.timeline .batch{font-size:.7rem;color:var(--muted)}
ul.replicas{list-style:none;margin:0;padding:0;font-size:.85rem}
ul.replicas li{padding:.1rem 0}
tr.replicas td{border-top:none;padding-top:0}
p.error{color:var(--bad);margin:.5rem 0 0;white-space:pre-wrap;word-break:break-word}
details{margin-top:.4rem}
pre.log{max-height:16rem;overflow:auto;background:#101828;color:#e4e7ec;padding:.5rem .6rem;border-radius:4px;margin:.3rem 0 0}
.login{max-width:24rem;margin:12vh auto;padding:1.5rem;background:#fff;border:1px solid var(--line);border-radius:8px}
.login h1{font-size:1.3rem;margin:0 0 1rem}
.login form{display:flex;flex-direction:column;gap:.8rem}
.login .error{color:var(--bad);font-weight:600;margin:0}
@media (max-width:640px){main{padding:.6rem}body{font-size:14px}th,td{padding:.4rem .45rem}}
"#;

const SCRIPT: &str = r#"
"use strict";
(function () {
  var csrf = document.querySelector('meta[name="greenlight-csrf"]').getAttribute("content");
  var box = document.getElementById("message");
  var form = document.getElementById("deploy");
  var KEY = "greenlight-message";
  function show(text, ok) {
    box.textContent = text;
    box.className = ok ? "ok" : "err";
    box.hidden = false;
  }
  function remember(text, ok) {
    try { sessionStorage.setItem(KEY, JSON.stringify({ text: text, ok: ok, at: Date.now() })); } catch (e) {}
  }
  try {
    var saved = JSON.parse(sessionStorage.getItem(KEY) || "null");
    if (saved && Date.now() - saved.at < 60000) show(saved.text, saved.ok);
  } catch (e) {}
  function describe(data) {
    if (!data) return "done";
    if (data.outcome) {
      var s = data.outcome;
      if (data.detail) s += " (" + data.detail + ")";
      if (data.deployments && data.deployments.length) s += ", deployment #" + data.deployments.join(", #");
      return s;
    }
    if (data.deployment) return "deployment #" + data.deployment + " queued";
    return "done";
  }
  function call(what, url, body, button) {
    if (button) button.disabled = true;
    function failed(text) {
      show(what + " failed: " + text, false);
      remember(what + " failed: " + text, false);
      if (button) button.disabled = false;
    }
    fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Greenlight-CSRF": csrf },
      body: JSON.stringify(body || {})
    }).then(function (resp) {
      return resp.text().then(function (text) {
        var data = null;
        try { data = JSON.parse(text); } catch (e) {}
        if (resp.ok) {
          remember(what + ": " + describe(data), true);
          location.reload();
        } else {
          failed("HTTP " + resp.status + ": " + (data && data.error ? data.error : (text || resp.statusText)));
        }
      });
    }).catch(function (e) { failed(String(e)); });
  }
  document.addEventListener("click", function (ev) {
    var b = ev.target.closest("button[data-action]");
    if (!b) return;
    if (b.dataset.action === "redeliver") {
      call("Redeliver " + b.dataset.delivery,
        "/api/deliveries/" + encodeURIComponent(b.dataset.delivery) + "/redeliver", null, b);
    } else if (b.dataset.action === "promote" || b.dataset.action === "abort") {
      call(b.dataset.action + " the canary of " + b.dataset.service,
        "/api/services/" + encodeURIComponent(b.dataset.service) + "/canary/" + b.dataset.action, null, b);
    } else if (b.dataset.action === "rollback") {
      call("Roll back " + b.dataset.service,
        "/api/services/" + encodeURIComponent(b.dataset.service) + "/rollback", null, b);
    }
  });
  if (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var svc = form.elements.service.value, tag = form.elements.tag.value.trim();
      if (!tag) { show("Deploy: enter a tag", false); return; }
      call("Deploy " + svc + ":" + tag,
        "/api/services/" + encodeURIComponent(svc) + "/deploy", { tag: tag }, form.querySelector("button"));
    });
  }
  // While a deployment runs, follow it; never while someone types or reads a log.
  if (document.body.dataset.busy === "1") {
    setInterval(function () {
      var a = document.activeElement;
      if (a && (a.tagName === "INPUT" || a.tagName === "SELECT")) return;
      if (form && form.elements.tag.value) return;
      if (document.querySelector("details[open]")) return;
      location.reload();
    }, 2000);
  }
})();
"#;

fn head(nonce: &str, title: &str, extra: Markup) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="same-origin";
            title { (title) }
            (extra)
            style nonce=(nonce) { (PreEscaped(STYLE)) }
        }
    }
}

fn login_view(nonce: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(nonce, "greenlight: log in", html! {}))
            body {
                main.login {
                    h1 { "greenlight" }
                    form method="post" action="/login" {
                        @if let Some(e) = error {
                            p.error role="alert" { (e) }
                        }
                        label {
                            "Admin token"
                            input type="password" name="token" autocomplete="current-password"
                                required autofocus;
                        }
                        button.primary type="submit" { "Log in" }
                    }
                }
            }
        }
    }
}

fn status_view(nonce: &str, session: &Session, snap: &Snapshot, now: i64) -> Markup {
    let busy = snap.deployments.iter().any(|d| !d.state.is_terminal());
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(nonce, "greenlight", html! {
                meta name="greenlight-csrf" content=(session.csrf);
            }))
            body data-busy=(if busy { "1" } else { "0" }) {
                header {
                    h1 { "greenlight" }
                    div {
                        a href="/" { "Refresh" }
                        " "
                        form method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    @if let Some((at, differs)) = snap.config {
                        p #config {
                            "Config loaded " (ago(at, now))
                            @match differs {
                                Some(true) => { strong.bad { "; the file on disk differs: run greenlight reload to apply it" } }
                                Some(false) => { "; the file on disk is the same" }
                                None => {}
                            }
                        }
                    }
                    p #message role="status" hidden {}
                    noscript { p #noscript { "The buttons need JavaScript." } }
                    (services_view(&snap.services, now))
                    @for c in &snap.canaries {
                        (canary_view(c, now))
                    }
                    (deploy_form(&snap.services))
                    (deployments_view(&snap.deployments, now))
                    (deliveries_view(&snap.deliveries, now))
                }
                script nonce=(nonce) { (PreEscaped(SCRIPT)) }
            }
        }
    }
}

fn services_view(services: &[(String, Option<ServiceView>)], now: i64) -> Markup {
    html! {
        section #services {
            h2 { "Services" }
            div.scroll {
                table {
                    thead { tr {
                        th { "Service" } th { "Live" } th { "Tag" } th { "Digest" }
                        th { "Health" } th { "Live for" } th { "Deploying" } th { "" }
                    } }
                    tbody {
                        @for (name, view) in services {
                            tr data-service=(name) {
                                td { strong { (name) } }
                                @match view {
                                    None => {
                                        td.muted colspan="6" {
                                            "could not read this service's state (see greenlight's log)"
                                        }
                                    }
                                    Some(v) => { (service_cells(v, now)) }
                                }
                                td {
                                    button type="button" data-action="rollback" data-service=(name) {
                                        "Roll back"
                                    }
                                }
                            }
                            @if let Some(v) = view.as_ref().filter(|v| !v.replicas.is_empty()) {
                                tr.replicas data-replicas-of=(name) {
                                    td {}
                                    td colspan="7" { (replicas_view(v, now)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Every replica nginx routes to: version, address, health, since.
fn replicas_view(v: &ServiceView, now: i64) -> Markup {
    html! {
        ul.replicas {
            @for r in &v.replicas {
                li data-replica=(r.name) {
                    span.dot.(r.colour.as_str()) {}
                    code { (r.name) }
                    " " code { (r.tag.as_deref().unwrap_or("-")) }
                    " " code.muted title=(r.digest) { (short_digest(&r.digest)) }
                    " " span.muted { (r.address) }
                    " " (health_badge(r.running, &r.status, r.health.as_deref()))
                    @if r.since > 0 {
                        " " span.muted title=(timestamp(r.since)) { "for " (duration(now - r.since)) }
                    }
                }
            }
        }
    }
}

fn health_badge(running: bool, status: &str, health: Option<&str>) -> Markup {
    html! {
        @if health == Some("unhealthy") {
            span.badge.bad title=(status) { "unhealthy" }
        } @else if running {
            span.badge.ok title=(status) { "running" @if let Some(h) = health { " (" (h) ")" } }
        } @else if status == "missing" {
            span.badge.bad { "container missing" }
        } @else {
            span.badge.bad title=(status) { (status) }
        }
    }
}

fn service_cells(v: &ServiceView, now: i64) -> Markup {
    let running = v.replicas.iter().filter(|r| r.running).count();
    let unhealthy = v
        .replicas
        .iter()
        .filter(|r| r.health.as_deref() == Some("unhealthy"))
        .count();
    html! {
        @match &v.live {
            None => {
                td.colour.muted { "none" }
                td.tag.muted { "-" }
                td.digest.muted { "-" }
                td.health { span.badge { "not deployed" } }
                td.since.muted { "-" }
            }
            Some(live) => {
                td.colour {
                    @match live.colour {
                        Some(c) => { span.dot.(c.as_str()) {} (c.as_str()) }
                        None => span.muted { "mixed" },
                    }
                }
                td.tag { code { (live.tag.as_deref().unwrap_or("-")) } }
                td.digest { code title=(live.digest) { (short_digest(&live.digest)) } }
                td.health {
                    @if v.replicas.is_empty() {
                        span.badge.bad { "container missing" }
                    } @else if running == v.replicas.len() && unhealthy == 0 {
                        span.badge.ok { (running) "/" (v.replicas_wanted) " running" }
                    } @else {
                        span.badge.bad {
                            (running) "/" (v.replicas_wanted) " running"
                            @if unhealthy > 0 { ", " (unhealthy) " unhealthy" }
                        }
                    }
                }
                td.since {
                    time datetime=(timestamp(live.since)) title=(timestamp(live.since)) {
                        (duration(now - live.since))
                    }
                }
            }
        }
        td.deploying {
            @if let Some(d) = &v.deploying {
                a href=(format!("#deployment-{}", d.id)) { "#" (d.id) }
                " " span.badge.busy { (d.step.as_deref().unwrap_or(d.state.as_str())) }
            } @else if let Some(d) = &v.last {
                span.muted { "last: " }
                a href=(format!("#deployment-{}", d.id)) { "#" (d.id) }
                " " span.badge.(state_class(d.state)) { (d.state.as_str()) }
            } @else {
                span.muted { "-" }
            }
        }
    }
}

/// A running canary: its step, share and time left, each variant's figures,
/// every check's verdict, and a chart of error rate and p95 per variant.
fn canary_view(c: &CanaryStatus, now: i64) -> Markup {
    let left = |end: i64| duration((end - now).max(0));
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} ms"));
    let row = |name: &str, v: &Summary| {
        html! {
            tr {
                th { (name) }
                td.num { (v.requests) }
                td.num { (v.errors) }
                td.num { (format!("{:.2}%", 100.0 * v.error_rate)) }
                td.num { (ms(v.p50_ms)) }
                td.num { (ms(v.p95_ms)) }
                td.num { (ms(v.p99_ms)) }
            }
        }
    };
    html! {
        section.canary data-canary=(c.service) {
            h2 { "Canary: " (c.service) }
            p {
                "Deployment #" (c.deployment) " (" (short_digest(&c.digest)) "): step "
                (c.stage) " of " (c.stages) " at " strong { (c.percent) "%" } " of users, "
                span.state { (c.state) }
                @match c.state {
                    "baking" => { ", " (left(c.bake_ends_ms)) " of bake left" }
                    "extended" => { ", waiting for traffic up to " (left(c.extension_ends_ms)) " more" }
                    _ => {}
                }
                " "
                button type="button" data-action="promote" data-service=(c.service) { "Promote" }
                " "
                button type="button" data-action="abort" data-service=(c.service) { "Abort" }
            }
            @if let Some(reason) = &c.reason {
                p.reason { (reason) }
            }
            div.scroll {
                table {
                    thead { tr { th { "this step" } th { "requests" } th { "5xx" } th { "rate" } th { "p50" } th { "p95" } th { "p99" } } }
                    tbody {
                        (row("canary", &c.canary))
                        (row("stable", &c.stable))
                    }
                }
            }
            (canary_chart(&c.checks))
            details {
                summary { (c.checks.len()) " checks" }
                ol.checks {
                    @for check in c.checks.iter().rev() {
                        li class=(check.verdict.as_str()) {
                            (ago(check.at_ms, now)) " step " (check.stage) " (" (check.percent) "%): "
                            strong { (check.verdict.as_str()) }
                            @if !check.reasons.is_empty() { " - " (check.reasons.join("; ")) }
                        }
                    }
                }
            }
        }
    }
}

/// Two small line charts over the deployment's checks: error rate and p95
/// latency, canary against stable (inline SVG: no script, no library).
fn canary_chart(checks: &[Check]) -> Markup {
    const W: f64 = 320.0;
    const H: f64 = 90.0;
    let series = |f: &dyn Fn(&Summary) -> Option<f64>| -> [Vec<f64>; 2] {
        [
            checks.iter().map(|c| f(&c.canary).unwrap_or(0.0)).collect(),
            checks.iter().map(|c| f(&c.stable).unwrap_or(0.0)).collect(),
        ]
    };
    let line = |values: &[f64], max: f64| -> String {
        let n = values.len().max(2) - 1;
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                format!(
                    "{:.1},{:.1}",
                    W * i as f64 / n as f64,
                    H - H * (v / max).min(1.0)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let charts = [
        (
            "error rate",
            series(&|s: &Summary| Some(100.0 * s.error_rate)),
            "%",
        ),
        ("p95 latency", series(&|s: &Summary| s.p95_ms), " ms"),
    ];
    html! {
        @if checks.len() >= 2 {
            div.charts {
                @for (title, [canary, stable], unit) in &charts {
                    @let max = canary.iter().chain(stable.iter()).cloned().fold(0.0_f64, f64::max).max(1e-9);
                    figure {
                        figcaption { (title) ", up to " (format!("{max:.1}")) (unit) ": "
                            span.canary-line { "canary" } " / " span.stable-line { "stable" } }
                        svg viewBox=(format!("0 0 {W} {H}")) width=(W) height=(H) role="img"
                            aria-label=(format!("{title} per check, canary and stable")) {
                            polyline points=(line(stable, max)) fill="none" stroke="#667085" stroke-width="2" {}
                            polyline points=(line(canary, max)) fill="none" stroke="#d92d20" stroke-width="2" {}
                        }
                    }
                }
            }
        }
    }
}

fn deploy_form(services: &[(String, Option<ServiceView>)]) -> Markup {
    html! {
        section {
            h2 { "Deploy a tag" }
            form #deploy.deploy {
                label {
                    "Service"
                    select name="service" {
                        @for (name, _) in services { option value=(name) { (name) } }
                    }
                }
                label {
                    "Tag"
                    input name="tag" required placeholder="v1.4.2" autocomplete="off"
                        spellcheck="false";
                }
                button.primary type="submit" { "Deploy" }
            }
        }
    }
}

fn deployments_view(list: &[Deployment], now: i64) -> Markup {
    html! {
        section #deployments {
            h2 { "Recent deployments" }
            @if list.is_empty() { p.muted { "None yet." } }
            @for d in list { (deployment_view(d, now)) }
        }
    }
}

fn deployment_view(d: &Deployment, now: i64) -> Markup {
    let class = state_class(d.state);
    let tag = d.tag.as_deref().or(d.requested_tag.as_deref());
    let took = d.finished_at.unwrap_or(now) - d.created_at;
    html! {
        article.dep.(class) id=(format!("deployment-{}", d.id))
            data-deployment=(d.id) data-service=(d.service) data-state=(d.state.as_str()) {
            h3 {
                span { "#" (d.id) }
                span { (d.service) }
                @if let Some(t) = tag { code { (t) } }
                @if let Some(dg) = &d.digest { code.muted title=(dg) { (short_digest(dg)) } }
                span.badge.(class) { (d.state.as_str()) }
            }
            div.meta {
                (d.trigger.as_str()) " · " (ago(d.created_at, now)) " · "
                @if let (Some(strategy), Some(n)) = (d.strategy, d.replicas) {
                    (strategy.as_str()) ", " (n) " replica" @if n != 1 { "s" } " · "
                }
                @if d.finished_at.is_some() { "took " } @else { "running for " }
                (duration(took))
                @if let (Some(prev), Some(_)) = (&d.previous_tag, &d.colour) {
                    " · replaces " code { (prev) }
                }
            }
            ol.timeline {
                @for step in &d.steps {
                    @let terminal = step.step.parse::<State>().map(|s| s.is_terminal()).unwrap_or(false);
                    @if terminal {
                        li.end.(class) { (step.step) }
                    } @else {
                        @let (cls, took) = match (step.outcome.as_deref(), step.finished_at) {
                            (Some("error"), Some(f)) => ("error", f - step.started_at),
                            (_, Some(f)) => ("done", f - step.started_at),
                            (_, None) => ("running", now - step.started_at),
                        };
                        li class=(cls) title=(step.detail.as_deref().unwrap_or("")) {
                            (step.step)
                            @if let Some(b) = step.batch { " " span.batch { "b" (b) } }
                            " " span.took { (duration(took)) }
                        }
                    }
                }
            }
            @if let Some(e) = &d.error {
                p.error {
                    @if let Some(s) = &d.failed_step { "failed at " strong { (s) } ": " }
                    (e)
                    @if let Some(code) = d.exit_code { " (exit code " (code) ")" }
                }
            }
            @if let Some(tail) = d.log_tail.as_deref().filter(|t| !t.trim().is_empty()) {
                details {
                    summary { (crate::domain::plan::output_title(d.failed_step.as_deref())) }
                    pre.log { (tail) }
                }
            }
        }
    }
}

fn deliveries_view(list: &[Delivery], now: i64) -> Markup {
    html! {
        section #deliveries {
            h2 { "Recent deliveries" }
            @if list.is_empty() {
                p.muted { "None yet." }
            } @else {
                div.scroll {
                    table {
                        thead { tr {
                            th { "Received" } th { "Source" } th { "Delivery" } th { "Verdict" }
                            th { "Detail" } th { "Deployments" } th { "" }
                        } }
                        tbody {
                            @for d in list {
                                tr data-delivery=(d.delivery_id) data-row=(d.row) {
                                    td { (ago(d.received_at, now)) }
                                    td { (d.source) }
                                    td {
                                        code { (d.delivery_id) }
                                        @if d.attempt > 1 { " " span.muted { "attempt " (d.attempt) } }
                                    }
                                    td { span.badge.(verdict_class(&d.verdict)) { (d.verdict) } }
                                    td.wrap {
                                        @match d.detail.as_deref().filter(|t| !t.is_empty()) {
                                            Some(detail) => { (detail) }
                                            None => { (d.services.join(", ")) }
                                        }
                                    }
                                    td {
                                        @for (i, id) in d.deployments.iter().enumerate() {
                                            @if i > 0 { ", " }
                                            a href=(format!("#deployment-{id}")) { "#" (id) }
                                        }
                                    }
                                    td {
                                        button type="button" data-action="redeliver"
                                            data-delivery=(d.delivery_id) { "Redeliver" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::deployment::Colour;
    use crate::store::{Live, StepRecord as Step};

    fn deployment(state: State) -> Deployment {
        Deployment {
            failed_step: Some("pulling".into()),
            error: Some("pull failed: <manifest unknown>".into()),
            log_tail: Some("line <1>\nline 2".into()),
            steps: vec![
                Step {
                    step: "resolving".into(),
                    batch: None,
                    replicas: None,
                    started_at: 1_000,
                    finished_at: Some(1_200),
                    outcome: Some("ok".into()),
                    detail: None,
                },
                Step {
                    step: "pulling".into(),
                    batch: None,
                    replicas: None,
                    started_at: 1_200,
                    finished_at: Some(3_000),
                    outcome: Some("error".into()),
                    detail: Some("pull failed".into()),
                },
                Step {
                    step: "failed".into(),
                    batch: None,
                    replicas: None,
                    started_at: 3_000,
                    finished_at: Some(3_000),
                    outcome: Some("failed".into()),
                    detail: None,
                },
            ],
            ..crate::store::sample_deployment(state)
        }
    }

    #[test]
    fn a_failed_deployment_shows_its_failing_step_in_red_its_error_and_log_escaped() {
        let html = deployment_view(&deployment(State::Failed), 10_000).into_string();
        assert!(
            html.contains(
                r#"<li class="done" title="">resolving <span class="took">200ms</span></li>"#
            ),
            "{html}"
        );
        assert!(html.contains(r#"<li class="error" title="pull failed">pulling <span class="took">1.8s</span></li>"#), "{html}");
        assert!(
            html.contains(r#"<li class="end bad">failed</li>"#),
            "{html}"
        );
        assert!(
            html.contains(
                "failed at <strong>pulling</strong>: pull failed: &lt;manifest unknown&gt;"
            ),
            "{html}"
        );
        assert!(html.contains("line &lt;1&gt;\nline 2"), "{html}");
        assert!(!html.contains("<manifest"), "{html}");
        assert!(html.contains(r#"data-state="failed""#));
        assert!(html.contains("abababababab"));
    }

    #[test]
    fn a_canary_shows_its_step_figures_checks_and_chart_escaped() {
        use crate::canary::Verdict;
        let summary = |requests, errors, p95| Summary {
            requests,
            errors,
            error_rate: errors as f64 / requests as f64,
            p95_ms: Some(p95),
            ..Summary::default()
        };
        let check = |at_ms, verdict, reason: &str| Check {
            at_ms,
            stage: 1,
            percent: 5,
            verdict,
            reasons: vec![reason.into()],
            p_value: None,
            canary: summary(40, 2, 210.0),
            stable: summary(800, 0, 9.0),
        };
        let c = CanaryStatus {
            service: "web".into(),
            deployment: 7,
            digest: "sha256:0123456789abcdef".into(),
            stage: 1,
            stages: 3,
            percent: 5,
            state: "baking",
            reason: Some("<b>why</b>".into()),
            step_started_ms: 0,
            bake_ends_ms: 65_000,
            extension_ends_ms: 0,
            canary: summary(40, 2, 210.0),
            stable: summary(800, 0, 9.0),
            checks: vec![
                check(1_000, Verdict::Inconclusive, "few"),
                check(2_000, Verdict::Fail, "p95 latency 210 ms"),
            ],
            canary_totals: Default::default(),
            stable_totals: Default::default(),
        };
        let html = canary_view(&c, 5_000).into_string();
        assert!(
            html.contains("step 1 of 3 at <strong>5%</strong> of users"),
            "{html}"
        );
        assert!(html.contains("1m 00s of bake left"), "{html}");
        assert!(html.contains("&lt;b&gt;why&lt;/b&gt;"), "escaped: {html}");
        assert!(html.contains("<td class=\"num\">5.00%</td>"), "{html}");
        assert!(html.contains("<td class=\"num\">210 ms</td>"), "{html}");
        assert!(html.contains("<li class=\"fail\">"), "{html}");
        assert!(html.contains("p95 latency 210 ms"), "{html}");
        assert_eq!(html.matches("<polyline").count(), 4, "{html}");
        assert!(
            html.contains(r#"data-action="abort" data-service="web""#),
            "{html}"
        );
    }

    #[test]
    fn a_live_service_shows_colour_tag_short_digest_health_and_age() {
        let v = ServiceView {
            name: "web".into(),
            image: "registry/web".into(),
            strategy: crate::domain::plan::Strategy::BlueGreen,
            replicas_wanted: 1,
            live: Some(Live {
                service: "web".into(),
                colour: Some(Colour::Blue),
                tag: Some("v1<b>".into()),
                digest: format!("sha256:{}", "cd".repeat(32)),
                image: "registry/web".into(),
                image_id: None,
                deployment_id: Some(3),
                since: 0,
                previous_tag: None,
                previous_digest: None,
                previous_image_id: None,
                pushed_at: None,
                routing: None,
            }),
            replicas: vec![api::ReplicaView {
                id: "c1".into(),
                name: "web-blue-1".into(),
                address: "10.0.0.2:8080".into(),
                colour: Colour::Blue,
                deployment: 3,
                digest: format!("sha256:{}", "cd".repeat(32)),
                tag: Some("v1<b>".into()),
                since: 0,
                running: true,
                status: "running".into(),
                health: None,
            }],
            deploying: None,
            last: Some(deployment(State::Succeeded)),
        };
        let html = service_cells(&v, 192_000).into_string();
        assert!(
            html.contains(r#"<span class="dot blue"></span>blue"#),
            "{html}"
        );
        assert!(html.contains("<code>v1&lt;b&gt;</code>"), "{html}");
        assert!(html.contains(">cdcdcdcdcdcd</code>"), "{html}");
        assert!(
            html.contains(r#"<span class="badge ok">1/1 running</span>"#),
            "{html}"
        );
        assert!(html.contains(r#"<time datetime="1970-01-01T00:00:00Z" title="1970-01-01T00:00:00Z">3m 12s</time>"#), "{html}");
        assert!(html.contains("#7"), "{html}");
        // Each replica: name, version, address, health.
        let replicas = replicas_view(&v, 192_000).into_string();
        for part in [
            "<code>web-blue-1</code>",
            "<code>v1&lt;b&gt;</code>",
            "10.0.0.2:8080",
            r#"<span class="badge ok" title="running">running</span>"#,
        ] {
            assert!(replicas.contains(part), "{part}: {replicas}");
        }
    }
}
