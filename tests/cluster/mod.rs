//! A scheduler and workers as real `upglobe` processes on loopback, for end-to-end tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const UPGLOBE: &str = env!("CARGO_BIN_EXE_upglobe");

/// A UDP port that was free a moment ago (so a restarted scheduler can listen on the same one).
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Process {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    /// Sends a signal (SIGSTOP to freeze, SIGCONT to thaw).
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    pub fn kill_hard(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    pub worker_token: String,
    pub client_token: String,
    pub verifier_token: String,
    /// Where the scheduler's dashboard listens (HOST:PORT).
    pub http: String,
    /// Extra flags and environment for every start of the scheduler.
    pub scheduler_flags: Vec<String>,
    pub scheduler_env: Vec<(String, String)>,
    pub scheduler: Option<Process>,
    pub workers: Vec<Process>,
}

pub fn spawn(dir: &Path, name: &str, args: &[&str], stdout: Stdio) -> Process {
    spawn_with(dir, name, args, stdout, &[])
}

pub fn spawn_with(dir: &Path, name: &str, args: &[&str], stdout: Stdio, env: &[(&str, &str)]) -> Process {
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(UPGLOBE)
        .args(args)
        .env_remove("UPGLOBE_HOME")
        .env_remove("UPGLOBE_CONNECT")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Process { name: name.into(), child, log }
}

impl Cluster {
    pub fn start(dir: &Path, workers: usize) -> Cluster {
        Cluster::start_with(dir, workers, &[])
    }

    /// A cluster whose scheduler takes `flags` (the trust policy's knobs, for example).
    pub fn start_with(dir: &Path, workers: usize, flags: &[&str]) -> Cluster {
        Cluster::start_with_env(dir, workers, flags, &[])
    }

    /// A cluster whose scheduler takes `flags` and `env` (a log filter, for example).
    pub fn start_with_env(dir: &Path, workers: usize, flags: &[&str], env: &[(&str, &str)]) -> Cluster {
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            port: free_port(),
            worker_token: String::new(),
            client_token: String::new(),
            verifier_token: String::new(),
            http: String::new(),
            scheduler_flags: flags.iter().map(|f| f.to_string()).collect(),
            scheduler_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            scheduler: None,
            workers: Vec::new(),
        };
        cluster.start_scheduler();
        for _ in 0..workers {
            cluster.add_worker(&[]);
        }
        cluster
    }

    /// Starts (or restarts) the scheduler on the cluster's port and data directory.
    pub fn start_scheduler(&mut self) {
        let data = self.dir.join("scheduler");
        let listen = format!("127.0.0.1:{}", self.port);
        let restarts = self
            .dir
            .read_dir()
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("scheduler"))
            .count();
        let args = [
            "scheduler",
            "--data-dir",
            &data.to_string_lossy(),
            "--listen",
            &listen,
            "--output",
            "json",
            "--lease-timeout",
            "4",
            "--idle-timeout",
            "3",
            "--heartbeat",
            "0.3",
            "--http",
            "127.0.0.1:0",
        ];
        let mut args: Vec<&str> = args.to_vec();
        args.extend(self.scheduler_flags.iter().map(|f| f.as_str()));
        let env: Vec<(&str, &str)> = self.scheduler_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut process = spawn_with(&self.dir, &format!("scheduler-{restarts}"), &args, Stdio::piped(), &env);
        let mut line = String::new();
        BufReader::new(process.child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let started: Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("scheduler did not start: {}", process.log()));
        self.worker_token = started["worker_token"].as_str().unwrap().to_string();
        self.client_token = started["client_token"].as_str().unwrap().to_string();
        self.verifier_token = started["verifier_token"].as_str().unwrap().to_string();
        self.http = started["http"].as_str().unwrap_or_default().to_string();
        self.scheduler = Some(process);
    }

    pub fn add_worker(&mut self, extra: &[&str]) {
        self.add_worker_with(extra, &[]);
    }

    /// A worker with extra flags and environment (`UPGLOBE_CHEAT`, in a build with the cheat
    /// feature). Returns its name.
    pub fn add_worker_with(&mut self, extra: &[&str], env: &[(&str, &str)]) -> String {
        let name = format!("worker-{}", self.workers.len() + 1);
        let data = self.dir.join(&name);
        let mut args =
            vec!["worker", "--join", &self.worker_token, "--data-dir", data.to_str().unwrap(), "--name", &name];
        args.extend_from_slice(&["--cpus", "1", "--idle-timeout", "3"]);
        args.extend_from_slice(extra);
        let process = spawn_with(&self.dir, &name, &args, Stdio::null(), env);
        self.workers.push(process);
        name
    }

    /// Starts worker `index` (0-based) again, after it was killed: same name and data directory, a
    /// log of its own (`worker-N-again.log`), `extra` flags.
    pub fn restart_worker(&mut self, index: usize, extra: &[&str]) {
        let name = format!("worker-{}", index + 1);
        let data = self.dir.join(&name);
        let mut args =
            vec!["worker", "--join", &self.worker_token, "--data-dir", data.to_str().unwrap(), "--name", &name];
        args.extend_from_slice(&["--cpus", "1", "--idle-timeout", "3"]);
        args.extend_from_slice(extra);
        self.workers[index] = spawn(&self.dir, &format!("{name}-again"), &args, Stdio::null());
    }

    /// A verifier node on the CPU engine (the reference kernel every device must match).
    pub fn add_verifier(&mut self) -> String {
        let name = format!("verifier-{}", self.workers.len() + 1);
        let data = self.dir.join(&name);
        let args = [
            "verify",
            "--join",
            &self.verifier_token,
            "--data-dir",
            data.to_str().unwrap(),
            "--name",
            &name,
            "--device",
            "cpu",
            "--cpus",
            "1",
            "--idle-timeout",
            "3",
        ];
        let process = spawn(&self.dir, &name, &args, Stdio::null());
        self.workers.push(process);
        name
    }

    /// Runs a client command against this cluster.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_env(args, &[])
    }

    /// Runs a client command with more environment (`DOCKER_HOST`, for example).
    pub fn run_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(UPGLOBE)
            .args(args)
            .arg("--home")
            .arg(self.dir.join("home"))
            .env("UPGLOBE_CONNECT", &self.client_token)
            .env_remove("UPGLOBE_HOME")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--output", "json"]);
        let output = self.run(&all);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "upglobe {args:?} failed: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_str(stdout.lines().last().unwrap_or("null")).unwrap()
    }

    pub fn wait_for(&self, what: &str, timeout: Duration, mut done: impl FnMut(&Cluster) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if done(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let workers: Vec<String> = self.workers.iter().map(|w| format!("{} log:\n{}", w.name, w.log())).collect();
        panic!(
            "timed out waiting for {what}; scheduler log:\n{}\n{}",
            self.scheduler.as_ref().map(|s| s.log()).unwrap_or_default(),
            workers.join("\n")
        );
    }

    pub fn connected_workers(&self) -> usize {
        let output = self.run(&["workers", "--output", "json"]);
        if !output.status.success() {
            return 0;
        }
        let workers: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        workers.as_array().map_or(0, |w| w.iter().filter(|w| w["connected"] == true).count())
    }

    pub fn job(&self, job: &str) -> Value {
        self.json(&["status", job])[0].clone()
    }

    /// Submits a workflow file's text; returns its first job's id.
    pub fn submit(&self, workflow: &str) -> String {
        let path = self.write("workflow.toml", workflow);
        let submitted = self.json(&["submit", path.to_str().unwrap()]);
        submitted["jobs"][0]["id"].to_string()
    }

    /// The final state hash of an MD job, as `upglobe results` reports it.
    pub fn final_state_hash(&self, job: &str) -> String {
        let out = self.dir.join("results");
        let results = self.json(&["results", job, "--out", out.to_str().unwrap()]);
        results["final_state_hash"].as_str().unwrap().to_string()
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

/// The final state hash of a single-process run of the same system.
pub fn single_process_hash(lattice_args: &[&str], steps: u64) -> String {
    let mut args = vec!["md", "run", "--lattice", "fcc", "--steps"];
    let steps = steps.to_string();
    args.push(&steps);
    args.extend_from_slice(lattice_args);
    args.extend_from_slice(&["--output", "json"]);
    let output = Command::new(UPGLOBE).args(&args).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let last: Value = serde_json::from_str(String::from_utf8_lossy(&output.stdout).lines().last().unwrap()).unwrap();
    last["state_hash"].as_str().unwrap().to_string()
}
