//! What a notification says, as pure functions of a stored deployment: the
//! subject, a plain-text and an HTML body for email, and a Slack payload. Every
//! value that came from outside (tags, errors, log lines) is escaped for its
//! format.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::config::notify::Event;
use crate::display::{self, short_digest};
use crate::domain::plan::output_title;
use crate::domain::State;
use crate::store::Deployment;

/// Log lines and characters of the container's log tail in an email.
pub const EMAIL_LOG_LINES: usize = 40;
pub const EMAIL_LOG_CHARS: usize = 4096;
/// Slack refuses a section text over 3,000 characters; stay well inside it.
pub const SLACK_LOG_LINES: usize = 20;
pub const SLACK_TEXT_CHARS: usize = 2800;

/// Slack attachment colours by outcome.
pub const GREEN: &str = "#2eb67d";
pub const RED: &str = "#e01e5a";
pub const AMBER: &str = "#ecb22e";
pub const GREY: &str = "#9ea0a5";
pub const BLUE: &str = "#36c5f0";

/// One deployment told as a notification: everything a message shows, as text.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub event: Event,
    pub deployment: i64,
    pub service: String,
    /// "succeeded", "failed at health_gate", ...
    pub outcome: String,
    /// One line saying what happened, for the subject and Slack's fallback text.
    pub headline: String,
    /// "v1 (1a2b3c4d5e6f) -> v2 (abcdef012345)".
    pub change: String,
    pub trigger: String,
    /// "3 replicas (rolling): 3 started, 3 old stopped".
    pub replicas: Option<String>,
    pub started_at: String,
    pub duration: Option<String>,
    pub steps: Vec<StepLine>,
    pub failure: Option<FailureLines>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepLine {
    pub step: String,
    /// "0.42s", or "..." while it runs.
    pub took: String,
    pub failed: bool,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FailureLines {
    pub step: Option<String>,
    pub error: String,
    pub exit_code: Option<i64>,
    /// The last lines of the new container's log, bounded.
    pub log_tail: Option<String>,
}

/// A rendered message, ready for any channel.
#[derive(Debug, Clone)]
pub struct Message {
    /// The service it is about (empty for the test message), for the log.
    pub service: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    pub slack: Value,
}

/// How many replicas a deployment started, stopped and put back, from its
/// steps: those up to the failing one went forward, those after it went back.
fn replica_counts(d: &Deployment) -> Option<String> {
    let wanted = d.replicas?;
    let count = |steps: &[crate::store::StepRecord], name: &str| -> usize {
        steps
            .iter()
            .filter(|s| s.step == name)
            .filter_map(|s| s.replicas.as_deref())
            .map(|r| r.split(',').filter(|n| !n.is_empty()).count())
            .sum()
    };
    let split = d
        .steps
        .iter()
        .position(|s| s.outcome.as_deref() == Some("error"))
        .map_or(d.steps.len(), |i| i + 1);
    let (forward, back) = d.steps.split_at(split);
    let started = count(forward, "starting");
    let stopped = count(forward, "stopping_old");
    let mut text = format!(
        "{wanted} wanted ({}); {started} started, {stopped} old stopped",
        d.strategy.map(|s| s.as_str()).unwrap_or("blue-green")
    );
    let restored = count(back, "starting");
    if restored > 0 {
        text.push_str(&format!("; {restored} put back on the previous version"));
    }
    if let Some(cut) = d.connections_cut.filter(|n| *n > 0) {
        text.push_str(&format!(
            "; {cut} long-lived connection{} (WebSockets, server-sent events) to the old version cut \
             after rollout.long_lived_timeout",
            if cut == 1 { "" } else { "s" }
        ));
    }
    Some(text)
}

/// "v2 (abcdef012345)", "abcdef012345", or "v2".
fn version(tag: Option<&str>, digest: Option<&str>) -> Option<String> {
    match (tag, digest) {
        (Some(t), Some(d)) => Some(format!("{t} ({})", short_digest(d))),
        (Some(t), None) => Some(t.to_string()),
        (None, Some(d)) => Some(short_digest(d).to_string()),
        (None, None) => None,
    }
}

/// What triggered a deployment, in words: the operator's command, or the webhook
/// source with its delivery id and pusher.
pub fn trigger(kind: &str, detail: Option<&Value>) -> String {
    let Some(Value::Object(map)) = detail else {
        return kind.to_string();
    };
    let text = |k: &str| match map.get(k) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    if let Some(command) = text("command") {
        return format!("{kind}: greenlight {command}");
    }
    let mut parts = Vec::new();
    let source = text("source").unwrap_or_else(|| kind.to_string());
    parts.push(format!("{source} push"));
    if let Some(id) = text("delivery_id").or_else(|| text("delivery")) {
        parts.push(format!("delivery {id}"));
    }
    if let Some(who) = text("pusher") {
        parts.push(format!("pushed by {who}"));
    }
    parts.join(", ")
}

/// The last `lines` lines of `log`, at most `chars` characters (whole lines kept
/// where possible: the end of a log is what explains a crash).
pub fn log_tail(log: &str, lines: usize, chars: usize) -> String {
    let all: Vec<&str> = log.trim_end().lines().collect();
    let mut kept: Vec<&str> = Vec::new();
    let mut size = 0;
    for line in all.iter().rev().take(lines) {
        let n = line.chars().count() + 1;
        if size + n > chars {
            if kept.is_empty() {
                let tail: String = line.chars().rev().take(chars).collect();
                return tail.chars().rev().collect();
            }
            break;
        }
        size += n;
        kept.push(line);
    }
    kept.reverse();
    kept.join("\n")
}

/// At most `max` characters of `text`, marked when cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

pub fn report(d: &Deployment, event: Event) -> Report {
    let new = version(
        d.tag.as_deref().or(d.requested_tag.as_deref()),
        d.digest.as_deref().or(d.requested_digest.as_deref()),
    )
    .unwrap_or_else(|| "?".into());
    let old = version(d.previous_tag.as_deref(), d.previous_digest.as_deref());
    let change = match &old {
        Some(old) => format!("{old} -> {new}"),
        None if event == Event::Started => new.clone(),
        None => format!("(nothing live) -> {new}"),
    };
    let new_name = d
        .tag
        .as_deref()
        .or(d.requested_tag.as_deref())
        .map(str::to_string)
        .unwrap_or_else(|| short_digest(d.digest.as_deref().unwrap_or("?")).to_string());
    let old_name = d.previous_tag.clone().or_else(|| {
        d.previous_digest
            .as_deref()
            .map(|p| short_digest(p).to_string())
    });
    let step = d.failed_step.clone();
    let at = step
        .as_deref()
        .map(|s| format!(" at {s}"))
        .unwrap_or_default();
    let took = d.finished_at.map(|f| display::duration(f - d.created_at));
    let svc = &d.service;
    let (outcome, headline) = match (event, d.state) {
        (Event::Started, _) => (
            "started".to_string(),
            format!("{svc}: deploying {new_name}"),
        ),
        (_, State::Succeeded) => ("succeeded".into(), format!("{svc}: {new_name} is live")),
        (_, State::Interrupted) => (
            format!("interrupted{at}"),
            format!("{svc}: {new_name} was interrupted{at}"),
        ),
        (_, State::RolledBack) => (
            format!("rolled back{at}"),
            match &old_name {
                Some(o) => format!("{svc}: {new_name} rolled back{at}; {o} serves again"),
                None => format!("{svc}: {new_name} rolled back{at}"),
            },
        ),
        (_, State::Superseded) => (
            "superseded".into(),
            format!("{svc}: {new_name} superseded by a newer request"),
        ),
        (_, State::AlreadyLive) => (
            "already live".into(),
            format!("{svc}: {new_name} is already live; nothing to do"),
        ),
        (_, State::Stale) => (
            "refused as stale".into(),
            format!("{svc}: {new_name} refused: older than the live image"),
        ),
        (_, State::Paused) => (
            format!("paused{at}"),
            format!("{svc}: {new_name} paused{at}; old and new replicas serve side by side"),
        ),
        (_, _) => (
            format!("failed{at}"),
            format!("{svc}: {new_name} failed{at}"),
        ),
    };
    let steps = d
        .steps
        .iter()
        .filter(|s| !s.step.parse::<State>().is_ok_and(State::is_terminal))
        .map(|s| StepLine {
            step: s.step.clone(),
            took: s
                .finished_at
                .map(|f| display::duration(f - s.started_at))
                .unwrap_or_else(|| "...".into()),
            failed: s.outcome.as_deref() == Some("error"),
            detail: s.detail.clone().filter(|t| !t.is_empty()),
        })
        .collect();
    let failure = match d.state {
        State::Failed | State::RolledBack | State::Interrupted | State::Stale | State::Paused
            if event != Event::Started =>
        {
            Some(FailureLines {
                step,
                error: d
                    .error
                    .clone()
                    .unwrap_or_else(|| "no error recorded".into()),
                exit_code: d.exit_code,
                log_tail: d
                    .log_tail
                    .as_deref()
                    .map(|l| log_tail(l, EMAIL_LOG_LINES, EMAIL_LOG_CHARS))
                    .filter(|l| !l.is_empty()),
            })
        }
        _ => None,
    };
    Report {
        event,
        deployment: d.id,
        service: d.service.clone(),
        outcome,
        headline,
        change,
        trigger: trigger(d.trigger.as_str(), d.trigger_detail.as_ref()),
        replicas: if event == Event::Started {
            None
        } else {
            replica_counts(d)
        },
        started_at: display::timestamp(d.created_at),
        duration: if event == Event::Started { None } else { took },
        steps: if event == Event::Started {
            Vec::new()
        } else {
            steps
        },
        failure,
    }
}

pub fn subject(r: &Report) -> String {
    // A subject is one line: tags and service names cannot break it, but be sure.
    clip(&r.headline.replace(['\r', '\n'], " "), 200)
}

pub fn plain(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", r.headline);
    let _ = writeln!(out);
    let _ = writeln!(out, "Deployment: #{} {}", r.deployment, r.outcome);
    let _ = writeln!(out, "Service:    {}", r.service);
    let _ = writeln!(out, "Version:    {}", r.change);
    let _ = writeln!(out, "Trigger:    {}", r.trigger);
    if let Some(n) = &r.replicas {
        let _ = writeln!(out, "Replicas:   {n}");
    }
    let _ = writeln!(out, "Started:    {}", r.started_at);
    if let Some(d) = &r.duration {
        let _ = writeln!(out, "Duration:   {d}");
    }
    if let Some(f) = &r.failure {
        let _ = writeln!(out);
        if let Some(step) = &f.step {
            let _ = writeln!(out, "Failed step: {step}");
        }
        let _ = writeln!(out, "Error:       {}", f.error);
        if let Some(code) = f.exit_code {
            let _ = writeln!(out, "Exit code:   {code}");
        }
        if let Some(tail) = &f.log_tail {
            let _ = writeln!(out);
            let _ = writeln!(out, "{}:", output_title(f.step.as_deref()));
            for line in tail.lines() {
                let _ = writeln!(out, "  | {line}");
            }
        }
    }
    if !r.steps.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "Steps:");
        let width = r.steps.iter().map(|s| s.step.len()).max().unwrap_or(0);
        for s in &r.steps {
            let mark = if s.failed { "FAILED " } else { "" };
            let detail = s.detail.as_deref().unwrap_or("");
            let line = format!("  {:<width$}  {:>7}  {mark}{detail}", s.step, s.took);
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "-- greenlight");
    out
}

pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn colour(r: &Report) -> &'static str {
    match r.event {
        Event::Succeeded => GREEN,
        Event::Failed => RED,
        Event::RolledBack | Event::Paused => AMBER,
        Event::Started => BLUE,
        Event::Superseded | Event::AlreadyLive | Event::Stale => GREY,
    }
}

pub fn html(r: &Report) -> String {
    let e = escape_html;
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html><body style=\"font-family: sans-serif; font-size: 14px\">\n\
         <h2 style=\"border-left: 6px solid {}; padding-left: 8px\">{}</h2>\n<table>\n",
        colour(r),
        e(&r.headline)
    );
    let mut row = |k: &str, v: &str| {
        let _ = writeln!(
            out,
            "<tr><th align=\"left\" valign=\"top\">{k}</th><td>{}</td></tr>",
            e(v)
        );
    };
    row("Deployment", &format!("#{} {}", r.deployment, r.outcome));
    row("Service", &r.service);
    row("Version", &r.change);
    row("Trigger", &r.trigger);
    if let Some(n) = &r.replicas {
        row("Replicas", n);
    }
    row("Started", &r.started_at);
    if let Some(d) = &r.duration {
        row("Duration", d);
    }
    if let Some(f) = &r.failure {
        if let Some(step) = &f.step {
            row("Failed step", step);
        }
        row("Error", &f.error);
        if let Some(code) = f.exit_code {
            row("Exit code", &code.to_string());
        }
    }
    out.push_str("</table>\n");
    if let Some((f, tail)) = r
        .failure
        .as_ref()
        .and_then(|f| f.log_tail.as_ref().map(|t| (f, t)))
    {
        let _ = write!(
            out,
            "<h3>{}</h3>\n\
             <pre style=\"background: #f4f4f4; padding: 8px\">{}</pre>\n",
            output_title(f.step.as_deref()),
            e(tail)
        );
    }
    if !r.steps.is_empty() {
        out.push_str(
            "<h3>Steps</h3>\n<table>\n<tr><th align=\"left\">Step</th>\
             <th align=\"right\">Took</th><th align=\"left\">Detail</th></tr>\n",
        );
        for s in &r.steps {
            let mark = if s.failed { "FAILED " } else { "" };
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td align=\"right\">{}</td><td>{}{}</td></tr>",
                e(&s.step),
                e(&s.took),
                mark,
                e(s.detail.as_deref().unwrap_or(""))
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("<p style=\"color: #888\">greenlight</p>\n</body></html>\n");
    out
}

/// Slack's mrkdwn treats `&`, `<` and `>` as control characters.
pub fn escape_slack(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Text for a Slack code block: escaped, and unable to close the block early.
fn slack_code(text: &str) -> String {
    format!("```{}```", escape_slack(&text.replace("```", "'''")))
}

fn section(text: String) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": clip(&text, SLACK_TEXT_CHARS)}})
}

/// An incoming-webhook payload: the headline in `text` (notifications, fallback)
/// and a block, the details in an attachment coloured by outcome.
pub fn slack(r: &Report) -> Value {
    let s = escape_slack;
    let mut fields = vec![
        json!({"type": "mrkdwn", "text": format!("*Service*\n{}", s(&r.service))}),
        json!({"type": "mrkdwn", "text": format!("*Outcome*\n{}", s(&r.outcome))}),
        json!({"type": "mrkdwn", "text": clip(&format!("*Version*\n{}", s(&r.change)), 1900)}),
        json!({"type": "mrkdwn", "text": clip(&format!("*Trigger*\n{}", s(&r.trigger)), 1900)}),
    ];
    if let Some(d) = &r.duration {
        fields.push(json!({"type": "mrkdwn", "text": format!("*Duration*\n{}", s(d))}));
    }
    if let Some(n) = &r.replicas {
        fields.push(json!({"type": "mrkdwn", "text": format!("*Replicas*\n{}", s(n))}));
    }
    let mut details = vec![json!({"type": "section", "fields": fields})];
    if let Some(f) = &r.failure {
        let mut text = match &f.step {
            Some(step) => format!("*Failed at* `{}`\n", s(step)),
            None => String::new(),
        };
        text.push_str(&s(&clip(&f.error, 1500)));
        if let Some(code) = f.exit_code {
            text.push_str(&format!("\nExit code: {code}"));
        }
        details.push(section(text));
        if let Some(tail) = &f.log_tail {
            let tail = log_tail(tail, SLACK_LOG_LINES, SLACK_TEXT_CHARS - 200);
            details.push(section(format!(
                "*{}*\n{}",
                output_title(f.step.as_deref()),
                slack_code(&tail)
            )));
        }
    }
    if !r.steps.is_empty() {
        let width = r.steps.iter().map(|s| s.step.len()).max().unwrap_or(0);
        let lines: Vec<String> = r
            .steps
            .iter()
            .map(|st| {
                let mark = if st.failed { "  FAILED" } else { "" };
                format!("{:<width$} {:>7}{mark}", st.step, st.took)
            })
            .collect();
        details.push(section(format!(
            "*Steps*\n{}",
            slack_code(&lines.join("\n"))
        )));
    }
    json!({
        "text": s(&r.headline),
        "blocks": [section(format!("*{}* · deployment #{}", s(&r.headline), r.deployment))],
        "attachments": [{
            "color": colour(r),
            "fallback": s(&r.headline),
            "blocks": details,
        }],
    })
}

pub fn message(d: &Deployment, event: Event) -> Message {
    let r = report(d, event);
    Message {
        service: d.service.clone(),
        subject: format!("[greenlight] {}", subject(&r)),
        text: plain(&r),
        html: html(&r),
        slack: slack(&r),
    }
}

/// The message of `greenlight notify test`.
pub fn test_message(services: &[String], host: &str) -> Message {
    let what = if services.is_empty() {
        "no services yet".to_string()
    } else {
        services.join(", ")
    };
    let line =
        format!("greenlight on {host}: test message. Deployments of {what} are reported here.");
    Message {
        service: String::new(),
        subject: "[greenlight] test message".into(),
        text: format!("{line}\n\n-- greenlight\n"),
        html: format!(
            "<!DOCTYPE html>\n<html><body><p>{}</p></body></html>\n",
            escape_html(&line)
        ),
        slack: json!({
            "text": escape_slack(&line),
            "blocks": [section(escape_slack(&line))],
            "attachments": [{"color": BLUE, "fallback": escape_slack(&line), "blocks": [section("_test message from `greenlight notify test`_".into())]}],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StepRecord as Step;

    fn step(name: &str, start: i64, end: i64, outcome: &str, detail: Option<&str>) -> Step {
        Step {
            step: name.into(),
            batch: None,
            replicas: None,
            started_at: start,
            finished_at: Some(end),
            outcome: Some(outcome.into()),
            detail: detail.map(str::to_string),
        }
    }

    fn deployment(state: State) -> Deployment {
        Deployment {
            trigger_detail: Some(
                json!({"source": "github", "delivery_id": "abc-123", "pusher": "alice"}),
            ),
            digest: Some(format!("sha256:{}", "b".repeat(64))),
            colour: None,
            previous_tag: Some("v1".into()),
            previous_digest: Some(format!("sha256:{}", "a".repeat(64))),
            created_at: 1_700_000_000_000,
            updated_at: 1_700_000_012_345,
            finished_at: Some(1_700_000_012_345),
            steps: vec![
                step("received", 1_700_000_000_000, 1_700_000_000_010, "ok", None),
                step(
                    "resolving",
                    1_700_000_000_010,
                    1_700_000_000_130,
                    "ok",
                    Some("v2 -> sha256:bbb"),
                ),
                step("pulling", 1_700_000_000_130, 1_700_000_003_530, "ok", None),
                step(
                    "health_gate",
                    1_700_000_003_530,
                    1_700_000_012_345,
                    "ok",
                    None,
                ),
                step(
                    state.as_str(),
                    1_700_000_012_345,
                    1_700_000_012_345,
                    state.as_str(),
                    None,
                ),
            ],
            ..crate::store::sample_deployment(state)
        }
    }

    fn failed() -> Deployment {
        let mut d = deployment(State::Failed);
        d.failed_step = Some("health_gate".into());
        d.error = Some("container exited with code 3 before it was healthy <boom> & co".into());
        d.exit_code = Some(3);
        d.log_tail = Some("demo: starting\ndemo: <script>alert(1)</script>\ndemo: exiting".into());
        d.steps[3].outcome = Some("error".into());
        d
    }

    #[test]
    fn a_success_names_service_versions_trigger_duration_and_steps() {
        let m = message(&deployment(State::Succeeded), Event::Succeeded);
        assert_eq!(m.subject, "[greenlight] web: v2 is live");
        let t = &m.text;
        assert!(t.contains("Deployment: #7 succeeded"), "{t}");
        assert!(
            t.contains("Version:    v1 (aaaaaaaaaaaa) -> v2 (bbbbbbbbbbbb)"),
            "{t}"
        );
        assert!(
            t.contains("Trigger:    github push, delivery abc-123, pushed by alice"),
            "{t}"
        );
        assert!(t.contains("Duration:   12.3s"), "{t}");
        assert!(t.contains("pulling         3.4s"), "{t}");
        assert!(t.contains("resolving      120ms  v2 -> sha256:bbb"), "{t}");
        assert!(!t.contains("Error"), "{t}");
        // The terminal step is the outcome, not a step.
        assert!(!t.contains("  succeeded"), "{t}");
    }

    #[test]
    fn a_failure_names_the_step_the_error_and_the_log_tail() {
        let m = message(&failed(), Event::Failed);
        assert_eq!(m.subject, "[greenlight] web: v2 failed at health_gate");
        assert!(m.text.contains("Failed step: health_gate"), "{}", m.text);
        assert!(m.text.contains("Error:       container exited with code 3"));
        assert!(m.text.contains("Exit code:   3"));
        assert!(m.text.contains("  | demo: exiting"), "{}", m.text);
        assert!(
            m.text.contains("health_gate     8.8s  FAILED"),
            "{}",
            m.text
        );
    }

    #[test]
    fn html_escapes_everything_from_outside() {
        let h = message(&failed(), Event::Failed).html;
        assert!(!h.contains("<script>"), "{h}");
        assert!(
            h.contains("demo: &lt;script&gt;alert(1)&lt;/script&gt;"),
            "{h}"
        );
        assert!(h.contains("&lt;boom&gt; &amp; co"), "{h}");
        assert!(h.contains("<pre"), "{h}");
    }

    #[test]
    fn slack_payload_has_blocks_and_a_colour_by_outcome() {
        let ok = message(&deployment(State::Succeeded), Event::Succeeded).slack;
        assert_eq!(ok["text"], "web: v2 is live");
        assert_eq!(ok["blocks"][0]["type"], "section");
        assert_eq!(ok["attachments"][0]["color"], GREEN);
        let fail = message(&failed(), Event::Failed).slack;
        assert_eq!(fail["attachments"][0]["color"], RED);
        let text = fail.to_string();
        assert!(text.contains("*Failed at* `health_gate`"), "{text}");
        assert!(text.contains("&lt;boom&gt; &amp; co"), "{text}");
        assert!(text.contains("demo: exiting"), "{text}");
        assert!(!text.contains("<script>"), "{text}");
        let mut back = failed();
        back.state = State::RolledBack;
        back.failed_step = Some("verifying".into());
        let back = message(&back, Event::RolledBack);
        assert_eq!(back.slack["attachments"][0]["color"], AMBER);
        assert_eq!(
            back.subject,
            "[greenlight] web: v2 rolled back at verifying; v1 serves again"
        );
    }

    #[test]
    fn slack_sections_stay_within_slacks_limits() {
        let mut d = failed();
        d.error = Some("e".repeat(10_000));
        d.log_tail = Some(format!("{}\n{}", "x".repeat(5000), "line\n".repeat(500)));
        let p = message(&d, Event::Failed).slack;
        for b in p["attachments"][0]["blocks"].as_array().unwrap() {
            if let Some(t) = b["text"]["text"].as_str() {
                assert!(t.chars().count() <= 3000, "{}", t.len());
            }
        }
    }

    #[test]
    fn an_interrupted_deployment_is_reported_as_a_failure() {
        let mut d = failed();
        d.state = State::Interrupted;
        d.failed_step = Some("pulling".into());
        d.error = Some("interrupted at pulling by a greenlight restart".into());
        let m = message(&d, Event::Failed);
        assert_eq!(m.subject, "[greenlight] web: v2 was interrupted at pulling");
        assert_eq!(m.slack["attachments"][0]["color"], RED);
    }

    #[test]
    fn triggers_read_as_words() {
        assert_eq!(
            trigger("operator", Some(&json!({"command": "deploy"}))),
            "operator: greenlight deploy"
        );
        assert_eq!(trigger("dockerhub", None), "dockerhub");
        assert_eq!(
            trigger("registry", Some(&json!({"delivery": 12}))),
            "registry push, delivery 12"
        );
    }

    #[test]
    fn a_first_deployment_has_nothing_before_it() {
        let mut d = deployment(State::Succeeded);
        d.previous_tag = None;
        d.previous_digest = None;
        let r = report(&d, Event::Succeeded);
        assert_eq!(r.change, "(nothing live) -> v2 (bbbbbbbbbbbb)");
    }

    #[test]
    fn log_tails_keep_the_last_lines_within_bounds() {
        let log: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        let tail = log_tail(&log, 3, 1000);
        assert_eq!(tail, "line 98\nline 99\nline 100");
        let tail = log_tail(&log, 50, 20);
        assert_eq!(tail, "line 99\nline 100");
        assert_eq!(log_tail(&"z".repeat(50), 5, 10), "z".repeat(10));
    }
}
