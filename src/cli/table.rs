//! The tables of `status`, `history` and `deliveries`, built from the admin
//! API's JSON (the same JSON `--json` prints) and laid out by comfy-table.
//! Pure: JSON and the current time in, text out.

use comfy_table::{presets, Attribute, Cell, Color, ContentArrangement, Table};
use serde_json::Value;

use super::output::{
    age, colour_tone, duration, short_digest, state_tone, text, truncate, Term, Tone,
};

/// Widest error or detail shown in a table cell; the whole text is in `--json`
/// and `history --steps`.
pub const CELL_WIDTH: usize = 60;

/// Columns two spaces apart, no borders, bold headers on a colour terminal.
pub fn render(headers: &[&str], rows: Vec<Vec<(String, Tone)>>, term: Term) -> String {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        // No width lookup: a row is never wrapped, on a terminal or in a pipe.
        .force_no_tty();
    if term.colour {
        table.enforce_styling();
        table.style_text_only();
    }
    table.set_header(headers.iter().map(|h| {
        let cell = Cell::new(h);
        if term.colour {
            cell.add_attribute(Attribute::Bold)
        } else {
            cell
        }
    }));
    for row in rows {
        table.add_row(row.into_iter().map(|(value, tone)| cell(value, tone, term)));
    }
    let last = headers.len().saturating_sub(1);
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if i == last { 0 } else { 2 }));
    }
    let mut out = table.trim_fmt();
    out.push('\n');
    out
}

fn cell(value: String, tone: Tone, term: Term) -> Cell {
    let cell = Cell::new(value);
    if !term.colour {
        return cell;
    }
    match tone {
        Tone::Plain => cell,
        Tone::Good => cell.fg(Color::Green),
        Tone::Bad => cell.fg(Color::Red).add_attribute(Attribute::Bold),
        Tone::Warn => cell.fg(Color::Yellow),
        Tone::Busy => cell.fg(Color::Cyan),
        Tone::Dim => cell.add_attribute(Attribute::Dim),
        Tone::Bold => cell.add_attribute(Attribute::Bold),
        Tone::Blue => cell.fg(Color::Blue),
    }
}

fn plain(s: impl Into<String>) -> (String, Tone) {
    (s.into(), Tone::Plain)
}

fn time_ago(v: &Value, now: i64) -> (String, Tone) {
    match v.as_i64() {
        Some(ms) => plain(age(ms, now)),
        None => plain("-"),
    }
}

/// `GET /api/services`: what is live per service, and what is happening to it.
pub fn status(services: &Value, now: i64, term: Term) -> String {
    let list = services.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "no services configured\n".into();
    }
    let rows = list
        .iter()
        .map(|s| {
            let live = &s["live"];
            let replicas = s["replicas"].as_array().cloned().unwrap_or_default();
            let running = replicas.iter().filter(|r| r["running"] == true).count();
            let unhealthy = replicas
                .iter()
                .filter(|r| r["health"] == "unhealthy")
                .count();
            let wanted = s["replicas_wanted"].as_u64().unwrap_or(1) as usize;
            let health = if live.is_null() && replicas.is_empty() {
                plain("-")
            } else if replicas.is_empty() {
                // Live per the store, but nothing nginx could route to.
                ("missing".into(), Tone::Bad)
            } else {
                let text = format!(
                    "{running}/{wanted} running{}",
                    if unhealthy > 0 {
                        format!(", {unhealthy} unhealthy")
                    } else {
                        String::new()
                    }
                );
                let tone = if running == replicas.len() && unhealthy == 0 {
                    Tone::Good
                } else {
                    Tone::Bad
                };
                (text, tone)
            };
            // What is happening now wins over what happened last.
            let activity = match (&s["deploying"], &s["last"]) {
                (d, _) if !d.is_null() => {
                    let step = match &d["step"] {
                        Value::Null => text(&d["state"]),
                        step => text(step),
                    };
                    (format!("#{} {step}", d["id"]), Tone::Busy)
                }
                (_, d) if !d.is_null() => {
                    let state = text(&d["state"]);
                    let when = d["finished_at"]
                        .as_i64()
                        .map(|t| format!(" {}", age(t, now)))
                        .unwrap_or_default();
                    let tone = state_tone(&state);
                    (format!("#{} {state}{when}", d["id"]), tone)
                }
                _ => plain("-"),
            };
            let colour = text(&live["colour"]);
            vec![
                (text(&s["name"]), Tone::Bold),
                (colour.clone(), colour_tone(&colour)),
                plain(text(&live["tag"])),
                plain(short_digest(&live["digest"])),
                health,
                time_ago(&live["since"], now),
                plain(match live["deployment_id"].as_i64() {
                    Some(id) => format!("#{id}"),
                    None => "-".into(),
                }),
                activity,
            ]
        })
        .collect();
    render(
        &[
            "SERVICE",
            "COLOUR",
            "TAG",
            "DIGEST",
            "REPLICAS",
            "LIVE SINCE",
            "LIVE FROM",
            "LATEST DEPLOYMENT",
        ],
        rows,
        term,
    )
}

/// Every replica nginx routes to, per service: version, address, health, since.
pub fn replicas(services: &Value, now: i64, term: Term) -> String {
    let rows: Vec<Vec<(String, Tone)>> = services
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| {
            let service = text(&s["name"]);
            s["replicas"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |r| {
                    let health = match r["health"].as_str() {
                        Some("unhealthy") => ("unhealthy".to_string(), Tone::Bad),
                        Some(h) if r["running"] == true => (format!("running ({h})"), Tone::Good),
                        _ if r["running"] == true => ("running".into(), Tone::Good),
                        _ => (text(&r["status"]), Tone::Bad),
                    };
                    let colour = text(&r["colour"]);
                    vec![
                        plain(service.clone()),
                        (text(&r["name"]), colour_tone(&colour)),
                        plain(text(&r["tag"])),
                        plain(short_digest(&r["digest"])),
                        plain(text(&r["address"])),
                        health,
                        time_ago(&r["since"], now),
                    ]
                })
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    render(
        &[
            "SERVICE", "REPLICA", "TAG", "DIGEST", "ADDRESS", "HEALTH", "SINCE",
        ],
        rows,
        term,
    )
}

/// `GET /api/deployments`: past deployments, newest first.
pub fn history(items: &[Value], now: i64, term: Term) -> String {
    if items.is_empty() {
        return "no deployments yet\n".into();
    }
    let rows = items
        .iter()
        .map(|d| {
            let state = text(&d["state"]);
            let took = match (d["created_at"].as_i64(), d["finished_at"].as_i64()) {
                (Some(a), Some(b)) => duration(b - a),
                (Some(a), None) => format!("{}…", duration(now - a)),
                _ => "-".into(),
            };
            let error = match (d["failed_step"].as_str(), d["error"].as_str()) {
                (Some(step), Some(e)) => format!("at {step}: {e}"),
                (None, Some(e)) => e.to_string(),
                _ => "-".into(),
            };
            let colour = text(&d["colour"]);
            vec![
                plain(text(&d["id"])),
                plain(text(&d["service"])),
                (state.clone(), state_tone(&state)),
                plain(text(&d["tag"])),
                plain(short_digest(&d["digest"])),
                (colour.clone(), colour_tone(&colour)),
                plain(text(&d["trigger"])),
                time_ago(&d["created_at"], now),
                plain(took),
                plain(notified(&d["notifications"])),
                (
                    truncate(&error, CELL_WIDTH),
                    if error == "-" { Tone::Plain } else { Tone::Bad },
                ),
            ]
        })
        .collect();
    render(
        &[
            "ID", "SERVICE", "STATE", "TAG", "DIGEST", "COLOUR", "TRIGGER", "STARTED", "TOOK",
            "NOTIFIED", "ERROR",
        ],
        rows,
        term,
    )
}

/// `GET /api/deliveries`: the webhook ledger, newest first.
pub fn deliveries(list: &Value, now: i64, term: Term) -> String {
    let list = list.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "no webhook deliveries yet\n".into();
    }
    let join = |v: &Value, prefix: &str| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|x| format!("{prefix}{}", text(x)))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".into())
    };
    let rows = list
        .iter()
        .map(|d| {
            let verdict = text(&d["verdict"]);
            let tone = match verdict.as_str() {
                "queued" => Tone::Good,
                "stale" => Tone::Warn,
                "ignored" | "duplicate" | "already_live" => Tone::Dim,
                _ => Tone::Plain,
            };
            vec![
                plain(text(&d["delivery_id"])),
                plain(text(&d["source"])),
                plain(text(&d["attempt"])),
                time_ago(&d["received_at"], now),
                plain(join(&d["services"], "")),
                (verdict, tone),
                plain(join(&d["deployments"], "#")),
                plain(truncate(&text(&d["detail"]), CELL_WIDTH)),
            ]
        })
        .collect();
    render(
        &[
            "DELIVERY",
            "SOURCE",
            "ATTEMPT",
            "RECEIVED",
            "SERVICES",
            "VERDICT",
            "DEPLOYMENTS",
            "DETAIL",
        ],
        rows,
        term,
    )
}

/// `greenlight check`: each prerequisite, and how to fix the ones that fail.
pub fn check(findings: &[crate::check::Finding], term: Term) -> String {
    let rows = findings
        .iter()
        .map(|f| {
            let detail = match &f.fix {
                Some(fix) => format!("{}\nfix: {fix}", f.detail),
                None => f.detail.clone(),
            };
            vec![
                if f.ok {
                    ("ok".into(), Tone::Good)
                } else {
                    ("FAIL".into(), Tone::Bad)
                },
                plain(f.what.clone()),
                plain(detail),
            ]
        })
        .collect();
    render(&["", "CHECK", "DETAIL"], rows, term)
}

/// Per channel, how its latest attempt ended: "email sent, slack gave_up(5)".
pub fn notified(attempts: &Value) -> String {
    let mut last: Vec<(String, String, u64)> = Vec::new();
    for a in attempts.as_array().into_iter().flatten() {
        let channel = text(&a["channel"]);
        let outcome = match a["outcome"].as_str() {
            Some("failed") => "retrying".to_string(),
            _ => text(&a["outcome"]),
        };
        match last.iter_mut().find(|(c, _, _)| *c == channel) {
            Some(entry) => {
                entry.1 = outcome;
                entry.2 += 1;
            }
            None => last.push((channel, outcome, 1)),
        }
    }
    if last.is_empty() {
        return "-".into();
    }
    last.sort();
    last.iter()
        .map(|(c, o, n)| {
            if *n > 1 {
                format!("{c} {o}({n})")
            } else {
                format!("{c} {o}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A running canary (`GET /api/services/<name>/canary`'s `canary`), or a
/// line saying none runs.
pub fn canary(c: &Value, now_ms: i64) -> String {
    if c.is_null() {
        return "no canary running\n".into();
    }
    let ms = |v: &Value| v.as_f64().map_or("-".to_string(), |v| format!("{v:.0} ms"));
    let left = |end: &Value| {
        let end = end.as_i64().unwrap_or(0);
        crate::display::span(std::time::Duration::from_secs(
            ((end - now_ms).max(0) / 1000) as u64,
        ))
    };
    let mut out = format!(
        "{} deployment {}: step {}/{} at {}% of users, {}",
        c["service"].as_str().unwrap_or("?"),
        c["deployment"],
        c["stage"],
        c["stages"],
        c["percent"],
        c["state"].as_str().unwrap_or("?"),
    );
    match c["state"].as_str() {
        Some("baking") => out.push_str(&format!(", {} of bake left", left(&c["bake_ends_ms"]))),
        Some("extended") => out.push_str(&format!(
            ", waiting for traffic up to {} more",
            left(&c["extension_ends_ms"])
        )),
        _ => {}
    }
    out.push('\n');
    if let Some(reason) = c["reason"].as_str() {
        out.push_str(&format!("  {reason}\n"));
    }
    out.push_str(&format!(
        "  {:<8} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8}\n",
        "variant", "requests", "5xx", "rate", "p50", "p95", "p99"
    ));
    for variant in ["canary", "stable"] {
        let v = &c[variant];
        out.push_str(&format!(
            "  {:<8} {:>9} {:>7} {:>7.2}% {:>8} {:>8} {:>8}\n",
            variant,
            v["requests"].to_string(),
            v["errors"].to_string(),
            100.0 * v["error_rate"].as_f64().unwrap_or(0.0),
            ms(&v["p50_ms"]),
            ms(&v["p95_ms"]),
            ms(&v["p99_ms"]),
        ));
    }
    let checks = c["checks"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if !checks.is_empty() {
        out.push_str("  checks:\n");
    }
    for check in checks {
        let reasons: Vec<&str> = check["reasons"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out.push_str(&format!(
            "    {} step {} ({}%): {}{}\n",
            crate::display::timestamp(check["at_ms"].as_i64().unwrap_or(0)),
            check["stage"],
            check["percent"],
            check["verdict"].as_str().unwrap_or("?"),
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" - {}", reasons.join("; "))
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn columns_are_aligned_two_spaces_apart_without_trailing_blanks() {
        let out = render(
            &["A", "BB"],
            vec![
                vec![plain("long"), plain("x")],
                vec![plain("s"), plain("yy")],
            ],
            Term::PLAIN,
        );
        assert_eq!(out, "A     BB\nlong  x\ns     yy\n");
    }

    #[test]
    fn status_shows_the_live_colour_its_replicas_and_what_is_happening() {
        let services = json!([
            {
                "name": "web",
                "live": {"colour": "green", "tag": "v2", "digest": "sha256:abcdef0123456789ff",
                         "since": NOW - 300_000, "deployment_id": 7},
                "replicas_wanted": 2,
                "replicas": [
                    {"name": "web-green-1", "running": true, "status": "running", "colour": "green",
                     "tag": "v2", "digest": "sha256:abcdef0123456789ff", "address": "10.0.0.2:80",
                     "since": NOW - 300_000},
                    {"name": "web-green-2", "running": true, "status": "running", "colour": "green",
                     "health": "healthy", "tag": "v2", "digest": "sha256:abcdef0123456789ff",
                     "address": "10.0.0.3:80", "since": NOW - 300_000},
                ],
                "deploying": {"id": 9, "state": "running", "step": "health_gate"},
                "last": {"id": 9, "state": "running", "step": "health_gate"},
            },
            {"name": "api", "live": null, "replicas": [], "deploying": null, "last": null},
            {
                "name": "gone",
                "live": {"colour": "blue", "tag": null, "digest": "sha256:00", "since": NOW},
                "replicas": [], "deploying": null,
                "last": {"id": 3, "state": "failed", "finished_at": NOW - 7_200_000},
            },
        ]);
        let out = status(&services, NOW, Term::PLAIN);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(
            lines[0].starts_with("SERVICE  COLOUR  TAG  DIGEST"),
            "{out}"
        );
        assert!(
            lines[1].contains("green")
                && lines[1].contains("abcdef012345 ")
                && lines[1].contains("2/2 running")
                && lines[1].contains("5m ago")
                && lines[1].contains("#7")
                && lines[1].ends_with("#9 health_gate"),
            "{out}"
        );
        assert!(
            lines[2].starts_with("api ") && lines[2].ends_with(" -"),
            "{out}"
        );
        assert!(
            lines[3].contains("missing") && lines[3].ends_with("#3 failed 2h ago"),
            "{out}"
        );
        let each = replicas(&services, NOW, Term::PLAIN);
        let lines: Vec<&str> = each.lines().collect();
        assert_eq!(lines.len(), 3, "a header and a line per replica:\n{each}");
        assert!(
            lines[2].starts_with(
                "web      web-green-2  v2   abcdef012345  10.0.0.3:80  running (healthy)  5m ago"
            ),
            "{each}"
        );
    }

    #[test]
    fn history_truncates_the_error_to_one_line_in_the_table() {
        let long = format!("nginx -t failed: {}\nsecond line", "x".repeat(100));
        let items = vec![json!({
            "id": 4, "service": "web", "state": "failed", "tag": "v3",
            "digest": "sha256:0123456789abcdef", "colour": "blue", "trigger": "operator",
            "created_at": NOW - 61_000, "finished_at": NOW - 1_000,
            "failed_step": "switching", "error": long, "notifications": [],
        })];
        let out = history(&items, NOW, Term::PLAIN);
        let row = out.lines().nth(1).unwrap();
        assert!(row.contains("1m 00s") && row.contains("1m ago"), "{row}");
        let error = &row[row.find("at switching").expect("the error is shown")..];
        assert!(
            error.starts_with("at switching: nginx -t failed: xxx"),
            "{row}"
        );
        assert!(error.ends_with('…'), "{row}");
        assert_eq!(error.chars().count(), CELL_WIDTH, "{row}");
        assert!(!out.contains("second line"));
    }

    #[test]
    fn empty_lists_say_so_instead_of_printing_a_bare_header() {
        assert_eq!(
            status(&json!([]), NOW, Term::PLAIN),
            "no services configured\n"
        );
        assert_eq!(history(&[], NOW, Term::PLAIN), "no deployments yet\n");
        assert_eq!(
            deliveries(&json!([]), NOW, Term::PLAIN),
            "no webhook deliveries yet\n"
        );
    }

    #[test]
    fn colour_is_only_written_when_allowed() {
        let items = vec![json!({"id": 1, "state": "failed", "error": "boom"})];
        assert!(!history(&items, NOW, Term::PLAIN).contains('\u{1b}'));
        let tty = Term {
            interactive: true,
            colour: true,
        };
        assert!(history(&items, NOW, tty).contains('\u{1b}'));
    }

    #[test]
    fn notifications_are_summed_up_per_channel_by_their_latest_attempt() {
        let attempts = json!([
            {"channel": "slack", "outcome": "failed"},
            {"channel": "email", "outcome": "sent"},
            {"channel": "slack", "outcome": "sent"},
        ]);
        assert_eq!(notified(&attempts), "email sent, slack sent(2)");
        let retrying = json!([{"channel": "slack", "outcome": "failed"}]);
        assert_eq!(notified(&retrying), "slack retrying");
        assert_eq!(notified(&Value::Null), "-");
    }

    #[test]
    fn a_canary_reads_as_its_step_each_variant_and_every_check() {
        assert_eq!(canary(&Value::Null, 0), "no canary running\n");
        let c = serde_json::json!({
            "service": "web", "deployment": 7, "stage": 1, "stages": 3, "percent": 5,
            "state": "baking", "reason": null, "bake_ends_ms": 65_000,
            "canary": {"requests": 40, "errors": 2, "error_rate": 0.05,
                       "p50_ms": 3.2, "p95_ms": 9.0, "p99_ms": null},
            "stable": {"requests": 800, "errors": 0, "error_rate": 0.0,
                       "p50_ms": 3.0, "p95_ms": 8.0, "p99_ms": 12.0},
            "checks": [{"at_ms": 0, "stage": 1, "percent": 5, "verdict": "inconclusive",
                        "reasons": ["40 canary requests so far, 200 needed"]}]
        });
        let text = canary(&c, 5_000);
        assert!(
            text.starts_with(
                "web deployment 7: step 1/3 at 5% of users, baking, 1m of bake left\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  canary          40       2    5.00%     3 ms     9 ms        -\n"),
            "{text}"
        );
        assert!(
            text.contains("step 1 (5%): inconclusive - 40 canary requests so far, 200 needed"),
            "{text}"
        );
    }
}
