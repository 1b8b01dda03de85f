//! Image references: a repository's registry host and path, normalised the
//! way Docker does, and the grammars of hosts, repository paths, tags and
//! digests that every name from a webhook, the API or the config is held to.

pub const DOCKER_HUB: &str = "docker.io";

/// A repository split into registry host and path, normalised the way Docker does
/// (`nginx` is `docker.io/library/nginx`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    pub host: String,
    pub path: String,
}

impl Repository {
    pub fn parse(image: &str) -> Repository {
        let (first, rest) = image.split_once('/').unwrap_or(("", image));
        let is_host = !first.is_empty()
            && (first.contains('.') || first.contains(':') || first == "localhost");
        if is_host {
            let host = if first == "index.docker.io" || first == "registry-1.docker.io" {
                DOCKER_HUB.to_string()
            } else {
                first.to_ascii_lowercase()
            };
            let path = if host == DOCKER_HUB && !rest.contains('/') {
                format!("library/{rest}")
            } else {
                rest.to_string()
            };
            Repository { host, path }
        } else if image.contains('/') {
            Repository {
                host: DOCKER_HUB.into(),
                path: image.to_string(),
            }
        } else {
            Repository {
                host: DOCKER_HUB.into(),
                path: format!("library/{image}"),
            }
        }
    }
}

/// Whether `host[:port]` can be a registry's address in a URL (a DNS name, an
/// IPv4 or a bracketed IPv6 address, an optional port). `.0` or `a b` cannot.
pub fn valid_host(host_port: &str) -> bool {
    !host_port.is_empty()
        && !host_port.contains(['/', '?', '#', '@', '\\'])
        && url::Url::parse(&format!("https://{host_port}/"))
            .is_ok_and(|u| u.host_str().is_some_and(|h| !h.is_empty()) && u.path() == "/")
}

/// Whether `host[:port]` names this machine: `localhost` or a loopback IP.
pub fn is_loopback_host(host_port: &str) -> bool {
    let host = match host_port.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => match host_port.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host_port,
        },
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Docker's tag grammar: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`. Every tag from a
/// webhook, the admin API or the CLI is checked against it.
pub fn valid_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    matches!(bytes.next(), Some(c) if c.is_ascii_alphanumeric() || c == b'_')
        && tag.len() <= 128
        && bytes.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

/// The Distribution spec's repository name: `/`-separated components of
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` (lowercase; greenlight lowercases names
/// from webhooks before matching), at most 255 characters.
pub fn valid_repository_path(path: &str) -> bool {
    fn component(c: &str) -> bool {
        let b = c.as_bytes();
        let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
        if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return false;
        }
        let mut i = 0;
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            // A separator: ".", "_", "__" or a run of "-", between alphanumerics.
            let start = i;
            while i < b.len() && !alnum(b[i]) {
                i += 1;
            }
            let sep = &c[start..i];
            if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
                return false;
            }
        }
        true
    }
    !path.is_empty() && path.len() <= 255 && path.split('/').all(component)
}

pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}
