//! `greenlight import-compose`: a docker-compose file -> `[[service]]` entries
//! (pure; the command line reads the files).
//!
//! Each compose service becomes one greenlight service, except that a pair
//! named for the colours (`blue`/`green`, `app-blue`/`app-green`, ...) with
//! one image is one service: greenlight makes both colours itself. nginx's own
//! service is not imported; the site beside it says which lines change. What
//! cannot be carried over is listed, per service, with the reason, as comments
//! in the output (which stays valid TOML).

mod service;
mod site;
mod values;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use toml_edit::{ArrayOfTables, DocumentMut, Item, Table};

pub use service::Note;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImportError {
    #[error("not a compose file: {0}")]
    Yaml(String),
    #[error("the compose file has no services")]
    NoServices,
    #[error("no compose service {name:?} (the file has: {known})")]
    Unknown { name: String, known: String },
    #[error("{0:?} is nginx, which stays as it is; import the services behind it")]
    Nginx(String),
}

/// What `import` reads: the compose file and, optionally, nginx sites.
pub struct Source<'a> {
    pub text: &'a str,
    /// The compose file's directory: relative paths and the project name.
    pub dir: &'a Path,
    /// Compose's project name (`-p`); else the file's `name`, else the directory's.
    pub project: Option<&'a str>,
    /// nginx site files found beside the file or mounted into its nginx.
    pub sites: Vec<(PathBuf, String)>,
}

/// One greenlight service made from one or two compose services.
#[derive(Debug)]
pub struct Imported {
    pub name: String,
    pub from: Vec<String>,
    pub notes: Vec<Note>,
}

#[derive(Debug)]
pub struct Import {
    /// The `[[service]]` entries, commented, as TOML.
    pub toml: String,
    pub services: Vec<Imported>,
    /// The compose services left out (not named, or nginx does not route to them).
    pub skipped: Vec<String>,
    /// Whether the services were chosen as those nginx routes to.
    pub routed_only: bool,
    /// What to change in nginx, one line each.
    pub nginx: Vec<String>,
}

/// The compose services of `source` named in `selected` (all when empty).
pub fn import(source: &Source, selected: &[String]) -> Result<Import, ImportError> {
    let file: Value =
        serde_saphyr::from_str(source.text).map_err(|e| ImportError::Yaml(e.to_string()))?;
    let empty = Map::new();
    let top = file.as_object().unwrap_or(&empty);
    let services = top
        .get("services")
        .and_then(Value::as_object)
        .filter(|s| !s.is_empty())
        .ok_or(ImportError::NoServices)?;
    let project = project_name(source, top);
    let networks = top
        .get("networks")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let volumes = top
        .get("volumes")
        .and_then(Value::as_object)
        .unwrap_or(&empty);

    let nginx_name = services
        .iter()
        .find(|(name, svc)| is_nginx(name, svc))
        .map(|(name, _)| name.clone());
    let nginx_networks = nginx_name
        .as_ref()
        .and_then(|n| services.get(n))
        .and_then(Value::as_object)
        .map(service::networks_of);

    for name in selected {
        if Some(name) == nginx_name.as_ref() {
            return Err(ImportError::Nginx(name.clone()));
        }
        if !services.contains_key(name) {
            return Err(ImportError::Unknown {
                name: name.clone(),
                known: services.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
    }
    let sites: Vec<(&Path, site::Site)> = source
        .sites
        .iter()
        .map(|(path, text)| (path.as_path(), site::read(text)))
        .collect();
    let site_ports: BTreeMap<String, u16> = sites
        .iter()
        .flat_map(|(_, s)| s.ports())
        .rev() // the first mention wins
        .collect();
    let cx = service::Context {
        project: &project,
        dir: source.dir,
        networks,
        volumes,
        nginx_networks: nginx_networks.as_deref(),
        site_ports: &site_ports,
    };

    // Unless services are named: those nginx's sites route to, when a site
    // names any; else every service but nginx.
    let routed = |member: &str| {
        let container = services[member]
            .get("container_name")
            .and_then(values::scalar);
        sites.iter().any(|(_, s)| {
            let hosts = s.hosts();
            hosts.contains(&member) || container.as_deref().is_some_and(|c| hosts.contains(&c))
        })
    };
    let groups = group(services, nginx_name.as_deref());
    let any_routed = groups.iter().flat_map(|g| &g.members).any(|m| routed(m));
    let mut doc = DocumentMut::new();
    let mut entries = ArrayOfTables::new();
    let mut imported = Vec::new();
    let mut skipped = Vec::new();
    for g in groups {
        let wanted = if selected.is_empty() {
            !any_routed || g.members.iter().any(|m| routed(m))
        } else {
            g.members.iter().any(|m| selected.contains(m))
        };
        if !wanted {
            skipped.extend(g.members.iter().cloned());
            continue;
        }
        let (entry, done) = render(&g, services, &cx);
        entries.push(entry);
        imported.push(done);
    }
    let nginx = nginx_advice(&sites, &imported, services, nginx_name.as_deref(), &cx);
    doc.insert("service", Item::ArrayOfTables(entries));
    let mut toml = header(&project);
    toml.push_str(&doc.to_string());
    if !nginx.is_empty() {
        toml.push_str("\n# nginx:\n");
        for line in &nginx {
            toml.push_str(&format!("# - {line}\n"));
        }
    }
    Ok(Import {
        toml,
        services: imported,
        skipped,
        nginx,
        routed_only: selected.is_empty() && any_routed,
    })
}

/// The nginx sites to read when none are named: the `*.conf` files beside the
/// compose file, and those its nginx service mounts under `/etc/nginx`.
pub fn site_candidates(text: &str, dir: &Path) -> Vec<PathBuf> {
    let mut places: Vec<PathBuf> = vec![dir.to_path_buf()];
    let file: Value = serde_saphyr::from_str(text).unwrap_or(Value::Null);
    let nginx = file
        .get("services")
        .and_then(Value::as_object)
        .and_then(|services| services.iter().find(|(n, s)| is_nginx(n, s)));
    if let Some((_, nginx)) = nginx {
        for volume in nginx
            .get("volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let bind = match volume {
                Value::Object(long) => long
                    .get("source")
                    .and_then(values::scalar)
                    .zip(long.get("target").and_then(values::scalar)),
                other => values::scalar(other).and_then(|short| {
                    let mut parts = short.splitn(3, ':');
                    Some((parts.next()?.to_string(), parts.next()?.to_string()))
                }),
            };
            if let Some((source, target)) = bind {
                if target.starts_with("/etc/nginx") {
                    places.push(PathBuf::from(values::normalise(&dir.join(source))));
                }
            }
        }
    }
    let mut out = Vec::new();
    for place in places {
        if place.is_file() {
            out.push(place);
        } else if let Ok(entries) = std::fs::read_dir(&place) {
            let mut confs: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "conf"))
                .collect();
            confs.sort();
            out.extend(confs);
        }
    }
    out.dedup();
    out
}

fn header(project: &str) -> String {
    format!(
        "# Imported by `greenlight import-compose` (compose project {project:?}).\n\
         # Review each entry: the comments above it list what compose had and greenlight\n\
         # does not carry over, and why. Relative paths were made absolute from the\n\
         # compose file's directory; named volumes and networks are the ones compose made.\n"
    )
}

/// Compose's project name: given, else the file's `name`, else the directory's
/// name in compose's grammar (lowercase letters, digits, `-` and `_`).
fn project_name(source: &Source, top: &Map<String, Value>) -> String {
    if let Some(p) = source.project {
        return p.to_string();
    }
    if let Some(name) = top.get("name").and_then(values::scalar) {
        return name;
    }
    let dir = source
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let cleaned: String = dir
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_')
        .collect();
    if cleaned.is_empty() {
        "default".into()
    } else {
        cleaned
    }
}

fn image_of(svc: &Value) -> Option<String> {
    let image = svc.get("image").and_then(values::scalar)?;
    let name = image.split('@').next().unwrap_or_default();
    let last = name.rsplit('/').next().unwrap_or_default();
    Some(match last.split_once(':') {
        Some((_, tag)) => name[..name.len() - tag.len() - 1].to_string(),
        None => name.to_string(),
    })
}

fn is_nginx(name: &str, svc: &Value) -> bool {
    let image_is = image_of(svc).is_some_and(|i| {
        let last = i.rsplit('/').next().unwrap_or_default();
        last == "nginx" || last.starts_with("nginx-") || last == "openresty"
    });
    name == "nginx" || image_is
}

/// A greenlight service to be: one compose service, or a blue/green pair.
#[derive(Debug, PartialEq, Eq)]
struct Group {
    name: String,
    /// The compose services, blue first for a pair.
    members: Vec<String>,
}

/// `name` without its colour, and which colour: `app-blue` -> (`app`, blue).
fn split_colour(name: &str) -> Option<(String, &'static str)> {
    for colour in ["blue", "green"] {
        if name == colour {
            return Some((String::new(), colour));
        }
        for sep in ['-', '_', '.'] {
            if let Some(base) = name.strip_suffix(&format!("{sep}{colour}")) {
                return Some((base.to_string(), colour));
            }
            if let Some(base) = name.strip_prefix(&format!("{colour}{sep}")) {
                return Some((base.to_string(), colour));
            }
        }
    }
    None
}

/// A greenlight service name from a compose name or an image's last segment.
fn service_name(candidate: &str) -> String {
    let mut out: String = candidate
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    out = out
        .trim_start_matches(|c: char| !c.is_ascii_lowercase())
        .to_string();
    out.truncate(40);
    if out.is_empty() {
        "app".into()
    } else {
        out
    }
}

fn group(services: &Map<String, Value>, nginx: Option<&str>) -> Vec<Group> {
    let mut used: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    for (name, svc) in services {
        if Some(name.as_str()) == nginx || used.contains(name.as_str()) {
            continue;
        }
        if let Some((base, "blue")) = split_colour(name) {
            let partner = services.iter().find(|(other, other_svc)| {
                split_colour(other).is_some_and(|(b, c)| b == base && c == "green")
                    && image_of(other_svc) == image_of(svc)
            });
            if let Some((green, _)) = partner {
                used.insert(green);
                let candidate = if base.is_empty() {
                    image_of(svc)
                        .and_then(|i| i.rsplit('/').next().map(str::to_string))
                        .unwrap_or_default()
                } else {
                    base
                };
                out.push(Group {
                    name: service_name(&candidate),
                    members: vec![name.clone(), green.clone()],
                });
                continue;
            }
        }
        if split_colour(name).is_some_and(|(_, c)| c == "green")
            && services.keys().any(|b| {
                split_colour(b).is_some_and(|(base, c)| {
                    c == "blue" && Some(base) == split_colour(name).map(|(g, _)| g)
                }) && image_of(&services[b]) == image_of(svc)
            })
        {
            continue; // taken with its blue partner
        }
        out.push(Group {
            name: service_name(name),
            members: vec![name.clone()],
        });
    }
    // Two groups must not share a name.
    let mut seen = BTreeSet::new();
    for g in &mut out {
        let mut name = g.name.clone();
        let mut k = 2;
        while !seen.insert(name.clone()) {
            name = format!("{}-{k}", g.name);
            k += 1;
        }
        g.name = name;
    }
    out
}

fn render(g: &Group, services: &Map<String, Value>, cx: &service::Context) -> (Table, Imported) {
    let empty = Map::new();
    let mapped: Vec<service::Mapped> = g
        .members
        .iter()
        .map(|m| service::map(m, services[m].as_object().unwrap_or(&empty), cx))
        .collect();
    let first = &mapped[0];
    let mut notes: Vec<Note> = first.notes.clone();
    let mut table = Table::new();
    table["name"] = toml_edit::value(g.name.clone());
    for (k, v) in first.table.iter() {
        table[k] = v.clone();
    }
    let mut comment = String::new();
    if let [blue, green] = g.members.as_slice() {
        comment.push_str(&format!(
            "# compose services {blue} and {green}: one greenlight service; greenlight runs\n\
             # both colours itself ({0}-blue-1, {0}-green-1, ...).\n",
            g.name
        ));
        // What green says differently from blue (blue's is kept).
        let other = &mapped[1];
        for (k, v) in other.table.iter() {
            let same = first.table.get(k).map(|mine| mine.to_string()) == Some(v.to_string());
            if !same {
                notes.push(Note {
                    key: k.to_string(),
                    why: format!("{green} differs from {blue}; {blue}'s is kept"),
                });
            }
        }
        for n in &other.notes {
            let said = |mine: &Note| mine.key == n.key && mine.why == n.why;
            if !first.notes.iter().any(said) {
                notes.push(Note {
                    key: n.key.clone(),
                    why: format!("{green}: {}", n.why),
                });
            }
        }
    } else {
        comment.push_str(&format!("# compose service {}\n", g.members[0]));
    }
    for n in &notes {
        comment.push_str(&format!("# not mapped: {}: {}\n", n.key, n.why));
    }
    comment.push_str(
        "# check: greenlight gates each new replica on GET /healthz answering 200\n\
         # ([service.health] path and status): set what your app answers.\n",
    );
    table.decor_mut().set_prefix(format!("\n{comment}"));
    (
        table,
        Imported {
            name: g.name.clone(),
            from: g.members.clone(),
            notes,
        },
    )
}

/// What to change in nginx: the site lines that send traffic to the imported
/// compose services, and how greenlight reaches an nginx that runs in compose.
fn nginx_advice(
    sites: &[(&Path, site::Site)],
    imported: &[Imported],
    services: &Map<String, Value>,
    nginx: Option<&str>,
    cx: &service::Context,
) -> Vec<String> {
    let mut out = Vec::new();
    for (path, site) in sites {
        for svc in imported {
            // The names nginx may use for the compose services: theirs and their container_names.
            let mut hosts: Vec<String> = svc.from.clone();
            for m in &svc.from {
                if let Some(c) = services[m].get("container_name").and_then(values::scalar) {
                    hosts.push(c);
                }
            }
            let upstreams: Vec<&site::Upstream> = site
                .upstreams
                .iter()
                .filter(|u| !u.hosts.is_empty() && u.hosts.iter().all(|h| hosts.contains(h)))
                .collect();
            for pass in &site.proxy_passes {
                let host = site::target_host(&pass.target);
                if upstreams.iter().any(|u| u.name == host) || hosts.iter().any(|h| h == host) {
                    out.push(format!(
                        "{}:{}: proxy_pass {}; -> proxy_pass http://{}; (greenlight renders `upstream {}`)",
                        path.display(),
                        pass.line,
                        pass.target,
                        svc.name,
                        svc.name
                    ));
                }
            }
            for u in upstreams {
                out.push(format!(
                    "{}:{}-{}: upstream {}: remove it (it names {}; greenlight's include replaces it)",
                    path.display(),
                    u.first_line,
                    u.last_line,
                    u.name,
                    u.hosts.join(", ")
                ));
            }
        }
    }
    if let Some(nginx) = nginx {
        let replaced: Vec<&str> = imported
            .iter()
            .flat_map(|s| s.from.iter().map(String::as_str))
            .collect();
        if !replaced.is_empty() {
            let depends = if services[nginx].get("depends_on").is_some() {
                format!(" and {nginx}'s depends_on on them")
            } else {
                String::new()
            };
            out.push(format!(
                "remove the compose services {} (greenlight runs their containers now){depends}",
                replaced.join(", ")
            ));
        }
        let container = services[nginx]
            .get("container_name")
            .and_then(values::scalar)
            .unwrap_or_else(|| format!("{}-{nginx}-1", cx.project));
        out.push(format!(
            "nginx runs in compose as container {container:?}: in greenlight.toml set [nginx] mode = \"container\", container = \"{container}\", and mount greenlight's upstreams directory into it (a volume on the nginx service, e.g. /etc/greenlight/upstreams:/etc/nginx/greenlight) with the verify server snippet (`greenlight init --nginx-container {container}` writes both)"
        ));
    }
    if !out.is_empty() {
        out.push("then `greenlight check` says what is still missing".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_pair_by_name_and_image() {
        assert_eq!(split_colour("blue"), Some((String::new(), "blue")));
        assert_eq!(split_colour("app-green"), Some(("app".into(), "green")));
        assert_eq!(split_colour("blue_app"), Some(("app".into(), "blue")));
        assert_eq!(split_colour("bluebird"), None);
        let services: Map<String, Value> = serde_json::from_str(
            r#"{"blue": {"image": "r/acme/app:1"}, "green": {"image": "r/acme/app:2"},
                "web-blue": {"image": "x"}, "web-green": {"image": "y"},
                "nginx": {"image": "nginx"}, "worker": {"image": "r/acme/app"}}"#,
        )
        .unwrap();
        let groups = group(&services, Some("nginx"));
        let names: Vec<(&str, Vec<&str>)> = groups
            .iter()
            .map(|g| {
                (
                    g.name.as_str(),
                    g.members.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("app", vec!["blue", "green"]),
                ("web-blue", vec!["web-blue"]),
                ("web-green", vec!["web-green"]),
                ("worker", vec!["worker"]),
            ]
        );
    }

    #[test]
    fn names_follow_greenlights_grammar() {
        assert_eq!(service_name("My.App"), "my-app");
        assert_eq!(service_name("1st"), "st");
        assert_eq!(service_name("__"), "app");
        assert!(crate::config::valid_name(&service_name("Web_API.v2")));
    }

    #[test]
    fn errors_are_clear() {
        let dir = Path::new("/srv/x");
        let src = |text| Source {
            text,
            dir,
            project: None,
            sites: vec![],
        };
        assert_eq!(
            import(&src("services: {}\n"), &[]).unwrap_err(),
            ImportError::NoServices
        );
        assert!(matches!(
            import(&src("services: [\n"), &[]).unwrap_err(),
            ImportError::Yaml(_)
        ));
        let two = "services:\n  web: {image: a, expose: [80]}\n  nginx: {image: nginx}\n";
        assert_eq!(
            import(&src(two), &["db".into()]).unwrap_err(),
            ImportError::Unknown {
                name: "db".into(),
                known: "nginx, web".into()
            }
        );
        assert_eq!(
            import(&src(two), &["nginx".into()]).unwrap_err(),
            ImportError::Nginx("nginx".into())
        );
    }
}
