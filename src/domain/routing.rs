//! Routing as data: which replicas nginx sends a service's traffic to. The
//! proxy renders it (an nginx include file), the store mirrors it, and undoing
//! a change restores a captured `Routing`, never opaque text.

use serde::{Deserialize, Serialize};

use super::deployment::Colour;

/// Where a service's traffic goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routing {
    pub service: String,
    /// Bumped by every render. Each backend also gets a private upstream named
    /// with it, so a request through that name proves a worker runs this render.
    pub generation: u64,
    pub backends: Vec<Backend>,
    /// A canary split: the `New` backends get this share of users, the
    /// `Stable` ones the rest. `None`: every backend in one group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
}

/// How nginx divides a service's users between its stable and canary groups:
/// sticky per user (nginx's userid cookie), salted per deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// The canary's share of users, 1 to 99.
    pub percent: u32,
    /// Mixed into each user's hash: a new salt, a new cohort.
    pub salt: String,
    /// A cookie whose value `always` or `never` forces the canary or stable.
    pub override_cookie: String,
    /// A cookie (or header) that, when set, sends a request to the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_cookie: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_header: Option<String>,
    /// Where the access log stood (inode, offset) when this step's split
    /// began: a run that resumes the step reads the log from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<(u64, u64)>,
}

/// One replica nginx routes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    /// The runtime's ID of the replica (a container ID); empty when read from
    /// a file written before replicas had one, until reconcile finds it.
    pub id: String,
    /// Its name for people and the runtime: `web-blue-1`.
    pub name: String,
    /// `ip:port` nginx connects to.
    pub address: String,
    pub colour: Colour,
    pub deployment: i64,
    pub digest: String,
    pub role: Role,
    /// nginx's `weight=` (1 unless a strategy splits traffic by weight).
    pub weight: u32,
    /// When nginx first routed to it (Unix ms).
    pub since: i64,
}

/// What a backend is to the deployment that rendered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Serving before this deployment.
    Stable,
    /// Started by this deployment.
    New,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Stable => "stable",
            Role::New => "new",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stable" => Ok(Role::Stable),
            "new" => Ok(Role::New),
            _ => Err(format!("unknown role {s:?}")),
        }
    }
}

impl Routing {
    pub fn empty(service: &str) -> Routing {
        Routing {
            service: service.to_string(),
            generation: 0,
            backends: Vec::new(),
            split: None,
        }
    }

    /// The next render: these backends, one generation on, without a split.
    pub fn next(&self, backends: Vec<Backend>) -> Routing {
        Routing {
            service: self.service.clone(),
            generation: self.generation + 1,
            backends,
            split: None,
        }
    }

    /// The name of the upstream group of the canary's backends.
    pub fn canary_upstream(&self) -> String {
        format!("{}__canary", self.service)
    }

    /// The nginx variable a site proxies to: `$greenlight_<service>_upstream`
    /// (a `-` in the name becomes `_`, the only change nginx needs).
    pub fn upstream_variable(service: &str) -> String {
        format!("greenlight_{}_upstream", service.replace('-', "_"))
    }

    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }

    /// The digests routed to, each once, in the order of their first backend.
    pub fn digests(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for b in &self.backends {
            if !out.contains(&b.digest.as_str()) {
                out.push(&b.digest);
            }
        }
        out
    }

    /// The colour all backends share, if they share one.
    pub fn colour(&self) -> Option<Colour> {
        let first = self.backends.first()?.colour;
        self.backends
            .iter()
            .all(|b| b.colour == first)
            .then_some(first)
    }

    /// The name of the private upstream through which the verify server
    /// reaches only `backend` of this render.
    pub fn private_upstream(&self, index: usize) -> String {
        format!("{}__{}_{}", self.service, self.generation, index + 1)
    }
}

impl Backend {
    /// Tests: replica `name` of `digest` at 10.0.0.`n`:80.
    #[cfg(test)]
    pub fn example(name: &str, n: u32, colour: Colour, digest: &str) -> Backend {
        Backend {
            id: format!("id-{name}"),
            name: name.into(),
            address: format!("10.0.0.{n}:80"),
            colour,
            deployment: 1,
            digest: digest.into(),
            role: Role::Stable,
            weight: 1,
            since: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str, colour: Colour, digest: &str) -> Backend {
        Backend::example(name, name.len() as u32, colour, digest)
    }

    #[test]
    fn a_routing_knows_its_versions_and_shared_colour() {
        let r = Routing::empty("web").next(vec![
            backend("web-blue-1", Colour::Blue, "sha256:a"),
            backend("web-green-1", Colour::Green, "sha256:b"),
            backend("web-blue-2", Colour::Blue, "sha256:a"),
        ]);
        assert_eq!(r.generation, 1);
        assert_eq!(r.digests(), ["sha256:a", "sha256:b"]);
        assert_eq!(r.colour(), None);
        assert_eq!(r.private_upstream(1), "web__1_2");
        let blue = r.next(vec![backend("web-blue-1", Colour::Blue, "sha256:a")]);
        assert_eq!(blue.colour(), Some(Colour::Blue));
        assert_eq!(blue.generation, 2);
        assert_eq!(Routing::empty("web").colour(), None);
    }
}
