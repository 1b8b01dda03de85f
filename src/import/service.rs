//! One compose service as the keys of a greenlight `[[service]]` (pure), and
//! each compose key it could not carry over, with the reason.

use std::path::Path;

use serde_json::{Map, Value};
use toml_edit::{Array, InlineTable, Item, Table};

use super::values::{self, Mount};

/// Where a compose service lives: what its names and relative paths mean.
pub struct Context<'a> {
    /// Compose's project name: the prefix of the networks and volumes it made.
    pub project: &'a str,
    /// The compose file's directory (relative paths are taken from it).
    pub dir: &'a Path,
    /// The file's top-level `networks` and `volumes`.
    pub networks: &'a Map<String, Value>,
    pub volumes: &'a Map<String, Value>,
    /// The networks of the nginx service in the same file, when there is one
    /// (compose names): the app's network that nginx shares is `network`.
    pub nginx_networks: Option<&'a [String]>,
    /// The ports nginx's sites name for each compose service (`server api:8080`).
    pub site_ports: &'a std::collections::BTreeMap<String, u16>,
}

impl Context<'_> {
    /// The Docker name compose gives a network or volume of the file.
    fn docker_name(&self, top: &Map<String, Value>, key: &str) -> String {
        let entry = top.get(key);
        if let Some(name) = entry.and_then(|e| e.get("name")).and_then(values::scalar) {
            return name;
        }
        match entry.and_then(|e| e.get("external")) {
            Some(Value::Bool(true)) => key.to_string(),
            Some(Value::Object(ext)) => ext
                .get("name")
                .and_then(values::scalar)
                .unwrap_or_else(|| key.to_string()),
            _ => format!("{}_{key}", self.project),
        }
    }

    pub fn network_name(&self, key: &str) -> String {
        self.docker_name(self.networks, key)
    }

    fn volume_name(&self, key: &str) -> String {
        self.docker_name(self.volumes, key)
    }
}

/// A compose key greenlight does not carry over, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub key: String,
    pub why: String,
}

/// A compose service as greenlight config: the table's keys (without `name`)
/// and the notes.
#[derive(Debug)]
pub struct Mapped {
    pub table: Table,
    pub notes: Vec<Note>,
}

/// The compose networks a service is on (`default` when it names none).
pub fn networks_of(service: &Map<String, Value>) -> Vec<String> {
    match service.get("networks") {
        Some(Value::Array(items)) => items.iter().filter_map(values::scalar).collect(),
        Some(Value::Object(map)) => map.keys().cloned().collect(),
        _ => vec!["default".into()],
    }
}

/// Why greenlight has no equivalent of a compose key (None: no reason beyond
/// "greenlight has no such option").
fn reason(key: &str) -> Option<&'static str> {
    Some(match key {
        "build" => "greenlight deploys images pushed to a registry: build and push in CI",
        "container_name" => {
            "greenlight names the containers <service>-<colour>-<k> and routes nginx to them"
        }
        "depends_on" | "links" | "external_links" => {
            "greenlight starts only this service; keep what it depends on (a database) running, e.g. in compose"
        }
        "entrypoint" => "greenlight runs the image's ENTRYPOINT; set it in the image",
        "network_mode" => "replicas must be on a network nginx reaches",
        "scale" => "use `replicas`",
        "profiles" => "greenlight has no profiles: import the services you want",
        "secrets" => {
            "on one host mount the file with `volumes` (read-only); on Swarm create it (docker secret create) and list it in `secrets`"
        }
        "configs" => {
            "mount the file with `volumes` (read-only), or pass it through `env`/`env_file`"
        }
        "hostname" | "domainname" | "mac_address" => {
            "replicas of one service would share it; greenlight names each replica"
        }
        "pull_policy" => "greenlight pulls each pushed digest (`pull = false` deploys local builds)",
        "extends" => "resolve `extends` first (`docker compose config` prints the merged file)",
        _ => return None,
    })
}

/// Maps `service` (`compose_name` in the file) within `cx`.
pub fn map(compose_name: &str, service: &Map<String, Value>, cx: &Context) -> Mapped {
    let mut m = Mapper {
        table: Table::new(),
        notes: Vec::new(),
        rollout: Table::new(),
        cx,
    };
    let mut handled: Vec<&str> = Vec::new();
    let mut take = |key: &'static str| {
        handled.push(key);
        service.get(key)
    };

    if let Some(image) = take("image") {
        m.image(image);
    } else {
        m.note(
            "image",
            "compose builds this service; greenlight needs the repository its CI pushes to: set `image`",
        );
    }
    m.ports(compose_name, service, take("ports"), take("expose"));
    m.networks(compose_name, service, take("networks"));
    let deploy = take("deploy").and_then(Value::as_object);
    if let Some(n) = deploy
        .and_then(|d| d.get("replicas"))
        .and_then(Value::as_u64)
    {
        m.table["replicas"] = toml_edit::value(n as i64);
    }
    m.restart(take("restart"), deploy);
    m.command(take("command"));
    m.env_file(take("env_file"));
    m.environment(take("environment"));
    m.volumes(take("volumes"), take("tmpfs"));
    m.labels(take("labels"), deploy);
    m.resources(
        take("mem_limit"),
        take("mem_reservation"),
        take("cpus"),
        deploy,
    );
    for key in ["user", "stop_signal", "shm_size"] {
        if let Some(v) = take(key) {
            m.string(key, key, v);
        }
    }
    for key in ["read_only", "init"] {
        if let Some(v) = take(key) {
            match v {
                Value::Bool(b) => m.table[key] = toml_edit::value(*b),
                _ => m.note(key, "not a boolean"),
            }
        }
    }
    for key in ["cap_add", "cap_drop", "security_opt"] {
        if let Some(v) = take(key) {
            m.list(key, key, v);
        }
    }
    m.extra_hosts(take("extra_hosts"));
    m.ulimits(take("ulimits"));
    if let Some(v) = take("stop_grace_period") {
        match values::scalar(v).as_deref().and_then(values::go_duration) {
            Some(d) => {
                m.rollout["stop_grace"] = toml_edit::value(values::config_duration(d));
            }
            None => m.note("stop_grace_period", "not a duration"),
        }
    }
    m.healthcheck(take("healthcheck"));
    m.logging(take("logging"));

    if let Some(deploy) = deploy {
        for key in deploy.keys() {
            if !matches!(
                key.as_str(),
                "replicas" | "resources" | "restart_policy" | "labels"
            ) {
                let why = match key.as_str() {
                    "update_config" | "rollback_config" => {
                        "greenlight's own rollout: `[service.rollout]` strategy, max_surge, max_unavailable"
                    }
                    "placement" | "endpoint_mode" | "mode" => "a Swarm setting",
                    _ => "greenlight has no such option",
                };
                m.note(&format!("deploy.{key}"), why);
            }
        }
    }
    for (key, _) in service {
        if handled.contains(&key.as_str()) {
            continue;
        }
        if key.starts_with("x-") {
            m.note(key, "an extension field; greenlight ignores it");
            continue;
        }
        let why = reason(key).unwrap_or("greenlight has no such option");
        m.note(key, why);
    }
    let Mapper {
        mut table,
        notes,
        rollout,
        ..
    } = m;
    if !rollout.is_empty() {
        table["rollout"] = Item::Table(rollout);
    }
    Mapped { table, notes }
}

struct Mapper<'a> {
    table: Table,
    notes: Vec<Note>,
    rollout: Table,
    cx: &'a Context<'a>,
}

impl Mapper<'_> {
    fn note(&mut self, key: &str, why: impl Into<String>) {
        self.notes.push(Note {
            key: key.to_string(),
            why: why.into(),
        });
    }

    /// A string value with compose's interpolation made greenlight's.
    fn text(&mut self, key: &str, raw: &str) -> String {
        let mut lost = Vec::new();
        let out = values::interpolation(raw, &mut lost);
        for why in lost {
            self.note(key, why);
        }
        out
    }

    fn string(&mut self, key: &str, to: &str, value: &Value) {
        match values::scalar(value) {
            Some(s) => {
                let s = self.text(key, &s);
                self.table[to] = toml_edit::value(s);
            }
            None => self.note(key, "not a string"),
        }
    }

    fn list(&mut self, key: &str, to: &str, value: &Value) {
        match values::string_list(value) {
            Some(items) => {
                let items: Vec<String> = items.iter().map(|s| self.text(key, s)).collect();
                self.table[to] = toml_edit::value(Array::from_iter(items));
            }
            None => self.note(key, "not a list of strings"),
        }
    }

    fn image(&mut self, image: &Value) {
        let Some(text) = values::scalar(image) else {
            return self.note("image", "not a string");
        };
        let text = self.text("image", &text);
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (text.as_str(), None),
        };
        let last = name.rsplit('/').next().unwrap_or_default();
        let (repository, tag) = match last.split_once(':') {
            Some((_, tag)) => (&name[..name.len() - tag.len() - 1], Some(tag)),
            None => (name, None),
        };
        self.table["image"] = toml_edit::value(repository);
        if let Some(digest) = digest {
            self.note(
                "image",
                format!(
                    "pinned to {digest}: greenlight deploys the digests pushed to the repository"
                ),
            );
        }
        match tag {
            Some(tag) if digest.is_none() => {
                self.table["tags"] = toml_edit::value(Array::from_iter([tag]));
            }
            _ => {}
        }
    }

    fn ports(
        &mut self,
        compose_name: &str,
        service: &Map<String, Value>,
        ports: Option<&Value>,
        expose: Option<&Value>,
    ) {
        let mut found: Vec<u16> = Vec::new();
        for (key, list) in [("ports", ports), ("expose", expose)] {
            let Some(list) = list else { continue };
            let Some(items) = list.as_array() else {
                self.note(key, "not a list");
                continue;
            };
            for item in items {
                match values::port(item) {
                    Ok(p) => {
                        if p.protocol != "tcp" {
                            self.note(
                                key,
                                format!(
                                    "{} port {}: nginx proxies HTTP over TCP",
                                    p.protocol, p.container
                                ),
                            );
                            continue;
                        }
                        if let Some(host) = p.published {
                            self.note(
                                key,
                                format!(
                                    "published {host} -> {}: replicas are not published; nginx reaches them on the network",
                                    p.container
                                ),
                            );
                        }
                        if !found.contains(&p.container) {
                            found.push(p.container);
                        }
                    }
                    Err(why) => self.note(key, why),
                }
            }
        }
        // The port nginx's site already uses for this service comes first.
        let container_name = service.get("container_name").and_then(values::scalar);
        let named = [Some(compose_name.to_string()), container_name]
            .into_iter()
            .flatten()
            .find_map(|n| self.cx.site_ports.get(&n).copied());
        if let Some(p) = named.filter(|p| found.contains(p)) {
            found.retain(|f| *f != p);
            found.insert(0, p);
        }
        match found.as_slice() {
            [] => self.note(
                "port",
                "no port in ports or expose: set `port` to the port the app listens on",
            ),
            [first, rest @ ..] => {
                self.table["port"] = toml_edit::value(i64::from(*first));
                for other in rest {
                    self.note(
                        "ports",
                        format!("port {other}: nginx routes to one port per service ({first})"),
                    );
                }
            }
        }
    }

    fn networks(
        &mut self,
        compose_name: &str,
        service: &Map<String, Value>,
        value: Option<&Value>,
    ) {
        if let Some(Value::Object(map)) = value {
            for (net, settings) in map {
                if settings.as_object().is_some_and(|s| !s.is_empty()) {
                    self.note(
                        "networks",
                        format!("{net}: aliases and fixed addresses are not kept (nginx routes by address)"),
                    );
                }
            }
        }
        let mine = networks_of(service);
        let shared = self
            .cx
            .nginx_networks
            .and_then(|theirs| mine.iter().find(|n| theirs.contains(n)));
        let primary = match (shared, self.cx.nginx_networks) {
            (Some(net), _) => net.clone(),
            (None, Some(_)) => {
                self.note(
                    "networks",
                    format!("{compose_name} shares no network with nginx: `network` is its first; put nginx on it"),
                );
                mine[0].clone()
            }
            (None, None) => mine[0].clone(),
        };
        self.table["network"] = toml_edit::value(self.cx.network_name(&primary));
        let extra: Vec<String> = mine
            .iter()
            .filter(|n| **n != primary)
            .map(|n| self.cx.network_name(n))
            .collect();
        if !extra.is_empty() {
            self.table["networks"] = toml_edit::value(Array::from_iter(extra));
        }
    }

    fn restart(&mut self, restart: Option<&Value>, deploy: Option<&Map<String, Value>>) {
        let from_deploy = deploy
            .and_then(|d| d.get("restart_policy"))
            .and_then(|p| p.get("condition"))
            .and_then(values::scalar)
            .map(|c| match c.as_str() {
                "none" => "no".to_string(),
                "any" => "always".to_string(),
                other => other.to_string(),
            });
        let Some(text) = restart.and_then(values::scalar).or(from_deploy) else {
            return;
        };
        let (policy, retries) = text.split_once(':').unwrap_or((text.as_str(), ""));
        if !retries.is_empty() {
            self.note(
                "restart",
                format!("at most {retries} restarts: greenlight's on-failure has no limit"),
            );
        }
        match policy {
            "no" | "always" | "unless-stopped" | "on-failure" => {
                self.table["restart"] = toml_edit::value(policy);
            }
            other => self.note("restart", format!("{other:?} is not a restart policy")),
        }
    }

    fn command(&mut self, value: Option<&Value>) {
        let argv = match value {
            None => return,
            Some(Value::String(line)) => match shlex::split(line) {
                Some(argv) => argv,
                None => return self.note("command", "unbalanced quotes"),
            },
            Some(other) => match values::string_list(other) {
                Some(argv) => argv,
                None => return self.note("command", "not a string or a list"),
            },
        };
        let argv: Vec<String> = argv.iter().map(|a| self.text("command", a)).collect();
        self.table["command"] = toml_edit::value(Array::from_iter(argv));
    }

    fn env_file(&mut self, value: Option<&Value>) {
        let Some(value) = value else { return };
        let paths: Vec<String> = match value {
            Value::Array(items) => items
                .iter()
                .filter_map(|i| {
                    values::scalar(i).or_else(|| i.get("path").and_then(values::scalar))
                })
                .collect(),
            other => values::scalar(other).into_iter().collect(),
        };
        let Some((first, rest)) = paths.split_first() else {
            return self.note("env_file", "no path");
        };
        let path = if Path::new(first).is_absolute() {
            first.clone()
        } else {
            values::normalise(&self.cx.dir.join(first))
        };
        let path = self.text("env_file", &path);
        self.table["env_file"] = toml_edit::value(path);
        for other in rest {
            self.note(
                "env_file",
                format!("{other}: greenlight reads one env_file; merge it into {first} or `env`"),
            );
        }
    }

    fn environment(&mut self, value: Option<&Value>) {
        let Some(value) = value else { return };
        let Some(pairs) = values::pairs(value, '=') else {
            return self.note("environment", "not a list or a map");
        };
        let mut env = Table::new();
        for (key, value) in pairs {
            let value = match value {
                Some(v) => self.text("environment", &v),
                None => {
                    self.note(
                        "environment",
                        format!("{key} takes its value from the shell: greenlight reads ${{{key}}} from its own environment"),
                    );
                    format!("${{{key}}}")
                }
            };
            env[&key] = toml_edit::value(value);
        }
        if !env.is_empty() {
            self.table["env"] = Item::Table(env);
        }
    }

    fn volumes(&mut self, volumes: Option<&Value>, tmpfs: Option<&Value>) {
        let mut binds: Vec<String> = Vec::new();
        let mut tmpfs_list: Vec<String> = match tmpfs {
            Some(v) => values::string_list(v).unwrap_or_else(|| {
                self.note("tmpfs", "not a string or a list");
                Vec::new()
            }),
            None => Vec::new(),
        };
        if let Some(list) = volumes {
            let Some(items) = list.as_array() else {
                return self.note("volumes", "not a list");
            };
            let cx = self.cx;
            for item in items {
                match values::mount(item, cx.dir, &|name| cx.volume_name(name)) {
                    Ok(Mount::Bind(b)) => {
                        let b = self.text("volumes", &b);
                        binds.push(b);
                    }
                    Ok(Mount::Tmpfs(t)) => tmpfs_list.push(t),
                    Err(why) => self.note("volumes", why),
                }
            }
        }
        if !binds.is_empty() {
            self.table["volumes"] = toml_edit::value(Array::from_iter(binds));
        }
        if !tmpfs_list.is_empty() {
            self.table["tmpfs"] = toml_edit::value(Array::from_iter(tmpfs_list));
        }
    }

    fn labels(&mut self, value: Option<&Value>, deploy: Option<&Map<String, Value>>) {
        let mut labels = InlineTable::new();
        let deploy_labels = deploy.and_then(|d| d.get("labels"));
        for (key, value) in [("labels", value), ("deploy.labels", deploy_labels)] {
            let Some(value) = value else { continue };
            let Some(pairs) = values::pairs(value, '=') else {
                self.note(key, "not a list or a map");
                continue;
            };
            for (k, v) in pairs {
                if k.starts_with("greenlight.") {
                    self.note(
                        key,
                        format!("{k}: labels under greenlight. are greenlight's own"),
                    );
                    continue;
                }
                let v = self.text(key, &v.unwrap_or_default());
                labels.insert(&k, v.into());
            }
        }
        if !labels.is_empty() {
            self.table["labels"] = toml_edit::value(labels);
        }
    }

    fn resources(
        &mut self,
        mem_limit: Option<&Value>,
        mem_reservation: Option<&Value>,
        cpus: Option<&Value>,
        deploy: Option<&Map<String, Value>>,
    ) {
        let resources = deploy.and_then(|d| d.get("resources"));
        let limits = resources.and_then(|r| r.get("limits"));
        let reservations = resources.and_then(|r| r.get("reservations"));
        let memory = mem_limit.or(limits.and_then(|l| l.get("memory")));
        let reservation = mem_reservation.or(reservations.and_then(|r| r.get("memory")));
        if let Some(v) = memory {
            self.string("mem_limit", "memory", v);
        }
        if let Some(v) = reservation {
            self.string("mem_reservation", "memory_reservation", v);
        }
        if let Some(v) = cpus.or(limits.and_then(|l| l.get("cpus"))) {
            match values::scalar(v).and_then(|s| s.parse::<f64>().ok()) {
                Some(n) if n > 0.0 => self.table["cpus"] = toml_edit::value(n),
                _ => self.note("cpus", "not a positive number"),
            }
        }
        for (part, what) in [(limits, "limits"), (reservations, "reservations")] {
            if let Some(map) = part.and_then(Value::as_object) {
                for key in map.keys() {
                    let kept = match what {
                        "limits" => matches!(key.as_str(), "memory" | "cpus"),
                        _ => key == "memory",
                    };
                    if !kept {
                        self.note(
                            &format!("deploy.resources.{what}.{key}"),
                            "greenlight has no such option",
                        );
                    }
                }
            }
        }
    }

    fn extra_hosts(&mut self, value: Option<&Value>) {
        let Some(value) = value else { return };
        // The list form is `host:address` (or `host=address`); the map form host: address.
        let entries: Option<Vec<String>> = match value {
            Value::Object(map) => map
                .iter()
                .map(|(h, a)| values::scalar(a).map(|a| format!("{h}:{a}")))
                .collect(),
            other => values::string_list(other).map(|list| {
                list.into_iter()
                    .map(|e| match e.split_once('=') {
                        Some((h, a)) => format!("{h}:{a}"),
                        None => e,
                    })
                    .collect()
            }),
        };
        match entries {
            Some(list) => self.table["extra_hosts"] = toml_edit::value(Array::from_iter(list)),
            None => self.note("extra_hosts", "not a list or a map"),
        }
    }

    fn ulimits(&mut self, value: Option<&Value>) {
        let Some(value) = value else { return };
        let Some(map) = value.as_object() else {
            return self.note("ulimits", "not a map");
        };
        let mut out = InlineTable::new();
        for (name, limit) in map {
            match limit {
                Value::Number(n) if n.as_i64().is_some() => {
                    out.insert(name, n.as_i64().unwrap_or_default().into());
                }
                Value::Object(pair) => {
                    let soft = pair.get("soft").and_then(Value::as_i64);
                    let hard = pair.get("hard").and_then(Value::as_i64);
                    match (soft, hard) {
                        (Some(soft), Some(hard)) => {
                            let mut t = InlineTable::new();
                            t.insert("soft", soft.into());
                            t.insert("hard", hard.into());
                            out.insert(name, t.into());
                        }
                        _ => self.note("ulimits", format!("{name}: needs soft and hard")),
                    }
                }
                _ => self.note("ulimits", format!("{name}: not a number or soft/hard")),
            }
        }
        if !out.is_empty() {
            self.table["ulimits"] = toml_edit::value(out);
        }
    }

    fn healthcheck(&mut self, value: Option<&Value>) {
        let Some(value) = value else { return };
        let Some(map) = value.as_object() else {
            return self.note("healthcheck", "not a map");
        };
        let mut hc = Table::new();
        let order = [
            "test",
            "disable",
            "interval",
            "timeout",
            "retries",
            "start_period",
        ];
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort_by_key(|k| order.iter().position(|o| o == k).unwrap_or(order.len()));
        for key in keys {
            let v = &map[key];
            match key.as_str() {
                "test" => {
                    let test = match v {
                        Value::String(line) => vec!["CMD-SHELL".to_string(), line.clone()],
                        other => values::string_list(other).unwrap_or_default(),
                    };
                    if test.first().map(String::as_str) == Some("NONE") {
                        hc["disable"] = toml_edit::value(true);
                    } else if test.is_empty() {
                        self.note("healthcheck.test", "not a string or a list");
                    } else {
                        let test: Vec<String> = test
                            .iter()
                            .map(|t| self.text("healthcheck.test", t))
                            .collect();
                        hc["test"] = toml_edit::value(Array::from_iter(test));
                    }
                }
                "interval" | "timeout" | "start_period" => {
                    match values::scalar(v).as_deref().and_then(values::go_duration) {
                        Some(d) => hc[key] = toml_edit::value(values::config_duration(d)),
                        None => self.note(&format!("healthcheck.{key}"), "not a duration"),
                    }
                }
                "retries" => match v.as_i64() {
                    Some(n) if n >= 0 => hc["retries"] = toml_edit::value(n),
                    _ => self.note("healthcheck.retries", "not a count"),
                },
                "disable" => {
                    if v == &Value::Bool(true) {
                        hc["disable"] = toml_edit::value(true);
                    }
                }
                other => self.note(
                    &format!("healthcheck.{other}"),
                    "greenlight has no such option",
                ),
            }
        }
        if !hc.is_empty() {
            self.table["healthcheck"] = Item::Table(hc);
        }
    }

    fn logging(&mut self, value: Option<&Value>) {
        let Some(value) = value else { return };
        let Some(map) = value.as_object() else {
            return self.note("logging", "not a map");
        };
        let mut logging = Table::new();
        if let Some(driver) = map.get("driver").and_then(values::scalar) {
            logging["driver"] = toml_edit::value(driver);
        }
        if let Some(options) = map.get("options") {
            match values::pairs(options, '=') {
                Some(pairs) => {
                    let mut t = InlineTable::new();
                    for (k, v) in pairs {
                        let v = self.text("logging.options", &v.unwrap_or_default());
                        t.insert(&k, v.into());
                    }
                    logging["options"] = toml_edit::value(t);
                }
                None => self.note("logging.options", "not a map"),
            }
        }
        if !logging.is_empty() {
            self.table["logging"] = Item::Table(logging);
        }
    }
}
