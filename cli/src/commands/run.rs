//! `upglobe run --image IMAGE [options] -- CMD ARGS…`: one container job, submitted as a one-job
//! workflow; waits for it, prints its output, writes its output files and exits with the
//! container's exit code (`--detach`: prints the job id and returns).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use upglobe_protocol::messages::{
    ClientRequest, ClientResponse, CommandJob, ContainerSpec, FileRef, JobKind, JobSpec, JobState, Output, Resources,
    Submission, TaskIds,
};
use upglobe_protocol::trust::Verification;

use super::Context;
use super::status::connect;
use crate::client::Client;
use crate::output::{self, Format};

/// The exit code when the container did not run to an end (docker's code for the same).
const NOT_RUN: i32 = 125;

#[derive(clap::Args)]
pub struct Args {
    /// The image: pushed with `upglobe image push`, in the local dockerd (pushed for you), an id
    /// (`sha256:…`) or a registry digest (`repo@sha256:…`).
    #[arg(long)]
    image: String,
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Memory the container reserves and is limited to, e.g. 512MiB (default 2GiB).
    #[arg(long, value_parser = upglobe_workflows::parse_memory)]
    memory: Option<u64>,
    #[arg(long, default_value_t = 0)]
    gpus: u32,
    /// Free memory each GPU must have, e.g. 16GiB.
    #[arg(long, value_parser = upglobe_workflows::parse_memory, requires = "gpus")]
    vram: Option<u64>,
    /// `SOURCE:/in/NAME`: a local file, or a dataset (hash or name), mounted read-only at /in/NAME.
    /// `SOURCE` alone mounts it at /in/ with its file name.
    #[arg(long = "input", value_name = "SOURCE:/in/NAME")]
    inputs: Vec<String>,
    /// Files to bring back from the working directory /out: `/out` for all of them, `/out/PATTERN`
    /// for some.
    /// (`--output` is the global json/text flag.)
    #[arg(long = "collect", value_name = "/out/PATTERN")]
    outputs: Vec<String>,
    /// Where output files are written (under JOB_NAME/0/).
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Wall-time limit in seconds.
    #[arg(long, default_value_t = upglobe_workflows::TIMEOUT_S_DEFAULT)]
    timeout: u64,
    /// Ask for a network (only workers started with --allow-network give one).
    #[arg(long)]
    network: bool,
    /// Workers that run it; their results must agree.
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Print the job id and return at once.
    #[arg(long)]
    detach: bool,
    #[arg(long, env = "UPGLOBE_CONNECT")]
    connect: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub async fn run(context: &Context, args: Args) -> Result<i32> {
    let client = connect(context, args.connect.as_deref()).await?;
    let job = submit(context, &client, &args).await?;
    if args.detach {
        match context.format {
            Format::Json => output::json(&serde_json::json!({ "job": job })),
            Format::Text => println!("{job}"),
        }
        client.close();
        return Ok(0);
    }
    eprintln!("job {job}: submitted");
    let code = wait(&client, &job, &args, context.format).await;
    client.close();
    code
}

async fn submit(context: &Context, client: &Client, args: &Args) -> Result<String> {
    // Every argument is checked before anything is sent.
    let targets = args.inputs.iter().map(|given| input_target(given)).collect::<Result<Vec<_>>>()?;
    let outputs = args.outputs.iter().map(|o| output_pattern(o)).collect::<Result<Vec<_>>>()?;
    let mut datasets = None;
    let image = match super::image::pin(client, &args.image, &mut datasets).await {
        Ok(image) => image,
        Err(not_pushed) => {
            // An image only the local dockerd has is sent first.
            eprintln!("pushing image {} to the scheduler", args.image);
            super::image::push(context, client, &args.image).await.map_err(|e| not_pushed.context(e))?;
            datasets = None;
            super::image::pin(client, &args.image, &mut datasets).await?
        }
    };
    let mut inputs = Vec::new();
    for (given, (source, name)) in args.inputs.iter().zip(targets) {
        inputs.push(input(client, given, source, name, &mut datasets).await?);
    }
    let name = format!("run-{}", std::process::id());
    let spec = JobSpec {
        name: "container".into(),
        after: Vec::new(),
        replicas: args.replicas,
        resources: Resources {
            cpus: args.cpus,
            memory_bytes: args.memory.unwrap_or(upglobe_workflows::CONTAINER_MEMORY_DEFAULT),
            gpus: args.gpus,
        },
        kind: JobKind::Command(CommandJob {
            argv: args.command.clone(),
            tasks: TaskIds::from_ids(std::iter::empty()),
            inputs,
            outputs,
            timeout_s: args.timeout,
            container: Some(ContainerSpec { image, network: args.network }),
            checkpoint: None,
        }),
        gpu: upglobe_protocol::messages::GpuRequest { vram_bytes: args.vram.unwrap_or(0), backend: None },
        verification: Verification::Quorum,
    };
    let source = format!("# upglobe run --image {} -- {}\n", args.image, args.command.join(" "));
    let submission = Submission { name, source, jobs: vec![spec] };
    match client.request(ClientRequest::Submit(submission)).await? {
        ClientResponse::Submitted { jobs, .. } => {
            Ok(jobs.first().map(|(_, id)| id.0.to_string()).context("the scheduler made no job")?)
        }
        ClientResponse::Error { message } => bail!("the scheduler refused the job: {message}"),
        other => bail!("unexpected answer {other:?}"),
    }
}

/// The job's output as the scheduler relays it from one worker, before anything is verified: it is
/// shown as it comes (control characters other than line breaks and tabs made visible on a
/// terminal), and hashed, so that the verified output is shown instead where they differ.
struct LiveOutput {
    next: u64,
    /// No output was dropped between pieces.
    complete: bool,
    stdout: blake3::Hasher,
    stderr: blake3::Hasher,
}

impl Default for LiveOutput {
    fn default() -> LiveOutput {
        LiveOutput { next: 0, complete: true, stdout: blake3::Hasher::new(), stderr: blake3::Hasher::new() }
    }
}

/// Bytes for a terminal: escape sequences and other control characters become visible.
fn harmless(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let control = |b: &u8| (*b < 0x20 && !matches!(b, b'\n' | b'\t' | b'\r')) || *b == 0x7f;
    if !bytes.iter().any(control) {
        return std::borrow::Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() + 16);
    for b in bytes {
        if control(b) {
            out.extend_from_slice(format!("^{}", (b ^ 0x40) as char).as_bytes());
        } else {
            out.push(*b);
        }
    }
    std::borrow::Cow::Owned(out)
}

impl LiveOutput {
    /// Prints what came since the last call; whether the job has finished.
    async fn follow(&mut self, client: &Client, job: &str) -> Result<bool> {
        use std::io::Write;
        let page = match client.request(ClientRequest::Logs { job: job.to_string(), from: self.next }).await? {
            ClientResponse::Logs(page) => page,
            ClientResponse::Error { message } => bail!("{message}"),
            other => bail!("unexpected answer {other:?}"),
        };
        use std::io::IsTerminal;
        self.complete &= page.from == self.next;
        for piece in &page.pieces {
            if piece.stderr {
                self.stderr.update(&piece.bytes);
                let mut err = std::io::stderr();
                let bytes = if err.is_terminal() { harmless(&piece.bytes) } else { piece.bytes.as_slice().into() };
                err.write_all(&bytes)?;
            } else {
                self.stdout.update(&piece.bytes);
                let mut out = std::io::stdout().lock();
                let bytes = if out.is_terminal() { harmless(&piece.bytes) } else { piece.bytes.as_slice().into() };
                out.write_all(&bytes)?;
                out.flush()?;
            }
        }
        self.next = page.next;
        Ok(page.done)
    }
}

#[derive(clap::Args)]
pub struct LogsArgs {
    /// A job id or WORKFLOW.JOB.
    job: String,
    /// Keep printing until the job finishes.
    #[arg(long, short)]
    follow: bool,
    #[arg(long, env = "UPGLOBE_CONNECT")]
    connect: Option<String>,
}

/// `upglobe logs JOB [--follow]`: a container job's output as it comes (the last MiB the scheduler
/// keeps; `upglobe results` has all of it once verified).
pub async fn logs(context: &Context, args: LogsArgs) -> Result<i32> {
    let client = connect(context, args.connect.as_deref()).await?;
    let mut live = LiveOutput::default();
    let stop = super::stop_signal();
    tokio::pin!(stop);
    loop {
        let done = live.follow(&client, &args.job).await?;
        if done || !args.follow {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = &mut stop => break,
        }
    }
    client.close();
    Ok(0)
}

/// The source and the name under /in of `SOURCE[:/in/NAME]`.
fn input_target(given: &str) -> Result<(&str, String)> {
    let (source, target) = match given.rsplit_once(':') {
        Some((source, target)) if target.starts_with('/') => (source, Some(target)),
        _ => (given, None),
    };
    let name = match target {
        Some(target) => match target.strip_prefix("/in/") {
            Some(name) => name.to_string(),
            None => bail!("--input {given}: inputs are mounted under /in/ (write SOURCE:/in/NAME)"),
        },
        None => std::path::Path::new(source)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| format!("--input {given}: name the file with SOURCE:/in/NAME"))?,
    };
    upglobe_protocol::messages::check_relative_path(&name).map_err(|e| anyhow::anyhow!("--input {given}: {e}"))?;
    Ok((source, name))
}

/// An input: a local file (uploaded) or a dataset by hash or name.
async fn input(
    client: &Client,
    given: &str,
    source: &str,
    name: String,
    datasets: &mut Option<Vec<upglobe_protocol::messages::DatasetInfo>>,
) -> Result<FileRef> {
    let path = PathBuf::from(source);
    if path.is_file() {
        let (blob, size) = client.upload_file(&path).await.with_context(|| format!("uploading {source}"))?;
        return Ok(FileRef { name, blob, size });
    }
    if datasets.is_none() {
        *datasets = Some(super::dataset::list(client).await?);
    }
    let found = super::dataset::resolve(datasets.as_deref().unwrap_or_default(), source)
        .with_context(|| format!("--input {given}: {source} is neither a file here nor a dataset"))?;
    Ok(FileRef { name, blob: found.hash, size: found.size })
}

/// `/out` (everything) or `/out/PATTERN`, as a pattern relative to the working directory.
fn output_pattern(given: &str) -> Result<String> {
    let pattern = match given.trim_end_matches('/') {
        "/out" => "**/*",
        other => other.strip_prefix("/out/").with_context(|| {
            format!("--collect {given}: outputs are collected from /out (write /out or /out/PATTERN)")
        })?,
    };
    upglobe_protocol::messages::check_relative_path(pattern).map_err(|e| anyhow::anyhow!("--collect {given}: {e}"))?;
    Ok(pattern.to_string())
}

/// Waits for the job, printing its output as it comes; writes its files; the container's exit code.
async fn wait(client: &Client, job: &str, args: &Args, format: Format) -> Result<i32> {
    let mut shown = String::new();
    let mut live = LiveOutput::default();
    // Listening from the start: a Ctrl-C between two polls would otherwise be lost.
    let stop = super::stop_signal();
    tokio::pin!(stop);
    let status = loop {
        live.follow(client, job).await?;
        let status = super::status::fetch(client, Some(job.to_string())).await?;
        let status = status.into_iter().next().context("the job is gone")?;
        let state = match (&status.state, &status.waiting) {
            (JobState::Waiting, Some(reason)) => format!("waiting: {reason}"),
            (state, _) => state.label().to_string(),
        };
        if state != shown {
            eprintln!("job {job}: {state}");
            shown = state;
        }
        if status.state.is_finished() {
            break status;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            // Ctrl-C stops the container too, as `docker run` does.
            _ = &mut stop => {
                client.request(ClientRequest::Cancel { job: job.to_string() }).await?;
                eprintln!("job {job}: cancelled");
                return Ok(130);
            }
        }
    };
    // A container that ran to its end has a verified result, whatever its exit code.
    let results = super::results::fetch(client, job).await?;
    let Some(Output::Command { exit_code, stdout, stderr, files }) = results.chunks.first().map(|c| &c.output) else {
        if let JobState::Failed { reason } = &status.state {
            let last = status.failures.last().map(|f| f.reason.as_str()).unwrap_or(reason);
            eprintln!("job {job} failed: {last}");
        }
        return Ok(NOT_RUN);
    };
    live.follow(client, job).await?;
    let shown = |hasher: &blake3::Hasher| upglobe_protocol::BlobHash(*hasher.finalize().as_bytes());
    if live.complete && shown(&live.stdout) == stdout.blob && shown(&live.stderr) == stderr.blob {
        // What was shown as it came is the verified output.
    } else {
        use std::io::Write;
        if live.next > 0 {
            eprintln!(
                "[upglobe: the live output was incomplete or not what was verified; the verified output follows]"
            );
        }
        std::io::stdout().write_all(&client.download(stdout.blob).await?)?;
        std::io::stderr().write_all(&client.download(stderr.blob).await?)?;
    }
    if !files.is_empty() {
        let dir = args.out.join(format!("{}.container", results.status.workflow_name)).join("0");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for file in files {
            let bytes = client.download(file.blob).await?;
            super::results::place_file(&dir, &file.name, &bytes)?;
        }
        if format == Format::Text {
            eprintln!("job {job}: {} output files in {}", files.len(), dir.display());
        }
    }
    Ok(*exit_code)
}
