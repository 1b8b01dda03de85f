//! Slack through an incoming webhook: one JSON POST. `429` says when to come
//! back, other `4xx` mean the payload or the webhook is wrong (not retried).

use std::time::Duration;

use reqwest::header::RETRY_AFTER;
use serde_json::Value;

use super::render::clip;
use super::retry::SendError;
use crate::config::notify::WebhookUrl;

/// One attempt.
pub async fn send(
    http: &reqwest::Client,
    url: &WebhookUrl,
    payload: &Value,
) -> Result<(), SendError> {
    let resp = match http.post(url.expose().clone()).json(payload).send().await {
        Ok(r) => r,
        Err(e) => return Err(SendError::retry(scrub(url, &describe(e)))),
    };
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = resp.text().await.unwrap_or_default();
    let body = clip(
        body.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .as_str(),
        200,
    );
    let detail = scrub(
        url,
        &format!(
            "HTTP {}{}",
            status.as_u16(),
            if body.is_empty() {
                String::new()
            } else {
                format!(": {body}")
            }
        ),
    );
    Err(if status.as_u16() == 429 {
        SendError {
            detail,
            retryable: true,
            retry_after,
        }
    } else if status.is_client_error() {
        SendError::permanent(detail)
    } else {
        SendError::retry(detail)
    })
}

/// A transport error in words, without the URL reqwest would put in it.
fn describe(e: reqwest::Error) -> String {
    let timeout = e.is_timeout();
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if timeout {
        format!("no answer in time ({text})")
    } else {
        text
    }
}

/// Belt and braces: whatever produced `text`, the webhook's path is not in it.
fn scrub(url: &WebhookUrl, text: &str) -> String {
    let full = url.expose().as_str();
    let path = url.expose().path();
    let mut out = text.replace(full, &url.redacted());
    if path.len() > 1 {
        out = out.replace(path, "/<redacted>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubbing_removes_the_webhook_path() {
        let url = WebhookUrl::parse("https://hooks.slack.com/services/T0/B0/s3cr3t").unwrap();
        let text = scrub(
            &url,
            "error for https://hooks.slack.com/services/T0/B0/s3cr3t and /services/T0/B0/s3cr3t",
        );
        assert!(!text.contains("s3cr3t"), "{text}");
    }
}
