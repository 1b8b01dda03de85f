//! `[notify]`, `[notify.email]`, `[notify.slack]` and a service's `[service.notify]`:
//! typed, validated, and with their secrets redacted from every `Debug`.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use lettre::message::Mailbox;
use serde::{Deserialize, Deserializer, Serialize};

use crate::domain::State;

/// What a channel can be told about. A deployment sends `started` when its worker
/// picks it up and one outcome event when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Started,
    Succeeded,
    /// Failed before nginx was switched, or was interrupted by a restart.
    Failed,
    RolledBack,
    Superseded,
    AlreadyLive,
    /// Refused: older than the live image (a late or replayed webhook).
    Stale,
    /// A rolling update held where a batch failed (`failure_action = "pause"`).
    Paused,
}

/// Default `on`: every outcome an operator must act on or know about.
pub const DEFAULT_ON: [Event; 4] = [
    Event::Succeeded,
    Event::Failed,
    Event::RolledBack,
    Event::Paused,
];

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Started => "started",
            Event::Succeeded => "succeeded",
            Event::Failed => "failed",
            Event::RolledBack => "rolled_back",
            Event::Superseded => "superseded",
            Event::AlreadyLive => "already_live",
            Event::Stale => "stale",
            Event::Paused => "paused",
        }
    }

    /// The outcome event of a terminal state; `None` while a deployment runs.
    pub fn outcome_of(state: State) -> Option<Event> {
        match state {
            State::Succeeded => Some(Event::Succeeded),
            // An interrupted deployment did not do what was asked: a failure.
            State::Failed | State::Interrupted => Some(Event::Failed),
            State::RolledBack => Some(Event::RolledBack),
            State::Superseded => Some(Event::Superseded),
            State::AlreadyLive => Some(Event::AlreadyLive),
            State::Stale => Some(Event::Stale),
            State::Paused => Some(Event::Paused),
            State::Received | State::Running | State::Unwinding => None,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A delivery attempt starts this long after the previous failure, doubling each
/// time (with jitter); `[notify] retry_base`.
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_secs(4);
/// Attempts per message and channel, the first included: with the default base,
/// the last one is made about a minute after the first.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Longest one attempt (SMTP dialogue or Slack request) may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub use crate::retry::MAX_RETRY_DELAY;

/// `[notify]`: the channels, each optional, and how deliveries are retried.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    #[serde(default = "default_retry_base", deserialize_with = "duration")]
    pub retry_base: Duration,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    pub email: Option<EmailConfig>,
    pub slack: Option<SlackConfig>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            retry_base: DEFAULT_RETRY_BASE,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout: DEFAULT_TIMEOUT,
            email: None,
            slack: None,
        }
    }
}

fn default_retry_base() -> Duration {
    DEFAULT_RETRY_BASE
}
fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}
fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}
fn default_on() -> Vec<Event> {
    DEFAULT_ON.to_vec()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Plain connection upgraded with STARTTLS, which must succeed (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
    /// No encryption (port 25): only for a relay on this host.
    None,
}

impl Security {
    pub fn default_port(self) -> u16 {
        match self {
            Security::Starttls => 587,
            Security::Tls => 465,
            Security::None => 25,
        }
    }
}

/// `[notify.email]`: one SMTP relay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub server: String,
    /// Default: by `security`, 587, 465 or 25.
    pub port: Option<u16>,
    #[serde(default)]
    pub security: Security,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// PEM file of a CA to trust besides the public roots (a private relay).
    pub ca_file: Option<PathBuf>,
    #[serde(deserialize_with = "mailbox")]
    pub from: Mailbox,
    #[serde(deserialize_with = "mailboxes")]
    pub to: Vec<Mailbox>,
    #[serde(default = "default_on")]
    pub on: Vec<Event>,
}

impl EmailConfig {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(self.security.default_port())
    }
}

/// `[notify.slack]`: one incoming webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    pub webhook_url: WebhookUrl,
    #[serde(default = "default_on")]
    pub on: Vec<Event>,
}

/// `[service.notify]`: a service's own recipients, webhook or events. A key left
/// out follows `[notify]`; `on = []` silences a channel for the service.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNotify {
    pub email: Option<ServiceEmail>,
    pub slack: Option<ServiceSlack>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEmail {
    #[serde(default, deserialize_with = "some_mailboxes")]
    pub to: Option<Vec<Mailbox>>,
    pub on: Option<Vec<Event>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSlack {
    pub webhook_url: Option<WebhookUrl>,
    pub on: Option<Vec<Event>>,
}

/// A secret string: `Debug` shows that it is set, never what it is.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// A Slack incoming-webhook URL. Its path is the credential, so only the scheme
/// and host are ever shown.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl(reqwest::Url);

impl WebhookUrl {
    pub fn parse(text: &str) -> Result<WebhookUrl, String> {
        let url = reqwest::Url::parse(text.trim())
            .map_err(|e| format!("is not a URL ({e}); paste the incoming webhook's URL"))?;
        if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
            return Err("must be an https:// URL (Slack's incoming webhook URL)".into());
        }
        Ok(WebhookUrl(url))
    }

    pub fn expose(&self) -> &reqwest::Url {
        &self.0
    }

    /// Scheme and host: what may be logged.
    pub fn redacted(&self) -> String {
        let port = self.0.port().map(|p| format!(":{p}")).unwrap_or_default();
        format!(
            "{}://{}{port}/<redacted>",
            self.0.scheme(),
            self.0.host_str().unwrap_or("?")
        )
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for WebhookUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The message never repeats the value: it is a credential.
        let text = String::deserialize(d)?;
        WebhookUrl::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(text.trim()).map_err(|e| {
        serde::de::Error::custom(format!(
            "bad duration {text:?} ({e}); write e.g. \"500ms\", \"30s\", \"2m\""
        ))
    })
}

fn parse_mailbox(text: &str) -> Result<Mailbox, String> {
    text.trim().parse::<Mailbox>().map_err(|e| {
        format!("{text:?} is not an address like \"ops@example.com\" or \"Ops <ops@example.com>\" ({e})")
    })
}

fn mailbox<'de, D: Deserializer<'de>>(d: D) -> Result<Mailbox, D::Error> {
    parse_mailbox(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn mailboxes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Mailbox>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|t| parse_mailbox(t))
        .collect::<Result<_, _>>()
        .map_err(serde::de::Error::custom)
}

fn some_mailboxes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Mailbox>>, D::Error> {
    mailboxes(d).map(Some)
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks what serde cannot: ranges, pairs of keys, and a service's channels
/// against `[notify]`. Errors are (key, message), as `Config::validate` reports them.
pub fn validate(config: &crate::config::Config) -> Result<(), (String, String)> {
    let n = &config.notify;
    let bad = |key: &str, message: &str| Err((key.to_string(), message.to_string()));
    if !(1..=20).contains(&n.max_attempts) {
        return bad(
            "notify.max_attempts",
            "must be 1-20 (the first attempt included)",
        );
    }
    if n.retry_base.is_zero() || n.retry_base > MAX_RETRY_DELAY {
        return bad("notify.retry_base", "must be more than 0 and at most 5m");
    }
    if n.timeout.is_zero() {
        return bad("notify.timeout", "must be more than 0");
    }
    if let Some(e) = &n.email {
        if e.server.trim().is_empty() {
            return bad("notify.email.server", "must name the SMTP server");
        }
        if e.to.is_empty() {
            return bad("notify.email.to", "must list at least one recipient");
        }
        match (&e.username, &e.password) {
            (Some(_), None) => {
                return bad(
                    "notify.email.password",
                    "required with username (use \"${SMTP_PASSWORD}\" to keep it out of the file)",
                )
            }
            (None, Some(_)) => return bad("notify.email.username", "required with password"),
            _ => {}
        }
        if e.security == Security::None && e.username.is_some() && !is_loopback(&e.server) {
            return bad(
                "notify.email.security",
                "\"none\" would send the password in clear text to another host; use \"starttls\" or \"tls\"",
            );
        }
    }
    for (i, s) in config.services.iter().enumerate() {
        let Some(sn) = &s.notify else { continue };
        if let Some(se) = &sn.email {
            if n.email.is_none() {
                return Err((
                    format!("service[{i}].notify.email"),
                    "needs [notify.email] (the SMTP server to send through)".into(),
                ));
            }
            if se.to.as_ref().is_some_and(Vec::is_empty) {
                return Err((
                    format!("service[{i}].notify.email.to"),
                    "must list at least one recipient (to silence email for this service, set on = [])"
                        .into(),
                ));
            }
        }
        if let Some(ss) = &sn.slack {
            if ss.webhook_url.is_none() && n.slack.is_none() {
                return Err((
                    format!("service[{i}].notify.slack"),
                    "needs a webhook_url here or in [notify.slack]".into(),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_show_in_debug() {
        let url = WebhookUrl::parse("https://hooks.slack.com/services/T0/B0/s3cr3t").unwrap();
        let shown = format!("{url:?} {url}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("T0"),
            "{shown}"
        );
        assert!(shown.contains("hooks.slack.com"), "{shown}");
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "\"<redacted>\"");
    }

    #[test]
    fn a_webhook_url_must_be_http() {
        assert!(WebhookUrl::parse("ftp://x/y").is_err());
        let e = WebhookUrl::parse("s3cr3t-token").unwrap_err();
        assert!(!e.contains("s3cr3t"), "{e}");
    }

    #[test]
    fn interrupted_counts_as_a_failure_and_running_states_send_nothing() {
        assert_eq!(Event::outcome_of(State::Interrupted), Some(Event::Failed));
        assert_eq!(
            Event::outcome_of(State::RolledBack),
            Some(Event::RolledBack)
        );
        assert_eq!(Event::outcome_of(State::Running), None);
        assert_eq!(Event::outcome_of(State::Received), None);
    }

    const BASE: &str = r#"
[server]
admin_token = "0123456789abcdef0123"
[nginx]
mode = "host"
upstreams_dir = "/tmp"
config = "/tmp/nginx.conf"
[[service]]
name = "web"
image = "ghcr.io/acme/web"
port = 8080
"#;

    fn parse(extra: &str) -> Result<crate::config::Config, String> {
        crate::config::Config::parse(
            std::path::Path::new("g.toml"),
            &format!("{BASE}{extra}"),
            |_| None,
        )
        .map_err(|e| e.to_string())
    }

    const EMAIL: &str = "[notify.email]\nserver = \"smtp.example.com\"\nfrom = \"gl@example.com\"\nto = [\"ops@example.com\"]\n";

    #[test]
    fn defaults_fill_in_and_the_example_documents_every_key() {
        let c = parse(EMAIL).unwrap();
        let e = c.notify.email.as_ref().unwrap();
        assert_eq!(e.security, Security::Starttls);
        assert_eq!(e.port(), 587);
        assert_eq!(e.on, DEFAULT_ON.to_vec());
        assert_eq!(c.notify.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert!(c.notify.slack.is_none());

        let text = include_str!("../../greenlight.example.toml");
        let c = crate::config::Config::parse(std::path::Path::new("example"), text, |_| {
            Some("0123456789abcdef0123".into())
        })
        .unwrap();
        let e = c.notify.email.unwrap();
        assert_eq!(e.to[0].email.to_string(), "ops@example.com");
        assert!(e.password.is_some());
        assert!(c.notify.slack.is_some());
        let own = c.services[0].notify.as_ref().unwrap();
        assert_eq!(
            own.email.as_ref().unwrap().on,
            Some(vec![Event::Failed, Event::RolledBack])
        );
    }

    #[test]
    fn bad_notify_keys_are_named_without_their_secrets() {
        let e = parse("[notify.slack]\nwebhook_url = \"not-a-url-s3cr3t\"\n").unwrap_err();
        assert!(e.contains("notify.slack.webhook_url"), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
        let e = parse(&EMAIL.replace("ops@example.com", "ops at example")).unwrap_err();
        assert!(
            e.contains("notify.email.to") && e.contains("ops at example"),
            "{e}"
        );
        let e = parse(&format!("{EMAIL}on = [\"deployed\"]\n")).unwrap_err();
        assert!(e.contains("unknown variant `deployed`"), "{e}");
        let e = parse(&format!("{EMAIL}security = \"ssl\"\n")).unwrap_err();
        assert!(e.contains("notify.email.security"), "{e}");
        let e = parse(&format!("{EMAIL}username = \"u\"\n")).unwrap_err();
        assert!(
            e.contains("notify.email.password: required with username"),
            "{e}"
        );
        let e = parse(&format!(
            "{EMAIL}security = \"none\"\nusername = \"u\"\npassword = \"hunter2\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("clear text") && !e.contains("hunter2"), "{e}");
        let e = parse("[notify]\nmax_attempts = 0\n").unwrap_err();
        assert!(e.contains("notify.max_attempts"), "{e}");
    }

    #[test]
    fn a_service_cannot_use_a_channel_that_does_not_exist() {
        let e = parse("[service.notify]\nemail = { on = [\"failed\"] }\n").unwrap_err();
        assert!(
            e.contains("service[0].notify.email: needs [notify.email]"),
            "{e}"
        );
        let e = parse("[service.notify]\nslack = { on = [\"failed\"] }\n").unwrap_err();
        assert!(e.contains("service[0].notify.slack"), "{e}");
        let e = parse(&format!("[service.notify]\nemail = {{ to = [] }}\n{EMAIL}")).unwrap_err();
        assert!(e.contains("service[0].notify.email.to"), "{e}");
        parse(&format!("[service.notify]\nemail = {{ on = [] }}\n{EMAIL}")).unwrap();
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        assert!(is_loopback("localhost"));
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("[::1]"));
        assert!(!is_loopback("smtp.example.com"));
    }
}
