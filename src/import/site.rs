//! What in an nginx site sends traffic to compose services (pure): the
//! `upstream` blocks whose servers name them and the `proxy_pass` lines that
//! use those upstreams or name the services directly. `import-compose` tells
//! the operator which lines change for greenlight.

/// An `upstream` block: its name, first and last line, and its servers' hosts.
#[derive(Debug, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    pub first_line: usize,
    pub last_line: usize,
    pub hosts: Vec<String>,
    /// The servers as written (`blue:3000`).
    pub servers: Vec<String>,
}

/// A `proxy_pass` directive: its line and its target as written.
#[derive(Debug, PartialEq, Eq)]
pub struct ProxyPass {
    pub line: usize,
    pub target: String,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Site {
    pub upstreams: Vec<Upstream>,
    pub proxy_passes: Vec<ProxyPass>,
}

/// The directives of `text`, with comments dropped: (line, words) per
/// directive, and `{`/`}` as words of their own.
fn directives(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut start = 0;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default();
        for word in line
            .replace('{', " { ")
            .replace('}', " } ")
            .replace(';', " ; ")
            .split_whitespace()
        {
            if words.is_empty() {
                start = n + 1;
            }
            match word {
                ";" => out.push((start, std::mem::take(&mut words))),
                "{" | "}" => {
                    words.push(word.to_string());
                    out.push((start, std::mem::take(&mut words)));
                }
                w => words.push(w.trim_matches(['"', '\'']).to_string()),
            }
        }
    }
    out
}

pub fn read(text: &str) -> Site {
    let mut site = Site::default();
    let mut open: Option<Upstream> = None;
    let mut depth = 0usize;
    for (line, words) in directives(text) {
        match words.as_slice() {
            [kw, name, brace] if kw == "upstream" && brace == "{" && open.is_none() => {
                open = Some(Upstream {
                    name: name.clone(),
                    first_line: line,
                    last_line: line,
                    hosts: Vec::new(),
                    servers: Vec::new(),
                });
                depth = 1;
                continue;
            }
            [kw, target] if kw == "proxy_pass" => site.proxy_passes.push(ProxyPass {
                line,
                target: target.clone(),
            }),
            _ => {}
        }
        if let Some(up) = open.as_mut() {
            match words.last().map(String::as_str) {
                Some("{") => depth += 1,
                Some("}") => depth -= 1,
                _ => {}
            }
            if let [kw, server, ..] = words.as_slice() {
                if kw == "server" {
                    let host = server.rsplit_once(':').map_or(server.as_str(), |(h, _)| h);
                    up.hosts.push(host.to_string());
                    up.servers.push(server.clone());
                }
            }
            if depth == 0 {
                up.last_line = line;
                site.upstreams.extend(open.take());
            }
        }
    }
    site
}

/// The port a `proxy_pass` target or a `server` names, if any.
pub fn target_port(target: &str) -> Option<u16> {
    let rest = target.split_once("://").map_or(target, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or_default();
    host_port.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

impl Site {
    /// Every host the site sends traffic to: upstream servers and proxy_pass targets.
    pub fn hosts(&self) -> Vec<&str> {
        let servers = self
            .upstreams
            .iter()
            .flat_map(|u| u.hosts.iter().map(String::as_str));
        let passes = self.proxy_passes.iter().map(|p| target_host(&p.target));
        servers.chain(passes).collect()
    }

    /// The ports this site names for each host (`server api:8080`,
    /// `proxy_pass http://api:8080`).
    pub fn ports(&self) -> Vec<(String, u16)> {
        let servers = self.upstreams.iter().flat_map(|u| &u.servers);
        let passes = self.proxy_passes.iter().map(|p| &p.target);
        servers
            .chain(passes)
            .filter_map(|t| Some((target_host(t).to_string(), target_port(t)?)))
            .collect()
    }
}

/// The host a `proxy_pass` target names (`http://blue_backend/x` -> `blue_backend`).
pub fn target_host(target: &str) -> &str {
    let rest = target.split_once("://").map_or(target, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or_default();
    host_port
        .rsplit_once(':')
        .map_or(host_port, |(h, _)| h)
        .trim_end_matches(';')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_upstreams_and_proxy_passes_with_their_lines() {
        let text = "upstream blue_backend {\n    server blue:3000;\n}\n\nupstream green_backend { server green:3000 max_fails=0; }\n# proxy_pass http://old;\nserver {\n  location / {\n    proxy_pass http://blue_backend;\n  }\n  location /api { proxy_pass http://green:3000/api; }\n}\n";
        let site = read(text);
        assert_eq!(
            site.upstreams,
            vec![
                Upstream {
                    name: "blue_backend".into(),
                    first_line: 1,
                    last_line: 3,
                    hosts: vec!["blue".into()],
                    servers: vec!["blue:3000".into()]
                },
                Upstream {
                    name: "green_backend".into(),
                    first_line: 5,
                    last_line: 5,
                    hosts: vec!["green".into()],
                    servers: vec!["green:3000".into()]
                }
            ]
        );
        assert_eq!(
            site.proxy_passes,
            vec![
                ProxyPass {
                    line: 9,
                    target: "http://blue_backend".into()
                },
                ProxyPass {
                    line: 11,
                    target: "http://green:3000/api".into()
                }
            ]
        );
        assert_eq!(target_host("http://green:3000/api"), "green");
        assert_eq!(
            site.ports(),
            vec![
                ("blue".to_string(), 3000),
                ("green".to_string(), 3000),
                ("green".to_string(), 3000)
            ]
        );
        assert_eq!(target_host("http://blue_backend"), "blue_backend");
    }
}
