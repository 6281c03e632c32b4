//! `upglobe results`: verified results to local files.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde_json::json;
use upglobe_datasets::h5md::{ChunkProvenance, Frame, Observable, Trajectory, track_images, write};
use upglobe_kernels::{Checkpoint, State};
use upglobe_protocol::messages::{ClientRequest, ClientResponse, JobKind, JobResults, JobState, Output, ResultsPage};

use super::Context;
use super::status::connect;
use crate::client::Client;
use crate::output::{self, Format};

#[derive(clap::Args)]
pub struct Args {
    /// A job id or WORKFLOW.JOB.
    job: String,
    /// Directory to write into (created if needed).
    #[arg(long, default_value = ".")]
    out: PathBuf,
    #[arg(long, env = "UPGLOBE_CONNECT")]
    connect: Option<String>,
    /// Also plot an MD job's thermo (temperature, energies, pressure) as a PNG.
    #[arg(long, value_name = "FILE.png")]
    plot: Option<PathBuf>,
}

pub async fn run(context: &Context, args: Args) -> Result<i32> {
    let client = connect(context, args.connect.as_deref()).await?;
    let results = fetch(&client, &args.job).await?;
    if args.plot.is_some() && !matches!(results.spec.kind, JobKind::Md(_)) {
        bail!("job {} is not an MD job; only MD jobs have thermo to plot", results.status.id);
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let status = &results.status;
    let stem = format!("{}.{}", status.workflow_name, status.name);
    let written = match &results.spec.kind {
        JobKind::Md(_) => {
            // `.h5md`, not `.h5`: MDAnalysis picks its H5MD reader by the extension.
            let path = args.out.join(format!("{stem}.h5md"));
            write_md(&client, &results, &path).await?;
            path
        }
        JobKind::Command(_) => {
            let dir = args.out.join(&stem);
            write_command(&client, &results, &dir).await?;
            dir
        }
        JobKind::Empty { .. } => args.out.clone(),
    };
    if let Some(path) = &args.plot {
        let points: Vec<upglobe_protocol::messages::ThermoLine> = results
            .chunks
            .iter()
            .filter_map(|c| match &c.output {
                upglobe_protocol::messages::Output::Md { thermo, .. } => Some(thermo),
                _ => None,
            })
            .flatten()
            .copied()
            .collect();
        crate::plot::thermo_png(path, &stem, &points)?;
    }
    if status.state != JobState::Completed {
        eprintln!(
            "note: job {} is {}; {} of {} chunks are verified and written",
            status.id,
            status.state.label(),
            status.chunks_verified,
            status.chunks_total
        );
    }
    match context.format {
        Format::Json => output::json(&json!({
            "job": status.id.0, "state": status.state.label(), "written": written,
            "chunks_verified": status.chunks_verified, "chunks_total": status.chunks_total,
            "final_state_hash": final_state_hash(&results),
            "exit_codes": exit_codes(&results),
        })),
        Format::Text => {
            println!("wrote {}", written.display());
            if let Some(hash) = final_state_hash(&results) {
                println!("final state hash {hash}");
            }
        }
    }
    client.close();
    Ok(0)
}

/// A job's verified results, page by page (a million chunks never travel in one message).
pub async fn fetch(client: &Client, job: &str) -> Result<JobResults> {
    let mut first_chunk = 0;
    let mut assembled: Option<JobResults> = None;
    loop {
        let page = match client.request(ClientRequest::Results { job: job.to_string(), first_chunk }).await? {
            ClientResponse::Results(page) => *page,
            other => bail!("unexpected answer {other:?}"),
        };
        let ResultsPage { status, workflow_hash, spec, chunks, next_chunk } = page;
        match &mut assembled {
            None => {
                let spec = spec.context("the first page of results has no job spec")?;
                assembled = Some(JobResults { status, workflow_hash, spec, chunks });
            }
            Some(results) => results.chunks.extend(chunks),
        }
        match next_chunk {
            Some(next) if next > first_chunk => first_chunk = next,
            Some(next) => bail!("the scheduler's next page starts at chunk {next}, not after {first_chunk}"),
            None => return Ok(assembled.expect("a first page")),
        }
    }
}

pub fn final_state_hash(results: &JobResults) -> Option<String> {
    results.chunks.last().and_then(|c| match &c.output {
        Output::Md { state_hash, .. } => Some(hex::encode(state_hash)),
        _ => None,
    })
}

/// One H5MD frame of a state: physical positions (wrapped into the box) and velocities in atom-id order.
pub fn frame(state: &State) -> Frame {
    Frame {
        step: state.step as i64,
        time: state.time(),
        positions: (0..state.atoms()).map(|i| state.position(i)).collect(),
        velocities: (0..state.atoms()).map(|i| state.velocity(i)).collect(),
    }
}

async fn state(client: &Client, hash: upglobe_protocol::BlobHash) -> Result<State> {
    let bytes = client.download(hash).await?;
    Ok(Checkpoint::decode(&bytes)?)
}

/// One H5MD file: the initial state and the state after each verified chunk, thermo, provenance.
/// Positions are unwrapped across chunk boundaries (see [`track_images`] for when that is exact), so
/// a mean squared displacement can be read off the file.
pub async fn write_md(client: &Client, results: &JobResults, path: &Path) -> Result<()> {
    let JobKind::Md(md) = &results.spec.kind else { unreachable!("an md job") };
    let initial = state(client, md.initial).await?;
    let timestep = initial.params.timestep;
    let mut frames = vec![frame(&initial)];
    let mut observables = Vec::new();
    let mut chunks = Vec::new();
    for chunk in &results.chunks {
        let Output::Md { state_hash, checkpoint, thermo, .. } = &chunk.output else {
            bail!("chunk {} is not an MD result", chunk.index)
        };
        let after = state(client, *checkpoint).await?;
        if Checkpoint::hash(&after).0 != *state_hash {
            bail!("chunk {}: the checkpoint does not have the verified state hash", chunk.index);
        }
        frames.push(frame(&after));
        observables.extend(thermo.iter().map(|t| Observable {
            step: t.step as i64,
            time: t.step as f64 * timestep,
            temperature: t.temp,
            potential_energy: t.pe,
            kinetic_energy: t.ke,
            total_energy: t.etotal,
            pressure: t.press,
        }));
        chunks.push(ChunkProvenance {
            index: chunk.index,
            state_hash: hex::encode(state_hash),
            workers: chunk.agreeing.iter().map(|w| w.to_hex()).collect(),
        });
    }
    let images = Some(track_images(&frames, initial.params.box_length));
    let trajectory = Trajectory {
        box_origin: initial.params.box_origin,
        box_edges: initial.params.box_length,
        species: initial.types.iter().map(|t| *t as i32 + 1).collect(),
        ids: initial.ids.iter().map(|id| *id as i64).collect(),
        frames,
        images,
        observables,
        software: upglobe_worker::SOFTWARE.into(),
        author: std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
        workflow_hash: results.workflow_hash.clone(),
        job: format!("{}.{}", results.status.workflow_name, results.status.name),
        initial_state_hash: md.initial.to_hex(),
        chunks,
    };
    write(path, &trajectory)?;
    Ok(())
}

/// Each verified command or container chunk's exit code, by chunk index.
fn exit_codes(results: &JobResults) -> Vec<serde_json::Value> {
    let code = |chunk: &upglobe_protocol::messages::VerifiedChunk| match &chunk.output {
        Output::Command { exit_code, .. } => Some(json!({"chunk": chunk.index, "exit_code": exit_code})),
        _ => None,
    };
    results.chunks.iter().filter_map(code).collect()
}

async fn write_command(client: &Client, results: &JobResults, dir: &Path) -> Result<()> {
    let JobKind::Command(command) = &results.spec.kind else { unreachable!("a command job") };
    // Tasks often write identical files (an empty stderr): each blob is downloaded once, and later
    // copies are read back from where the first landed.
    let mut written: std::collections::HashMap<upglobe_protocol::BlobHash, PathBuf> = Default::default();
    for chunk in &results.chunks {
        let Output::Command { files, stdout, stderr, .. } = &chunk.output else {
            bail!("chunk {} is not a command result", chunk.index)
        };
        let task = command.tasks.get(chunk.index as u64).map_or(chunk.index.to_string(), |t| t.to_string());
        let task_dir = dir.join(task);
        std::fs::create_dir_all(&task_dir).with_context(|| format!("cannot create {}", task_dir.display()))?;
        for file in files.iter().chain([stdout, stderr]) {
            // The scheduler accepts only safe names; this client trusts no peer, so it checks again.
            upglobe_protocol::messages::check_relative_path(&file.name)
                .map_err(|e| anyhow::anyhow!("chunk {}: refusing to write {e}", chunk.index))?;
            // A copy read back must still be the blob (nothing changed it since it was written).
            let copy = written.get(&file.blob).and_then(|first| std::fs::read(first).ok());
            let bytes = match copy.filter(|bytes| upglobe_protocol::BlobHash::of(bytes) == file.blob) {
                Some(bytes) => bytes,
                None => client.download(file.blob).await?,
            };
            let path = place_file(&task_dir, &file.name, &bytes)?;
            written.entry(file.blob).or_insert(path);
        }
    }
    Ok(())
}

/// Writes `bytes` at the relative path `name` inside `dir`, creating directories on the way, and
/// never through a symbolic link: a link planted inside `dir` (by an earlier output, or anyone else)
/// cannot redirect the write elsewhere. `name` must have passed `check_relative_path`.
pub fn place_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let mut path = dir.to_path_buf();
    let mut components = name.split('/').peekable();
    while let Some(component) = components.next() {
        path.push(component);
        if components.peek().is_none() {
            break;
        }
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                bail!("{} is a symbolic link; not writing {name:?} through it", path.display())
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => bail!("cannot write {name:?}: {} is not a directory", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?
            }
            Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
        }
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
    let mut file = options.open(&path).with_context(|| {
        let link = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
        format!("cannot write {}{}", path.display(), if link { " (it is a symbolic link)" } else { "" })
    })?;
    std::io::Write::write_all(&mut file, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_land_inside_the_directory_and_never_through_links() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("task");
        let outside = root.path().join("outside");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let written = place_file(&dir, "out/deep/a.csv", b"1,2").unwrap();
        assert_eq!(written, dir.join("out/deep/a.csv"));
        assert_eq!(std::fs::read(&written).unwrap(), b"1,2");

        std::os::unix::fs::symlink(&outside, dir.join("linked")).unwrap();
        let error = place_file(&dir, "linked/x", b"no").unwrap_err();
        assert!(format!("{error:#}").contains("symbolic link"), "{error:#}");
        std::os::unix::fs::symlink(outside.join("target"), dir.join("file-link")).unwrap();
        let error = place_file(&dir, "file-link", b"no").unwrap_err();
        assert!(format!("{error:#}").contains("symbolic link"), "{error:#}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "something was written outside");
    }
}
