//! The admin API client the non-serve commands use: bearer token, JSON in and
//! out, and errors that say whose fault they were.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use super::Cli;
use crate::config::Config;

/// Longest one API call may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Nothing answered: the server is down, restarting, or elsewhere.
    #[error(
        "cannot reach greenlight at {base}: {reason} (is `greenlight serve` running? set --url)"
    )]
    Unreachable { base: String, reason: String },
    /// The server answered with an error status; `message` is its `error` text as-is.
    #[error("{message}{hint} (HTTP {status})")]
    Refused {
        status: u16,
        message: String,
        hint: String,
        /// The server's JSON answer, printed unchanged under `--json`.
        body: Value,
    },
}

/// An admin API path built from segments and query pairs, each
/// percent-encoded where the URL is made: an argument (a service name, a
/// delivery id chosen by a webhook sender) can never change which endpoint is
/// called (`redeliver '../services/core/rollback?from='` stays a delivery id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPath {
    segments: Vec<String>,
    query: Vec<(String, String)>,
}

impl ApiPath {
    /// `/api/<segments...>`.
    pub fn api(segments: &[&str]) -> ApiPath {
        ApiPath {
            segments: std::iter::once("api")
                .chain(segments.iter().copied())
                .map(str::to_string)
                .collect(),
            query: Vec::new(),
        }
    }

    pub fn query(mut self, key: &str, value: impl ToString) -> ApiPath {
        self.query.push((key.to_string(), value.to_string()));
        self
    }

    /// The URL of this path on `base` (`http://host:port`, maybe with a path prefix).
    pub fn url(&self, base: &str) -> Result<reqwest::Url, String> {
        let mut url = reqwest::Url::parse(base).map_err(|e| format!("--url {base:?}: {e}"))?;
        url.path_segments_mut()
            .map_err(|()| format!("--url {base:?} cannot take a path"))?
            .pop_if_empty()
            .extend(&self.segments);
        if !self.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&self.query);
        }
        Ok(url)
    }

    /// `/api/...` for messages.
    fn display(&self) -> String {
        format!("/{}", self.segments.join("/"))
    }
}

pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(cli: &Cli) -> Result<Client, String> {
        // The config is only a source of defaults for a client.
        let path = cli.config_path();
        let config = path.as_ref().ok().and_then(|p| Config::load(p).ok());
        let base = cli
            .url
            .clone()
            .or_else(|| {
                config
                    .as_ref()
                    .map(|c| format!("http://{}", c.server.listen))
            })
            .unwrap_or_else(|| "http://127.0.0.1:8787".into());
        let token = cli
            .token
            .clone()
            .or_else(|| config.as_ref().map(|c| c.server.admin_token.clone()))
            .ok_or_else(|| {
                let why = match &path {
                    Ok(p) => format!("{} could not be loaded", p.display()),
                    Err(e) => e.to_string(),
                };
                format!("no admin token: pass --token or GREENLIGHT_TOKEN (or a readable --config; {why})")
            })?;
        let http = crate::tls::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    pub async fn get(&self, path: &ApiPath) -> Result<Value, ApiError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &ApiPath, body: Option<Value>) -> Result<Value, ApiError> {
        self.call(Method::POST, path, body).await
    }

    async fn call(
        &self,
        method: Method,
        path: &ApiPath,
        body: Option<Value>,
    ) -> Result<Value, ApiError> {
        let url = path
            .url(&self.base)
            .map_err(|reason| ApiError::Unreachable {
                base: self.base.clone(),
                reason,
            })?;
        let mut req = self
            .http
            .request(method.clone(), url)
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| ApiError::Unreachable {
            base: self.base.clone(),
            reason: reason(&e),
        })?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let message = body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no details")
            .to_string();
        // The server's catch-all answer: this server predates the request.
        let hint = if status == reqwest::StatusCode::NOT_FOUND && message == "no such route" {
            format!(
                ": {} does not offer {method} {}; is it older than this client?",
                self.base,
                path.display()
            )
        } else {
            String::new()
        };
        Err(ApiError::Refused {
            status: status.as_u16(),
            message,
            hint,
            body,
        })
    }
}

/// reqwest's causes ("tcp connect error: Connection refused"), without the
/// request URL it would repeat.
fn reason(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    if e.is_timeout() {
        parts.push(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()));
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    if parts.is_empty() {
        parts.push(e.to_string());
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding 4: arguments are segments, never path or query syntax.
    #[test]
    fn arguments_cannot_change_the_endpoint() {
        let url = ApiPath::api(&["deliveries", "../services/core/rollback?from=", "redeliver"])
            .url("http://127.0.0.1:8787")
            .unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8787/api/deliveries/..%2Fservices%2Fcore%2Frollback%3Ffrom=/redeliver"
        );
        let url = ApiPath::api(&["deployments"])
            .query("service", "web&limit=1#x")
            .query("limit", 20)
            .url("http://gl.example/prefix/")
            .unwrap();
        assert_eq!(
            url.as_str(),
            "http://gl.example/prefix/api/deployments?service=web%26limit%3D1%23x&limit=20"
        );
    }
}
