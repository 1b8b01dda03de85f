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
//!
//! Every file also defines `$greenlight_<service>_upstream`, the name of the
//! group a site's `proxy_pass http://$greenlight_<service>_upstream;` sends a
//! request to. Without a split it is always `<service>`. With a canary split
//! the `New` backends form their own group `<service>__canary`, and the
//! variable picks a group per request: a cookie `<override>=always|never`
//! first, then the allowlist cookie or header (any value: canary), then
//! `split_clients` over the user's id from nginx's userid module
//! (`${uid_got}${uid_set}` plus the deployment's salt: the same user lands
//! in the same group on every request, and growing the canary's share only
//! moves users from stable to canary). A request without a user id (userid
//! off where the site proxies) goes to stable: an empty key is never hashed,
//! which would put every such request in one bucket.

use crate::domain::routing::{Backend, Role, Routing, Split};

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
    if let Some(split) = &routing.split {
        out.push_str(&format!(
            "{HEADER}split percent={} salt={} override={} allow_cookie={} allow_header={} log={}\n",
            split.percent,
            split.salt,
            split.override_cookie,
            split.allow_cookie.as_deref().unwrap_or("-"),
            split.allow_header.as_deref().unwrap_or("-"),
            split.log.map_or("-".to_string(), |(inode, offset)| format!(
                "{inode}:{offset}"
            )),
        ));
    }
    let service = &routing.service;
    let var = Routing::upstream_variable(service);
    match &routing.split {
        None => {
            group(&mut out, service, routing.backends.iter());
            out.push_str(&format!("map $host ${var} {{ default {service}; }}\n"));
        }
        Some(split) => {
            let canary = routing.canary_upstream();
            group(
                &mut out,
                service,
                routing.backends.iter().filter(|b| b.role == Role::Stable),
            );
            group(
                &mut out,
                &canary,
                routing.backends.iter().filter(|b| b.role == Role::New),
            );
            out.push_str(&split_text(service, &canary, &var, split));
        }
    }
    for (i, b) in routing.backends.iter().enumerate() {
        out.push_str(&format!(
            "upstream {} {{ server {}; }}\n",
            routing.private_upstream(i),
            b.address
        ));
    }
    out
}

/// An `upstream` block of `backends` named `name`.
fn group<'b>(out: &mut String, name: &str, backends: impl Iterator<Item = &'b Backend>) {
    out.push_str(&format!("upstream {name} {{\n"));
    for b in backends {
        let weight = if b.weight == 1 {
            String::new()
        } else {
            format!(" weight={}", b.weight)
        };
        out.push_str(&format!("    server {}{weight};\n", b.address));
    }
    out.push_str("}\n");
}

/// The variables that pick the stable or the canary group per request.
fn split_text(service: &str, canary: &str, var: &str, split: &Split) -> String {
    let base = var.trim_end_matches("_upstream");
    let mut out = format!(
        "split_clients \"${{uid_got}}${{uid_set}}{salt}\" ${base}_split {{\n    {percent}% {canary};\n    * {service};\n}}\n\
         map \"${{uid_got}}${{uid_set}}\" ${base}_keyed {{\n    \"\" {service};\n    default ${base}_split;\n}}\n",
        salt = split.salt,
        percent = split.percent,
    );
    let mut chosen = format!("{base}_keyed");
    if let Some(cookie) = &split.allow_cookie {
        out.push_str(&format!(
            "map $cookie_{cookie} ${base}_cookie {{\n    \"\" ${chosen};\n    default {canary};\n}}\n"
        ));
        chosen = format!("{base}_cookie");
    }
    if let Some(header) = &split.allow_header {
        let header = header.to_ascii_lowercase().replace('-', "_");
        out.push_str(&format!(
            "map $http_{header} ${base}_header {{\n    \"\" ${chosen};\n    default {canary};\n}}\n"
        ));
        chosen = format!("{base}_header");
    }
    out.push_str(&format!(
        "map $cookie_{cookie} ${var} {{\n    always {canary};\n    never {service};\n    default ${chosen};\n}}\n",
        cookie = split.override_cookie
    ));
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
        if let Some(rest) = line.strip_prefix("split ") {
            let field = |k: &str| {
                rest.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                    .map(str::to_string)
            };
            let optional = |v: String| (v != "-").then_some(v);
            routing.as_mut()?.split = Some(Split {
                percent: field("percent")?.parse().ok()?,
                salt: field("salt")?,
                override_cookie: field("override")?,
                allow_cookie: optional(field("allow_cookie")?),
                allow_header: optional(field("allow_header")?),
                log: field("log").and_then(|l| {
                    let (inode, offset) = l.split_once(':')?;
                    Some((inode.parse().ok()?, offset.parse().ok()?))
                }),
            });
            continue;
        }
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
                    split: None,
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
                    split: None,
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
            split: None,
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
        assert!(text.contains("map $host $greenlight_web_upstream { default web; }\n"));
        assert_eq!(parse(&text), Some(r));
        assert_eq!(parse("upstream web { server 1.2.3.4:80; }"), None);
    }

    #[test]
    fn a_split_renders_two_groups_and_a_sticky_salted_choice_never_on_an_empty_key() {
        let mut r = Routing {
            service: "my-app".into(),
            generation: 3,
            backends: vec![backend(1, 1), backend(2, 1)],
            split: Some(Split {
                percent: 25,
                salt: "d12x".into(),
                override_cookie: "greenlight_canary".into(),
                allow_cookie: Some("staff".into()),
                allow_header: Some("X-Beta".into()),
                log: Some((1234, 56789)),
            }),
        };
        r.service = "my-app".into();
        let text = render(&r);
        for part in [
            "upstream my-app {\n    server 172.18.0.1:8080;\n}\n",
            "upstream my-app__canary {\n    server 172.18.0.2:8080;\n}\n",
            "split_clients \"${uid_got}${uid_set}d12x\" $greenlight_my_app_split {\n    25% my-app__canary;\n    * my-app;\n}\n",
            // No user id: stable, never the hash of the salt alone.
            "map \"${uid_got}${uid_set}\" $greenlight_my_app_keyed {\n    \"\" my-app;\n    default $greenlight_my_app_split;\n}\n",
            "map $cookie_staff $greenlight_my_app_cookie {\n    \"\" $greenlight_my_app_keyed;\n    default my-app__canary;\n}\n",
            "map $http_x_beta $greenlight_my_app_header {\n    \"\" $greenlight_my_app_cookie;\n    default my-app__canary;\n}\n",
            "map $cookie_greenlight_canary $greenlight_my_app_upstream {\n    always my-app__canary;\n    never my-app;\n    default $greenlight_my_app_header;\n}\n",
            "upstream my-app__3_2 { server 172.18.0.2:8080; }\n",
        ] {
            assert!(text.contains(part), "{part}\nnot in\n{text}");
        }
        assert_eq!(parse(&text), Some(r.clone()));
        // Without the allowlist the override falls through to the split.
        assert!(text.contains(" log=1234:56789\n"), "{text}");
        let split = r.split.as_mut().unwrap();
        split.allow_cookie = None;
        split.allow_header = None;
        split.log = None;
        let text = render(&r);
        assert!(
            text.contains("    default $greenlight_my_app_keyed;\n}\n"),
            "{text}"
        );
        assert_eq!(parse(&text), Some(r));
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
