//! `greenlight init`: a commented starter `greenlight.toml` for this machine,
//! and the nginx snippet to include.
//!
//! It asks nothing: it looks (host nginx first, then an nginx container through
//! the Docker API), reads nginx's own view of its configuration (`nginx -T`)
//! for an upstreams directory and a verify server it already includes, and
//! says what it chose and why. The admin token is generated and written inline
//! into the file, created with mode 0600. Nothing is ever overwritten: if
//! either file exists, nothing is written at all.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::config::{DockerConfig, NginxConfig, NginxMode};
use crate::docker::Engine;
use crate::proxy::NginxControl;

/// The verify server users include on a host (listens on 127.0.0.1:8099).
const VERIFY_CONF: &str = include_str!("../nginx/greenlight-verify.conf");
/// Its copy for nginx in a container (listens on the container's addresses).
const VERIFY_PORT: u16 = 8099;
/// Where a host's nginx usually is.
const HOST_NGINX: &str = "/usr/sbin/nginx";
const HOST_NGINX_CONF: &str = "/etc/nginx/nginx.conf";

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{} already exists: greenlight init never overwrites a file (nothing was written; move it away or pass --config OTHER_FILE)", .0.display())]
    Exists(PathBuf),
    #[error("cannot write {}: {source} (nothing was written)", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no nginx container named {0} (see `docker ps`)")]
    NoContainer(String),
    #[error("cannot reach the Docker engine to look at nginx container {name}: {message}")]
    Docker { name: String, message: String },
}

/// What the operator named; everything else is detected.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The config file to write.
    pub output: PathBuf,
    /// nginx runs on this host with this `-c` file.
    pub nginx_config: Option<PathBuf>,
    /// nginx runs in this container.
    pub nginx_container: Option<String>,
    /// The directory greenlight renders upstreams into (as greenlight sees it).
    pub upstreams_dir: Option<PathBuf>,
    /// The verify server's URL.
    pub verify_url: Option<String>,
}

/// Where nginx is and how greenlight drives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NginxChoice {
    Host {
        binary: PathBuf,
        config: PathBuf,
        prefix: Option<PathBuf>,
    },
    Container {
        name: String,
        config: Option<PathBuf>,
        prefix: Option<PathBuf>,
    },
}

/// Everything the starter config says, decided.
#[derive(Debug, Clone)]
pub struct Choices {
    pub nginx: NginxChoice,
    /// As greenlight sees it.
    pub upstreams_dir: PathBuf,
    /// As nginx sees it (differs when nginx runs in a container).
    pub upstreams_in_nginx: PathBuf,
    /// nginx already includes `<upstreams_in_nginx>/*.conf`.
    pub upstreams_included: bool,
    pub verify_url: String,
    /// nginx already has the verify server.
    pub verify_found: bool,
    pub state: PathBuf,
    pub admin_token: String,
    /// What was looked at and chosen, one line each, for the operator.
    pub notes: Vec<String>,
}

/// What `nginx -T` says that init needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dump {
    /// Directories included as `<dir>/*.conf`.
    pub included_dirs: Vec<PathBuf>,
    /// The `listen` of the server that proxies to `$greenlight_verify_upstream`.
    pub verify_listen: Option<String>,
}

/// Reads `nginx -T` output (pure): the `<dir>/*.conf` includes and the listen
/// address of a verify server already there.
pub fn read_dump(text: &str) -> Dump {
    let mut dump = Dump::default();
    let mut listen: Option<String> = None;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.trim_end_matches(';').split_whitespace();
        match words.next() {
            Some("server") => listen = None,
            Some("listen") => listen = words.next().map(str::to_string),
            Some("include") => {
                if let Some(dir) = words.next().and_then(|g| g.strip_suffix("/*.conf")) {
                    let dir = PathBuf::from(dir);
                    if !dump.included_dirs.contains(&dir) {
                        dump.included_dirs.push(dir);
                    }
                }
            }
            Some("proxy_pass")
                if line.contains("$greenlight_verify_upstream") && dump.verify_listen.is_none() =>
            {
                dump.verify_listen = listen.clone();
            }
            _ => {}
        }
    }
    dump
}

/// The port of a `listen` value (`127.0.0.1:8099`, `8099`, `[::1]:8099`), and
/// its address when it names one that is not a wildcard.
fn listen_parts(listen: &str) -> (Option<String>, Option<u16>) {
    match listen.rsplit_once(':') {
        Some((addr, port)) => {
            let addr = addr.trim_start_matches('[').trim_end_matches(']');
            let addr = (!matches!(addr, "0.0.0.0" | "::" | "*" | ""))
                .then(|| listen.rsplit_once(':').map(|(a, _)| a.to_string()))
                .flatten();
            (addr, port.parse().ok())
        }
        None => (None, listen.parse().ok()),
    }
}

/// Of the included directories, the one greenlight renders into: named
/// `greenlight` or `upstreams`.
fn upstreams_among(dirs: &[PathBuf]) -> Option<&PathBuf> {
    dirs.iter().find(|d| {
        d.file_name()
            .is_some_and(|n| n == "greenlight" || n == "upstreams")
    })
}

/// `-c` and `-p` of an nginx command line.
fn flags(command: &[String]) -> (Option<PathBuf>, Option<PathBuf>) {
    let after = |flag: &str| {
        command
            .iter()
            .position(|a| a == flag)
            .and_then(|i| command.get(i + 1))
            .map(PathBuf::from)
    };
    (after("-c"), after("-p"))
}

/// The nginx binary on this host: `/usr/sbin/nginx`, else `nginx` on PATH.
fn host_binary() -> Option<PathBuf> {
    if Path::new(HOST_NGINX).is_file() {
        return Some(HOST_NGINX.into());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("nginx"))
            .find(|p| p.is_file())
    })
}

/// `--conf-path` from `nginx -V`, the file nginx reads when given no `-c`.
async fn compiled_conf_path(binary: &Path) -> Option<PathBuf> {
    let out = tokio::process::Command::new(binary)
        .arg("-V")
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("--conf-path="))
        .map(PathBuf::from)
}

fn control(choice: &NginxChoice, engine: Option<Engine>) -> Option<NginxControl> {
    let (mode, binary, config, prefix, container) = match choice {
        NginxChoice::Host {
            binary,
            config,
            prefix,
        } => (
            NginxMode::Host,
            binary.clone(),
            Some(config.clone()),
            prefix.clone(),
            None,
        ),
        NginxChoice::Container {
            name,
            config,
            prefix,
        } => (
            NginxMode::Container,
            "nginx".into(),
            config.clone(),
            prefix.clone(),
            Some(name.clone()),
        ),
    };
    let cfg = NginxConfig {
        mode,
        upstreams_dir: PathBuf::new(),
        container,
        binary,
        config,
        prefix,
        verify_url: String::new(),
        verify_timeout: Default::default(),
        drain_timeout: Default::default(),
        access_log: None,
    };
    // Host mode never uses the engine; the unconnected default stands in.
    Some(NginxControl::new(
        &cfg,
        engine.or_else(Engine::unconnected)?,
    ))
}

/// Looks at this machine and decides every value of the starter config.
pub async fn detect(options: &Options) -> Result<Choices, InitError> {
    let mut notes = Vec::new();
    let docker = DockerConfig::default();
    let mut layout = None;
    let nginx = if let Some(config) = &options.nginx_config {
        let binary = host_binary().unwrap_or_else(|| HOST_NGINX.into());
        notes.push(format!(
            "nginx: on this host, {} -c {} (as told)",
            binary.display(),
            config.display()
        ));
        NginxChoice::Host {
            binary,
            config: config.clone(),
            prefix: None,
        }
    } else if let Some(name) = &options.nginx_container {
        let engine = Engine::connect(&docker)
            .await
            .map_err(|e| InitError::Docker {
                name: name.clone(),
                message: e.to_string(),
            })?;
        let found = engine
            .layout(name)
            .await
            .map_err(|e| InitError::Docker {
                name: name.clone(),
                message: e.to_string(),
            })?
            .ok_or_else(|| InitError::NoContainer(name.clone()))?;
        notes.push(format!("nginx: in container {name} (as told)"));
        let (config, prefix) = flags(&found.command);
        layout = Some((engine, found));
        NginxChoice::Container {
            name: name.clone(),
            config,
            prefix,
        }
    } else if let Some(binary) = host_binary() {
        let config = compiled_conf_path(&binary)
            .await
            .unwrap_or_else(|| HOST_NGINX_CONF.into());
        notes.push(format!(
            "nginx: on this host, found {} (its config: {})",
            binary.display(),
            config.display()
        ));
        NginxChoice::Host {
            binary,
            config,
            prefix: None,
        }
    } else {
        match Engine::connect(&docker).await {
            Ok(engine) => {
                let names = engine.running_containers("nginx").await.unwrap_or_default();
                match names.first() {
                    Some(name) => {
                        if names.len() > 1 {
                            notes.push(format!(
                                "nginx: several containers look like nginx ({}); chose {name} (pass --nginx-container to choose)",
                                names.join(", ")
                            ));
                        } else {
                            notes.push(format!(
                                "nginx: no nginx on this host; found container {name}"
                            ));
                        }
                        let found = engine.layout(name).await.ok().flatten().unwrap_or_default();
                        let (config, prefix) = flags(&found.command);
                        let choice = NginxChoice::Container {
                            name: name.clone(),
                            config,
                            prefix,
                        };
                        layout = Some((engine, found));
                        choice
                    }
                    None => {
                        notes.push(format!(
                            "nginx: not found (no {HOST_NGINX}, no running nginx container); \
                             assumed on this host: install it (apt-get install nginx-light) \
                             or rerun with --nginx-container NAME"
                        ));
                        host_default()
                    }
                }
            }
            Err(_) => {
                notes.push(format!(
                    "nginx: not found ({HOST_NGINX} missing, Docker unreachable); assumed on this host: \
                     install it (apt-get install nginx-light)"
                ));
                host_default()
            }
        }
    };

    let engine = layout.as_ref().map(|(e, _)| e.clone());
    let dump = match control(&nginx, engine) {
        Some(c) => match c.dump().await {
            Ok(text) => read_dump(&text),
            Err(e) => {
                notes.push(format!(
                    "nginx -T failed, so nothing was read from nginx's config: {}",
                    crate::telemetry::escape_controls(&e.to_string())
                ));
                Dump::default()
            }
        },
        None => Dump::default(),
    };
    let binds = layout
        .as_ref()
        .map(|(_, l)| l.binds.clone())
        .unwrap_or_default();
    // nginx's path as greenlight sees it: through a bind mount in a container.
    let on_host = |nginx_path: &Path| -> Option<PathBuf> {
        if layout.is_none() {
            return Some(nginx_path.to_path_buf());
        }
        binds.iter().find_map(|(source, dest, _)| {
            nginx_path
                .strip_prefix(dest)
                .ok()
                .map(|rest| Path::new(source).join(rest))
        })
    };

    let (upstreams_dir, upstreams_in_nginx, upstreams_included) = match &options.upstreams_dir {
        Some(dir) => {
            let included = dump
                .included_dirs
                .iter()
                .find(|d| on_host(d).as_deref() == Some(dir));
            notes.push(format!("upstreams_dir: {} (as told)", dir.display()));
            (
                dir.clone(),
                included.cloned().unwrap_or_else(|| dir.clone()),
                included.is_some(),
            )
        }
        None => match upstreams_among(&dump.included_dirs).and_then(|d| Some((on_host(d)?, d))) {
            Some((dir, in_nginx)) => {
                notes.push(format!(
                    "upstreams_dir: {} (nginx already includes {}/*.conf)",
                    dir.display(),
                    in_nginx.display()
                ));
                (dir, in_nginx.clone(), true)
            }
            None => {
                let (dir, in_nginx) = new_upstreams_dir(&nginx, &binds);
                notes.push(format!(
                    "upstreams_dir: {} (new; nginx must include {}/*.conf: see the snippet)",
                    dir.display(),
                    in_nginx.display()
                ));
                (dir, in_nginx, false)
            }
        },
    };

    let found_port = dump.verify_listen.as_deref().map(listen_parts);
    let (verify_url, verify_found) = match (&options.verify_url, found_port) {
        (Some(url), _) => {
            notes.push(format!("verify server: {url} (as told)"));
            (url.clone(), dump.verify_listen.is_some())
        }
        (None, Some((addr, Some(port)))) => {
            let url = verify_url_for(layout.as_ref().map(|(_, l)| l), addr, port);
            notes.push(format!(
                "verify server: {url} (nginx already has it, listening on {})",
                dump.verify_listen.as_deref().unwrap_or_default()
            ));
            (url, true)
        }
        _ => {
            let url = verify_url_for(layout.as_ref().map(|(_, l)| l), None, VERIFY_PORT);
            notes.push(format!(
                "verify server: {url} (new: nginx must include it: see the snippet)"
            ));
            (url, false)
        }
    };

    let dir = options
        .output
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let state = if dir == Path::new("/etc/greenlight") {
        PathBuf::from("/var/lib/greenlight/state.db")
    } else {
        PathBuf::from("greenlight.db")
    };
    Ok(Choices {
        nginx,
        upstreams_dir,
        upstreams_in_nginx,
        upstreams_included,
        verify_url,
        verify_found,
        state,
        admin_token: crate::secret::random_token(),
        notes,
    })
}

fn host_default() -> NginxChoice {
    NginxChoice::Host {
        binary: HOST_NGINX.into(),
        config: HOST_NGINX_CONF.into(),
        prefix: None,
    }
}

/// A new upstreams directory next to nginx's config: `<conf dir>/greenlight`
/// (in a container: inside a writable bind mount of its config, as both see it).
fn new_upstreams_dir(nginx: &NginxChoice, binds: &[(String, String, bool)]) -> (PathBuf, PathBuf) {
    match nginx {
        NginxChoice::Host { config, .. } => {
            let dir = config
                .parent()
                .unwrap_or(Path::new("/etc/nginx"))
                .join("greenlight");
            (dir.clone(), dir)
        }
        NginxChoice::Container { config, .. } => {
            let conf_dir = config
                .as_deref()
                .and_then(Path::parent)
                .unwrap_or(Path::new("/etc/nginx"));
            let mount = binds
                .iter()
                .filter(|(_, _, rw)| *rw)
                .find(|(_, dest, _)| conf_dir.starts_with(dest) || dest.contains("nginx"));
            match mount {
                Some((source, dest, _)) => (
                    Path::new(source).join("greenlight"),
                    Path::new(dest).join("greenlight"),
                ),
                None => (
                    PathBuf::from("/etc/nginx/greenlight"),
                    conf_dir.join("greenlight"),
                ),
            }
        }
    }
}

/// How greenlight on this host reaches a verify server on `port`: directly on a
/// host, else through the container's published port or its address.
fn verify_url_for(
    container: Option<&crate::docker::ContainerLayout>,
    addr: Option<String>,
    port: u16,
) -> String {
    let Some(layout) = container else {
        return format!(
            "http://{}:{port}",
            addr.unwrap_or_else(|| "127.0.0.1".into())
        );
    };
    let published = layout
        .published
        .iter()
        .find(|(p, _, _)| p == &format!("{port}/tcp"));
    match published {
        Some((_, host, host_port)) => {
            let host = match host.as_str() {
                "" | "0.0.0.0" | "::" => "127.0.0.1",
                h => h,
            };
            format!("http://{host}:{host_port}")
        }
        None => match layout.ips.first() {
            Some(ip) => format!("http://{ip}:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        },
    }
}

fn quoted(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

fn path(p: &Path) -> String {
    quoted(&p.display().to_string())
}

/// The starter config (pure).
pub fn render(c: &Choices) -> String {
    let nginx = match &c.nginx {
        NginxChoice::Host {
            binary,
            config,
            prefix,
        } => {
            let mut s = format!(
                "# nginx runs on this host; greenlight runs `{} -t` and `-s reload`.\n\
                 mode = \"host\"\nbinary = {}\nconfig = {}\n",
                binary.display(),
                path(binary),
                path(config)
            );
            if let Some(p) = prefix {
                s.push_str(&format!("prefix = {}\n", path(p)));
            }
            s
        }
        NginxChoice::Container {
            name,
            config,
            prefix,
        } => {
            let mut s = format!(
                "# nginx runs in a container; greenlight drives it with `docker exec`.\n\
                 mode = \"container\"\ncontainer = {}\n",
                quoted(name)
            );
            if let Some(c) = config {
                s.push_str(&format!("config = {}\n", path(c)));
            }
            if let Some(p) = prefix {
                s.push_str(&format!("prefix = {}\n", path(p)));
            }
            s
        }
    };
    let notes: String = c
        .notes
        .iter()
        .map(|n| format!("#   {}\n", crate::telemetry::escape_controls(n)))
        .collect();
    format!(
        r#"# greenlight.toml, written by `greenlight init`. What it found:
{notes}#
# Every key, with its default: greenlight.example.toml (in the package:
# /usr/share/doc/greenlight/). String values may use ${{VAR}} from the
# environment. Check this file with `greenlight check`.
{secret_note}
[server]
# The webhooks, the admin API and the status page. Loopback only: put nginx
# (with HTTPS) in front to reach it from elsewhere.
listen = "127.0.0.1:8787"
{token_comment}
admin_token = {token}
# SQLite state; a relative path is taken from this file's directory.
state = {state}

[nginx]
{nginx}# The directory greenlight renders <service>.conf into (as greenlight sees it);
# nginx's http block includes it as {upstreams_in_nginx}/*.conf.
upstreams_dir = {upstreams}
# nginx's verify server (nginx/greenlight-verify.conf), which proves after each
# reload that nginx routes to the new version.
verify_url = {verify}

[webhooks]
# A registry's notifications (CNCF Distribution, Harbor, GitLab) arrive at
# POST /hooks/registry with this bearer token; at least 16 characters.
# registry_token = "${{GREENLIGHT_REGISTRY_TOKEN}}"

# Your services: uncomment, edit, then `greenlight check`.
# [[service]]
# name = "web"                               # nginx's sites proxy_pass to http://web
# image = "registry.example.com/acme/web"    # repository, no tag
# port = 8080                                # the port the app listens on
# [service.health]
# path = "/healthz"
"#,
        token = quoted(&c.admin_token),
        secret_note = if c.admin_token.starts_with("${") {
            ""
        } else {
            "#\n# This file holds the admin token: keep it mode 0600, owned by the user\n\
             # greenlight runs as.\n"
        },
        token_comment = if c.admin_token.starts_with("${") {
            "# The admin token, from the environment (the package's unit reads\n\
             # /etc/greenlight/greenlight.env; for the CLI: export it, or pass --token).\n\
             # The status page's login asks for it."
        } else {
            "# The admin token (generated): `greenlight` commands on this host read it from\n\
             # here, and the status page's login asks for it. Or write \"${GREENLIGHT_TOKEN}\"\n\
             # and keep it in the environment."
        },
        state = path(&c.state),
        upstreams = path(&c.upstreams_dir),
        upstreams_in_nginx = c.upstreams_in_nginx.display(),
        verify = quoted(&c.verify_url),
    )
}

/// `/etc/greenlight/greenlight.toml` as the Debian package ships it: the
/// template with nginx where Debian puts it, the state under
/// /var/lib/greenlight, and the admin token from the environment (the
/// package's unit reads it from /etc/greenlight/greenlight.env, generated at
/// install). Safe as shipped: loopback only, no service.
pub fn package_config() -> String {
    render(&package_choices())
}

/// The nginx snippet the package ships as /usr/share/greenlight/nginx/greenlight.conf.
pub fn package_snippet() -> String {
    snippet(&package_choices()).expect("the package's nginx has nothing of greenlight's yet")
}

fn package_choices() -> Choices {
    Choices {
        nginx: host_default(),
        upstreams_dir: "/etc/nginx/greenlight".into(),
        upstreams_in_nginx: "/etc/nginx/greenlight".into(),
        upstreams_included: false,
        verify_url: format!("http://127.0.0.1:{VERIFY_PORT}"),
        verify_found: false,
        state: "/var/lib/greenlight/state.db".into(),
        admin_token: "${GREENLIGHT_TOKEN}".into(),
        notes: vec![
            "shipped by the Debian package; `greenlight init --config FILE` writes one for this machine".into(),
            "nginx: include /usr/share/greenlight/nginx/greenlight.conf in nginx's http block".into(),
        ],
    }
}

/// The nginx snippet to include in nginx's `http` block, or `None` when nginx
/// already has all of it (pure).
pub fn snippet(c: &Choices) -> Option<String> {
    if c.upstreams_included && c.verify_found {
        return None;
    }
    let mut s = String::from(
        "# greenlight's part of nginx's configuration, written by `greenlight init`.\n\
         # Include it in nginx's http block, then `nginx -t` and reload nginx.\n\n",
    );
    if !c.upstreams_included {
        s.push_str(&format!(
            "# The upstreams greenlight renders, one file per service.\ninclude {}/*.conf;\n\n",
            c.upstreams_in_nginx.display()
        ));
    }
    if !c.verify_found {
        let verify = match c.nginx {
            NginxChoice::Host { .. } => VERIFY_CONF.to_string(),
            // In a container it listens on the container's addresses; publish
            // it on loopback only, or keep it on a network only greenlight joins.
            NginxChoice::Container { .. } => {
                VERIFY_CONF.replace("listen 127.0.0.1:8099 reuseport;", "listen 8099 reuseport;")
            }
        };
        s.push_str(&verify);
    }
    Some(s)
}

/// What `write` did, for the operator.
#[derive(Debug)]
pub struct Written {
    pub config: PathBuf,
    pub snippet: Option<PathBuf>,
    pub created_upstreams_dir: bool,
}

/// The snippet's path: next to the config.
pub fn snippet_path(config: &Path) -> PathBuf {
    config.with_file_name("greenlight-nginx.conf")
}

/// Writes the config (mode 0600) and the snippet, never over an existing file:
/// either both are new or nothing is written. Then creates the upstreams
/// directory if it is missing.
pub fn write(options: &Options, c: &Choices) -> Result<Written, InitError> {
    let config = options.output.clone();
    let snippet_text = snippet(c);
    let snippet_file = snippet_text.as_ref().map(|_| snippet_path(&config));
    for p in std::iter::once(&config).chain(snippet_file.as_ref()) {
        if p.symlink_metadata().is_ok() {
            return Err(InitError::Exists(p.clone()));
        }
    }
    create_new(&config, &render(c), 0o600)?;
    if let (Some(p), Some(text)) = (&snippet_file, &snippet_text) {
        if let Err(e) = create_new(p, text, 0o644) {
            let _ = std::fs::remove_file(&config);
            return Err(e);
        }
    }
    let created_upstreams_dir =
        !c.upstreams_dir.exists() && std::fs::create_dir_all(&c.upstreams_dir).is_ok();
    Ok(Written {
        config,
        snippet: snippet_file,
        created_upstreams_dir,
    })
}

/// Creates `path` with `mode`, failing if it exists (no race: `O_EXCL`).
fn create_new(path: &Path, text: &str, mode: u32) -> Result<(), InitError> {
    let err = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            InitError::Exists(path.to_path_buf())
        } else {
            InitError::Write {
                path: path.to_path_buf(),
                source,
            }
        }
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    if let Err(e) = file
        .write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
    {
        let _ = std::fs::remove_file(path);
        return Err(err(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = r#"nginx: the configuration file /etc/nginx/nginx.conf syntax is ok
# configuration file /etc/nginx/nginx.conf:
http {
    include /etc/nginx/mime.types;
    include /etc/nginx/conf.d/*.conf;
    include /etc/nginx/upstreams/*.conf;
    server {
        listen 8080 reuseport;
        location / { proxy_pass http://$greenlight_upstream; }
    }
    server {
        # a comment: proxy_pass http://$greenlight_verify_upstream;
        listen 127.0.0.1:18099 reuseport;
        location / {
            proxy_pass http://$greenlight_verify_upstream;
        }
    }
}
"#;

    fn choices(nginx: NginxChoice) -> Choices {
        Choices {
            nginx,
            upstreams_dir: "/srv/nginx/greenlight".into(),
            upstreams_in_nginx: "/etc/nginx/greenlight".into(),
            upstreams_included: false,
            verify_url: "http://127.0.0.1:8099".into(),
            verify_found: false,
            state: "greenlight.db".into(),
            admin_token: crate::secret::random_token(),
            notes: vec!["nginx: a \"quoted\" note".into()],
        }
    }

    #[test]
    fn nginx_t_gives_the_included_directories_and_the_verify_server() {
        let dump = read_dump(DUMP);
        assert_eq!(
            dump.included_dirs,
            vec![
                PathBuf::from("/etc/nginx/conf.d"),
                PathBuf::from("/etc/nginx/upstreams")
            ]
        );
        assert_eq!(dump.verify_listen.as_deref(), Some("127.0.0.1:18099"));
        assert_eq!(
            upstreams_among(&dump.included_dirs),
            Some(&PathBuf::from("/etc/nginx/upstreams"))
        );
        assert_eq!(read_dump("http {\n}\n"), Dump::default());
    }

    #[test]
    fn listen_values_give_an_address_and_a_port() {
        assert_eq!(
            listen_parts("127.0.0.1:8099"),
            (Some("127.0.0.1".into()), Some(8099))
        );
        assert_eq!(listen_parts("0.0.0.0:8099"), (None, Some(8099)));
        assert_eq!(listen_parts("8099"), (None, Some(8099)));
    }

    #[test]
    fn a_container_verify_server_is_reached_by_its_published_port() {
        let layout = crate::docker::ContainerLayout {
            published: vec![("8099/tcp".into(), "127.0.0.1".into(), "32768".into())],
            ips: vec!["172.18.0.2".into()],
            ..Default::default()
        };
        assert_eq!(
            verify_url_for(Some(&layout), None, 8099),
            "http://127.0.0.1:32768"
        );
        let unpublished = crate::docker::ContainerLayout {
            ips: vec!["172.18.0.2".into()],
            ..Default::default()
        };
        assert_eq!(
            verify_url_for(Some(&unpublished), None, 8099),
            "http://172.18.0.2:8099"
        );
        assert_eq!(verify_url_for(None, None, 8099), "http://127.0.0.1:8099");
    }

    #[test]
    fn the_starter_config_is_valid_for_both_modes() {
        for nginx in [
            host_default(),
            NginxChoice::Container {
                name: "edge-nginx".into(),
                config: Some("/etc/nginx/nginx.conf".into()),
                prefix: None,
            },
        ] {
            let c = choices(nginx);
            let text = render(&c);
            let config =
                crate::config::Config::parse(Path::new("/srv/greenlight.toml"), &text, |_| None)
                    .unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(config.server.admin_token, c.admin_token);
            assert_eq!(config.server.state, PathBuf::from("/srv/greenlight.db"));
            assert_eq!(config.nginx.upstreams_dir, c.upstreams_dir);
            assert!(config.services.is_empty());
        }
    }

    #[test]
    fn the_snippet_holds_only_what_nginx_lacks() {
        let mut c = choices(host_default());
        let all = snippet(&c).unwrap();
        assert!(
            all.contains("include /etc/nginx/greenlight/*.conf;"),
            "{all}"
        );
        assert!(all.contains("listen 127.0.0.1:8099"), "{all}");
        c.upstreams_included = true;
        let verify_only = snippet(&c).unwrap();
        assert!(!verify_only.contains("include /etc"), "{verify_only}");
        c.verify_found = true;
        assert_eq!(snippet(&c), None);
    }

    #[test]
    fn tokens_are_long_and_fresh() {
        let (a, b) = (crate::secret::random_token(), crate::secret::random_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }

    #[test]
    fn nothing_is_overwritten_and_nothing_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("greenlight.toml");
        let mut c = choices(host_default());
        c.upstreams_dir = dir.path().join("upstreams");
        let options = Options {
            output: output.clone(),
            ..Default::default()
        };
        // The snippet's place is taken: neither file is written.
        std::fs::write(snippet_path(&output), "mine").unwrap();
        let err = write(&options, &c).unwrap_err();
        assert!(matches!(err, InitError::Exists(_)), "{err}");
        assert!(!output.exists());
        assert_eq!(
            std::fs::read_to_string(snippet_path(&output)).unwrap(),
            "mine"
        );
        std::fs::remove_file(snippet_path(&output)).unwrap();

        let written = write(&options, &c).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&output).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(written.created_upstreams_dir && c.upstreams_dir.is_dir());
        let before = std::fs::read_to_string(&output).unwrap();
        assert!(matches!(write(&options, &c), Err(InitError::Exists(_))));
        assert_eq!(std::fs::read_to_string(&output).unwrap(), before);
    }
}
