//! A [`Routing`] as an nginx include file, and back. The file is the truth about
//! what is live: its header records every backend with the replica, deployment
//! and digest behind it, so a restarted greenlight reads it back instead of
//! trusting its own database.
//!
//! Besides the service's `upstream` with every backend, the file has one
//! private upstream per backend, named with the render's generation
//! (`<service>__<generation>_<n>`): a request the verify server sends through
//! that name reaches only that backend, and only a worker running this render
//! knows the name.

use crate::domain::routing::{Backend, Role, Routing};

const HEADER: &str = "# greenlight: ";

/// The nginx text of `routing` (which must have a backend: an `upstream`
/// without servers is refused by nginx).
pub fn render(routing: &Routing) -> String {
    let mut out =
        String::from("# Rendered by greenlight; edits are overwritten on the next deploy.\n");
    out.push_str(&format!(
        "{HEADER}service={} generation={}\n",
        routing.service, routing.generation
    ));
    for b in &routing.backends {
        out.push_str(&format!(
            "{HEADER}backend id={} name={} address={} colour={} deployment={} digest={} role={} weight={} since={}\n",
            or_dash(&b.id),
            b.name,
            b.address,
            b.colour,
            b.deployment,
            b.digest,
            b.role.as_str(),
            b.weight,
            b.since
        ));
    }
    out.push_str(&format!("upstream {} {{\n", routing.service));
    for b in &routing.backends {
        let weight = if b.weight == 1 {
            String::new()
        } else {
            format!(" weight={}", b.weight)
        };
        out.push_str(&format!("    server {}{weight};\n", b.address));
    }
    out.push_str("}\n");
    for (i, b) in routing.backends.iter().enumerate() {
        out.push_str(&format!(
            "upstream {} {{ server {}; }}\n",
            routing.private_upstream(i),
            b.address
        ));
    }
    out
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// The routing a rendered file records. Reads the one-backend header of files
/// written before replicas (`service= colour= address= deployment= digest=`)
/// too, with an empty replica ID that reconcile fills in.
pub fn parse(text: &str) -> Option<Routing> {
    let mut routing: Option<Routing> = None;
    for line in text.lines().filter_map(|l| l.strip_prefix(HEADER)) {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                .map(str::to_string)
        };
        if let Some(rest) = line.strip_prefix("backend ") {
            let field = |k: &str| {
                rest.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                    .map(str::to_string)
            };
            let id = field("id")?;
            routing.as_mut()?.backends.push(Backend {
                id: if id == "-" { String::new() } else { id },
                name: field("name")?,
                address: field("address")?,
                colour: field("colour")?.parse().ok()?,
                deployment: field("deployment")?.parse().ok()?,
                digest: field("digest")?,
                role: field("role")?.parse().ok()?,
                weight: field("weight")?.parse().ok()?,
                since: field("since")?.parse().ok()?,
            });
            continue;
        }
        let service = field("service")?;
        match field("generation") {
            Some(g) => {
                routing = Some(Routing {
                    service,
                    generation: g.parse().ok()?,
                    backends: Vec::new(),
                })
            }
            None => {
                // Before replicas: one backend, one container `<service>-<colour>`.
                let colour: crate::domain::deployment::Colour = field("colour")?.parse().ok()?;
                routing = Some(Routing {
                    backends: vec![Backend {
                        id: String::new(),
                        name: format!("{service}-{colour}"),
                        address: field("address")?,
                        colour,
                        deployment: field("deployment")?.parse().ok()?,
                        digest: field("digest")?,
                        role: Role::Stable,
                        weight: 1,
                        since: 0,
                    }],
                    service,
                    generation: 0,
                })
            }
        }
    }
    routing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::deployment::Colour;

    fn backend(n: u32, weight: u32) -> Backend {
        Backend {
            id: format!("c{n}"),
            name: format!("web-green-{n}"),
            address: format!("172.18.0.{n}:8080"),
            colour: Colour::Green,
            deployment: 12,
            digest: "sha256:abc".into(),
            role: if n == 1 { Role::Stable } else { Role::New },
            weight,
            since: 1_700_000_000_000,
        }
    }

    #[test]
    fn the_rendered_file_carries_every_backend_and_a_private_upstream_each() {
        let r = Routing {
            service: "web".into(),
            generation: 7,
            backends: vec![backend(1, 1), backend(2, 3)],
        };
        let text = render(&r);
        assert!(
            text.contains(
                "upstream web {\n    server 172.18.0.1:8080;\n    server 172.18.0.2:8080 weight=3;\n}\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("upstream web__7_1 { server 172.18.0.1:8080; }\n"),
            "{text}"
        );
        assert!(
            text.contains("upstream web__7_2 { server 172.18.0.2:8080; }\n"),
            "{text}"
        );
        assert_eq!(parse(&text), Some(r));
        assert_eq!(parse("upstream web { server 1.2.3.4:80; }"), None);
    }

    #[test]
    fn a_file_from_before_replicas_reads_as_one_backend() {
        let text = "# Rendered by greenlight; edits are overwritten on the next deploy.\n\
             # greenlight: service=web colour=green address=172.18.0.3:8080 deployment=12 digest=sha256:abc\n\
             upstream web {\n    server 172.18.0.3:8080;\n}\n";
        let r = parse(text).unwrap();
        assert_eq!(r.generation, 0);
        assert_eq!(r.backends.len(), 1);
        let b = &r.backends[0];
        assert_eq!(b.name, "web-green");
        assert_eq!(b.id, "");
        assert_eq!(b.address, "172.18.0.3:8080");
        assert_eq!(b.deployment, 12);
    }
}
