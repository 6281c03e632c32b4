//! A real dockerd for container tests: the one at `DOCKER_HOST` or /var/run/docker.sock if it
//! answers, else one this harness starts (data under the system's temporary directory, left running
//! for later tests), and a tiny image built without a registry: `docker import` of a root file
//! system holding a static busybox.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The test image: busybox, its applets, and a passwd naming `nobody`.
pub const IMAGE: &str = "upglobe-test/busybox:1";

pub struct Docker {
    /// `unix:///…`, for `DOCKER_HOST`.
    pub host: String,
}

impl Docker {
    /// A dockerd that answers, with the test image; `None` (after saying why) only outside CI.
    pub fn get() -> Option<Docker> {
        match Docker::start() {
            Ok(docker) => {
                docker.ensure_image();
                Some(docker)
            }
            Err(reason) => {
                assert!(std::env::var_os("CI").is_none(), "CI is set but no dockerd could be used: {reason}");
                eprintln!("skipping: {reason} (install docker.io and busybox-static)");
                None
            }
        }
    }

    fn start() -> Result<Docker, String> {
        for host in
            [std::env::var("DOCKER_HOST").ok(), Some("unix:///var/run/docker.sock".to_string())].into_iter().flatten()
        {
            if answers(&host) {
                return Ok(Docker { host });
            }
        }
        let root = std::env::temp_dir().join("upglobe-dockerd");
        std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
        let host = format!("unix://{}", root.join("docker.sock").display());
        // One test process starts it; the others wait on the lock and find it answering.
        let _lock = Lock::take(&root.join("lock"));
        if answers(&host) {
            return Ok(Docker { host });
        }
        let dockerd = which("dockerd").ok_or("no dockerd on PATH")?;
        let log = std::fs::File::create(root.join("dockerd.log")).map_err(|e| e.to_string())?;
        let mut child = Command::new(dockerd)
            .arg("--host")
            .arg(&host)
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("--pidfile")
            .arg(root.join("dockerd.pid"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start dockerd: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if answers(&host) {
                // Left running on purpose: later tests (and test processes) use it too.
                std::mem::forget(child);
                return Ok(Docker { host });
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(root.join("dockerd.log")).unwrap_or_default();
                return Err(format!("dockerd exited with {status}: {}", tail(&log)));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err("dockerd did not answer within 60 s".into())
    }

    /// Runs the docker client against this dockerd.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker").args(args).env("DOCKER_HOST", &self.host).output().expect("the docker client runs")
    }

    /// Builds `name` from a root file system with busybox and `extra` files, unless it exists.
    pub fn build_image(&self, name: &str, extra: &[(&str, &str)]) {
        if self.cli(&["image", "inspect", name]).status.success() {
            return;
        }
        let rootfs = tempfile::tempdir().unwrap();
        let root = rootfs.path();
        for dir in ["bin", "etc", "tmp", "in", "out"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        let busybox = which("busybox").expect("busybox-static is installed");
        std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
        let applets = Command::new(root.join("bin/busybox")).arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&applets.stdout).lines().filter(|a| *a != "busybox") {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
            .unwrap();
        for (path, contents) in extra {
            std::fs::write(root.join(path), contents).unwrap();
        }
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(root)
            .args(["-c", "."])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let imported = Command::new("docker")
            .args(["import", "-", name])
            .env("DOCKER_HOST", &self.host)
            .stdin(tar.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(tar.wait().unwrap().success(), "tar of the root file system failed");
        assert!(imported.status.success(), "docker import failed: {}", String::from_utf8_lossy(&imported.stderr));
    }

    fn ensure_image(&self) {
        let root = std::env::temp_dir().join("upglobe-dockerd");
        let _ = std::fs::create_dir_all(&root);
        let _lock = Lock::take(&root.join("image.lock"));
        self.build_image(IMAGE, &[]);
    }
}

fn answers(host: &str) -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .env("DOCKER_HOST", host)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn tail(text: &str) -> String {
    text.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// An exclusive lock on a file, held until dropped.
struct Lock(std::fs::File);

impl Lock {
    fn take(path: &Path) -> Lock {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).unwrap();
        // SAFETY: flock on a file descriptor we own.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        Lock(file)
    }
}
