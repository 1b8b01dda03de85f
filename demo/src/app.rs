//! The demo's routes: what each request gets back. No I/O except `/slow`'s sleep.

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::http::{query_param, Head, Response};

/// Longest sleep `/slow` accepts.
pub const MAX_SLOW: Duration = Duration::from_secs(60);

/// The application state shared by every connection.
#[derive(Debug)]
pub struct App {
    config: Config,
    started: Instant,
    /// App requests answered so far (for `DEMO_ERROR_PERCENT`).
    served: AtomicU64,
}

impl App {
    pub fn new(config: Config) -> App {
        App {
            config,
            started: Instant::now(),
            served: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Headers every response carries, errors included, so a test can tell who answered.
    pub fn identity_headers(&self) -> [(&'static str, &str); 2] {
        [
            ("X-Demo-Version", self.config.version.as_str()),
            ("X-Demo-Colour", self.config.colour.as_str()),
        ]
    }

    /// Answers one request whose body (of `body_len` bytes) has been read already.
    pub fn handle(&self, head: &Head, body_len: u64) -> Response {
        let method = if head.method == "HEAD" {
            "GET"
        } else {
            head.method.as_str()
        };
        if head.path != "/healthz" && !self.config.extra_latency.is_zero() {
            thread::sleep(self.config.extra_latency);
        }
        if head.path != "/healthz" && self.fails_this_one() {
            return Response::text(500, "failing on purpose (DEMO_ERROR_PERCENT)\n");
        }
        match (method, head.path.as_str()) {
            ("GET", "/") => Response::json(200, self.identity_json(&[])),
            ("GET", "/healthz") => self.health(),
            ("GET" | "POST", "/slow") => self.slow(&head.query),
            ("POST", "/" | "/echo") => Response::json(
                200,
                self.identity_json(&[("body_length", body_len.to_string())]),
            ),
            _ => Response::text(404, "not found\n"),
        }
    }

    /// Whether this app request is one of the `DEMO_ERROR_PERCENT` that fail:
    /// request n fails when n * percent / 100 moves to the next whole number,
    /// so failures are spread evenly from the first request on.
    fn fails_this_one(&self) -> bool {
        let percent = self.config.error_percent;
        if percent == 0 {
            return false;
        }
        let n = self.served.fetch_add(1, Ordering::Relaxed);
        (n + 1) * percent / 100 > n * percent / 100
    }

    /// Whether this replica is one `DEMO_UNHEALTHY_REPLICAS` names.
    fn unhealthy_replica(&self) -> bool {
        let k = self
            .config
            .replica
            .rsplit('-')
            .next()
            .and_then(|k| k.parse::<u32>().ok());
        k.is_some_and(|k| self.config.unhealthy_replicas.contains(&k))
    }

    fn health(&self) -> Response {
        if self.config.unhealthy {
            Response::text(503, "unhealthy (DEMO_UNHEALTHY=1)\n")
        } else if self.unhealthy_replica() && self.config.unhealthy_after.is_none() {
            Response::text(503, "unhealthy (DEMO_UNHEALTHY_REPLICAS)\n")
        } else if self
            .config
            .unhealthy_after
            .is_some_and(|after| self.started.elapsed() >= after)
            && (self.config.unhealthy_replicas.is_empty() || self.unhealthy_replica())
        {
            Response::text(503, "unhealthy (DEMO_UNHEALTHY_AFTER_MS)\n")
        } else if self.started.elapsed() < self.config.start_delay {
            Response::text(503, "starting (DEMO_START_DELAY_MS)\n")
        } else {
            Response::text(200, "ok")
        }
    }

    fn slow(&self, query: &str) -> Response {
        let ms = match query_param(query, "ms").as_deref() {
            None | Some("") => 0,
            Some(text) => match text.parse::<u64>() {
                Ok(ms) => ms,
                Err(_) => return Response::text(400, "ms must be a whole number\n"),
            },
        };
        let pause = Duration::from_millis(ms).min(MAX_SLOW);
        thread::sleep(pause);
        Response::json(
            200,
            self.identity_json(&[("slept_ms", pause.as_millis().to_string())]),
        )
    }

    /// `{"version":..,"colour":..,"pid":..}` plus extra numeric fields.
    fn identity_json(&self, extra: &[(&str, String)]) -> String {
        let mut json = format!(
            "{{\"version\":{},\"colour\":{},\"pid\":{}",
            json_string(&self.config.version),
            json_string(&self.config.colour),
            std::process::id()
        );
        for (name, number) in extra {
            json.push_str(&format!(",\"{name}\":{number}"));
        }
        json.push('}');
        json
    }
}

/// A JSON string literal for `text`.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_head;

    fn app(config: Config) -> App {
        App::new(config)
    }

    fn get(app: &App, target: &str) -> Response {
        let head = parse_head(format!("GET {target} HTTP/1.1\r\n\r\n").as_bytes()).unwrap();
        app.handle(&head, 0)
    }

    fn body(response: &Response) -> String {
        String::from_utf8(response.body.clone()).unwrap()
    }

    #[test]
    fn root_reports_version_colour_and_pid() {
        let app = app(Config {
            version: "v\"2".into(),
            colour: "blue".into(),
            ..Config::default()
        });
        let response = get(&app, "/");
        assert_eq!(response.status, 200);
        assert_eq!(response.content_type, "application/json");
        assert_eq!(
            body(&response),
            format!(
                "{{\"version\":\"v\\\"2\",\"colour\":\"blue\",\"pid\":{}}}",
                std::process::id()
            )
        );
    }

    #[test]
    fn a_share_of_app_requests_fails_evenly_and_health_is_spared() {
        let app = app(Config {
            error_percent: 25,
            ..Config::default()
        });
        let statuses: Vec<u16> = (0..8).map(|_| get(&app, "/").status).collect();
        assert_eq!(statuses, [200, 200, 200, 500, 200, 200, 200, 500]);
        assert!((0..10).all(|_| get(&app, "/healthz").status == 200));
    }

    #[test]
    fn only_the_named_replicas_are_unhealthy() {
        let replica = |name: &str| {
            app(Config {
                unhealthy_replicas: vec![2],
                replica: name.into(),
                ..Config::default()
            })
        };
        assert_eq!(get(&replica("web-green-2"), "/healthz").status, 503);
        assert_eq!(get(&replica("web-green-1"), "/healthz").status, 200);
        assert_eq!(get(&replica("web-green-12"), "/healthz").status, 200);
        // With DEMO_UNHEALTHY_AFTER_MS, only the listed replicas turn, later.
        let later = |name: &str, after: u64| {
            app(Config {
                unhealthy_replicas: vec![2],
                unhealthy_after: Some(Duration::from_millis(after)),
                replica: name.into(),
                ..Config::default()
            })
        };
        assert_eq!(
            get(&later("web-green-2", 3_600_000), "/healthz").status,
            200
        );
        assert_eq!(get(&later("web-green-2", 0), "/healthz").status, 503);
        assert_eq!(get(&later("web-green-1", 0), "/healthz").status, 200);
    }

    #[test]
    fn healthz_follows_unhealthy_and_start_delay() {
        assert_eq!(get(&app(Config::default()), "/healthz").status, 200);
        let unhealthy = app(Config {
            unhealthy: true,
            ..Config::default()
        });
        assert_eq!(get(&unhealthy, "/healthz").status, 503);
        let starting = app(Config {
            start_delay: Duration::from_secs(3600),
            ..Config::default()
        });
        assert_eq!(get(&starting, "/healthz").status, 503);
        assert_eq!(get(&starting, "/").status, 200);
    }

    #[test]
    fn slow_sleeps_and_validates() {
        let app = app(Config::default());
        let started = Instant::now();
        let response = get(&app, "/slow?ms=50");
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(body(&response).ends_with(",\"slept_ms\":50}"));
        assert_eq!(get(&app, "/slow?ms=soon").status, 400);
    }

    #[test]
    fn post_reports_body_length_and_unknown_routes_are_404() {
        let app = app(Config::default());
        let head = parse_head(b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert!(body(&app.handle(&head, 5)).ends_with(",\"body_length\":5}"));
        assert_eq!(get(&app, "/nope").status, 404);
        let head = parse_head(b"DELETE / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(app.handle(&head, 0).status, 404);
    }
}
