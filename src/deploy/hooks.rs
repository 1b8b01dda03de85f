//! Lifecycle hooks: an operator's host command (argv, no shell unless the
//! operator writes `sh -c`), run in a process group of its own with the
//! deployment's facts as `GREENLIGHT_*` variables (and only PATH, HOME, LANG,
//! LC_ALL, TZ and TMPDIR of greenlight's environment), bounded in time (the
//! whole group is killed at the timeout), its output's tail kept.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::health::bound_log;

/// Bytes of a hook's output kept (the tail).
const OUTPUT_KEPT: usize = 8 * 1024;
/// How long the output is still read after the hook exited (a background
/// child it left may hold the pipe open).
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// Variables of greenlight's environment a hook gets; nothing else of it.
const PASSED_ON: [&str; 6] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// How a hook ended.
#[derive(Debug, Clone)]
pub struct HookRun {
    /// Its exit code; `None` when it was killed at the timeout or by a signal.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// The tail of its combined stdout and stderr.
    pub output: String,
    pub took: Duration,
}

impl HookRun {
    pub fn ok(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// One line for the step's record: how it ended and its output's tail.
    pub fn describe(&self, name: &str, argv: &[String], timeout: Duration) -> String {
        let ended = if self.timed_out {
            format!(
                "ran past hooks.timeout {} and was killed (its process group)",
                crate::display::span(timeout)
            )
        } else {
            match self.exit_code {
                Some(code) => format!("exited {code}"),
                None => "was killed by a signal".to_string(),
            }
        };
        let output = self.output.trim();
        format!(
            "{name} hook {argv:?} {ended} after {} ms{}",
            self.took.as_millis(),
            if output.is_empty() {
                String::new()
            } else {
                format!("; output: {output}")
            }
        )
    }
}

/// Runs `argv` with `env` added to greenlight's environment, at most `timeout`.
pub async fn run(
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<HookRun, String> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| "the hook has no command".to_string())?;
    let (mut reader, writer) =
        std::io::pipe().map_err(|e| format!("a pipe for its output: {e}"))?;
    let stderr = writer
        .try_clone()
        .map_err(|e| format!("a pipe for its output: {e}"))?;
    let mut command = tokio::process::Command::new(program);
    // A clean environment: greenlight's own may hold secrets (its admin
    // token, registry passwords behind ${VAR}s) that a hook has no need of.
    command
        .args(args)
        .env_clear()
        .envs(
            PASSED_ON
                .iter()
                .filter_map(|k| Some((*k, std::env::var_os(k)?))),
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(stderr)
        .kill_on_drop(true);
    // Its own process group, so the timeout kills whatever it started too.
    command.as_std_mut().process_group(0);
    let started = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run {program:?}: {e}"))?;
    // The command holds the only write ends now.
    drop(command);
    let pid = child.id();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut tail: Vec<u8> = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 2 * OUTPUT_KEPT {
                tail.drain(..tail.len() - OUTPUT_KEPT);
            }
        }
        let _ = tx.send(tail);
    });
    let (exit_code, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => (status.code(), false),
        Ok(Err(e)) => return Err(format!("waiting for {program:?}: {e}")),
        Err(_) => {
            if let Some(pid) = pid {
                // SAFETY: kill(2) with a negative pid signals the group we made.
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL);
                }
            }
            let _ = child.wait().await;
            (None, true)
        }
    };
    let took = started.elapsed();
    let bytes = tokio::time::timeout(OUTPUT_GRACE, rx)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let start = text.len().saturating_sub(OUTPUT_KEPT);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    Ok(HookRun {
        exit_code,
        timed_out,
        output: bound_log(&text[start..]),
        took,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn a_hook_gets_its_env_and_its_output_and_exit_code_are_kept() {
        let env = vec![("GREENLIGHT_SERVICE".to_string(), "web".to_string())];
        let run = run(
            &argv(&[
                "sh",
                "-c",
                "echo to $GREENLIGHT_SERVICE; echo oops >&2; exit 3",
            ]),
            &env,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(run.exit_code, Some(3));
        // Nothing else of greenlight's environment (CARGO_* here) reaches it.
        let all = super::run(&argv(&["sh", "-c", "env"]), &env, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(all.output.contains("GREENLIGHT_SERVICE=web"), "{all:?}");
        assert!(all.output.contains("PATH="), "{all:?}");
        assert!(!all.output.contains("CARGO"), "{all:?}");
        assert!(!run.timed_out && !run.ok());
        assert!(
            run.output.contains("to web") && run.output.contains("oops"),
            "{run:?}"
        );
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed_with_its_children() {
        let script = "sleep 30 & echo child $!; sleep 30";
        let run = run(
            &argv(&["sh", "-c", script]),
            &[],
            Duration::from_millis(300),
        )
        .await
        .unwrap();
        assert!(run.timed_out, "{run:?}");
        assert_eq!(run.exit_code, None);
        assert!(run.took < Duration::from_secs(5), "{run:?}");
        let child: u32 = run
            .output
            .trim()
            .strip_prefix("child ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no child pid in {run:?}"));
        // The background child was in the group: it is gone (or a zombie
        // waiting for init to reap it), not sleeping on.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            if stat.is_empty() || state == Some("Z") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the hook's child {child} outlived the kill: {stat}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error_that_names_it() {
        let e = run(&argv(&["/nonexistent/hook"]), &[], Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.contains("/nonexistent/hook"), "{e}");
    }
}
