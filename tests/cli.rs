//! The command line against a real greenlight (real Docker, nginx and registry):
//! its tables and `--json` (snapshots in tests/snapshots/), following a
//! deployment step by step, its exit codes, and shell completions.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{NginxKind, Target, World, TOKEN};
use regex::Regex;
use serde_json::Value;

const NO_ENV: &[(&str, &str)] = &[];
const SICK: &[(&str, &str)] = &[("DEMO_UNHEALTHY", "1")];

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn says(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    )
}

/// What changes from run to run, replaced by what it stands for: names carry
/// the test's process id, digests and IDs are new per build, times move.
struct Normaliser {
    exact: Vec<(String, String)>,
    patterns: Vec<(Regex, &'static str)>,
}

impl Normaliser {
    fn new(w: &World) -> Normaliser {
        let mut exact = vec![
            (w.service.clone(), "<service>".to_string()),
            (w.repo.clone(), "<repo>".to_string()),
            (w.prefix.clone(), "<prefix>".to_string()),
            (w.registry.host(), "<registry>".to_string()),
        ];
        for (version, digest) in &w.digests {
            let hex = digest.trim_start_matches("sha256:");
            exact.push((digest.clone(), format!("<digest of {version}>")));
            exact.push((hex[..12].to_string(), format!("<{version}>")));
        }
        // Longest first: a digest before its own first twelve digits.
        exact.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
        let patterns = [
            (r"\d+\.\d+\.\d+\.\d+(:\d+)?", "<address>"),
            (r"\b[0-9a-f]{12,64}\b", "<hex>"),
            (r"\b\d+ ms\b", "<n> ms"),
            (r"\b\d+ old nginx workers", "<n> old nginx workers"),
            (r"after \d+ probes", "after <n> probes"),
            (r"nginx in \d+(\.\d+)?m?s\b", "nginx in <took>"),
        ]
        .into_iter()
        .map(|(re, to)| (Regex::new(re).unwrap(), to))
        .collect();
        Normaliser { exact, patterns }
    }

    fn text(&self, s: &str) -> String {
        let mut s = s.to_string();
        for (from, to) in &self.exact {
            s = s.replace(from.as_str(), to);
        }
        for (re, to) in &self.patterns {
            s = re.replace_all(&s, *to).into_owned();
        }
        s
    }

    /// Times become `<time>`, Docker's IDs `<id>`, every string is normalised.
    fn json(&self, v: &Value) -> Value {
        match v {
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, x)| {
                        let time = k.ends_with("_at") || k == "since" || k == "at";
                        let docker_id = k.ends_with("image_id") || k == "container_id" || k == "id";
                        let x = match x {
                            Value::Number(_) if time => "<time>".into(),
                            Value::String(_) if docker_id => "<id>".into(),
                            x => self.json(x),
                        };
                        (k.clone(), x)
                    })
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.json(x)).collect()),
            Value::String(s) => Value::String(self.text(s)),
            other => other.clone(),
        }
    }

    /// Reads an aligned table back into its cells, asserting that every cell
    /// starts at its header's column; then normalises each cell and lays the
    /// table out again (volatile values change the widths). A cell cut short
    /// ("…") must be the start of one of `full`, which stands in for it: where
    /// a text is cut depends on the length of the names in it.
    fn table(&self, text: &str, full: &[String]) -> String {
        assert!(!text.contains('\u{1b}'), "escape codes in a pipe:\n{text}");
        // `status` prints its services, then every replica: two tables.
        text.split("\n\n")
            .map(|t| self.one_table(t, full))
            .collect::<Vec<_>>()
            .join("\n\n")
    }

    fn one_table(&self, text: &str, full: &[String]) -> String {
        let mut lines = text.lines();
        let header = lines.next().expect("a header line");
        let starts: Vec<usize> = header
            .char_indices()
            .filter(|&(i, c)| c != ' ' && (i == 0 || header[..i].ends_with("  ")))
            .map(|(i, _)| i)
            .collect();
        let names: Vec<&str> = starts
            .iter()
            .enumerate()
            .map(|(c, &start)| {
                header[start..starts.get(c + 1).copied().unwrap_or(header.len())].trim()
            })
            .collect();
        let mut rows = vec![names.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
        for line in lines {
            let chars: Vec<char> = line.chars().collect();
            let mut row = Vec::new();
            for (c, &start) in starts.iter().enumerate() {
                let end = starts
                    .get(c + 1)
                    .copied()
                    .unwrap_or(chars.len())
                    .min(chars.len());
                assert!(
                    start < chars.len()
                        && chars[start] != ' '
                        && (start == 0 || chars[start - 1] == ' '),
                    "column {} is not aligned in {line:?}\n{text}",
                    names[c]
                );
                let cell: String = chars[start..end].iter().collect();
                row.push(self.cell(names[c], cell.trim(), full));
            }
            rows.push(row);
        }
        let widths: Vec<usize> = (0..starts.len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap())
            .collect();
        rows.iter()
            .map(|r| {
                r.iter()
                    .zip(&widths)
                    .map(|(cell, w)| format!("{cell:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn cell(&self, column: &str, value: &str, full: &[String]) -> String {
        if let Some(cut) = value.strip_suffix('…') {
            assert!(
                value.chars().count() <= 60,
                "{column}: {value:?} is too wide"
            );
            let cut = cut.trim_end();
            let whole = full
                .iter()
                .map(|f| f.lines().next().unwrap_or(""))
                .find(|f| f.starts_with(cut))
                .unwrap_or_else(|| panic!("{column}: {value:?} is the start of none of {full:#?}"));
            return format!("{}…", self.text(whole));
        }
        let age = Regex::new(r"(\d+[smhd] ago|just now)$").unwrap();
        match column {
            "STARTED" | "RECEIVED" | "LIVE SINCE" | "SINCE" => {
                assert!(age.is_match(value), "{column}: {value:?}");
                "<age>".into()
            }
            "TOOK" => {
                let took = Regex::new(r"^(\d+ms|\d+\.\d+s|\d+m \d\ds)$").unwrap();
                assert!(took.is_match(value), "{column}: {value:?}");
                "<took>".into()
            }
            _ => age.replace(&self.text(value), "<age>").into_owned(),
        }
    }
}

/// The CLI as a script runs it (stdout a pipe), with `NO_COLOR` unset so that
/// plain output is the CLI's own doing.
fn cli(w: &World, args: &[&str]) -> Output {
    w.gl.cli(args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_history_and_deliveries_print_aligned_tables_and_the_apis_json() {
    let mut w = World::with_hooks(
        "t",
        &[("v1", NO_ENV), ("sick", SICK), ("v2", NO_ENV)],
        false,
    );
    // #1 from a signed GitHub delivery, an ignored one, #2 fails its health
    // gate, #3 goes live from the command line's API.
    let d1 = w.push("v1");
    let body = w.github_payload("v1", &d1, "2026-01-01T00:00:00Z");
    let (status, answer) = w.github("guid-v1", &body).await;
    assert_eq!((status, answer["outcome"].as_str()), (202, Some("queued")));
    w.wait_live("v1").await;
    let untagged = w.github_payload(
        "",
        &format!("sha256:{}", "a".repeat(64)),
        "2026-01-02T00:00:00Z",
    );
    let (_, answer) = w.github("guid-untagged", &untagged).await;
    assert_eq!(answer["outcome"], "ignored", "{answer}");
    w.push("sick");
    let sick = w.gl.deploy_and_wait(&w.service, Target::Tag("sick")).await;
    assert_eq!(sick["state"], "failed", "{sick:#}");
    w.push("v2");
    w.deploy_ok("v2").await;
    let n = Normaliser::new(&w);

    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.set_description(
        "Normalised: what changes per run is in <...>; a cell cut short (…) shows the whole text it begins",
    );
    let _guard = settings.bind_to_scope();

    // Tables. What a cut cell stands for: errors and delivery details in full.
    let mut full: Vec<String> = Vec::new();
    for d in w.gl.get("/api/deployments").await.as_array().unwrap() {
        if let (Some(step), Some(e)) = (d["failed_step"].as_str(), d["error"].as_str()) {
            full.push(format!("at {step}: {e}"));
        }
    }
    for d in w.gl.get("/api/deliveries").await.as_array().unwrap() {
        full.extend(d["detail"].as_str().map(String::from));
    }
    for (name, args) in [
        ("status", vec!["status"]),
        ("history", vec!["history"]),
        ("deliveries", vec!["deliveries"]),
    ] {
        let out = cli(&w, &args);
        assert_eq!(out.status.code(), Some(0), "{}", says(&out));
        insta::assert_snapshot!(format!("{name}_table"), n.table(&stdout(&out), &full));
    }

    // --json is the API's JSON, unchanged.
    let services = w.gl.get("/api/services").await;
    let out = cli(&w, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", says(&out));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, services);
    insta::assert_json_snapshot!("status_json", n.json(&printed));

    let deliveries = w.gl.get("/api/deliveries?limit=20").await;
    let out = cli(&w, &["deliveries", "--json"]);
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, deliveries);
    insta::assert_json_snapshot!("deliveries_json", n.json(&printed));

    // history --json shows each deployment whole, as GET /api/deployments/{id}.
    let out = cli(&w, &["history", &w.service, "--json"]);
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut whole = Vec::new();
    for id in [3, 2, 1] {
        whole.push(w.gl.get(&format!("/api/deployments/{id}")).await);
    }
    assert_eq!(printed, Value::Array(whole));
    insta::assert_json_snapshot!("history_json", n.json(&printed));

    // The whole error is one `--steps` away from the truncated cell.
    let out = cli(&w, &["history", "--steps", "--limit", "2"]);
    let text = stdout(&out);
    assert!(
        text.contains(sick["error"].as_str().unwrap()),
        "the full error under --steps:\n{text}"
    );
}

/// A child process's stdout, line by line, as it comes.
struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn of(child: &mut std::process::Child) -> Lines {
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    fn wait_for(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.seen.iter().any(|l| l.contains(needle)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "no line with {needle:?} within {within:?}: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Everything, once the process has closed its stdout.
    fn rest(mut self) -> Vec<String> {
        self.seen.extend(self.rx.iter());
        self.seen
    }
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The step lines of plain follow output (`   +1.2s  pulling   840ms  ...`),
/// as (step, line).
fn step_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let offset = words.next()?;
            (offset.starts_with('+') && offset.ends_with('s'))
                .then(|| (words.next().unwrap_or("").to_string(), l.to_string()))
        })
        .collect()
}

/// The steps the API recorded, less the final state (the outcome line's).
fn steps_before_the_outcome(d: &Value) -> Vec<String> {
    let mut steps = common::recorded_steps(d);
    steps.pop();
    steps
}

/// `received`, then the plan's steps.
fn received_then_planned(d: &Value) -> Vec<String> {
    let mut steps = vec!["received".to_string()];
    steps.extend(common::planned_steps(d));
    steps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_follow_prints_a_plain_line_per_step_and_exits_by_the_outcome() {
    let w = World::new("f", NginxKind::Host, &[("v1", NO_ENV), ("sick", SICK)]);

    // Success: a header, one line per step in order, the outcome; exit 0.
    let out = cli(&w, &["deploy", &w.service, "--tag", "v1", "--follow"]);
    assert_eq!(out.status.code(), Some(0), "{}", says(&out));
    let text = stdout(&out);
    assert!(
        !text.contains('\u{1b}'),
        "no escape codes in a pipe: {text:?}"
    );
    let lines: Vec<String> = text.lines().map(String::from).collect();
    assert_eq!(
        lines[0],
        format!("deployment 1: {} v1 (operator)", w.service),
        "{text}"
    );
    let d1 = w.gl.get("/api/deployments/1").await;
    let shown: Vec<String> = step_lines(&text).into_iter().map(|(s, _)| s).collect();
    assert_eq!(
        shown,
        steps_before_the_outcome(&d1),
        "one line per step, in order:\n{text}"
    );
    assert_eq!(shown, received_then_planned(&d1), "{text}");
    assert_eq!(lines.len(), shown.len() + 2, "{text}");
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("deployment 1 succeeded in ")
            && last.ends_with(&format!(
                "{} v1 ({}) is live on blue",
                w.service,
                &w.digest("v1")[7..19]
            )),
        "{text}"
    );
    // The lines say what the API recorded: each step's note.
    for step in d1["steps"].as_array().unwrap() {
        if let Some(note) = step["detail"]
            .as_str()
            .filter(|_| step["step"] != "succeeded")
        {
            assert!(text.contains(note), "{note:?} in\n{text}");
        }
    }

    // A watcher started before the next deployment waits for it, then follows it.
    let mut watcher = Command::new(env!("CARGO_BIN_EXE_greenlight"))
        .args([
            "--url",
            &w.gl.url(),
            "--token",
            TOKEN,
            "--config",
            "/nonexistent.toml",
        ])
        .args(["watch", "--service", &w.service])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut watched = Lines::of(&mut watcher);
    watched.wait_for(
        &format!("waiting for the next deployment of {}", w.service),
        Duration::from_secs(30),
    );

    // Failure: the failing step, the error and the container's log; exit 1.
    let out = cli(&w, &["deploy", &w.service, "--tag", "sick"]);
    assert_eq!(out.status.code(), Some(1), "{}", says(&out));
    let text = stdout(&out);
    let lines: Vec<String> = text.lines().map(String::from).collect();
    let steps = step_lines(&text);
    let names: Vec<&str> = steps.iter().map(|(s, _)| s.as_str()).collect();
    let d2 = w.gl.get("/api/deployments/2").await;
    assert_eq!(
        names,
        received_then_planned(&d2)[..5],
        "up to the failing step:\n{text}"
    );
    assert_eq!(names[4], "health_gate", "{text}");
    assert!(
        steps[4].1.contains("FAILED: ") && steps[4].1.contains("-green-1 not healthy within 10s"),
        "{text}"
    );
    let outcome = lines
        .iter()
        .find(|l| l.starts_with("deployment 2 failed at health_gate after "))
        .unwrap_or_else(|| panic!("the outcome line:\n{text}"));
    assert!(outcome.contains("not healthy within 10s"), "{text}");
    assert!(
        text.contains("last lines of the new container's log:\n    | "),
        "{text}"
    );
    assert_eq!(
        w.gl.get(&format!("/api/services/{}", w.service)).await["live"]["tag"],
        "v1"
    );

    // The watcher saw the same deployment and ends with the same exit code.
    assert_eq!(wait_exit(&mut watcher, Duration::from_secs(60)), Some(1));
    let seen = watched.rest();
    assert!(
        seen.iter()
            .any(|l| l == &format!("deployment 2: {} sick (operator)", w.service)),
        "{seen:#?}"
    );
    assert!(seen.contains(outcome), "{seen:#?}");

    // `watch ID` of a finished deployment replays it; --json is the API's.
    let out = cli(&w, &["watch", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", says(&out));
    assert_eq!(
        step_lines(&stdout(&out)).len(),
        steps_before_the_outcome(&d1).len()
    );
    let out = cli(&w, &["watch", "2", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", says(&out));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, w.gl.get("/api/deployments/2").await);

    // Nothing starts: the watch gives up with its own exit code.
    let out = cli(&w, &["watch", "--service", &w.service, "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(4), "{}", says(&out));
    assert!(stderr(&out).contains("no deployment of"), "{}", says(&out));

    // The API's refusals are printed as they are, with exit code 3.
    let out = cli(&w, &["deploy", "nosuch", "--tag", "v1"]);
    assert_eq!(out.status.code(), Some(3), "{}", says(&out));
    assert_eq!(
        stderr(&out).trim(),
        "greenlight: no service named \"nosuch\" (HTTP 404)"
    );
    assert!(stdout(&out).is_empty(), "{}", says(&out));
    let out = cli(&w, &["watch", "99", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", says(&out));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, serde_json::json!({"error": "no deployment 99"}));

    // Rollback of an unknown service: this server answers 404 (no such route
    // before the rollback endpoint exists, no such service after).
    let out = cli(&w, &["rollback", "nosuch"]);
    assert_eq!(out.status.code(), Some(3), "{}", says(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with("greenlight: ") && err.trim_end().ends_with("(HTTP 404)"),
        "{}",
        says(&out)
    );
    assert!(stdout(&out).is_empty(), "{}", says(&out));
}

#[test]
fn completions_print_a_script_that_knows_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_greenlight"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", says(&out));
        let script = stdout(&out);
        for sub in [
            "status",
            "deploy",
            "rollback",
            "watch",
            "history",
            "deliveries",
            "redeliver",
            "completions",
        ] {
            assert!(script.contains(sub), "{shell}: no {sub}");
        }
    }
    // The bash script is valid bash.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("greenlight.bash");
    let out = Command::new(env!("CARGO_BIN_EXE_greenlight"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    std::fs::write(&path, &out.stdout).unwrap();
    let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(check.status.success(), "{}", says(&check));
}

/// Runs the CLI on a pseudo-terminal (util-linux `script`), as a person would.
fn on_a_terminal(w: &World, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = format!(
        "{} --url {} --token {TOKEN} --config /nonexistent.toml",
        env!("CARGO_BIN_EXE_greenlight"),
        w.gl.url()
    );
    for a in args {
        command.push(' ');
        command.push_str(a);
    }
    let out = Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .envs(env.iter().copied())
        .env("TERM", "xterm-256color")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out.status.code(), stdout(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_a_spinner_follows_the_step_and_colour_goes_unless_no_color_is_set() {
    let w = World::new("p", NginxKind::Host, &[("v1", NO_ENV), ("v2", NO_ENV)]);
    let sgr = Regex::new(r"\x1b\[[0-9;]*m").unwrap();
    let spinner = Regex::new(r"[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏](\x1b\[0m)? +[a-z_]+ +[0-9.]+m?s").unwrap();

    let (code, text) = on_a_terminal(&w, &["deploy", &w.service, "--tag", "v1"], &[]);
    assert_eq!(code, Some(0), "{text:?}");
    assert!(
        spinner.is_match(&text),
        "a spinner with the step and its time: {text:?}"
    );
    assert!(
        text.contains("\x1b[32m✔\x1b[0m pulling "),
        "a green tick: {text:?}"
    );
    assert!(text.contains("\x1b[32msucceeded\x1b[0m in "), "{text:?}");
    let (code, text) = on_a_terminal(&w, &["status"], &[]);
    assert_eq!(code, Some(0), "{text:?}");
    assert!(
        text.starts_with("\x1b[1mSERVICE\x1b[0m"),
        "a bold header: {text:?}"
    );

    // NO_COLOR: the same spinner and lines, without a colour.
    let (code, text) = on_a_terminal(
        &w,
        &["deploy", &w.service, "--tag", "v2"],
        &[("NO_COLOR", "1")],
    );
    assert_eq!(code, Some(0), "{text:?}");
    assert!(spinner.is_match(&text), "{text:?}");
    assert!(text.contains("✔ pulling "), "{text:?}");
    assert!(!sgr.is_match(&text), "no colour under NO_COLOR: {text:?}");
    let (code, text) = on_a_terminal(&w, &["history"], &[("NO_COLOR", "1")]);
    assert_eq!(code, Some(0), "{text:?}");
    assert!(text.starts_with("ID  SERVICE"), "{text:?}");
    assert!(!sgr.is_match(&text), "{text:?}");
}
