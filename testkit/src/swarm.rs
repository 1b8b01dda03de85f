//! A Docker Swarm for a test, on the one engine every test shares: initialised
//! by the test (advertised on 127.0.0.1) and left again on drop, or, if the
//! engine already was in a Swarm, used as found and left in it. Only one
//! Swarm test may run at a time on the engine: in-process this guard holds a
//! lock; across processes the nextest test group `swarm` (max-threads 1,
//! `.config/nextest.toml`) runs them one by one.
//!
//! Plain containers of other tests keep working while the engine is a manager.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::env::docker;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The engine as a one-node Swarm manager, for as long as this lives.
pub struct Swarm {
    /// The test ran `docker swarm init`, so its drop leaves.
    started: bool,
    /// Services whose names start with this are removed on drop.
    prefix: String,
    _one: MutexGuard<'static, ()>,
}

/// The engine's Swarm state: `inactive`, `active`, `pending`, `error`, `locked`.
pub fn state() -> Result<String> {
    Ok(docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"])?
        .trim()
        .to_string())
}

impl Swarm {
    /// Makes the engine a Swarm manager advertised on 127.0.0.1 (unless it
    /// already is one). Services named `<prefix>...` are removed on drop.
    pub fn init(prefix: &str) -> Result<Swarm> {
        let one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let started = match state()?.as_str() {
            "active" => false,
            "inactive" => {
                docker(&[
                    "swarm",
                    "init",
                    "--advertise-addr",
                    "127.0.0.1",
                    "--listen-addr",
                    "127.0.0.1:2377",
                ])?;
                true
            }
            other => bail!("the engine's Swarm state is {other}; leave it to run Swarm tests"),
        };
        let swarm = Swarm {
            started,
            prefix: prefix.to_string(),
            _one: one,
        };
        swarm.remove_services();
        Ok(swarm)
    }

    /// Names of this test's services.
    pub fn services(&self) -> Vec<String> {
        docker(&["service", "ls", "--format", "{{.Name}}"])
            .unwrap_or_default()
            .lines()
            .filter(|n| n.starts_with(&self.prefix))
            .map(str::to_string)
            .collect()
    }

    /// `(running, wanted)` tasks of `service`, as `docker service ls` counts them.
    pub fn replicas(&self, service: &str) -> Option<(u32, u32)> {
        let out = docker(&[
            "service",
            "ls",
            "--filter",
            &format!("name={service}"),
            "--format",
            "{{.Name}} {{.Replicas}}",
        ])
        .ok()?;
        out.lines().find_map(|l| {
            let (name, counts) = l.split_once(' ')?;
            if name != service {
                return None;
            }
            let (running, wanted) = counts.split(' ').next()?.split_once('/')?;
            Some((running.parse().ok()?, wanted.parse().ok()?))
        })
    }

    /// The running tasks of `service`: (task ID, container ID).
    pub fn running_tasks(&self, service: &str) -> Vec<(String, String)> {
        let ids = docker(&[
            "service",
            "ps",
            service,
            "--filter",
            "desired-state=running",
            "--format",
            "{{.ID}}\t{{.CurrentState}}",
        ])
        .unwrap_or_default();
        ids.lines()
            .filter(|l| l.contains("Running"))
            .filter_map(|l| l.split('\t').next())
            .filter_map(|task| {
                let container = docker(&[
                    "inspect",
                    "--format",
                    "{{.Status.ContainerStatus.ContainerID}}",
                    task,
                ])
                .ok()?;
                Some((task.to_string(), container.trim().to_string()))
            })
            .collect()
    }

    /// Waits until `service` runs `want` tasks of `want` wanted.
    pub fn wait_replicas(&self, service: &str, want: u32, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.replicas(service) == Some((want, want)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Containers of this test's services' tasks.
    pub fn containers(&self) -> Vec<String> {
        docker(&[
            "ps",
            "--all",
            "--format",
            "{{.Label \"com.docker.swarm.service.name\"}}",
        ])
        .unwrap_or_default()
        .lines()
        .filter(|n| n.starts_with(&self.prefix))
        .map(str::to_string)
        .collect()
    }

    fn remove_services(&self) {
        let names = self.services();
        if names.is_empty() {
            return;
        }
        let mut args = vec!["service", "rm"];
        args.extend(names.iter().map(String::as_str));
        if let Err(e) = docker(&args) {
            eprintln!("Swarm({}): {e:#}", self.prefix);
        }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        self.remove_services();
        // Swarm removes the services' containers after `service rm` returns.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && !self.containers().is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
        if self.started {
            if let Err(e) = docker(&["swarm", "leave", "--force"]) {
                eprintln!("Swarm({}): leaving: {e:#}", self.prefix);
            }
        }
    }
}
