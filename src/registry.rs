//! Image references and the registry HTTP API (resolving a tag to a digest).

use std::time::Duration;

use bollard::auth::DockerCredentials;

use crate::config::RegistryConfig;

pub const DOCKER_HUB: &str = "docker.io";

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

const REGISTRY_TIMEOUT: Duration = Duration::from_secs(20);

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

    /// Base URL of the registry API.
    pub fn api_base(&self, cfg: Option<&RegistryConfig>) -> String {
        if self.host == DOCKER_HUB {
            return "https://registry-1.docker.io".into();
        }
        let loopback = self.host.starts_with("localhost")
            || self.host.starts_with("127.")
            || self.host.starts_with("[::1]");
        let insecure = cfg.and_then(|c| c.insecure).unwrap_or(loopback);
        format!(
            "{}://{}",
            if insecure { "http" } else { "https" },
            self.host
        )
    }
}

pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub fn credentials(cfg: Option<&RegistryConfig>) -> Option<DockerCredentials> {
    let cfg = cfg?;
    cfg.username.as_ref()?;
    Some(DockerCredentials {
        username: cfg.username.clone(),
        password: cfg.password.clone(),
        serveraddress: Some(cfg.host.clone()),
        ..Default::default()
    })
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Worth retrying: the registry could not be reached or answered 5xx.
    #[error("registry {host} unreachable: {message}")]
    Unavailable { host: String, message: String },
    /// The registry said no; retrying will not help.
    #[error("registry {host} refused {what}: {message}")]
    Refused {
        host: String,
        what: String,
        message: String,
    },
}

/// Asks the registry which digest `tag` points at (HEAD on the manifest, with the
/// bearer-token dance when the registry asks for it).
pub async fn resolve_tag(
    repo: &Repository,
    tag: &str,
    cfg: Option<&RegistryConfig>,
) -> Result<String, RegistryError> {
    let http = reqwest::Client::builder()
        .timeout(REGISTRY_TIMEOUT)
        .build()
        .map_err(|e| unavailable(repo, e))?;
    let url = format!("{}/v2/{}/manifests/{}", repo.api_base(cfg), repo.path, tag);
    let what = format!("{}:{}", repo.path, tag);
    let mut auth: Option<Auth> = None;
    for _ in 0..2 {
        let request = |method: reqwest::Method| {
            let req = http.request(method, &url).header("Accept", MANIFEST_ACCEPT);
            match &auth {
                Some(Auth::Basic(user, pass)) => req.basic_auth(user, pass.as_ref()),
                Some(Auth::Bearer(token)) => req.bearer_auth(token),
                None => req,
            }
        };
        let resp = request(reqwest::Method::HEAD)
            .send()
            .await
            .map_err(|e| unavailable(repo, e))?;
        let status = resp.status();
        if status.is_success() {
            return resp
                .headers()
                .get("Docker-Content-Digest")
                .and_then(|v| v.to_str().ok())
                .filter(|d| is_digest(d))
                .map(str::to_string)
                .ok_or_else(|| RegistryError::Refused {
                    host: repo.host.clone(),
                    what: what.clone(),
                    message: "answer carried no Docker-Content-Digest".into(),
                });
        }
        if status == reqwest::StatusCode::UNAUTHORIZED && auth.is_none() {
            let challenge = resp
                .headers()
                .get("WWW-Authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            auth = Some(authorize(&http, repo, cfg, &challenge).await?);
            continue;
        }
        if status.is_server_error() {
            return Err(RegistryError::Unavailable {
                host: repo.host.clone(),
                message: format!("HTTP {status}"),
            });
        }
        let message = match status.as_u16() {
            404 => format!("manifest unknown: no tag {tag:?} in {}", repo.path),
            401 | 403 => {
                // A HEAD answer has no body: ask again with GET for the registry's words.
                let words = match request(reqwest::Method::GET).send().await {
                    Ok(resp) => resp.json().await.ok().and_then(|b| error_words(&b)),
                    Err(_) => None,
                };
                let answer = match words {
                    Some(words) => format!("{words} (HTTP {status})"),
                    None => format!("HTTP {status}"),
                };
                format!(
                    "{answer}: check the [[registry]] credentials for {}",
                    repo.host
                )
            }
            _ => format!("HTTP {status}"),
        };
        return Err(RegistryError::Refused {
            host: repo.host.clone(),
            what,
            message,
        });
    }
    Err(RegistryError::Refused {
        host: repo.host.clone(),
        what,
        message: "authentication failed".into(),
    })
}

/// The registry's own words from an error body (`{"errors": [{"code":
/// "UNAUTHORIZED", "message": "authentication required"}]}`), the way Docker
/// prints them: `unauthorized: authentication required`.
fn error_words(body: &serde_json::Value) -> Option<String> {
    let words: Vec<String> = body["errors"]
        .as_array()?
        .iter()
        .filter_map(|e| {
            let code = e["code"].as_str()?.to_ascii_lowercase();
            Some(match e["message"].as_str() {
                Some(m) if !m.is_empty() => format!("{code}: {m}"),
                _ => code,
            })
        })
        .collect();
    (!words.is_empty()).then(|| words.join("; "))
}

fn unavailable(repo: &Repository, e: reqwest::Error) -> RegistryError {
    RegistryError::Unavailable {
        host: repo.host.clone(),
        message: crate::display::error_chain(&e),
    }
}

enum Auth {
    Basic(String, Option<String>),
    Bearer(String),
}

/// Answers a `WWW-Authenticate` challenge: Basic with the configured credentials, or
/// a Bearer token fetched from the challenge's realm.
async fn authorize(
    http: &reqwest::Client,
    repo: &Repository,
    cfg: Option<&RegistryConfig>,
    challenge: &str,
) -> Result<Auth, RegistryError> {
    let user = cfg.and_then(|c| c.username.clone());
    let pass = cfg.and_then(|c| c.password.clone());
    let lower = challenge.to_ascii_lowercase();
    if lower.starts_with("basic") {
        return Ok(Auth::Basic(user.unwrap_or_default(), pass));
    }
    let params = parse_challenge(challenge);
    let realm = params
        .iter()
        .find(|(k, _)| k == "realm")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| RegistryError::Refused {
            host: repo.host.clone(),
            what: repo.path.clone(),
            message: format!("unsupported authentication challenge {challenge:?}"),
        })?;
    let mut query: Vec<(String, String)> = params
        .into_iter()
        .filter(|(k, _)| k == "service" || k == "scope")
        .collect();
    if !query.iter().any(|(k, _)| k == "scope") {
        query.push(("scope".into(), format!("repository:{}:pull", repo.path)));
    }
    let mut req = http.get(&realm).query(&query);
    if let Some(u) = user {
        req = req.basic_auth(u, pass);
    }
    let resp = req.send().await.map_err(|e| unavailable(repo, e))?;
    if !resp.status().is_success() {
        return Err(RegistryError::Refused {
            host: repo.host.clone(),
            what: repo.path.clone(),
            message: format!("token endpoint answered HTTP {}", resp.status()),
        });
    }
    let body: serde_json::Value = resp.json().await.map_err(|e| unavailable(repo, e))?;
    let token = body
        .get("token")
        .or_else(|| body.get("access_token"))
        .and_then(|t| t.as_str())
        .ok_or_else(|| RegistryError::Refused {
            host: repo.host.clone(),
            what: repo.path.clone(),
            message: "token endpoint returned no token".into(),
        })?;
    Ok(Auth::Bearer(token.to_string()))
}

fn parse_challenge(challenge: &str) -> Vec<(String, String)> {
    let rest = challenge
        .split_once(' ')
        .map(|(_, r)| r)
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let value: String = if chars.peek() == Some(&'"') {
            chars.next();
            chars.by_ref().take_while(|c| *c != '"').collect()
        } else {
            chars.by_ref().take_while(|c| *c != ',').collect()
        };
        out.push((key.trim().to_ascii_lowercase(), value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalised_like_docker_does() {
        let r = Repository::parse("nginx");
        assert_eq!(
            (r.host.as_str(), r.path.as_str()),
            ("docker.io", "library/nginx")
        );
        let r = Repository::parse("acme/web");
        assert_eq!(
            (r.host.as_str(), r.path.as_str()),
            ("docker.io", "acme/web")
        );
        let r = Repository::parse("docker.io/nginx");
        assert_eq!(r.path, "library/nginx");
        let r = Repository::parse("GHCR.io/Acme/web");
        assert_eq!((r.host.as_str(), r.path.as_str()), ("ghcr.io", "Acme/web"));
        let r = Repository::parse("127.0.0.1:5000/demo");
        assert_eq!(
            (r.host.as_str(), r.path.as_str()),
            ("127.0.0.1:5000", "demo")
        );
        assert_eq!(r.api_base(None), "http://127.0.0.1:5000");
        assert_eq!(
            Repository::parse("ghcr.io/a/b").api_base(None),
            "https://ghcr.io"
        );
        assert_eq!(Repository::parse("localhost/x").host, "localhost");
    }

    #[test]
    fn digests_are_recognised_strictly() {
        assert!(is_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(!is_digest("sha256:abc"));
        assert!(!is_digest(&format!("sha512:{}", "a".repeat(64))));
        assert!(!is_digest(&format!("sha256:{}", "g".repeat(64))));
    }

    #[test]
    fn the_registrys_error_words_are_read_like_docker_prints_them() {
        let body = serde_json::json!({"errors": [
            {"code": "UNAUTHORIZED", "message": "authentication required", "detail": null},
            {"code": "DENIED"}
        ]});
        assert_eq!(
            error_words(&body).as_deref(),
            Some("unauthorized: authentication required; denied")
        );
        assert_eq!(error_words(&serde_json::json!({"errors": []})), None);
        assert_eq!(error_words(&serde_json::json!("nope")), None);
    }

    #[test]
    fn bearer_challenges_are_parsed() {
        let p = parse_challenge(
            r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:a/b:pull""#,
        );
        assert_eq!(
            p,
            vec![
                ("realm".into(), "https://ghcr.io/token".into()),
                ("service".into(), "ghcr.io".into()),
                ("scope".into(), "repository:a/b:pull".into())
            ]
        );
    }
}
