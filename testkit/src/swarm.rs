//! A Docker Swarm for a test, on the one engine every test shares: initialised
//! by the test (advertised on 127.0.0.1) and left again on drop, or, if the
//! engine already was in a Swarm, used as found and left in it. Only one
//! Swarm test may run at a time on the engine: in-process this guard holds a
//! lock; across processes the nextest test group `swarm` (max-threads 1,
//! `.config/nextest.toml`) runs them one by one.
//!
//! Plain containers of other tests keep working while the engine is a manager.

use std::io::ErrorKind;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use crate::env::docker;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// `docker service ps` of the tasks Swarm wants running, one line each in `format`.
fn service_ps(service: &str, format: &str) -> Vec<String> {
    docker(&[
        "service",
        "ps",
        service,
        "--filter",
        "desired-state=running",
        "--format",
        format,
    ])
    .unwrap_or_default()
    .lines()
    .map(str::to_string)
    .collect()
}

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
        service_ps(service, "{{.ID}}\t{{.CurrentState}}")
            .iter()
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

/// A second Docker engine on this machine, as a second Swarm node: its own
/// network namespace joined to the host by a veth pair (a private /30: the
/// host end is the manager's address, the other end the node's), its own
/// hostname, data root, exec root, socket and cgroup parent. `ip netns exec`
/// hides the cgroup v1 hierarchies, so they are mounted again inside before
/// `dockerd` starts. Stopped, and its namespace and files removed, on drop.
pub struct SecondNode {
    netns: String,
    host_if: String,
    node_if: String,
    /// [`SecondNode::cut`] took its link down.
    cut: AtomicBool,
    /// Ports of the host's loopback forwarded into the node's.
    forwards: Mutex<Vec<Forward>>,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
    /// The host's end of the veth pair: advertise the Swarm on it.
    pub host_addr: String,
    /// The node's address: its tasks' ports are reached there.
    pub addr: String,
}

/// The address pair of the veth link.
const HOST_ADDR: &str = "192.168.254.1";
const NODE_ADDR: &str = "192.168.254.2";

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

impl SecondNode {
    /// Starts the engine (named `<tag>node2`) and waits until it answers.
    pub fn start(tag: &str) -> Result<SecondNode> {
        let id = std::process::id() % 10_000;
        let netns = format!("gl{id}{tag}");
        let host_if = format!("glh{id}");
        let node_if = format!("gln{id}");
        let dir = tempfile::Builder::new().prefix("gl-node2-").tempdir()?;
        let mut node = SecondNode {
            netns: netns.clone(),
            host_if: host_if.clone(),
            node_if: node_if.clone(),
            cut: Default::default(),
            forwards: Default::default(),
            dir,
            child: None,
            host_addr: HOST_ADDR.into(),
            addr: NODE_ADDR.into(),
        };
        run("ip", &["netns", "add", &netns])?;
        run(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &node_if,
            ],
        )?;
        run("ip", &["link", "set", &node_if, "netns", &netns])?;
        run(
            "ip",
            &["addr", "add", &format!("{HOST_ADDR}/30"), "dev", &host_if],
        )?;
        run("ip", &["link", "set", &host_if, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", netns.as_str(), "ip"];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        inside(&["addr", "add", &format!("{NODE_ADDR}/30"), "dev", &node_if])?;
        inside(&["link", "set", &node_if, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        let d = node.dir.path().to_path_buf();
        // Only what the host's /etc/docker/daemon.json sets that a second
        // engine also needs (its data root and the rest are its own).
        std::fs::write(
            d.join("daemon.json"),
            r#"{"storage-driver": "fuse-overlayfs", "mtu": 1400}"#,
        )?;
        let name = format!("{tag}node2");
        let script = format!(
            "set -e\n\
             hostname {name}\n\
             mount -t tmpfs cgroup /sys/fs/cgroup\n\
             for h in cpu cpuacct cpuset memory devices freezer blkio pids; do\n\
               mkdir -p /sys/fs/cgroup/$h; mount -t cgroup -o $h cgroup /sys/fs/cgroup/$h\n\
             done\n\
             mkdir -p /sys/fs/cgroup/systemd\n\
             mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd\n\
             exec dockerd --config-file {d}/daemon.json --data-root {d}/data \
               --exec-root {d}/exec -H unix://{d}/docker.sock --pidfile {d}/docker.pid \
               --bip 172.31.250.1/24 --cgroup-parent {name}\n",
            d = d.display()
        );
        std::fs::write(d.join("run.sh"), script)?;
        let log = std::fs::File::create(d.join("dockerd.log"))?;
        node.child = Some(
            std::process::Command::new("ip")
                .args(["netns", "exec", &netns, "unshare", "--uts", "--mount", "sh"])
                .arg(d.join("run.sh"))
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while node.docker(&["info", "--format", "{{.Name}}"]).is_err() {
            if Instant::now() > deadline {
                bail!("the second engine did not answer: {}", node.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(node)
    }

    pub fn socket(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.path().display())
    }

    /// `docker -H <this engine> args...`.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        let host = self.socket();
        let mut all = vec!["-H", host.as_str()];
        all.extend_from_slice(args);
        run("docker", &all)
    }

    /// Joins the Swarm the host's engine manages (advertised on `host_addr`).
    pub fn join(&self) -> Result<()> {
        let token = docker(&["swarm", "join-token", "-q", "worker"])?;
        self.docker(&[
            "swarm",
            "join",
            "--token",
            token.trim(),
            "--advertise-addr",
            &self.addr,
            "--listen-addr",
            &format!("{}:2377", self.addr),
            &format!("{}:2377", self.host_addr),
        ])?;
        Ok(())
    }

    /// Copies a host image here (same ID: `docker save | docker load`).
    pub fn load_image(&self, image: &str) -> Result<()> {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker save '{image}' | docker -H '{}' load -q",
                self.socket()
            ))
            .output()?;
        if !status.status.success() {
            bail!(
                "loading {image}: {}",
                String::from_utf8_lossy(&status.stderr)
            );
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// `ip link set <node's end> up|down` inside the node's namespace.
    fn link(&self, state: &str) -> Result<()> {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.netns,
                "ip",
                "link",
                "set",
                &self.node_if,
                state,
            ],
        )?;
        Ok(())
    }

    /// The node goes down as the rest of the network sees it: its end of the
    /// veth link goes down, so the manager hears nothing from it any more and
    /// nothing reaches its tasks (their processes keep running, cut off, as
    /// behind a dead switch port). [`SecondNode::mend`] (or the drop) undoes it.
    pub fn cut(&self) -> Result<()> {
        self.cut.store(true, Ordering::SeqCst);
        self.link("down")
    }

    /// Makes `127.0.0.1:<port>` inside the node reach `127.0.0.1:<port>` of
    /// the host (a registry there, say, under the same name on both nodes):
    /// a listener bound in the node's network namespace, whose connections
    /// are relayed from the host's. Stopped on drop.
    pub fn forward_loopback(&self, port: u16) -> Result<()> {
        let path = format!("/var/run/netns/{}", self.netns);
        // A thread that enters the namespace binds there; the socket stays in
        // it, the thread ends, and accepting and relaying happen out here.
        let listener = std::thread::spawn(move || -> Result<TcpListener> {
            let ns = std::fs::File::open(&path)?;
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("entering {path}: {}", std::io::Error::last_os_error());
            }
            Ok(TcpListener::bind(("127.0.0.1", port))?)
        })
        .join()
        .map_err(|_| anyhow!("the thread entering the namespace panicked"))??;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((inside, _)) => {
                        if let Ok(host) = TcpStream::connect(("127.0.0.1", port)) {
                            let _ = inside.set_nonblocking(false);
                            relay(inside, host);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(_) => break,
                }
            }
        });
        self.forwards.lock().unwrap().push(Forward {
            stop,
            thread: Some(thread),
        });
        Ok(())
    }

    /// Brings the node's link up again after [`SecondNode::cut`].
    pub fn mend(&self) -> Result<()> {
        self.link("up")?;
        self.cut.store(false, Ordering::SeqCst);
        Ok(())
    }
}

impl Swarm {
    /// Like [`Swarm::init`], advertised and listening on `addr` (a veth
    /// address, so that a second node can join: a Swarm advertised on
    /// 127.0.0.1 accepts a join but its nodes cannot reach each other).
    pub fn init_on(prefix: &str, addr: &str) -> Result<Swarm> {
        let one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        if state()? != "inactive" {
            bail!("a two-node test needs an engine in no Swarm");
        }
        docker(&[
            "swarm",
            "init",
            "--advertise-addr",
            addr,
            "--listen-addr",
            &format!("{addr}:2377"),
        ])?;
        Ok(Swarm {
            started: true,
            prefix: prefix.to_string(),
            _one: one,
        })
    }

    /// Hostnames of the nodes running tasks of `service`.
    pub fn nodes_of(&self, service: &str) -> Vec<String> {
        let mut out = service_ps(service, "{{.Node}}");
        out.sort();
        out.dedup();
        out
    }
}

/// One [`SecondNode::forward_loopback`]: its accepting thread, stopped on drop
/// (relays already open end when their connections do).
struct Forward {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Copies bytes both ways between `a` and `b` until each side ends.
fn relay(a: TcpStream, b: TcpStream) {
    let pairs = [
        (a.try_clone(), b.try_clone()),
        (b.try_clone(), a.try_clone()),
    ];
    for pair in pairs {
        if let (Ok(mut from), Ok(mut to)) = pair {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(Shutdown::Write);
            });
        }
    }
}

impl Drop for SecondNode {
    fn drop(&mut self) {
        self.forwards.lock().unwrap().clear();
        if self.cut.load(Ordering::SeqCst) {
            let _ = self.mend();
        }
        let _ = self.docker(&["swarm", "leave", "--force"]);
        if let Some(mut child) = self.child.take() {
            // dockerd stops its containers and unmounts on SIGTERM.
            let pid = std::fs::read_to_string(self.dir.path().join("docker.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok());
            if let Some(pid) = pid {
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = run("ip", &["link", "del", &self.host_if]);
        let _ = run("ip", &["netns", "del", &self.netns]);
    }
}
