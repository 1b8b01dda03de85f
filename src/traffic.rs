//! What nginx's JSON access log says about each backend: how many requests it
//! answered, how many of those were server errors, how often nginx could not
//! reach it, and how many clients gave up. A rolling update compares its new
//! replicas with the old ones from this.
//!
//! The log is the operator's site log in the documented format
//! (`nginx/greenlight-log.conf`): one JSON object per line with
//! `$upstream_addr`, `$upstream_status` and `$upstream_connect_time`, which
//! list every peer tried (`, ` between peers, ` : ` across an internal
//! redirect). The reader follows the file across rotation (a new inode, or a
//! file shorter than where it stopped).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Longest line kept; a longer one is not the documented format.
const MAX_LINE: usize = 64 * 1024;

/// Counts of one backend over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Requests the backend answered.
    pub requests: u64,
    /// Of those, answered with a 5xx.
    pub errors: u64,
    /// Attempts nginx could not connect to it (retried elsewhere or a 502).
    pub unreachable: u64,
    /// Requests whose client closed the connection first (499).
    pub client_closed: u64,
}

impl Tally {
    pub fn add(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.unreachable += other.unreachable;
        self.client_closed += other.client_closed;
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// One line of the documented log format (unknown fields are ignored).
#[derive(Debug, Deserialize)]
struct Line {
    #[serde(default)]
    status: String,
    #[serde(default)]
    upstream_addr: String,
    #[serde(default)]
    upstream_status: String,
    #[serde(default)]
    upstream_connect_time: String,
    #[serde(default)]
    upstream_response_time: String,
    #[serde(default)]
    msec: String,
}

/// One proxied request, as a canary's analysis sees it: the peer that
/// answered last, what it answered, and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// When nginx logged it (Unix ms).
    pub at_ms: i64,
    /// The peer that answered (the last one tried).
    pub peer: String,
    /// Peers tried before it that nginx could not reach.
    pub unreachable: Vec<String>,
    pub outcome: Outcome,
    /// The answering peer's response time (ms), when it answered.
    pub response_ms: Option<f64>,
}

/// What became of a proxied request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The app answered with anything but a 5xx (a 4xx is the client's doing).
    Answered,
    /// The app answered with a 5xx.
    ServerError,
    /// nginx could not reach the peer (no connect time), so the app said nothing.
    Unreachable,
    /// The client closed the connection first (499).
    ClientClosed,
}

impl Request {
    /// The request a log line describes; `None` when nothing was proxied.
    fn from_line(line: &Line) -> Option<Request> {
        let addrs = peers(&line.upstream_addr);
        let statuses = peers(&line.upstream_status);
        let connects = peers(&line.upstream_connect_time);
        let times = peers(&line.upstream_response_time);
        let last = addrs.len().checked_sub(1)?;
        let reached = |i: usize| connects.get(i).is_some_and(|c| *c != "-");
        let unreachable = (0..last)
            .filter(|i| !reached(*i))
            .map(|i| addrs[i].to_string())
            .collect();
        let outcome = if !reached(last) {
            Outcome::Unreachable
        } else if line.status == "499" {
            Outcome::ClientClosed
        } else if statuses
            .get(last)
            .and_then(|s| s.parse::<u16>().ok())
            .is_some_and(|s| s >= 500)
        {
            Outcome::ServerError
        } else {
            Outcome::Answered
        };
        let at_ms = line
            .msec
            .parse::<f64>()
            .map(|s| (s * 1000.0) as i64)
            .unwrap_or(0);
        Some(Request {
            at_ms,
            peer: addrs[last].to_string(),
            unreachable,
            outcome,
            response_ms: times
                .get(last)
                .and_then(|t| t.parse::<f64>().ok())
                .map(|s| s * 1000.0),
        })
    }
}

/// Splits an `$upstream_*` value into its peers, in order.
fn peers(value: &str) -> Vec<&str> {
    value
        .split(" : ")
        .flat_map(|group| group.split(", "))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// Adds what one log line says to `tallies`, by backend address.
fn count(line: &Line, tallies: &mut HashMap<String, Tally>) {
    let addrs = peers(&line.upstream_addr);
    let statuses = peers(&line.upstream_status);
    let connects = peers(&line.upstream_connect_time);
    for (i, addr) in addrs.iter().enumerate() {
        let t = tallies.entry(addr.to_string()).or_default();
        // No connect time: nginx never reached this peer.
        if connects.get(i).is_none_or(|c| *c == "-") {
            t.unreachable += 1;
            continue;
        }
        let last = i + 1 == addrs.len();
        if last && line.status == "499" {
            t.client_closed += 1;
            continue;
        }
        t.requests += 1;
        if statuses
            .get(i)
            .and_then(|s| s.parse::<u16>().ok())
            .is_some_and(|s| s >= 500)
        {
            t.errors += 1;
        }
    }
}

/// Reads a log from where it last stopped.
#[derive(Debug)]
pub struct AccessLog {
    path: PathBuf,
    inode: u64,
    offset: u64,
    partial: Vec<u8>,
}

impl AccessLog {
    /// Starts at the log's current end: only traffic from now on counts.
    pub fn from_end(path: &Path) -> std::io::Result<AccessLog> {
        let meta = std::fs::metadata(path)?;
        Ok(AccessLog {
            path: path.to_path_buf(),
            inode: meta.ino(),
            offset: meta.len(),
            partial: Vec::new(),
        })
    }

    /// Starts where an earlier reader stopped (`position()`), if the log is
    /// still that file and at least that long; else at its current end.
    pub fn resume(path: &Path, inode: u64, offset: u64) -> std::io::Result<AccessLog> {
        let meta = std::fs::metadata(path)?;
        if meta.ino() == inode && meta.len() >= offset {
            return Ok(AccessLog {
                path: path.to_path_buf(),
                inode,
                offset,
                partial: Vec::new(),
            });
        }
        AccessLog::from_end(path)
    }

    /// Where the next read starts: the file's inode and the offset of the
    /// first byte not yet read as a whole line.
    pub fn position(&self) -> (u64, u64) {
        (self.inode, self.offset - self.partial.len() as u64)
    }

    /// The tallies of the lines written since the last read, by backend.
    /// Lines that are not the documented format are skipped.
    pub fn read(&mut self) -> std::io::Result<HashMap<String, Tally>> {
        let mut tallies = HashMap::new();
        for line in self.lines()? {
            count(&line, &mut tallies);
        }
        Ok(tallies)
    }

    /// The proxied requests logged since the last read, in order.
    pub fn requests(&mut self) -> std::io::Result<Vec<Request>> {
        Ok(self
            .lines()?
            .iter()
            .filter_map(Request::from_line)
            .collect())
    }

    fn lines(&mut self) -> std::io::Result<Vec<Line>> {
        let mut lines = Vec::new();
        let mut file = std::fs::File::open(&self.path)?;
        let meta = file.metadata()?;
        if meta.ino() != self.inode || meta.len() < self.offset {
            // Rotated (renamed and recreated, or truncated): the new file is
            // read from its start. Lines written to the old one after the last
            // read are lost to this window, which only makes it shorter.
            self.inode = meta.ino();
            self.offset = 0;
            self.partial.clear();
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        file.take(16 * 1024 * 1024).read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        let mut data = std::mem::take(&mut self.partial);
        data.extend_from_slice(&buf);
        let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for raw in data[..complete].split(|b| *b == b'\n') {
            if raw.is_empty() || raw.len() > MAX_LINE {
                continue;
            }
            if let Ok(line) = serde_json::from_slice::<Line>(raw) {
                lines.push(line);
            }
        }
        if data.len() - complete <= MAX_LINE {
            self.partial = data[complete..].to_vec();
        }
        Ok(lines)
    }
}

/// Whether `new` answers errors clearly more often than `old`: one-sided
/// Fisher exact test, p < `alpha`, and at least `floor` errors of the new ones
/// (a single unlucky error proves nothing). Returns the p-value when it does.
pub fn clearly_worse(new: &Tally, old: &Tally, floor: u64, alpha: f64) -> Option<f64> {
    if new.errors < floor || new.error_rate() <= old.error_rate() {
        return None;
    }
    let table = [
        new.errors.min(u32::MAX as u64) as u32,
        (new.requests - new.errors).min(u32::MAX as u64) as u32,
        old.errors.min(u32::MAX as u64) as u32,
        (old.requests - old.errors).min(u32::MAX as u64) as u32,
    ];
    let p = fishers_exact::fishers_exact(&table).ok()?.greater_pvalue;
    (p < alpha).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn line(addr: &str, status: &str, upstream_status: &str, connect: &str) -> String {
        format!(
            "{{\"msec\":\"1.0\",\"status\":\"{status}\",\"upstream_addr\":\"{addr}\",\"upstream_status\":\"{upstream_status}\",\"upstream_connect_time\":\"{connect}\",\"request_time\":\"0.001\"}}\n"
        )
    }

    #[test]
    fn a_peer_nginx_could_not_reach_is_not_an_app_error() {
        let mut t = HashMap::new();
        let l = |s: &str| serde_json::from_str::<Line>(s.trim()).unwrap();
        // The first peer refused the connection; the retry answered 200.
        count(
            &l(&line(
                "10.0.0.1:80, 10.0.0.2:80",
                "200",
                "502, 200",
                "-, 0.001",
            )),
            &mut t,
        );
        // The app answered 500.
        count(&l(&line("10.0.0.2:80", "500", "500", "0.001")), &mut t);
        // 4xx are not errors; a client that gave up is counted apart.
        count(&l(&line("10.0.0.2:80", "404", "404", "0.001")), &mut t);
        count(&l(&line("10.0.0.2:80", "499", "", "0.001")), &mut t);
        // No upstream at all (a static answer): nothing to count.
        count(&l(&line("", "301", "", "")), &mut t);
        assert_eq!(
            t["10.0.0.1:80"],
            Tally {
                unreachable: 1,
                ..Default::default()
            }
        );
        assert_eq!(
            t["10.0.0.2:80"],
            Tally {
                requests: 3,
                errors: 1,
                unreachable: 0,
                client_closed: 1
            }
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn the_reader_takes_only_new_lines_and_follows_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.json");
        std::fs::write(&path, line("10.0.0.9:80", "200", "200", "0.001")).unwrap();
        let mut log = AccessLog::from_end(&path).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(line("10.0.0.1:80", "200", "200", "0.001").as_bytes())
            .unwrap();
        // Half a line: kept until its end arrives.
        f.write_all(b"{\"status\":\"500\",\"upstream_addr\":\"10.0.0.1:80\",")
            .unwrap();
        let t = log.read().unwrap();
        assert_eq!(t["10.0.0.1:80"].requests, 1);
        assert!(
            !t.contains_key("10.0.0.9:80"),
            "written before the reader started"
        );
        f.write_all(
            b"\"upstream_status\":\"500\",\"upstream_connect_time\":\"0.002\"}\nnot json\n",
        )
        .unwrap();
        assert_eq!(log.read().unwrap()["10.0.0.1:80"].errors, 1);
        // Rotation: the file is renamed away and a new one begun.
        std::fs::rename(&path, dir.path().join("access.json.1")).unwrap();
        std::fs::write(&path, line("10.0.0.2:80", "200", "200", "0.001")).unwrap();
        let t = log.read().unwrap();
        assert_eq!(t["10.0.0.2:80"].requests, 1);
        assert!(log.read().unwrap().is_empty());
        // A reader started where this one stopped sees only what came after.
        let (inode, offset) = log.position();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(line("10.0.0.3:80", "502", "502", "0.001").as_bytes())
            .unwrap();
        let mut again = AccessLog::resume(&path, inode, offset).unwrap();
        let requests = again.requests().unwrap();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].peer, "10.0.0.3:80");
        assert_eq!(requests[0].outcome, Outcome::ServerError);
    }

    #[test]
    fn a_request_is_judged_by_the_peer_that_answered() {
        let l = |s: String| Request::from_line(&serde_json::from_str::<Line>(s.trim()).unwrap());
        let with_time = |s: String| {
            s.replace(
                "\"request_time\"",
                "\"upstream_response_time\":\"-, 0.250\",\"request_time\"",
            )
        };
        let r = l(with_time(line(
            "10.0.0.1:80, 10.0.0.2:80",
            "200",
            "502, 200",
            "-, 0.001",
        )))
        .unwrap();
        assert_eq!(r.peer, "10.0.0.2:80");
        assert_eq!(r.unreachable, ["10.0.0.1:80"]);
        assert_eq!(r.outcome, Outcome::Answered);
        assert_eq!(r.response_ms, Some(250.0));
        assert_eq!(r.at_ms, 1000);
        let r = l(line("10.0.0.1:80", "502", "502", "-")).unwrap();
        assert_eq!(r.outcome, Outcome::Unreachable);
        let r = l(line("10.0.0.1:80", "503", "503", "0.001")).unwrap();
        assert_eq!(r.outcome, Outcome::ServerError);
        let r = l(line("10.0.0.1:80", "404", "404", "0.001")).unwrap();
        assert_eq!(r.outcome, Outcome::Answered);
        let r = l(line("10.0.0.1:80", "499", "", "0.001")).unwrap();
        assert_eq!(r.outcome, Outcome::ClientClosed);
        assert_eq!(l(line("", "301", "", "")), None);
    }

    #[test]
    fn only_a_clear_and_significant_excess_of_errors_counts() {
        let tally = |requests, errors| Tally {
            requests,
            errors,
            ..Default::default()
        };
        // 10% against 0.1%: clear.
        assert!(clearly_worse(&tally(200, 20), &tally(2000, 2), 5, 0.01).is_some());
        // One error in 20 against none: below the floor.
        assert!(clearly_worse(&tally(20, 1), &tally(2000, 0), 5, 0.01).is_none());
        // The same rate on both sides: not the new version's fault.
        assert!(clearly_worse(&tally(200, 20), &tally(2000, 200), 5, 0.01).is_none());
        // Few samples: 5 of 10 against 1 of 10 is not significant at 1%.
        assert!(clearly_worse(&tally(10, 5), &tally(10, 1), 5, 0.01).is_none());
        // A stricter level (many looks) needs more evidence: 10 of 100
        // against 2 of 100 passes at 5% and not at 0.05%.
        assert!(clearly_worse(&tally(100, 10), &tally(100, 2), 5, 0.05).is_some());
        assert!(clearly_worse(&tally(100, 10), &tally(100, 2), 5, 0.0005).is_none());
    }
}
