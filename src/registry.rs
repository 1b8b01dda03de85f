//! Image references and the registry HTTP API (resolving a tag to a digest).

use std::time::Duration;

use bollard::auth::DockerCredentials;

use crate::config::RegistryConfig;
pub use crate::domain::image::{
    is_digest, is_loopback_host, valid_host, valid_repository_path, valid_tag, Repository,
    DOCKER_HUB,
};

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

const REGISTRY_TIMEOUT: Duration = Duration::from_secs(20);

impl Repository {
    /// Base URL of the registry API.
    pub fn api_base(&self, cfg: Option<&RegistryConfig>) -> String {
        if self.host == DOCKER_HUB {
            return "https://registry-1.docker.io".into();
        }
        format!(
            "{}://{}",
            if self.insecure(cfg) { "http" } else { "https" },
            self.host
        )
    }

    /// Whether greenlight talks plain HTTP to this registry: as `[[registry]]
    /// insecure` says, else only for a loopback host (`localhost`, 127.0.0.0/8,
    /// `[::1]`), the Docker daemon's default. `localhost.corp` is not loopback.
    pub fn insecure(&self, cfg: Option<&RegistryConfig>) -> bool {
        self.host != DOCKER_HUB
            && cfg
                .and_then(|c| c.insecure)
                .unwrap_or_else(|| is_loopback_host(&self.host))
    }
}

/// `<base>/v2/<repository>/manifests/<reference>`, every segment
/// percent-encoded: nothing a name holds can change the path it asks for.
pub fn manifest_url(
    base: &str,
    path: &str,
    reference: &str,
) -> Result<reqwest::Url, url::ParseError> {
    let mut url = reqwest::Url::parse(base)?;
    url.path_segments_mut()
        .map_err(|()| url::ParseError::RelativeUrlWithCannotBeABaseBase)?
        .clear()
        .push("v2")
        .extend(path.split('/'))
        .push("manifests")
        .push(reference);
    Ok(url)
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
    let http = client(cfg).map_err(|message| RegistryError::Refused {
        host: repo.host.clone(),
        what: format!("{}:{}", repo.path, tag),
        message,
    })?;
    let url =
        manifest_url(&repo.api_base(cfg), &repo.path, tag).map_err(|e| RegistryError::Refused {
            host: repo.host.clone(),
            what: format!("{}:{}", repo.path, tag),
            message: format!("cannot build the manifest URL: {e}"),
        })?;
    let what = format!("{}:{}", repo.path, tag);
    let mut auth: Option<Auth> = None;
    for _ in 0..2 {
        let request = |method: reqwest::Method| {
            let req = http
                .request(method, url.clone())
                .header("Accept", MANIFEST_ACCEPT);
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

/// The HTTP client for a registry: the system's root certificates and the
/// bundled ones, plus `[[registry]] ca_file` when set (a registry behind a
/// private CA).
fn client(cfg: Option<&RegistryConfig>) -> Result<reqwest::Client, String> {
    let extra = match cfg.and_then(|c| c.ca_file.as_ref()) {
        Some(file) => crate::tls::read_certificates(file)?,
        None => Vec::new(),
    };
    crate::tls::builder_trusting(&extra)?
        .timeout(REGISTRY_TIMEOUT)
        .build()
        .map_err(|e| crate::display::error_chain(&e))
}

/// Whether the registry's credentials may go to token service `realm`: only
/// over HTTPS (plain HTTP only to the registry's own host when it is an
/// insecure registry), and only to the registry's host, Docker Hub's token
/// service for Docker Hub, or a realm the operator allowed
/// (`[[registry]] token_realms`).
pub fn credentials_allowed(
    repo: &Repository,
    cfg: Option<&RegistryConfig>,
    realm: &reqwest::Url,
) -> bool {
    let Some(host) = realm.host_str() else {
        return false;
    };
    let authority = match realm.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let own = authority.eq_ignore_ascii_case(&repo.host)
        || (repo.host == DOCKER_HUB && host.eq_ignore_ascii_case("auth.docker.io"));
    match realm.scheme() {
        "https" => {
            own || cfg.is_some_and(|c| {
                c.token_realms.iter().any(|allowed| {
                    reqwest::Url::parse(allowed).is_ok_and(|a| {
                        a.origin() == realm.origin() && realm.path().starts_with(a.path())
                    })
                })
            })
        }
        "http" => own && repo.insecure(cfg),
        _ => false,
    }
}

/// Answers a `WWW-Authenticate` challenge: Basic with the configured credentials, or
/// a Bearer token fetched from the challenge's realm (with the credentials only
/// where [`credentials_allowed`] says so, else anonymously).
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
    let refused = |message: String| RegistryError::Refused {
        host: repo.host.clone(),
        what: repo.path.clone(),
        message,
    };
    let realm = params
        .iter()
        .find(|(k, _)| k == "realm")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| {
            refused(format!(
                "unsupported authentication challenge {challenge:?}"
            ))
        })?;
    let realm_url = reqwest::Url::parse(&realm)
        .map_err(|e| refused(format!("token realm {realm:?} is not a URL: {e}")))?;
    let mut query: Vec<(String, String)> = params
        .into_iter()
        .filter(|(k, _)| k == "service" || k == "scope")
        .collect();
    if !query.iter().any(|(k, _)| k == "scope") {
        query.push(("scope".into(), format!("repository:{}:pull", repo.path)));
    }
    let mut req = http.get(realm_url.clone()).query(&query);
    let mut withheld = false;
    if let Some(u) = user {
        if credentials_allowed(repo, cfg, &realm_url) {
            req = req.basic_auth(u, pass);
        } else {
            withheld = true;
            tracing::warn!(
                registry = %repo.host,
                realm = %realm_url,
                "registry credentials withheld from a token realm that is not the registry's host or not HTTPS"
            );
        }
    }
    let resp = req.send().await.map_err(|e| unavailable(repo, e))?;
    let hint = if withheld {
        format!(
            " (the credentials for {} were not sent to {realm_url}: not the registry's host, or not \
             HTTPS; allow it with [[registry]] token_realms)",
            repo.host
        )
    } else {
        String::new()
    };
    if !resp.status().is_success() {
        return Err(refused(format!(
            "token endpoint answered HTTP {}{hint}",
            resp.status()
        )));
    }
    let body: serde_json::Value = resp.json().await.map_err(|e| unavailable(repo, e))?;
    let token = body
        .get("token")
        .or_else(|| body.get("access_token"))
        .and_then(|t| t.as_str())
        .ok_or_else(|| refused(format!("token endpoint returned no token{hint}")))?;
    Ok(Auth::Bearer(token.to_string()))
}

/// The parameters of a `WWW-Authenticate` challenge, keys lowercased.
pub fn parse_challenge(challenge: &str) -> Vec<(String, String)> {
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
        let key = key.trim().to_ascii_lowercase();
        let value: String = if chars.peek() == Some(&'"') {
            chars.next();
            chars.by_ref().take_while(|c| *c != '"').collect()
        } else {
            chars.by_ref().take_while(|c| *c != ',').collect()
        };
        if !key.is_empty() {
            out.push((key, value));
        }
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

    /// Found by greenlight-fuzz: `.0/a` parsed as host `.0`, which no URL can
    /// hold; the config now refuses such an image (see config.rs).
    #[test]
    fn registry_hosts_must_fit_in_a_url() {
        for ok in [
            "ghcr.io",
            "127.0.0.1:5000",
            "localhost",
            "[::1]:5000",
            "docker.io",
        ] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [".0", "", "a b", "h:x", "a/b", "x@y"] {
            assert!(!valid_host(bad), "{bad}");
        }
        assert_eq!(Repository::parse(".0/a").host, ".0");
        assert!(!valid_host(&Repository::parse(".0/a").host));
    }

    #[test]
    fn tags_follow_dockers_grammar() {
        assert!(valid_tag("v1.2.3-rc_1"));
        assert!(!valid_tag("-v1"));
        assert!(!valid_tag("a:b"));
        assert!(!valid_tag(""));
        assert!(!valid_tag("../../../../_catalog"));
        assert!(!valid_tag(&"a".repeat(129)));
    }

    #[test]
    fn repository_names_follow_the_distribution_grammar() {
        for ok in ["library/nginx", "a", "a-b/c__d/e.f", "x--y"] {
            assert!(valid_repository_path(ok), "{ok}");
        }
        for bad in [
            "", "A/b", "a//b", "../x", "a/", "-a", "a_", "a/.b", "a b", "a___b",
        ] {
            assert!(!valid_repository_path(bad), "{bad}");
        }
    }

    /// Finding 3: every segment greenlight puts in a registry URL is encoded.
    #[test]
    fn manifest_urls_encode_each_segment() {
        let url = manifest_url("http://127.0.0.1:5000", "acme/web", "v1").unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:5000/v2/acme/web/manifests/v1"
        );
        let url = manifest_url("http://r", "a/b", "../../../../_catalog").unwrap();
        assert_eq!(url.path(), "/v2/a/b/manifests/..%2F..%2F..%2F..%2F_catalog");
        let url = manifest_url("http://r", "a/b", "x?y#z").unwrap();
        assert_eq!(
            (url.path(), url.query()),
            ("/v2/a/b/manifests/x%3Fy%23z", None)
        );
    }

    /// Finding 9: "insecure" is loopback only by default, as the Docker daemon's.
    #[test]
    fn only_loopback_registries_are_insecure_by_default() {
        for host in [
            "localhost:5000",
            "localhost",
            "127.0.0.1:5000",
            "127.8.0.1",
            "[::1]:5000",
        ] {
            assert!(
                Repository::parse(&format!("{host}/x")).insecure(None),
                "{host}"
            );
        }
        for host in [
            "localhost.corp:5000",
            "127.example.com",
            "10.0.0.1:5000",
            "ghcr.io",
        ] {
            let r = Repository::parse(&format!("{host}/x"));
            assert!(!r.insecure(None), "{host}");
            assert!(r.api_base(None).starts_with("https://"), "{host}");
        }
    }

    fn registry_cfg(host: &str, realms: &[&str]) -> RegistryConfig {
        RegistryConfig {
            host: host.into(),
            username: Some("bot".into()),
            password: Some("s3cret-password".into()),
            insecure: None,
            ca_file: None,
            token_realms: realms.iter().map(|r| r.to_string()).collect(),
        }
    }

    /// Finding 8: credentials follow only an HTTPS realm on the registry's host
    /// (Docker Hub's own token service) or one the operator allowed.
    #[test]
    fn credentials_go_only_to_the_registrys_own_or_an_allowed_realm() {
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        let ghcr = Repository::parse("ghcr.io/a/b");
        let cfg = registry_cfg("ghcr.io", &["https://auth.example.com/"]);
        assert!(credentials_allowed(
            &ghcr,
            Some(&cfg),
            &url("https://ghcr.io/token")
        ));
        assert!(credentials_allowed(
            &ghcr,
            Some(&cfg),
            &url("https://auth.example.com/token")
        ));
        assert!(
            !credentials_allowed(&ghcr, Some(&cfg), &url("http://ghcr.io/token")),
            "plain HTTP"
        );
        assert!(!credentials_allowed(
            &ghcr,
            Some(&cfg),
            &url("https://evil.example/token")
        ));
        assert!(!credentials_allowed(
            &ghcr,
            Some(&cfg),
            &url("https://auth.example.com.evil/t")
        ));
        let hub = Repository::parse("nginx");
        assert!(credentials_allowed(
            &hub,
            None,
            &url("https://auth.docker.io/token")
        ));
        let local = Repository::parse("127.0.0.1:5000/x");
        assert!(credentials_allowed(
            &local,
            None,
            &url("http://127.0.0.1:5000/token")
        ));
        assert!(!credentials_allowed(
            &local,
            None,
            &url("http://127.0.0.2:5000/token")
        ));
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
