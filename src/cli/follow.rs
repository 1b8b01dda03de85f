//! Following a deployment as it runs (`deploy`, `rollback`, `watch`): poll
//! `GET /api/deployments/{id}`, print each step once it has finished, end with
//! the outcome. On a terminal the step in progress has a spinner and its
//! elapsed time; anywhere else there are only plain lines, one per step.

use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use serde_json::Value;

use super::client::{ApiError, ApiPath, Client};
use super::output::{duration, now_ms, short_digest, state_tone, text, truncate, Term, Tone};
use super::{pretty, EXIT_FAILED, EXIT_NOT_RUN};
use crate::domain::State;

/// How often a running deployment is polled.
const POLL: Duration = Duration::from_millis(200);
/// How often `watch --service` looks for a deployment to start.
const WAIT_POLL: Duration = Duration::from_millis(500);
/// How long following outlasts a server that stopped answering (a restart
/// takes seconds; the deployment is then reconciled and its end recorded).
const RECONNECT_FOR: Duration = Duration::from_secs(30);
/// Longest step detail on a step line; the full error follows the outcome line.
const DETAIL_WIDTH: usize = 160;

/// The exit code a deployment's final state means (see the README's exit codes).
pub fn exit_code(state: &str) -> i32 {
    match state {
        "succeeded" | "already_live" => 0,
        "failed" | "rolled_back" => EXIT_FAILED,
        _ => EXIT_NOT_RUN,
    }
}

/// Follows deployment `id` to its end; returns the exit code its outcome means.
pub async fn deployment(client: &Client, id: i64, term: Term, json: bool) -> Result<i32, ApiError> {
    let progress = Progress::new(term, json);
    let mut patience = Patience::default();
    let mut shown = 0usize;
    let mut header_shown = false;
    loop {
        let d = match patience
            .get(
                client,
                &ApiPath::api(&["deployments", &id.to_string()]),
                &progress,
            )
            .await
        {
            Ok(Some(d)) => d,
            Ok(None) => {
                tokio::time::sleep(POLL).await;
                continue;
            }
            Err(e) => {
                progress.done();
                return Err(e);
            }
        };
        if !header_shown {
            progress.line(&header(&d, term));
            header_shown = true;
        }
        let steps = d["steps"].as_array().cloned().unwrap_or_default();
        let created = d["created_at"].as_i64().unwrap_or(0);
        while let Some(step) = steps.get(shown).filter(|s| s["finished_at"].is_i64()) {
            // The final state is a step too; the outcome line says it.
            if !is_terminal(step) {
                progress.line(&step_line(step, created, term));
            }
            shown += 1;
        }
        if d["finished_at"].is_i64() {
            progress.done();
            if json {
                println!("{}", pretty(&d));
            } else {
                for line in outcome(&d, term) {
                    println!("{line}");
                }
            }
            return Ok(exit_code(&text(&d["state"])));
        }
        if let Some(open) = steps.get(shown) {
            let detail = open["detail"]
                .as_str()
                .map(|d| term.paint(&truncate(d, DETAIL_WIDTH), Tone::Dim))
                .unwrap_or_default();
            progress.working(
                &text(&open["step"]),
                open["started_at"].as_i64().unwrap_or_else(now_ms),
                detail,
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Follows the service's deployment in progress, or the next one to start
/// (`EXIT_NOT_RUN` when none started within `timeout`).
pub async fn service(
    client: &Client,
    service: &str,
    timeout: Option<Duration>,
    term: Term,
    json: bool,
) -> Result<i32, ApiError> {
    let path = ApiPath::api(&["deployments"])
        .query("service", service)
        .query("limit", 20);
    let first = client.get(&path).await?;
    if let Some(id) = in_progress(&first) {
        return deployment(client, id, term, json).await;
    }
    let seen = newest_id(&first);
    let progress = Progress::new(term, json);
    let waiting = format!("waiting for the next deployment of {service}");
    progress.line(&format!("{waiting} (Ctrl-C to stop)"));
    progress.working("waiting", now_ms(), String::new());
    let started = Instant::now();
    let mut patience = Patience {
        answered: true,
        silent_since: None,
    };
    loop {
        tokio::time::sleep(WAIT_POLL).await;
        if let Some(list) = patience.get(client, &path, &progress).await? {
            // The one running, or one that started and ended between two looks.
            let next =
                in_progress(&list).or_else(|| newest_id(&list).filter(|id| Some(*id) > seen));
            if let Some(id) = next {
                progress.done();
                return deployment(client, id, term, json).await;
            }
        }
        if let Some(t) = timeout.filter(|t| started.elapsed() >= *t) {
            progress.done();
            eprintln!(
                "greenlight: no deployment of {service} started within {}",
                crate::display::span(t)
            );
            return Ok(EXIT_NOT_RUN);
        }
    }
}

/// The oldest unfinished deployment in a newest-first list: the one running.
fn in_progress(list: &Value) -> Option<i64> {
    list.as_array()?
        .iter()
        .rev()
        .find(|d| d["finished_at"].is_null())
        .and_then(|d| d["id"].as_i64())
}

fn newest_id(list: &Value) -> Option<i64> {
    list.as_array()?.first().and_then(|d| d["id"].as_i64())
}

fn is_terminal(step: &Value) -> bool {
    step["step"]
        .as_str()
        .and_then(|s| State::from_str(s).ok())
        .is_some_and(State::is_terminal)
}

/// Rides out a server that stops answering for a while (a restart), once it
/// has answered: `Ok(None)` means "not now, ask again".
#[derive(Default)]
struct Patience {
    answered: bool,
    silent_since: Option<Instant>,
}

impl Patience {
    async fn get(
        &mut self,
        client: &Client,
        path: &ApiPath,
        progress: &Progress,
    ) -> Result<Option<Value>, ApiError> {
        match client.get(path).await {
            Ok(v) => {
                self.answered = true;
                self.silent_since = None;
                Ok(Some(v))
            }
            Err(e @ ApiError::Unreachable { .. }) if self.answered => {
                let since = *self.silent_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= RECONNECT_FOR {
                    return Err(e);
                }
                progress.note("greenlight does not answer; trying again".into());
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// Where progress goes: a spinner line on a terminal, plain lines otherwise,
/// nothing under `--json` (which prints the final deployment only).
struct Progress {
    bar: Option<ProgressBar>,
    /// When the step on the spinner line started (ms since the epoch, 0: none);
    /// its elapsed time is drawn at every tick, not only at every poll.
    started: Arc<AtomicI64>,
    quiet: bool,
}

impl Progress {
    fn new(term: Term, json: bool) -> Progress {
        let started = Arc::new(AtomicI64::new(0));
        let bar = (term.interactive && !json).then(|| {
            let since = started.clone();
            let elapsed = move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                let at = since.load(Ordering::Relaxed);
                if at > 0 {
                    let _ = w.write_str(&duration(now_ms() - at));
                }
            };
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
            bar.set_style(
                ProgressStyle::with_template(
                    "  {spinner:.cyan} {prefix:<13} {elapsed_here:>7}  {msg}",
                )
                .expect("a valid template")
                .with_key("elapsed_here", elapsed)
                .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ "),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Progress {
            bar,
            started,
            quiet: json,
        }
    }

    /// A line that stays, printed above the spinner.
    fn line(&self, line: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }

    /// What is happening now, since when: the spinner line (a terminal only).
    fn working(&self, what: &str, since_ms: i64, detail: String) {
        if let Some(bar) = &self.bar {
            self.started.store(since_ms, Ordering::Relaxed);
            bar.set_prefix(what.to_string());
            bar.set_message(detail);
        }
    }

    /// A note on the spinner line, keeping what and since when.
    fn note(&self, detail: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(detail);
        }
    }

    fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `deployment 12: web v2 (operator)`.
pub fn header(d: &Value, term: Term) -> String {
    let what = match (d["requested_tag"].as_str(), d["requested_digest"].as_str()) {
        (Some(tag), _) => tag.to_string(),
        (None, Some(_)) => short_digest(&d["requested_digest"]),
        (None, None) => text(&d["tag"]),
    };
    term.paint(
        &format!(
            "deployment {}: {} {what} ({})",
            d["id"],
            text(&d["service"]),
            text(&d["trigger"])
        ),
        Tone::Bold,
    )
}

/// One finished step. Plain: `   +1.2s  pulling         0.84s  image 3f2a...`;
/// on a terminal a green tick or a red cross stands for the offset.
pub fn step_line(step: &Value, created_at: i64, term: Term) -> String {
    let name = text(&step["step"]);
    let started = step["started_at"].as_i64().unwrap_or(created_at);
    let took = duration(step["finished_at"].as_i64().unwrap_or(started) - started);
    let failed = step["outcome"] == "error";
    let detail = step["detail"]
        .as_str()
        .map(|d| truncate(d, DETAIL_WIDTH))
        .unwrap_or_default();
    if term.interactive {
        let mark = if failed {
            term.paint("✘", Tone::Bad)
        } else {
            term.paint("✔", Tone::Good)
        };
        let detail = match (detail.is_empty(), failed) {
            (true, _) => detail,
            (false, true) => term.paint(&detail, Tone::Bad),
            (false, false) => term.paint(&detail, Tone::Dim),
        };
        format!("  {mark} {name:<13} {took:>7}  {detail}")
            .trim_end()
            .to_string()
    } else {
        let at = format!("+{:.1}s", (started - created_at).max(0) as f64 / 1000.0);
        let failed = if failed { "FAILED: " } else { "" };
        format!("  {at:>7}  {name:<13} {took:>7}  {failed}{detail}")
            .trim_end()
            .to_string()
    }
}

/// How the deployment ended; on failure also the error in full, the container's
/// exit code and its last log lines.
pub fn outcome(d: &Value, term: Term) -> Vec<String> {
    let state = text(&d["state"]);
    let id = &d["id"];
    let took =
        duration(d["finished_at"].as_i64().unwrap_or(0) - d["created_at"].as_i64().unwrap_or(0));
    let painted = term.paint(&state, state_tone(&state));
    match state.as_str() {
        "succeeded" => vec![format!(
            "deployment {id} {painted} in {took}: {} {} ({}) is live on {}",
            text(&d["service"]),
            text(&d["tag"]),
            short_digest(&d["digest"]),
            text(&d["colour"])
        )],
        "already_live" => vec![format!(
            "deployment {id}: {} ({}) is {painted}; nothing to do",
            text(&d["service"]),
            short_digest(&d["digest"])
        )],
        _ => {
            let at = d["failed_step"]
                .as_str()
                .map(|s| format!(" at {s}"))
                .unwrap_or_default();
            let mut lines = vec![format!(
                "deployment {id} {painted}{at} after {took}: {}",
                d["error"].as_str().unwrap_or("no error recorded")
            )];
            if let Some(code) = d["exit_code"].as_i64() {
                lines.push(format!("  exit code: {code}"));
            }
            if let Some(tail) = d["log_tail"].as_str().filter(|t| !t.trim().is_empty()) {
                let title = crate::domain::plan::output_title(d["failed_step"].as_str());
                lines.push(format!("  {}:", title.to_lowercase()));
                lines.extend(tail.lines().map(|l| format!("    | {l}")));
            }
            lines
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_a_live_outcome_exits_zero() {
        assert_eq!(exit_code("succeeded"), 0);
        assert_eq!(exit_code("already_live"), 0);
        assert_eq!(exit_code("failed"), EXIT_FAILED);
        assert_eq!(exit_code("rolled_back"), EXIT_FAILED);
        for state in ["interrupted", "stale", "superseded"] {
            assert_eq!(exit_code(state), EXIT_NOT_RUN, "{state}");
        }
    }

    #[test]
    fn a_plain_step_line_has_its_offset_duration_and_note_and_no_escapes() {
        let step = json!({"step": "pulling", "started_at": 1_200, "finished_at": 2_040,
                          "outcome": "ok", "detail": "image 3f2a"});
        let line = step_line(&step, 0, Term::PLAIN);
        assert_eq!(line, "    +1.2s  pulling         840ms  image 3f2a");
        let failed = json!({"step": "health_gate", "started_at": 0, "finished_at": 10_000,
                            "outcome": "error", "detail": "not healthy within 10s\nmore"});
        let line = step_line(&failed, 0, Term::PLAIN);
        assert!(
            line.ends_with("10.0s  FAILED: not healthy within 10s …"),
            "{line}"
        );
        assert!(!line.contains('\u{1b}'));
    }

    #[test]
    fn the_running_deployment_is_the_oldest_unfinished_one() {
        let list = json!([
            {"id": 9, "finished_at": null},
            {"id": 8, "finished_at": null},
            {"id": 7, "finished_at": 5},
        ]);
        assert_eq!(in_progress(&list), Some(8));
        assert_eq!(newest_id(&list), Some(9));
        assert_eq!(in_progress(&json!([{"id": 7, "finished_at": 5}])), None);
        assert_eq!(newest_id(&json!([])), None);
    }

    #[test]
    fn a_failure_says_where_why_and_what_the_container_said() {
        let d = json!({"id": 4, "state": "failed", "failed_step": "health_gate",
                       "error": "container exited", "exit_code": 3,
                       "log_tail": "demo: starting\ndemo: exiting",
                       "created_at": 0, "finished_at": 1_500});
        assert_eq!(
            outcome(&d, Term::PLAIN),
            [
                "deployment 4 failed at health_gate after 1.5s: container exited",
                "  exit code: 3",
                "  last lines of the new container's log:",
                "    | demo: starting",
                "    | demo: exiting",
            ]
        );
        let superseded = json!({"id": 5, "state": "superseded", "error": "superseded by 6",
                                "created_at": 0, "finished_at": 10});
        assert_eq!(
            outcome(&superseded, Term::PLAIN),
            ["deployment 5 superseded after 10ms: superseded by 6"]
        );
    }
}
