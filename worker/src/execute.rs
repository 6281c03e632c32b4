//! Running one task: an MD chunk on the kernels, a command in a scratch directory, or nothing.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use upglobe_datasets::{BlobStore, transfer};
use upglobe_kernels::{Checkpoint, Device, Event, RunOptions, engine};
use upglobe_protocol::messages::{Assignment, FileRef, Output, Task, ThermoLine};
use upglobe_protocol::trust::CHAIN_LINKS_MAX;
use upglobe_protocol::{AssignmentId, BlobHash};

use crate::WorkerConfig;

/// What a task produced: its output, and for MD the states at the start of each link of its hash
/// chain (kept until the scheduler settles the chunk, to serve audits).
pub struct Executed {
    pub output: Output,
    pub link_starts: Vec<BlobHash>,
    pub measured: Measured,
}

/// What the kernel measured of a task's processes (commands; MD runs inside the worker).
#[derive(Debug, Clone, Copy, Default)]
pub struct Measured {
    pub cpu_ms: Option<u64>,
    pub peak_memory_bytes: Option<u64>,
    /// Milliseconds of GPU time (all GPUs together).
    pub gpu_ms: u64,
}

impl From<Output> for Executed {
    fn from(output: Output) -> Executed {
        Executed { output, link_starts: Vec::new(), measured: Measured::default() }
    }
}

/// What fetching a task's inputs needs: the scheduler's connection, the cache, this worker's
/// identity (to prove itself to peers) and the peers the scheduler named as sources.
#[derive(Clone, Copy)]
pub struct Fetcher<'a> {
    pub config: &'a WorkerConfig,
    pub connection: &'a quinn::Connection,
    pub blobs: &'a BlobStore,
    pub identity: &'a upglobe_protocol::tls::PeerIdentity,
    pub peers: &'a [upglobe_protocol::messages::PeerSource],
    /// Bytes received for the task's inputs, counted as they arrive.
    pub fetched: &'a AtomicU64,
    /// The local dockerd, for container tasks, and where their output goes as it comes.
    pub containers: Option<&'a crate::container::Containers>,
    pub logs: Option<&'a crate::container::LogSink>,
}

/// Runs an assignment; `Err` carries the reason of a failure, in words for the job's status.
pub async fn run(
    fetcher: &Fetcher<'_>,
    assignment: Assignment,
    cancel: Arc<AtomicBool>,
    steps_done: Arc<AtomicU64>,
    pinned: Arc<Mutex<Vec<BlobHash>>>,
) -> Result<Executed, String> {
    let (config, blobs) = (fetcher.config, fetcher.blobs);
    match assignment.task {
        Task::Empty { value } => Ok(Output::Empty { value }.into()),
        Task::Md { input, steps, thermo_every, thermo_at_start, chain_every } => {
            let bytes = fetch_verified(fetcher, input).await.map_err(|e| format!("fetching the input state: {e}"))?;
            let device = md_device(config, &assignment)?;
            let blobs = blobs.clone();
            let md = MdChunk { input: bytes, input_blob: input, steps, thermo_every, thermo_at_start, chain_every };
            let chunk = assignment.chunk;
            let mut executed = tokio::task::spawn_blocking(move || {
                let cheat = crate::cheat::for_chunk(chunk.index);
                run_md(&blobs, &md, &device, &cancel, &steps_done, &pinned, cheat)
            })
            .await
            .map_err(|e| format!("the MD task panicked: {e}"))??;
            // GPU time is billed for GPUs the task holds, not for a worker's own default device.
            if assignment.resources.gpus == 0 {
                executed.measured.gpu_ms = 0;
            }
            Ok(executed)
        }
        Task::Command { argv, inputs, outputs, timeout_s, container: Some(spec) } => {
            let Some(containers) = fetcher.containers else {
                return Err("this worker runs no containers (no dockerd answered when it started)".into());
            };
            let scratch = Scratch::new(config, assignment.id);
            let task = crate::container::ContainerTask {
                argv: &argv,
                inputs: &inputs,
                outputs: &outputs,
                timeout: Duration::from_secs(timeout_s),
                spec: &spec,
                resources: assignment.resources,
                name: containers.name(assignment.id),
                gpus: &assignment.gpus,
                memory_default: config.resources.memory_bytes,
                logs: fetcher.logs.cloned(),
            };
            let mut measured = Measured::default();
            let output = crate::container::run(containers, fetcher, &scratch.0, &task, &cancel, &mut measured).await?;
            Ok(Executed { output, link_starts: Vec::new(), measured })
        }
        Task::Command { argv, inputs, outputs, timeout_s, container: None } => {
            if !config.allow_commands {
                return Err("this worker does not run commands (start it with --allow-commands)".into());
            }
            let scratch = Scratch::new(config, assignment.id);
            let timeout = Duration::from_secs(timeout_s);
            let (gpus, gpu_uuids) = (assignment.resources.gpus, assignment.gpus.clone());
            let command = CommandTask { gpus, gpu_uuids, argv, inputs, outputs, timeout };
            let mut measured = Measured::default();
            let output = run_command(fetcher, &scratch.0, &command, &cancel, &mut measured).await?;
            Ok(Executed { output, link_starts: Vec::new(), measured })
        }
    }
}

/// A program task's scratch directory, removed when the task is done with it, whatever happened.
struct Scratch(PathBuf);

impl Scratch {
    fn new(config: &WorkerConfig, assignment: AssignmentId) -> Scratch {
        Scratch(config.data_dir.join("work").join(assignment.0.to_string()))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// GPU time: the GPUs a task held for as long as it ran.
pub(crate) fn gpu_time(started: Instant, gpus: u32) -> u64 {
    started.elapsed().as_millis() as u64 * u64::from(gpus)
}

/// The engine of an MD task: a job that asks for GPUs runs on a wgpu adapter (of its backend, if
/// it named one), whatever the worker's default; otherwise the worker's device, with as many CPU
/// threads as the job's cpus when it runs on all.
fn md_device(config: &WorkerConfig, assignment: &Assignment) -> Result<Device, String> {
    if assignment.resources.gpus > 0 {
        let adapters = upglobe_kernels::gpu::adapters();
        let wanted = assignment.backend.as_deref();
        let adapter = adapters.iter().find(|a| wanted.is_none_or(|b| a.backend == b));
        return match adapter {
            Some(adapter) => Ok(Device::Wgpu { adapter: Some(adapter.index) }),
            None => Err(format!(
                "the job asks for a GPU ({}) and this worker has no such wgpu adapter",
                wanted.unwrap_or("any backend")
            )),
        };
    }
    Ok(match &config.device {
        Device::Cpu { threads: 0 } => Device::Cpu { threads: assignment.resources.cpus.max(1) as usize },
        other => other.clone(),
    })
}

/// A blob's bytes, fetched if missing, and fetched again if the local copy is corrupt (a cached copy
/// that rotted would otherwise fail every attempt on this worker).
async fn fetch_verified(fetcher: &Fetcher<'_>, hash: BlobHash) -> Result<Vec<u8>, upglobe_datasets::DatasetError> {
    let blobs = fetcher.blobs;
    fetch(fetcher, hash).await?;
    match blobs.get(&hash) {
        Err(upglobe_datasets::DatasetError::Corrupt { .. }) => {
            tracing::warn!(blob = %hash.short(), "cached blob is corrupt; fetching it again");
            blobs.remove(&hash)?;
            fetch(fetcher, hash).await?;
            blobs.get(&hash)
        }
        other => other,
    }
}

/// Awaits a handful of futures together; their outputs in order.
async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, slot) in pinned.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(output) => *slot = Some(output),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    done.into_iter().map(|slot| slot.expect("every future finished")).collect()
}

/// Fetches a blob from the scheduler in verified slices (resuming what an earlier attempt, or an
/// earlier run of this worker, verified), at the worker's download rate, logging progress.
pub async fn fetch(fetcher: &Fetcher<'_>, hash: BlobHash) -> Result<transfer::Report, upglobe_datasets::DatasetError> {
    let Fetcher { config, connection, blobs, .. } = *fetcher;
    if blobs.contains(&hash) {
        return transfer::download(connection, blobs, hash).await;
    }
    let mut options = transfer::Options { rate_bytes_per_s: config.download_rate, ..transfer::Options::default() };
    if let Some(rate) = config.download_rate {
        // Held to a rate, parallel streams gain nothing, and what they would have in flight is lost
        // if the worker stops: one stream of pieces of half a second each.
        options.streams_per_source = 1;
        options.piece_bytes = (rate / 2).clamp(1 << 20, 8 << 20);
    }
    let mut sources = vec![transfer::Source { name: "scheduler".into(), connection: connection.clone() }];
    // Peers are asked at once, each within its own timeout: unreachable ones (behind NAT) cost
    // one timeout in all, not one each.
    let attempts =
        fetcher.peers.iter().filter(|p| p.blob == hash).map(|peer| async move {
            (peer, crate::peers::connect(fetcher.identity, &config.token.secret, peer).await)
        });
    for (peer, connected) in join_all(attempts).await {
        match connected {
            Ok(connection) => {
                sources.push(transfer::Source { name: format!("peer {}", peer.worker.short()), connection })
            }
            Err(e) => tracing::info!(peer = %peer.address, error = %e, "a peer holding the input is out of reach"),
        }
    }
    let progress = options.progress.clone();
    let download = transfer::download_from(&sources, blobs, hash, &options);
    tokio::pin!(download);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    tick.tick().await;
    let report = loop {
        tokio::select! {
            done = &mut download => break done?,
            _ = tick.tick() => {
                let size = progress.size.load(std::sync::atomic::Ordering::Relaxed);
                let verified = progress.verified.load(std::sync::atomic::Ordering::Relaxed);
                if size > 0 {
                    tracing::info!(blob = %hash.short(), verified, size, "fetching");
                }
            }
        }
    };
    for source in &sources[1..] {
        source.connection.close(0u32.into(), b"fetched");
    }
    fetcher.fetched.fetch_add(report.received_bytes, std::sync::atomic::Ordering::Relaxed);
    if report.size > 0 {
        let from: Vec<String> = report.per_source.iter().map(|(name, bytes)| format!("{name}:{bytes}")).collect();
        tracing::info!(
            blob = %hash.short(),
            size = report.size,
            resumed = report.resumed_bytes,
            received = report.received_bytes,
            sources = %from.join(","),
            "fetched"
        );
    }
    Ok(report)
}

pub struct MdChunk {
    pub input: Vec<u8>,
    pub input_blob: BlobHash,
    pub steps: u64,
    pub thermo_every: u64,
    pub thermo_at_start: bool,
    pub chain_every: u64,
}

/// The links of a chunk's chain, if `chain_every` divides its steps into at most
/// [`CHAIN_LINKS_MAX`] of them.
fn links(md: &MdChunk) -> Result<u64, String> {
    if md.chain_every == 0 || !md.steps.is_multiple_of(md.chain_every) {
        return Err(format!(
            "a hash chain every {} steps does not divide a chunk of {} steps",
            md.chain_every, md.steps
        ));
    }
    let links = md.steps / md.chain_every;
    if links > CHAIN_LINKS_MAX as u64 {
        return Err(format!("{links} links in a hash chain; at most {CHAIN_LINKS_MAX} are allowed"));
    }
    Ok(links)
}

/// Advances an MD state link by link: the state hash after each link is the chain, and every
/// intermediate state is stored, so any link can be re-run from its start by a verifier. The kernels
/// are bit-deterministic, so running in links gives the bytes one run would.
pub fn run_md(
    blobs: &BlobStore,
    md: &MdChunk,
    device: &Device,
    cancel: &AtomicBool,
    steps_done: &AtomicU64,
    pinned: &Mutex<Vec<BlobHash>>,
    cheat: crate::cheat::Cheat,
) -> Result<Executed, String> {
    // Every state written is pinned in the cache at once: evicting one before the chunk settles
    // would fail an honest worker's audit.
    let put = |bytes: &[u8]| -> Result<BlobHash, String> {
        let hash = blobs.put(bytes).map_err(|e| e.to_string())?;
        pinned.lock().expect("pinned blobs").push(hash);
        Ok(hash)
    };
    let links = links(md)?;
    let mut state = Checkpoint::decode(&md.input).map_err(|e| format!("the input state: {e}"))?;
    let mut engine = engine(device).map_err(|e| e.to_string())?;
    let (start, atoms) = (state.step, state.atoms());
    let started = Instant::now();
    let mut chain = Vec::with_capacity(links as usize);
    let mut link_starts = vec![md.input_blob];
    let mut thermo = Vec::new();
    let mut encoded = Vec::new();
    for link in 0..links {
        let options = RunOptions {
            thermo_every: md.thermo_every,
            thermo_at_start: md.thermo_at_start && link == 0,
            ..RunOptions::new(md.chain_every)
        };
        let output = engine
            .run(&state, &options, &mut |event| {
                if let Event::Step(step) = event {
                    steps_done.store(step - start, Ordering::Relaxed);
                }
                if cancel.load(Ordering::Relaxed) { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
            })
            .map_err(|e| e.to_string())?;
        state = output.state;
        cheat.after_link(link, links, &mut state);
        thermo.extend(output.thermo.iter().map(thermo_line));
        encoded = Checkpoint::encode(&state);
        chain.push(Checkpoint::stored_hash(&encoded).expect("an encoding ends with its hash").0);
        if link + 1 < links {
            link_starts.push(put(&encoded)?);
        }
    }
    cheat.forge(&mut chain);
    let state_hash = Checkpoint::stored_hash(&encoded).expect("an encoding ends with its hash").0;
    let checkpoint = put(&encoded)?;
    tracing::info!(
        atoms,
        steps = md.steps,
        links,
        engine = %engine.describe(),
        atom_steps_per_s = atoms as f64 * md.steps as f64 / started.elapsed().as_secs_f64(),
        "md chunk done"
    );
    let output = Output::Md { state_hash, checkpoint, checkpoint_bytes: encoded.len() as u64, thermo, chain };
    let on_gpu = matches!(device, Device::Wgpu { .. });
    let measured = Measured { gpu_ms: gpu_time(started, u32::from(on_gpu)), ..Measured::default() };
    Ok(Executed { output, link_starts, measured })
}

struct CommandTask {
    /// GPUs the task holds, for its metered GPU time, and their UUIDs (the CUDA runtime sees only
    /// those).
    gpus: u32,
    gpu_uuids: Vec<String>,
    argv: Vec<String>,
    inputs: Vec<FileRef>,
    outputs: Vec<String>,
    timeout: Duration,
}

/// A relative path that stays inside the scratch directory.
pub(crate) fn contained(name: &str) -> Result<PathBuf, String> {
    upglobe_protocol::messages::check_relative_path(name)?;
    Ok(PathBuf::from(name))
}

async fn run_command(
    fetcher: &Fetcher<'_>,
    scratch: &Path,
    task: &CommandTask,
    cancel: &AtomicBool,
    measured: &mut Measured,
) -> Result<Output, String> {
    let blobs = fetcher.blobs;
    let _ = std::fs::remove_dir_all(scratch);
    let files = scratch.join("files");
    std::fs::create_dir_all(&files).map_err(|e| format!("cannot create {}: {e}", files.display()))?;
    for input in &task.inputs {
        let target = files.join(contained(&input.name)?);
        fetch(fetcher, input.blob).await.map_err(|e| format!("fetching '{}': {e}", input.name))?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::copy(blobs.path(&input.blob), &target).map_err(|e| format!("cannot place '{}': {e}", input.name))?;
    }
    let stdout_path = scratch.join("stdout");
    let stderr_path = scratch.join("stderr");
    let open = |p: &Path| std::fs::File::create(p).map_err(|e| format!("cannot create {}: {e}", p.display()));
    let program = task.argv.first().ok_or("empty argv")?;
    let mut command = std::process::Command::new(program);
    if !task.gpu_uuids.is_empty() {
        let visible = task.gpu_uuids.join(",");
        command.env("CUDA_VISIBLE_DEVICES", &visible).env("NVIDIA_VISIBLE_DEVICES", &visible);
    }
    let child = command
        .args(&task.argv[1..])
        .current_dir(&files)
        .stdin(std::process::Stdio::null())
        .stdout(open(&stdout_path)?)
        .stderr(open(&stderr_path)?)
        .spawn()
        .map_err(|e| format!("cannot start '{program}': {e}"))?;
    // Reaped here with wait4, which also returns the kernel's account of what the process (and
    // everything it waited for) used: the task's metered CPU time and peak memory.
    let mut child = Reaper { pid: child.id() as libc::pid_t, reaped: false };
    let started = Instant::now();
    let (status, used) = loop {
        if let Some(done) = child.try_reap().map_err(|e| format!("waiting for '{program}': {e}"))? {
            break done;
        }
        if cancel.load(Ordering::Relaxed) {
            child.kill();
            return Err("cancelled".into());
        }
        if started.elapsed() > task.timeout {
            child.kill();
            return Err(format!("'{program}' timed out after {}s", task.timeout.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    *measured = Measured {
        cpu_ms: Some(used.cpu_ms),
        peak_memory_bytes: Some(used.peak_memory_bytes),
        gpu_ms: gpu_time(started, task.gpus),
    };
    if !status.success() {
        let tail = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let tail: String =
            tail.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ");
        return Err(format!("'{program}' exited with {status}; stderr: {tail}"));
    }
    program_output(blobs, status.code().unwrap_or(0), scratch, &files, &task.outputs)
}

/// A program's result: its exit code, the files of `dir` its output patterns match, and the
/// `stdout` and `stderr` files of `scratch`, all stored as blobs.
pub(crate) fn program_output(
    blobs: &BlobStore,
    exit_code: i32,
    scratch: &Path,
    dir: &Path,
    patterns: &[String],
) -> Result<Output, String> {
    let files = collect_outputs(blobs, dir, patterns)?;
    let store = |name: &str| -> Result<FileRef, String> {
        let (blob, size) = blobs.put_file(&scratch.join(name)).map_err(|e| e.to_string())?;
        Ok(FileRef { name: name.into(), blob, size })
    };
    Ok(Output::Command { exit_code, files, stdout: store("stdout")?, stderr: store("stderr")? })
}

/// What the kernel says a finished command used.
struct Used {
    cpu_ms: u64,
    peak_memory_bytes: u64,
}

/// A command's process, killed and reaped if the task ends before it does.
struct Reaper {
    pid: libc::pid_t,
    reaped: bool,
}

impl Reaper {
    /// The exit status and what it used, if it has ended.
    fn try_reap(&mut self) -> std::io::Result<Option<(std::process::ExitStatus, Used)>> {
        use std::os::unix::process::ExitStatusExt;
        let mut status = 0;
        // SAFETY: `status` and `usage` are writable and `pid` is our child, not yet reaped.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let reaped = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut usage) };
        if reaped < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if reaped == 0 {
            return Ok(None);
        }
        self.reaped = true;
        let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
        let used = Used {
            cpu_ms: ms(usage.ru_utime) + ms(usage.ru_stime),
            // Linux counts maxrss in KiB.
            peak_memory_bytes: usage.ru_maxrss.max(0) as u64 * 1024,
        };
        Ok(Some((std::process::ExitStatus::from_raw(status), used)))
    }

    fn kill(&mut self) {
        if self.reaped {
            return;
        }
        // SAFETY: signalling and reaping our own unreaped child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
        self.reaped = true;
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Files matching the output patterns, stored as blobs, in name order.
fn collect_outputs(blobs: &BlobStore, files: &Path, patterns: &[String]) -> Result<Vec<FileRef>, String> {
    let mut found = std::collections::BTreeMap::new();
    let mut total = 0u64;
    let root = files.canonicalize().map_err(|e| format!("cannot resolve {}: {e}", files.display()))?;
    for pattern in patterns {
        contained(pattern.trim_start_matches("./")).map_err(|e| format!("output pattern {e}"))?;
        let full = files.join(pattern);
        let matches = glob::glob(&full.to_string_lossy()).map_err(|e| format!("output pattern '{pattern}': {e}"))?;
        // Only regular files that are inside the scratch directory: a task must not be able to
        // publish a worker's file (/etc/shadow, its key) through a symbolic link.
        let inside = |p: &Path| p.canonicalize().is_ok_and(|real| real.starts_with(&root));
        let regular = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
        for path in matches.flatten().filter(|p| regular(p) && inside(p)) {
            let name = path.strip_prefix(files).expect("matches are inside").to_string_lossy().replace('\\', "/");
            if !found.contains_key(&name) {
                // What the scheduler would refuse is refused here, before anything is stored.
                use upglobe_protocol::messages::limits::{
                    BLOB_BYTES_MAX, FILES_PER_TASK_MAX, UNCLAIMED_UPLOAD_BYTES_MAX,
                };
                let size = std::fs::symlink_metadata(&path).map(|m| m.len()).unwrap_or(0);
                total = total.saturating_add(size);
                if found.len() >= FILES_PER_TASK_MAX {
                    return Err(format!("the task wrote more than {FILES_PER_TASK_MAX} output files"));
                }
                if size > BLOB_BYTES_MAX || total > UNCLAIMED_UPLOAD_BYTES_MAX {
                    return Err(format!(
                        "the task's outputs are too large: '{name}' is {size} bytes (at most {BLOB_BYTES_MAX} per file and {UNCLAIMED_UPLOAD_BYTES_MAX} in all)"
                    ));
                }
                let (blob, size) = blobs.put_file(&path).map_err(|e| e.to_string())?;
                found.insert(name.clone(), FileRef { name, blob, size });
            }
        }
    }
    Ok(found.into_values().collect())
}

/// A kernel's thermo line as results carry it (the kernels do not know the protocol).
pub fn thermo_line(t: &upglobe_kernels::Thermo) -> ThermoLine {
    ThermoLine { step: t.step, temp: t.temp, pe: t.pe, ke: t.ke, etotal: t.etotal, press: t.press }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_inside() {
        assert!(contained("a/b.txt").is_ok());
        assert!(contained("../etc/passwd").is_err());
        assert!(contained("/etc/passwd").is_err());
        assert!(contained("").is_err());
    }

    #[test]
    fn collects_matching_files_by_relative_name() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
        let files = dir.path().join("files");
        std::fs::create_dir_all(files.join("out")).unwrap();
        std::fs::write(files.join("out/a.csv"), "1").unwrap();
        std::fs::write(files.join("b.csv"), "2").unwrap();
        std::fs::write(files.join("c.txt"), "3").unwrap();
        let found = collect_outputs(&blobs, &files, &["*.csv".into(), "out/*.csv".into()]).unwrap();
        let names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["b.csv", "out/a.csv"]);
        assert!(collect_outputs(&blobs, &files, &["../*".into()]).is_err());
    }

    #[test]
    fn outputs_never_follow_links_out_of_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
        let files = dir.path().join("files");
        let secret = dir.path().join("secret");
        std::fs::create_dir_all(secret.join("deep")).unwrap();
        std::fs::write(secret.join("key.csv"), "private").unwrap();
        std::fs::write(secret.join("deep/key.csv"), "private").unwrap();
        std::fs::create_dir_all(&files).unwrap();
        std::fs::write(files.join("real.csv"), "1").unwrap();
        std::os::unix::fs::symlink(secret.join("key.csv"), files.join("stolen.csv")).unwrap();
        std::os::unix::fs::symlink(secret.join("deep"), files.join("linked")).unwrap();
        let found = collect_outputs(&blobs, &files, &["*.csv".into(), "linked/*.csv".into()]).unwrap();
        let names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["real.csv"]);
    }
}
