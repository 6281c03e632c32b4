//! Container tasks: a command run in a pinned image through the local dockerd, hardened by default.
//!
//! Every container gets: no network (unless the job asks and the worker allows it), all
//! capabilities dropped, no-new-privileges, a read-only root with a tmpfs `/tmp`, the `nobody`
//! user, an init process, and pids, memory (no swap), CPU and log-size limits; the task's wall time
//! is enforced by the worker. Inputs are bind-mounted read-only from the cache under `/in`; the
//! working directory `/out` is the only writable mount, and outputs are collected from it.
//!
//! Images are run by id. A job pins its image by a `docker save` archive in the blob store (the
//! worker fetches it, reads the image id from the archive's manifest, loads it if dockerd lacks
//! it, and remembers the id by archive hash), by an id the worker must hold, or by a registry
//! digest it pulls.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig, HostConfigLogConfig, Mount, MountType};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ImportImageOptions, KillContainerOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions, StartContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use upglobe_protocol::messages::{ContainerSpec, FileRef, ImagePin, Output, Resources};

use crate::execute::{Fetcher, Measured, contained, fetch, program_output};

/// The label every container this worker starts carries, so that a restarted worker removes the
/// ones a crash left behind.
const LABEL: &str = "org.upglobe.task";
/// The unprivileged user containers of a worker running as root run as (`nobody` on most
/// distributions); a worker running as another user runs them as itself.
const NOBODY: u32 = 65534;
/// Processes (threads included) one container may have: enough for a parallel program, not for a
/// fork bomb to exhaust the worker's pid space.
pub const PIDS_MAX: i64 = 512;
/// Size of the tmpfs at `/tmp`.
const TMP_BYTES: u64 = 256 << 20;
/// Docker keeps at most this much of a container's output; the worker stores what it keeps.
const LOG_BYTES_MAX: u64 = 64 << 20;
/// Largest `manifest.json` read from an image archive.
const MANIFEST_BYTES_MAX: u64 = 1 << 20;

/// The local dockerd, if one answers.
#[derive(Clone)]
pub struct Containers {
    docker: Docker,
    /// Docker's version, for the hello and `upglobe workers`.
    pub version: String,
    /// This worker's key id: its containers' names and labels carry it, so workers sharing a
    /// dockerd (two on one host, or test clusters) never touch each other's containers.
    node: String,
}

impl Containers {
    /// Connects to the dockerd at `DOCKER_HOST` (a unix socket) or `/var/run/docker.sock`, for the
    /// worker whose key id is `node`.
    pub async fn connect(node: &upglobe_protocol::WorkerId) -> Result<Containers, String> {
        let docker = Docker::connect_with_unix_defaults().map_err(|e| format!("cannot reach dockerd: {e}"))?;
        let version = tokio::time::timeout(Duration::from_secs(5), docker.version())
            .await
            .map_err(|_| "dockerd did not answer within 5 s".to_string())?
            .map_err(|e| format!("dockerd does not answer: {e}"))?;
        let version = version.version.unwrap_or_else(|| "unknown".into());
        Ok(Containers { docker, version, node: node.to_hex() })
    }

    /// The name of an assignment's container: unique per worker and assignment.
    pub fn name(&self, assignment: upglobe_protocol::AssignmentId) -> String {
        format!("upglobe-{}-{}", &self.node[..16], assignment.0)
    }

    /// Removes containers a previous run of this worker left behind (killed mid-task).
    pub async fn remove_stale(&self) {
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL}.worker={}", self.node)])]);
        let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
        let Ok(stale) = self.docker.list_containers(Some(options)).await else { return };
        for container in stale {
            if let Some(id) = container.id {
                tracing::info!(container = %id, "removing a container left by an earlier run");
                self.remove(&id).await;
            }
        }
    }

    async fn remove(&self, id: &str) {
        let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(e) => tracing::warn!(container = %id, error = %e, "cannot remove a container"),
        }
    }

    /// Kills a container (it may have ended already).
    async fn kill(&self, id: &str) {
        let _ = self.docker.kill_container(id, Some(KillContainerOptions { signal: "KILL".into() })).await;
    }

    async fn has_image(&self, id: &str) -> bool {
        self.docker.inspect_image(id).await.is_ok()
    }

    /// The id of the job's image, loaded or pulled if dockerd lacks it.
    async fn ensure_image(&self, fetcher: &Fetcher<'_>, pin: &ImagePin) -> Result<String, String> {
        if let Some(archive) = &pin.archive {
            return self.ensure_archive(fetcher, pin, archive).await;
        }
        if let Some(id) = &pin.id {
            ImagePin::check_id(id)?;
            return match self.has_image(id).await {
                true => Ok(id.clone()),
                false => Err(format!(
                    "image {id} is not on this worker and the job carries no archive of it (send images with `upglobe image push`)"
                )),
            };
        }
        pin.check()?;
        // A registry digest pins the manifest; pull it unless dockerd has it.
        if !self.has_image(&pin.name).await {
            let options = CreateImageOptions { from_image: Some(pin.name.clone()), ..Default::default() };
            let mut pull = self.docker.create_image(Some(options), None, None);
            while let Some(step) = pull.next().await {
                step.map_err(|e| format!("cannot pull image {}: {e}", pin.name))?;
            }
        }
        let image = self.docker.inspect_image(&pin.name).await.map_err(|e| format!("image {}: {e}", pin.name))?;
        image.id.ok_or_else(|| format!("dockerd gives no id for image {}", pin.name))
    }

    async fn ensure_archive(&self, fetcher: &Fetcher<'_>, pin: &ImagePin, archive: &FileRef) -> Result<String, String> {
        let known = fetcher.config.data_dir.join("images").join(archive.blob.to_hex());
        if let Ok(id) = std::fs::read_to_string(&known)
            && ImagePin::check_id(id.trim()).is_ok()
            && self.has_image(id.trim()).await
        {
            return Ok(id.trim().to_string());
        }
        fetch(fetcher, archive.blob).await.map_err(|e| format!("fetching image {}: {e}", pin.name))?;
        let path = fetcher.blobs.path(&archive.blob);
        let id = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || archive_image_id(&path))
                .await
                .map_err(|e| format!("reading the image archive: {e}"))?
                .map_err(|e| format!("image {}: {e}", pin.name))?
        };
        if let Some(pinned) = pin.id.as_ref().filter(|pinned| **pinned != id) {
            return Err(format!("image {}: the archive holds image {id}, not the pinned {pinned}", pin.name));
        }
        if !self.has_image(&id).await {
            tracing::info!(image = %pin.name, id = %id, bytes = archive.size, "loading an image");
            let file =
                tokio::fs::File::open(&path).await.map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            let body = futures_util::stream::unfold(file, |mut file| async move {
                use tokio::io::AsyncReadExt;
                let mut buffer = vec![0; 1 << 20];
                match file.read(&mut buffer).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buffer.truncate(n);
                        Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buffer)), file))
                    }
                    Err(e) => Some((Err(e), file)),
                }
            });
            let options = ImportImageOptions { quiet: true, ..Default::default() };
            let mut load = self.docker.import_image_stream(options, body, None);
            while let Some(step) = load.next().await {
                step.map_err(|e| format!("dockerd cannot load image {}: {e}", pin.name))?;
            }
            if !self.has_image(&id).await {
                return Err(format!("image {} was loaded but dockerd has no image {id}", pin.name));
            }
        }
        if let Some(parent) = known.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::write(&known, &id);
        Ok(id)
    }
}

/// The image id a `docker save` archive holds: its one manifest's `Config`, whose file name is the
/// digest of the configuration (`<hex>.json` from older dockerd, `blobs/sha256/<hex>` in the OCI
/// layout). The archive must name no image: `docker load` would otherwise tag the worker's images
/// (`ubuntu:22.04`, anything) with the job author's, so tags (`RepoTags`, a `repositories` file,
/// name annotations in `index.json`) and a second manifest (dockerd reads the last one) are refused.
pub fn archive_image_id(path: &Path) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut archive = tar::Archive::new(file);
    let not_archive = |e: std::io::Error| format!("not an image archive (`docker save` output): {e}");
    let mut id = None;
    for entry in archive.entries().map_err(not_archive)? {
        let entry = entry.map_err(not_archive)?;
        let name = entry.path().map_err(not_archive)?.to_string_lossy().trim_start_matches("./").to_string();
        let read = |entry: tar::Entry<'_, std::fs::File>| -> Result<String, String> {
            let mut text = String::new();
            entry.take(MANIFEST_BYTES_MAX).read_to_string(&mut text).map_err(not_archive)?;
            Ok(text)
        };
        match name.as_str() {
            "manifest.json" if id.is_some() => return Err("the archive has two manifest.json files".into()),
            "manifest.json" => id = Some(manifest_image_id(&read(entry)?)?),
            "repositories" => {
                let text = read(entry)?;
                if !matches!(serde_json::from_str::<serde_json::Value>(&text), Ok(v) if v.as_object().is_some_and(|o| o.is_empty()))
                {
                    return Err(TAGGED.into());
                }
            }
            "index.json" => {
                let text = read(entry)?;
                if text.contains("org.opencontainers.image.ref.name") || text.contains("io.containerd.image.name") {
                    return Err(TAGGED.into());
                }
            }
            _ => {}
        }
    }
    id.ok_or_else(|| "not an image archive: it has no manifest.json (make it with `upglobe image push`)".to_string())
}

const TAGGED: &str = "the archive names images (tags), which loading would apply to the worker's own; push it with `upglobe image push`, which saves it by id";

fn manifest_image_id(text: &str) -> Result<String, String> {
    let manifest: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the archive's manifest.json is not JSON: {e}"))?;
    let images = manifest.as_array().ok_or("the archive's manifest.json is not a list of images")?;
    let [image] = images.as_slice() else {
        return Err(format!("the archive holds {} images; push one image per archive", images.len()));
    };
    if image.get("RepoTags").is_some_and(|tags| !tags.is_null() && tags.as_array().is_none_or(|t| !t.is_empty())) {
        return Err(TAGGED.into());
    }
    let config = image.get("Config").and_then(|c| c.as_str()).ok_or("the archive's manifest names no Config")?;
    let hex = config.strip_prefix("blobs/sha256/").or_else(|| config.strip_suffix(".json")).unwrap_or(config);
    let id = format!("sha256:{hex}");
    ImagePin::check_id(&id).map_err(|_| format!("the archive's manifest names config {config:?}, not a digest"))?;
    Ok(id)
}

/// Where a running container's output goes as it comes: the scheduler, for `upglobe run`.
#[derive(Clone)]
pub struct LogSink {
    pub assignment: upglobe_protocol::AssignmentId,
    pub outbox: tokio::sync::mpsc::UnboundedSender<upglobe_protocol::messages::FromWorker>,
}

/// Follows a container's output and sends it on, in pieces of at most
/// [`LOG_MESSAGE_BYTES_MAX`], [`LIVE_LOG_BYTES_MAX`] in all (then a note that the rest comes
/// with the result).
async fn forward_logs(docker: Docker, id: String, sink: LogSink) {
    use futures_util::FutureExt;
    use upglobe_protocol::messages::FromWorker;
    use upglobe_protocol::messages::limits::{LIVE_LOG_BYTES_MAX, LOG_MESSAGE_BYTES_MAX};
    let options = LogsOptions { follow: true, stdout: true, stderr: true, ..Default::default() };
    let mut logs = docker.logs(&id, Some(options)).fuse();
    let mut sent = 0u64;
    while let Some(Ok(line)) = logs.next().await {
        let Some((stderr, first)) = piece(line) else { continue };
        let mut bytes = first.to_vec();
        // Lines that are already there travel together.
        while bytes.len() < LOG_MESSAGE_BYTES_MAX {
            match logs.next().now_or_never() {
                Some(Some(Ok(line))) => match piece(line) {
                    Some((same, more)) if same == stderr => bytes.extend_from_slice(&more),
                    Some((_, more)) => {
                        let _ = sink.outbox.send(FromWorker::Log { assignment: sink.assignment, stderr, bytes });
                        bytes = more.to_vec();
                        break;
                    }
                    None => {}
                },
                _ => break,
            }
        }
        bytes.truncate(LOG_MESSAGE_BYTES_MAX);
        sent += bytes.len() as u64;
        if sent > LIVE_LOG_BYTES_MAX {
            let note = b"[upglobe: live output stops here; the whole output comes with the result]\n".to_vec();
            let _ = sink.outbox.send(FromWorker::Log { assignment: sink.assignment, stderr: true, bytes: note });
            return;
        }
        if sink.outbox.send(FromWorker::Log { assignment: sink.assignment, stderr, bytes }).is_err() {
            return;
        }
    }
}

/// One container task, as the scheduler assigned it.
pub struct ContainerTask<'a> {
    pub argv: &'a [String],
    pub inputs: &'a [FileRef],
    pub outputs: &'a [String],
    pub timeout: Duration,
    pub spec: &'a ContainerSpec,
    pub resources: Resources,
    /// The container's name ([`Containers::name`]).
    pub name: String,
    /// UUIDs of the GPUs the scheduler gave the task (empty: as many as `resources.gpus`, any).
    pub gpus: &'a [String],
    /// The memory limit of a job that asks for none: what the worker offers.
    pub memory_default: u64,
    pub logs: Option<LogSink>,
}

/// Runs a container task in `scratch` (which it creates) and collects its outputs.
pub async fn run(
    containers: &Containers,
    fetcher: &Fetcher<'_>,
    scratch: &Path,
    task: &ContainerTask<'_>,
    cancel: &AtomicBool,
    measured: &mut Measured,
) -> Result<Output, String> {
    let config = fetcher.config;
    if task.spec.network && !config.allow_network {
        return Err("the job asks for a network and this worker allows none (start it with --allow-network)".into());
    }
    let image = containers.ensure_image(fetcher, &task.spec.image).await?;
    // Which bytes each task ran, for an operator to match against the pushed archive and image id.
    let archive = task.spec.image.archive.as_ref().map_or_else(|| "none".to_string(), |a| a.blob.to_hex());
    tracing::info!(
        container = %task.name,
        image = %task.spec.image.name,
        id = %image,
        archive = %archive,
        "running a container"
    );
    // An image's volumes would be writable anonymous volumes of any size: a tmpfs of /tmp's size
    // covers each, so /out stays the only place a container's files outlive it.
    let volumes = match containers.docker.inspect_image(&image).await {
        Ok(inspected) => inspected.config.and_then(|c| c.volumes).unwrap_or_default(),
        Err(e) => return Err(format!("dockerd cannot describe image {image}: {e}")),
    };
    let _ = std::fs::remove_dir_all(scratch);
    let out = scratch.join("out");
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    // Only the container's user may use /out: no other user of the host can swap a file there for a
    // link while the worker collects it.
    let user = container_user();
    {
        use std::os::unix::fs::PermissionsExt;
        let cannot = |e: std::io::Error| format!("cannot give {} to the container: {e}", out.display());
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o700)).map_err(cannot)?;
        std::os::unix::fs::chown(&out, Some(user.0), Some(user.1)).map_err(cannot)?;
    }
    let mut mounts = vec![bind(&out, "/out", false)];
    for input in task.inputs {
        let name = contained(&input.name)?;
        fetch(fetcher, input.blob).await.map_err(|e| format!("fetching '{}': {e}", input.name))?;
        mounts.push(bind(&fetcher.blobs.path(&input.blob), &format!("/in/{}", name.display()), true));
    }
    let body = container_body(task, &image, mounts, &volumes, user, config.allow_network, &containers.node);
    let options = CreateContainerOptions { name: Some(task.name.clone()), ..Default::default() };
    // A container of the same name is a leftover of this assignment's earlier attempt.
    containers.remove(&task.name).await;
    let created = containers
        .docker
        .create_container(Some(options), body)
        .await
        .map_err(|e| format!("dockerd cannot create the container: {e}"))?;
    let id = created.id;
    let result = supervise(containers, &id, scratch, task, cancel, measured).await;
    containers.remove(&id).await;
    program_output(fetcher.blobs, result?, scratch, &out, task.outputs)
}

fn bind(source: &Path, target: &str, read_only: bool) -> Mount {
    Mount {
        target: Some(target.into()),
        source: Some(source.to_string_lossy().into_owned()),
        typ: Some(MountType::BIND),
        read_only: Some(read_only),
        ..Default::default()
    }
}

/// The user and group a container runs as.
fn container_user() -> (u32, u32) {
    // SAFETY: plain getters without arguments.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if uid == 0 { (NOBODY, NOBODY) } else { (uid, gid) }
}

/// A task's memory limit: what its job asks for, or what the worker offers.
fn memory_limit(task: &ContainerTask<'_>) -> u64 {
    match task.resources.memory_bytes {
        0 => task.memory_default,
        bytes => bytes,
    }
}

/// The hardened container: see the module's documentation.
fn container_body(
    task: &ContainerTask<'_>,
    image: &str,
    mounts: Vec<Mount>,
    volumes: &[String],
    (uid, gid): (u32, u32),
    allow_network: bool,
    node: &str,
) -> ContainerCreateBody {
    let memory = i64::try_from(memory_limit(task)).unwrap_or(i64::MAX);
    let tmpfs_options = format!("rw,nosuid,nodev,size={TMP_BYTES},uid={uid},gid={gid},mode=1777");
    let mut tmpfs = HashMap::from([("/tmp".to_string(), tmpfs_options.clone())]);
    for volume in volumes.iter().filter(|v| v.starts_with('/') && *v != "/out" && !v.starts_with("/in/") && *v != "/in")
    {
        tmpfs.insert(volume.clone(), tmpfs_options.clone());
    }
    let network = if task.spec.network && allow_network { "bridge" } else { "none" };
    // NVIDIA's container runtime gives exactly the GPUs the scheduler chose, by UUID.
    let gpus = (task.resources.gpus > 0).then(|| {
        let (count, device_ids) = match task.gpus {
            [] => (Some(i64::from(task.resources.gpus)), None),
            uuids => (None, Some(uuids.to_vec())),
        };
        vec![DeviceRequest {
            driver: Some("nvidia".into()),
            count,
            device_ids,
            capabilities: Some(vec![vec!["gpu".into()]]),
            ..Default::default()
        }]
    });
    let host_config = HostConfig {
        network_mode: Some(network.into()),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        readonly_rootfs: Some(true),
        tmpfs: Some(tmpfs),
        pids_limit: Some(PIDS_MAX),
        memory: Some(memory),
        memory_swap: Some(memory),
        nano_cpus: Some(i64::from(task.resources.cpus.max(1)) * 1_000_000_000),
        init: Some(true),
        mounts: Some(mounts),
        device_requests: gpus,
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".into(), LOG_BYTES_MAX.to_string()),
                ("max-file".into(), "1".into()),
            ])),
        }),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(image.into()),
        cmd: Some(task.argv.to_vec()),
        user: Some(format!("{uid}:{gid}")),
        working_dir: Some("/out".into()),
        network_disabled: Some(network == "none"),
        labels: Some(HashMap::from([(LABEL.into(), task.name.clone()), (format!("{LABEL}.worker"), node.to_string())])),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// Starts the container and waits for it within the task's wall time, writing its output to
/// `scratch/stdout` and `scratch/stderr` and metering it from its cgroup; its exit code, or why
/// it did not finish.
async fn supervise(
    containers: &Containers,
    id: &str,
    scratch: &Path,
    task: &ContainerTask<'_>,
    cancel: &AtomicBool,
    measured: &mut Measured,
) -> Result<i32, String> {
    let docker = &containers.docker;
    docker
        .start_container(id, None::<StartContainerOptions>)
        .await
        .map_err(|e| format!("dockerd cannot start the container: {e}"))?;
    let started = Instant::now();
    let forwarding = task.logs.clone().map(|sink| tokio::spawn(forward_logs(docker.clone(), id.to_string(), sink)));
    let mut meter = Meter::find(id);
    let mut wait = docker.wait_container(id, None::<WaitContainerOptions>);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let stopped = loop {
        tokio::select! {
            // Docker answers a non-zero exit with an error; the state is read below either way.
            _ = wait.next() => break None,
            _ = tick.tick() => {
                meter.sample();
                if cancel.load(Ordering::Relaxed) {
                    break Some("cancelled".to_string());
                }
                if started.elapsed() > task.timeout {
                    break Some(format!("the container timed out after {}s", task.timeout.as_secs()));
                }
            }
        }
    };
    if stopped.is_some() {
        containers.kill(id).await;
    }
    *measured = Measured { gpu_ms: crate::execute::gpu_time(started, task.resources.gpus), ..meter.measured() };
    if let Some(mut forwarding) = forwarding {
        // The stream ends with the container, once dockerd has handed over the last of its output
        // (seconds on a loaded machine). Past the bound, what it has not sent is in the result.
        if tokio::time::timeout(Duration::from_secs(15), &mut forwarding).await.is_err() {
            forwarding.abort();
        }
    }
    // Read once the container has ended: all of it, in order (a follow stream opened as a short
    // container ends can come back empty).
    copy_logs(docker, id, scratch).await?;
    if let Some(reason) = stopped {
        return Err(reason);
    }
    let state = docker
        .inspect_container(id, None)
        .await
        .map_err(|e| format!("dockerd cannot say how the container ended: {e}"))?
        .state
        .unwrap_or_default();
    if state.running != Some(false) {
        // The wait ended (a broken stream) while the container still runs: its outputs are partial.
        containers.kill(id).await;
        return Err("the worker lost track of the container (dockerd's wait ended while it ran)".into());
    }
    let exit_code = state.exit_code.unwrap_or(-1);
    if state.oom_killed == Some(true) {
        let limit = memory_limit(task);
        return Err(format!("the container ran out of memory (limit {} MiB) and was killed", limit >> 20));
    }
    if let Some(error) = state.error.filter(|e| !e.is_empty()) {
        return Err(format!("the container failed: {error}"));
    }
    i32::try_from(exit_code).map_err(|_| format!("the container ended with exit code {exit_code}"))
}

/// Writes an ended container's output into `stdout` and `stderr` files.
async fn copy_logs(docker: &Docker, id: &str, scratch: &Path) -> Result<(), String> {
    use std::io::Write;
    let open = |name: &str| {
        let path = scratch.join(name);
        std::fs::File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))
    };
    let (mut stdout, mut stderr) = (open("stdout")?, open("stderr")?);
    let options = LogsOptions { follow: false, stdout: true, stderr: true, ..Default::default() };
    let mut logs = docker.logs(id, Some(options));
    while let Some(line) = logs.next().await {
        let line = line.map_err(|e| format!("dockerd cannot give the container's output: {e}"))?;
        let written = match piece(line) {
            Some((true, message)) => stderr.write_all(&message),
            Some((false, message)) => stdout.write_all(&message),
            None => Ok(()),
        };
        written.map_err(|e| format!("cannot keep the container's output: {e}"))?;
    }
    Ok(())
}

/// A piece of a container's output: whether it is standard error, and its bytes.
fn piece(line: bollard::container::LogOutput) -> Option<(bool, bytes::Bytes)> {
    use bollard::container::LogOutput;
    match line {
        LogOutput::StdErr { message } => Some((true, message)),
        LogOutput::StdOut { message } | LogOutput::Console { message } => Some((false, message)),
        LogOutput::StdIn { .. } => None,
    }
}

/// CPU time and peak memory of a running container, read from its cgroup (v1 or v2, cgroupfs or
/// systemd driver) every sample; the last reading stands for the whole run.
struct Meter {
    cpu: Option<(PathBuf, CpuFile)>,
    memory: Option<PathBuf>,
    cpu_ms: Option<u64>,
    peak_memory_bytes: Option<u64>,
}

#[derive(Clone, Copy)]
enum CpuFile {
    /// cgroup v1 `cpuacct.usage`: nanoseconds.
    Nanoseconds,
    /// cgroup v2 `cpu.stat`: a `usage_usec` line.
    Stat,
}

impl Meter {
    fn find(id: &str) -> Meter {
        let root = Path::new("/sys/fs/cgroup");
        let v1 = |controller: &str| {
            [format!("{controller}/docker/{id}"), format!("{controller}/system.slice/docker-{id}.scope")]
                .map(|p| root.join(p))
        };
        let v2 = [root.join(format!("system.slice/docker-{id}.scope")), root.join(format!("docker/{id}"))];
        let cpu = v1("cpuacct")
            .into_iter()
            .map(|d| (d.join("cpuacct.usage"), CpuFile::Nanoseconds))
            .chain(v2.iter().map(|d| (d.join("cpu.stat"), CpuFile::Stat)))
            .find(|(p, _)| p.exists());
        let memory = v1("memory")
            .into_iter()
            .map(|d| d.join("memory.max_usage_in_bytes"))
            .chain(v2.iter().map(|d| d.join("memory.peak")))
            .find(|p| p.exists());
        if cpu.is_none() {
            tracing::debug!(container = %id, "no cgroup files found; the container's usage is not metered");
        }
        Meter { cpu, memory, cpu_ms: None, peak_memory_bytes: None }
    }

    fn sample(&mut self) {
        if let Some((path, kind)) = &self.cpu
            && let Ok(text) = std::fs::read_to_string(path)
        {
            let ms = match kind {
                CpuFile::Nanoseconds => text.trim().parse::<u64>().ok().map(|ns| ns / 1_000_000),
                CpuFile::Stat => text
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|us| us.trim().parse::<u64>().ok())
                    .map(|us| us / 1000),
            };
            self.cpu_ms = ms.or(self.cpu_ms);
        }
        if let Some(path) = &self.memory
            && let Ok(bytes) = std::fs::read_to_string(path).map(|t| t.trim().parse::<u64>())
            && let Ok(bytes) = bytes
        {
            self.peak_memory_bytes = Some(self.peak_memory_bytes.unwrap_or(0).max(bytes));
        }
    }

    fn measured(&self) -> Measured {
        Measured { cpu_ms: self.cpu_ms, peak_memory_bytes: self.peak_memory_bytes, gpu_ms: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive_with(manifest: Option<&str>) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut builder = tar::Builder::new(file.reopen().unwrap());
        let mut add = |name: &str, bytes: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, bytes).unwrap();
        };
        add("layer.tar", &[0; 1000]);
        if let Some(manifest) = manifest {
            add("manifest.json", manifest.as_bytes());
        }
        builder.finish().unwrap();
        file
    }

    #[test]
    fn the_image_id_comes_from_the_archive_manifest() {
        let hex = "ab".repeat(32);
        for config in [format!("{hex}.json"), format!("blobs/sha256/{hex}")] {
            let archive = archive_with(Some(&format!(r#"[{{"Config":"{config}","RepoTags":null,"Layers":[]}}]"#)));
            assert_eq!(archive_image_id(archive.path()), Ok(format!("sha256:{hex}")));
        }
    }

    #[test]
    fn archives_that_would_tag_images_or_hide_a_second_manifest_are_refused() {
        let good = format!(r#"[{{"Config":"{}.json","RepoTags":null}}]"#, "ab".repeat(32));
        let build = |entries: &[(&str, &str)]| {
            let file = tempfile::NamedTempFile::new().unwrap();
            let mut builder = tar::Builder::new(file.reopen().unwrap());
            for (name, text) in entries {
                let mut header = tar::Header::new_gnu();
                header.set_size(text.len() as u64);
                header.set_mode(0o644);
                header.set_cksum();
                builder.append_data(&mut header, name, text.as_bytes()).unwrap();
            }
            builder.finish().unwrap();
            file
        };
        let id = |entries: &[(&str, &str)]| archive_image_id(build(entries).path());
        assert!(id(&[("manifest.json", &good)]).is_ok());
        assert!(id(&[("manifest.json", &good), ("repositories", "{}")]).is_ok());
        assert!(id(&[("manifest.json", &good), ("./manifest.json", &good)]).unwrap_err().contains("two manifest.json"));
        let repositories = r#"{"ubuntu":{"22.04":"abc"}}"#;
        assert!(id(&[("manifest.json", &good), ("repositories", repositories)]).unwrap_err().contains("tags"));
        let index = r#"{"manifests":[{"annotations":{"io.containerd.image.name":"docker.io/library/ubuntu:22.04"}}]}"#;
        assert!(id(&[("index.json", index), ("manifest.json", &good)]).unwrap_err().contains("tags"));
    }

    #[test]
    fn archives_that_are_not_one_image_are_refused() {
        let message = |manifest: Option<&str>| archive_image_id(archive_with(manifest).path()).unwrap_err();
        assert!(message(None).contains("no manifest.json"));
        assert!(message(Some("{")).contains("not JSON"));
        assert!(message(Some("[]")).contains("holds 0 images"));
        assert!(message(Some(r#"[{"Config":"../../etc/passwd"}]"#)).contains("not a digest"));
        let tagged = format!(r#"[{{"Config":"{}.json","RepoTags":["ubuntu:22.04"]}}]"#, "ab".repeat(32));
        assert!(message(Some(&tagged)).contains("names images (tags)"));
        let not_tar = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(not_tar.path(), vec![7u8; 4096]).unwrap();
        assert!(archive_image_id(not_tar.path()).is_err());
    }
}
