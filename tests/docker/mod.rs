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
        if self.has_image(name) {
            return;
        }
        let rootfs = busybox_root();
        for (path, contents) in extra {
            std::fs::write(rootfs.path().join(path), contents).unwrap();
        }
        self.import(rootfs.path(), name, &[]);
    }

    fn has_image(&self, name: &str) -> bool {
        self.cli(&["image", "inspect", name]).status.success()
    }

    /// `docker import` of the root file system at `root` as `name`, with Dockerfile-like `changes`
    /// (`ENV K=V`).
    fn import(&self, root: &Path, name: &str, changes: &[String]) {
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(root)
            .args(["-c", "."])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let imported = Command::new("docker")
            .arg("import")
            .args(changes.iter().flat_map(|change| ["--change", change.as_str()]))
            .args(["-", name])
            .env("DOCKER_HOST", &self.host)
            .stdin(tar.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(tar.wait().unwrap().success(), "tar of the root file system at {} failed", root.display());
        assert!(
            imported.status.success(),
            "docker import of {name} failed: {}",
            String::from_utf8_lossy(&imported.stderr)
        );
    }

    /// An image that runs the host's `lmp` as the worker runs containers (read-only root, user
    /// 65534, no network, a tmpfs /tmp): the binary, every library it and Open MPI's plugins load, and
    /// the environment a single rank needs, on busybox. Its tag is a hash of all that, so it is built
    /// once per LAMMPS build (and again when the host's LAMMPS changes); its name.
    pub fn lammps_image(&self) -> String {
        let lmp = which("lmp").expect("`lmp` is on the PATH (Debian: apt install lammps)");
        let files = lammps_files(&lmp);
        let mut hasher = blake3::Hasher::new();
        hasher.update(LAMMPS_RECIPE.as_bytes());
        for variable in LAMMPS_ENVIRONMENT {
            hasher.update(variable.as_bytes());
        }
        for file in &files {
            file.hash(&mut hasher);
        }
        let name = format!("{LAMMPS_REPOSITORY}:{}", &hasher.finalize().to_hex()[..16]);
        let root = std::env::temp_dir().join("upglobe-dockerd");
        let _ = std::fs::create_dir_all(&root);
        let _lock = Lock::take(&root.join("image.lock"));
        if self.has_image(&name) {
            return name;
        }
        let rootfs = busybox_root();
        // Merged /usr: /lib and /lib64 are links into /usr, as on the host, so every library is at
        // the path ldd and the binaries' interpreter name.
        for top in ["lib", "lib32", "lib64", "libx32"] {
            if let Ok(target) = std::fs::read_link(Path::new("/").join(top)) {
                let relative = target.strip_prefix("/").unwrap_or(&target);
                std::fs::create_dir_all(rootfs.path().join(relative)).unwrap();
                std::os::unix::fs::symlink(relative, rootfs.path().join(top)).unwrap();
            }
        }
        for file in &files {
            file.copy_into(rootfs.path());
        }
        let changes: Vec<String> = LAMMPS_ENVIRONMENT.iter().map(|variable| format!("ENV {variable}")).collect();
        self.import(rootfs.path(), &name, &changes);
        name
    }

    fn ensure_image(&self) {
        let root = std::env::temp_dir().join("upglobe-dockerd");
        let _ = std::fs::create_dir_all(&root);
        let _lock = Lock::take(&root.join("image.lock"));
        self.build_image(IMAGE, &[]);
    }
}

/// A root file system with busybox and its applets, the directories a container job uses, and a
/// passwd naming `nobody`.
fn busybox_root() -> tempfile::TempDir {
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
    rootfs
}

/// The LAMMPS test image's repository; the tag is a hash of what goes into it.
pub const LAMMPS_REPOSITORY: &str = "upglobe-test/lammps";
/// Changes the tag when the way the image is put together changes.
const LAMMPS_RECIPE: &str = "lammps image 1";
/// The image's environment. Debian's `lmp` links Open MPI, whose start without `mpirun` (a
/// "singleton") execs an `orted` daemon unless told to stay isolated: one rank, no daemon, nothing
/// else to install. (Open MPI also needs a writable /tmp for its session directory, which the
/// worker's tmpfs gives.)
const LAMMPS_ENVIRONMENT: &[&str] = &["OMPI_MCA_ess_singleton_isolated=1"];

/// A host file the LAMMPS image holds at the same path.
enum HostFile {
    /// Its contents (a link followed).
    Copy(PathBuf),
    /// A symbolic link inside a copied directory, kept as a link.
    Link(PathBuf, PathBuf),
}

impl HostFile {
    fn path(&self) -> &Path {
        match self {
            HostFile::Copy(path) | HostFile::Link(path, _) => path,
        }
    }

    fn hash(&self, hasher: &mut blake3::Hasher) {
        hasher.update(self.path().as_os_str().as_encoded_bytes());
        match self {
            HostFile::Copy(path) => {
                let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
                hasher.update_reader(file).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            }
            HostFile::Link(_, target) => {
                hasher.update(b" -> ");
                hasher.update(target.as_os_str().as_encoded_bytes());
            }
        }
    }

    fn copy_into(&self, root: &Path) {
        let to = root.join(self.path().strip_prefix("/").expect("host paths are absolute"));
        let parent = to.parent().unwrap();
        std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        match self {
            HostFile::Copy(path) => {
                std::fs::copy(path, &to)
                    .unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", path.display(), to.display()));
            }
            HostFile::Link(_, target) => std::os::unix::fs::symlink(target, &to)
                .unwrap_or_else(|e| panic!("cannot link {} to {}: {e}", to.display(), target.display())),
        }
    }
}

/// What `lmp` needs in an image, sorted by path: the binary and the libraries ldd finds for it
/// (with the dynamic loader); when it links Open MPI, the plugins Open MPI and PMIx load at run time
/// (and the libraries they link), the help texts its errors print, and Debian's defaults in
/// /etc/openmpi (which turn off the InfiniBand and libfabric transports).
fn lammps_files(lmp: &Path) -> Vec<HostFile> {
    let mut copied = vec![lmp.to_path_buf()];
    let mut links = Vec::new();
    let libraries = shared_libraries(&[lmp.to_path_buf()]);
    let libmpi = libraries.iter().find(|l| l.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libmpi.so")));
    if let Some(libmpi) = libmpi {
        let lib_dir = std::fs::canonicalize(libmpi.parent().unwrap()).unwrap();
        let mut plugins = Vec::new();
        let trees =
            [lib_dir.join("openmpi"), lib_dir.join("pmix2"), "/usr/share/openmpi".into(), "/etc/openmpi".into()];
        for tree in trees.iter().filter(|tree| tree.is_dir()) {
            walk(tree, &mut plugins, &mut links);
        }
        let modules: Vec<PathBuf> = plugins.iter().filter(|p| p.to_string_lossy().contains(".so")).cloned().collect();
        copied.extend(plugins);
        copied.extend(shared_libraries(&modules));
    }
    copied.extend(libraries);
    copied.sort();
    copied.dedup();
    // ldd may name a link of a copied directory (PMIx's library, by its plugins' run path): the
    // link is kept, and what it points to is copied with the directory.
    copied.retain(|path| !links.iter().any(|(link, _)| link == path));
    let mut files: Vec<HostFile> = copied.into_iter().map(HostFile::Copy).collect();
    files.extend(links.into_iter().map(|(path, target)| HostFile::Link(path, target)));
    files.sort_by(|a, b| a.path().cmp(b.path()));
    files
}

/// The files under `dir`, and its symbolic links with their targets.
fn walk(dir: &Path, files: &mut Vec<PathBuf>, links: &mut Vec<(PathBuf, PathBuf)>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        let kind = std::fs::symlink_metadata(&path).unwrap().file_type();
        if kind.is_symlink() {
            links.push((path.clone(), std::fs::read_link(&path).unwrap()));
        } else if kind.is_dir() {
            walk(&path, files, links);
        } else if kind.is_file() {
            files.push(path);
        }
    }
}

/// The shared libraries `ldd` finds for `objects` (the dynamic loader among them), by the paths it
/// names; a library it cannot find is an error naming it.
fn shared_libraries(objects: &[PathBuf]) -> Vec<PathBuf> {
    if objects.is_empty() {
        return Vec::new();
    }
    let output = Command::new("ldd").args(objects).output().expect("ldd runs (Debian: libc-bin)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "ldd failed: {text} {}", String::from_utf8_lossy(&output.stderr));
    let mut libraries = Vec::new();
    let mut object = objects[0].display().to_string();
    for line in text.lines() {
        // "OBJECT:" heads each object's list when ldd is given several.
        if !line.starts_with(char::is_whitespace) {
            object = line.trim_end_matches(':').to_string();
            continue;
        }
        // "\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x…)", "\t/lib64/ld-linux-x86-64.so.2 (0x…)".
        let named = line.split_once("=>").map_or(line, |(_, path)| path).trim();
        let library = line.split_whitespace().next().unwrap_or_default();
        assert!(!named.starts_with("not found"), "ldd finds no {library}, which {object} needs");
        let path = named.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            libraries.push(PathBuf::from(path));
        }
    }
    libraries.sort();
    libraries.dedup();
    libraries
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
