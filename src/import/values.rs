//! Compose's value forms, read one at a time (pure): Go durations, variable
//! interpolation, ports, volumes, and the "list or map" shapes compose allows.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// A Go duration as compose writes them (`1m30s`, `1.5s`, `500ms`, `2h`).
pub fn go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    let mut any = false;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * seconds;
        any = true;
    }
    any.then(|| Duration::from_secs_f64(total))
}

/// A duration as greenlight's config reads it (humantime), e.g. `1m 30s`.
pub fn config_duration(d: Duration) -> String {
    // Whole milliseconds: humantime would print nanoseconds otherwise.
    let d = Duration::from_millis(d.as_millis() as u64);
    if d.is_zero() {
        return "0s".into();
    }
    humantime::format_duration(d).to_string()
}

/// A compose string with its interpolation rewritten into greenlight's, which
/// expands only `${VAR}` (and `$$`, a literal `$`) from its own environment.
/// `$VAR` becomes `${VAR}`; the default and required forms (`${VAR:-x}`,
/// `${VAR?err}`, ...) become `${VAR}` and are reported in `lost`.
pub fn interpolation(text: &str, lost: &mut Vec<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push_str("$$");
            rest = tail;
        } else if let Some((body, tail)) = after.strip_prefix('{').and_then(|b| b.split_once('}')) {
            let name_len = body
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(body.len());
            let (name, modifier) = body.split_at(name_len);
            if !modifier.is_empty() {
                lost.push(format!(
                    "${{{body}}}: greenlight has no default or required forms; it needs {name} set"
                ));
            }
            out.push_str(&format!("${{{name}}}"));
            rest = tail;
        } else {
            let name_len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if name_len == 0 {
                // A lone `$` is literal to compose; greenlight's literal is `$$`.
                out.push_str("$$");
            } else {
                out.push_str(&format!("${{{}}}", &after[..name_len]));
            }
            rest = &after[name_len..];
        }
    }
    out.push_str(rest);
    out
}

/// A scalar as text (compose accepts numbers and booleans where it means strings).
pub fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A list of strings, or one string (compose's `string or list` fields).
pub fn string_list(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::Array(items) => items.iter().map(scalar).collect(),
        other => scalar(other).map(|s| vec![s]),
    }
}

/// `KEY=value` pairs or a map (environment, labels): (key, value or None when
/// the list form names a key with no value).
pub fn pairs(value: &Value, separator: char) -> Option<Vec<(String, Option<String>)>> {
    match value {
        Value::Object(map) => Some(
            map.iter()
                .map(|(k, v)| (k.clone(), if v.is_null() { None } else { scalar(v) }))
                .collect(),
        ),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let text = scalar(item)?;
                Some(match text.split_once(separator) {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (text, None),
                })
            })
            .collect(),
        _ => None,
    }
}

/// A published or exposed port: the container's port, and what it cannot carry.
#[derive(Debug, PartialEq, Eq)]
pub struct Port {
    pub container: u16,
    /// The host side, as written (`127.0.0.1:3001`), when it was published.
    pub published: Option<String>,
    pub protocol: String,
}

/// One entry of `ports` or `expose`, short (`"127.0.0.1:3001:3000/tcp"`) or long.
pub fn port(value: &Value) -> Result<Port, String> {
    if let Value::Object(map) = value {
        let container = map
            .get("target")
            .and_then(scalar)
            .and_then(|t| t.parse().ok())
            .ok_or("a long-syntax port needs a numeric target")?;
        return Ok(Port {
            container,
            published: map.get("published").and_then(scalar),
            protocol: map
                .get("protocol")
                .and_then(scalar)
                .unwrap_or_else(|| "tcp".into()),
        });
    }
    let text = scalar(value).ok_or("a port is a number or a string")?;
    let (spec, protocol) = match text.split_once('/') {
        Some((spec, protocol)) => (spec, protocol.to_string()),
        None => (text.as_str(), "tcp".to_string()),
    };
    let (published, container) = match spec.rsplit_once(':') {
        Some((host, container)) => (Some(host.to_string()), container),
        None => (None, spec),
    };
    let container = container
        .parse()
        .map_err(|_| format!("{text:?}: a port range or a name is not one port"))?;
    Ok(Port {
        container,
        published,
        protocol,
    })
}

/// One entry of `volumes`, as greenlight writes it (`source:target[:mode]`),
/// or a tmpfs mount (`target[:size=N]`).
#[derive(Debug, PartialEq, Eq)]
pub enum Mount {
    Bind(String),
    Tmpfs(String),
}

/// Reads a volume entry; `named` turns a compose volume name into the Docker
/// volume compose made for it. Relative host paths are taken from `dir`, as
/// compose takes them.
pub fn mount(value: &Value, dir: &Path, named: &dyn Fn(&str) -> String) -> Result<Mount, String> {
    let host = |source: &str| -> String {
        if source == "." || source.starts_with("./") || source.starts_with("../") {
            let joined = dir.join(source);
            normalise(&joined)
        } else if source.starts_with('/') || source.starts_with('~') {
            source.to_string()
        } else {
            named(source)
        }
    };
    if let Value::Object(map) = value {
        let kind = map.get("type").and_then(scalar).unwrap_or_default();
        let target = map
            .get("target")
            .and_then(scalar)
            .ok_or("a long-syntax volume needs a target")?;
        let read_only = map.get("read_only") == Some(&Value::Bool(true));
        return match kind.as_str() {
            "bind" | "volume" => {
                let source = map
                    .get("source")
                    .and_then(scalar)
                    .ok_or("an anonymous volume (no source) is not kept across deploys")?;
                let ro = if read_only { ":ro" } else { "" };
                Ok(Mount::Bind(format!("{}:{target}{ro}", host(&source))))
            }
            "tmpfs" => {
                let size = map
                    .get("tmpfs")
                    .and_then(|t| t.get("size"))
                    .and_then(scalar)
                    .map(|s| format!(":size={s}"))
                    .unwrap_or_default();
                Ok(Mount::Tmpfs(format!("{target}{size}")))
            }
            other => Err(format!(
                "volume type {other:?} is not a bind, volume or tmpfs"
            )),
        };
    }
    let text = scalar(value).ok_or("a volume is a string or a mapping")?;
    let mut parts = text.splitn(3, ':');
    let first = parts.next().unwrap_or_default();
    match (parts.next(), parts.next()) {
        (None, _) => Err(format!(
            "{text:?}: an anonymous volume is not kept across deploys; name it"
        )),
        (Some(target), mode) => Ok(Mount::Bind(match mode {
            Some(mode) => format!("{}:{target}:{mode}", host(first)),
            None => format!("{}:{target}", host(first)),
        })),
    }
}

/// `a/./b/../c` as `a/c`, without touching the filesystem.
pub fn normalise(path: &Path) -> String {
    let mut out: Vec<&str> = Vec::new();
    let absolute = path.is_absolute();
    for part in path.to_str().unwrap_or_default().split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|p| *p != "..") {
                    out.pop();
                } else if !absolute {
                    out.push("..");
                }
            }
            p => out.push(p),
        }
    }
    let joined = out.join("/");
    if absolute {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".into()
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn go_durations_become_greenlight_durations() {
        let d = |s| go_duration(s).map(config_duration);
        assert_eq!(d("1m30s").as_deref(), Some("1m 30s"));
        assert_eq!(d("1.5s").as_deref(), Some("1s 500ms"));
        assert_eq!(d("500ms").as_deref(), Some("500ms"));
        assert_eq!(d("2h").as_deref(), Some("2h"));
        assert_eq!(d("0").as_deref(), Some("0s"));
        assert_eq!(d("10"), None);
        assert_eq!(d("10 parsecs"), None);
        assert_eq!(d(""), None);
        for s in ["1m 30s", "1s 500ms", "500ms", "2h"] {
            assert!(humantime::parse_duration(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn interpolation_becomes_greenlights_and_says_what_it_lost() {
        let mut lost = Vec::new();
        assert_eq!(interpolation("a $HOME b", &mut lost), "a ${HOME} b");
        assert_eq!(interpolation("${A}-$$-$", &mut lost), "${A}-$$-$$");
        assert!(lost.is_empty());
        assert_eq!(interpolation("${DB:-localhost}", &mut lost), "${DB}");
        assert_eq!(lost.len(), 1);
        assert!(lost[0].contains("DB"), "{lost:?}");
        assert_eq!(interpolation("no dollars", &mut lost), "no dollars");
    }

    #[test]
    fn ports_short_and_long() {
        let p = |v: Value| port(&v);
        assert_eq!(
            p(json!("3001:3000")).unwrap(),
            Port {
                container: 3000,
                published: Some("3001".into()),
                protocol: "tcp".into()
            }
        );
        assert_eq!(p(json!("127.0.0.1:80:8080/udp")).unwrap().container, 8080);
        assert_eq!(p(json!("127.0.0.1:80:8080/udp")).unwrap().protocol, "udp");
        assert_eq!(p(json!(3000)).unwrap().published, None);
        assert_eq!(
            p(json!({"target": 80, "published": "8080"}))
                .unwrap()
                .published
                .as_deref(),
            Some("8080")
        );
        assert!(p(json!("3000-3005")).is_err());
        assert!(p(json!({"published": 1})).is_err());
    }

    #[test]
    fn volumes_resolve_relative_paths_and_named_volumes() {
        let dir = Path::new("/srv/app");
        let named = |n: &str| format!("proj_{n}");
        let m = |v: Value| mount(&v, dir, &named);
        assert_eq!(
            m(json!("./data:/data")).unwrap(),
            Mount::Bind("/srv/app/data:/data".into())
        );
        assert_eq!(
            m(json!("../x:/x:ro")).unwrap(),
            Mount::Bind("/srv/x:/x:ro".into())
        );
        assert_eq!(
            m(json!("db:/var/lib/db")).unwrap(),
            Mount::Bind("proj_db:/var/lib/db".into())
        );
        assert_eq!(
            m(json!("/etc/letsencrypt:/etc/letsencrypt")).unwrap(),
            Mount::Bind("/etc/letsencrypt:/etc/letsencrypt".into())
        );
        assert!(m(json!("/anonymous")).is_err());
        assert_eq!(
            m(json!({"type": "bind", "source": ".", "target": "/app", "read_only": true})).unwrap(),
            Mount::Bind("/srv/app:/app:ro".into())
        );
        assert_eq!(
            m(json!({"type": "tmpfs", "target": "/cache", "tmpfs": {"size": 1000}})).unwrap(),
            Mount::Tmpfs("/cache:size=1000".into())
        );
        assert!(m(json!({"type": "npipe", "source": "a", "target": "b"})).is_err());
    }

    #[test]
    fn list_or_map_forms() {
        assert_eq!(
            pairs(&json!(["A=1", "B"]), '=').unwrap(),
            vec![("A".into(), Some("1".into())), ("B".into(), None)]
        );
        assert_eq!(
            pairs(&json!({"A": 1, "B": null}), '=').unwrap(),
            vec![("A".into(), Some("1".into())), ("B".into(), None)]
        );
        assert_eq!(string_list(&json!("a")).unwrap(), vec!["a"]);
        assert_eq!(string_list(&json!(["a", 2])).unwrap(), vec!["a", "2"]);
        assert!(string_list(&json!({"a": 1})).is_none());
    }
}
