//! `upglobe dataset put|ls|get|rm`: inputs kept on the scheduler by hash, under a name, so that
//! workflows can name them (`inputs = [{ name = "traj.h5md", dataset = "HASH" }]`) and workers
//! fetch them in verified slices.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use upglobe_datasets::transfer;
use upglobe_protocol::BlobHash;
use upglobe_protocol::messages::limits::MANIFEST_FILES_MAX;
use upglobe_protocol::messages::{
    ClientRequest, ClientResponse, DatasetInfo, DatasetKind, DatasetRequest, FileRef, Manifest, check_relative_path,
};

use super::Context;
use super::status::connect;
use crate::client::Client;
use crate::output::{self, Format};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Upload a file or a directory (its files and a manifest) and keep it under a name.
    Put {
        path: PathBuf,
        /// The name it is listed under (default: the file or directory name).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, env = "UPGLOBE_CONNECT")]
        connect: Option<String>,
    },
    /// The datasets the scheduler keeps.
    Ls {
        #[arg(long, env = "UPGLOBE_CONNECT")]
        connect: Option<String>,
    },
    /// Download a dataset (a file, or a directory with its files), verified slice by slice.
    Get {
        /// The hash, a unique prefix of it (8 hex digits or more), or the name.
        dataset: String,
        #[arg(long)]
        out: PathBuf,
        /// Only bytes START..END of a file (one frame of a trajectory): fetched and verified alone.
        #[arg(long, value_name = "START..END", value_parser = byte_range)]
        range: Option<std::ops::Range<u64>>,
        #[arg(long, env = "UPGLOBE_CONNECT")]
        connect: Option<String>,
    },
    /// Forget a dataset (a directory with its files); its bytes go once nothing else names them.
    Rm {
        dataset: String,
        #[arg(long, env = "UPGLOBE_CONNECT")]
        connect: Option<String>,
    },
}

pub async fn run(context: &Context, command: Command) -> Result<i32> {
    match command {
        Command::Put { path, name, connect: given } => {
            let client = connect(context, given.as_deref()).await?;
            let added = put(&client, &path, name).await?;
            show(context, &added, "put");
            client.close();
        }
        Command::Ls { connect: given } => {
            let client = connect(context, given.as_deref()).await?;
            let datasets = list(&client).await?;
            show(context, &datasets, "");
            client.close();
        }
        Command::Get { dataset, out, range, connect: given } => {
            let client = connect(context, given.as_deref()).await?;
            let found = resolve(&list(&client).await?, &dataset)?;
            match range {
                Some(range) if found.kind == DatasetKind::File => get_range(&client, &found, range, &out).await?,
                Some(_) => bail!("--range takes a file; {} is a directory", found.name),
                None => get(&client, &found, &out).await?,
            }
            match context.format {
                Format::Json => output::json(&json!({ "hash": found.hash.to_hex(), "written": out })),
                Format::Text => println!("wrote {} ({})", out.display(), found.name),
            }
            client.close();
        }
        Command::Rm { dataset, connect: given } => {
            let client = connect(context, given.as_deref()).await?;
            let found = resolve(&list(&client).await?, &dataset)?;
            let removed = request(&client, DatasetRequest::Remove { hash: found.hash }).await?;
            show(context, &removed, "removed");
            client.close();
        }
    }
    Ok(0)
}

async fn request(client: &Client, request: DatasetRequest) -> Result<Vec<DatasetInfo>> {
    match client.request(ClientRequest::Datasets(request)).await? {
        ClientResponse::Datasets(datasets) => Ok(datasets),
        other => bail!("unexpected answer {other:?}"),
    }
}

pub async fn list(client: &Client) -> Result<Vec<DatasetInfo>> {
    request(client, DatasetRequest::List).await
}

/// A dataset by full hash, unique hash prefix (8+ hex digits) or name.
pub fn resolve(datasets: &[DatasetInfo], given: &str) -> Result<DatasetInfo> {
    let given = given.trim();
    let mut by_hash: Vec<&DatasetInfo> = if given.len() >= 8 && given.chars().all(|c| c.is_ascii_hexdigit()) {
        let prefix = given.to_ascii_lowercase();
        datasets.iter().filter(|d| d.hash.to_hex().starts_with(&prefix)).collect()
    } else {
        Vec::new()
    };
    // The same bytes under several names are one dataset to fetch or forget: the one put by
    // itself (not as a file of a directory) first.
    by_hash.sort_by_key(|d| (d.hash, d.directory.is_some()));
    by_hash.dedup_by_key(|d| d.hash);
    let by_name: Vec<&DatasetInfo> = datasets.iter().filter(|d| d.name == given).collect();
    match (by_hash.as_slice(), by_name.as_slice()) {
        ([one], _) | ([], [one]) => Ok((*one).clone()),
        ([], []) => bail!("no dataset '{given}' on the scheduler (see `upglobe dataset ls`)"),
        _ => bail!("'{given}' names several datasets; give more of the hash (see `upglobe dataset ls`)"),
    }
}

fn bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta}",
        )
        .expect("a valid template"),
    );
    bar.set_message(what.to_string());
    bar
}

/// Polls a byte counter into a bar until the future is done.
async fn with_bar<T>(bar: &ProgressBar, counter: &AtomicU64, work: impl std::future::Future<Output = T>) -> T {
    tokio::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            done = &mut work => {
                bar.set_position(counter.load(Ordering::Relaxed));
                return done;
            }
            _ = tick.tick() => bar.set_position(counter.load(Ordering::Relaxed)),
        }
    }
}

pub async fn put(client: &Client, path: &Path, name: Option<String>) -> Result<Vec<DatasetInfo>> {
    let metadata = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = match name {
        Some(name) => name,
        None => path
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .with_context(|| format!("{} has no name; give one with --name", path.display()))?,
    };
    if metadata.is_file() {
        let sent = AtomicU64::new(0);
        let bar = bar(metadata.len(), &name);
        let (hash, _) = with_bar(&bar, &sent, client.upload_path(path, &sent)).await?;
        bar.finish_and_clear();
        return request(client, DatasetRequest::Add { hash, name, kind: DatasetKind::File, directory: None }).await;
    }
    if !metadata.is_dir() {
        bail!("{} is neither a file nor a directory", path.display());
    }
    let files = walk(path)?;
    let total = files.iter().map(|(_, _, size)| size).sum();
    let sent = Arc::new(AtomicU64::new(0));
    let bar = bar(total, &name);
    let mut refs = Vec::with_capacity(files.len());
    for (relative, full, _) in &files {
        let (blob, size) = with_bar(&bar, &sent, client.upload_path(full, &sent))
            .await
            .with_context(|| format!("uploading {}", full.display()))?;
        refs.push(FileRef { name: relative.clone(), blob, size });
    }
    bar.finish_and_clear();
    let manifest = client.upload_bytes(&Manifest { files: refs.clone() }.encode()).await?;
    let mut added = Vec::with_capacity(refs.len() + 1);
    for file in &refs {
        let add = DatasetRequest::Add {
            hash: file.blob,
            name: format!("{name}/{}", file.name),
            kind: DatasetKind::File,
            directory: Some(manifest),
        };
        added.extend(request(client, add).await?);
    }
    let add = DatasetRequest::Add { hash: manifest, name, kind: DatasetKind::Directory, directory: None };
    let mut directory = request(client, add).await?;
    directory.extend(added);
    Ok(directory)
}

/// The regular files under `root`, by relative path with `/`, sorted (the manifest's order). Links
/// are not followed: a directory's dataset holds what is in it.
fn walk(root: &Path) -> Result<Vec<(String, PathBuf, u64)>> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let kind = entry.file_type().with_context(|| format!("cannot stat {}", entry.path().display()))?;
            let path = entry.path();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                let relative = path.strip_prefix(root).expect("under the root");
                let Some(relative) = relative.to_str().map(|r| r.replace(std::path::MAIN_SEPARATOR, "/")) else {
                    bail!("{} is not valid UTF-8; rename it to put the directory", path.display());
                };
                check_relative_path(&relative).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                let size = entry.metadata().with_context(|| format!("cannot stat {}", path.display()))?.len();
                files.push((relative, path, size));
            } else {
                eprintln!("note: {} is not a regular file; skipped", path.display());
            }
        }
        if files.len() > MANIFEST_FILES_MAX {
            bail!("{} holds more than {MANIFEST_FILES_MAX} files; put it in parts or as an archive", root.display());
        }
    }
    files.sort();
    Ok(files)
}

async fn get(client: &Client, dataset: &DatasetInfo, out: &Path) -> Result<()> {
    match dataset.kind {
        DatasetKind::File => fetch_to(client, dataset.hash, dataset.size, out, &dataset.name).await,
        DatasetKind::Directory => {
            let path = client.fetch(dataset.hash, &transfer::Options::default()).await?;
            let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let manifest = Manifest::decode(&bytes).map_err(|e| anyhow::anyhow!("dataset {}: {e}", dataset.name))?;
            for file in &manifest.files {
                // Checked by `Manifest::decode`: relative, inside, no `..`.
                let target = out.join(&file.name);
                fetch_to(client, file.blob, file.size, &target, &file.name).await?;
            }
            Ok(())
        }
    }
}

/// `START..END` in bytes, END excluded.
fn byte_range(text: &str) -> std::result::Result<std::ops::Range<u64>, String> {
    let (start, end) = text.split_once("..").ok_or("write the range as START..END (bytes, END excluded)")?;
    let number = |t: &str| t.trim().parse::<u64>().map_err(|_| format!("'{t}' is not a byte offset"));
    let (start, end) = (number(start)?, number(end)?);
    if start >= end {
        return Err(format!("{start}..{end} is empty"));
    }
    Ok(start..end)
}

async fn get_range(client: &Client, dataset: &DatasetInfo, range: std::ops::Range<u64>, out: &Path) -> Result<()> {
    if range.end > dataset.size {
        bail!("{} is {} bytes; the range {}..{} goes past its end", dataset.name, dataset.size, range.start, range.end);
    }
    let options = transfer::Options { only: Some(range.clone()), ..transfer::Options::default() };
    client.fetch(dataset.hash, &options).await?;
    let bytes = client.blobs().read_range(&dataset.hash, range)?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(out, bytes).with_context(|| format!("cannot write {}", out.display()))
}

async fn fetch_to(client: &Client, hash: BlobHash, size: u64, target: &Path, what: &str) -> Result<()> {
    let options = transfer::Options::default();
    let bar = bar(size, what);
    let cached = with_bar(&bar, &options.progress.verified, client.fetch(hash, &options)).await?;
    bar.finish_and_clear();
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    // A copy, not a link: the user may change the file, and the cache must keep the bytes its
    // name promises.
    let _ = std::fs::remove_file(target);
    std::fs::copy(&cached, target).with_context(|| format!("cannot write {}", target.display()))?;
    Ok(())
}

fn show(context: &Context, datasets: &[DatasetInfo], verb: &str) {
    match context.format {
        Format::Json => output::json(&json!(
            datasets
                .iter()
                .map(|d| json!({
                    "hash": d.hash.to_hex(), "name": d.name, "size": d.size, "added": d.added,
                    "kind": match d.kind { DatasetKind::File => "file", DatasetKind::Directory => "directory" },
                    "directory": d.directory.map(|h| h.to_hex()),
                }))
                .collect::<Vec<_>>()
        )),
        Format::Text => {
            if datasets.is_empty() && verb.is_empty() {
                println!("no datasets (add one with `upglobe dataset put PATH`)");
            }
            for d in datasets {
                let kind = match d.kind {
                    DatasetKind::File => "",
                    DatasetKind::Directory => "/",
                };
                let prefix = if verb.is_empty() { String::new() } else { format!("{verb} ") };
                println!("{prefix}{}  {:>12}  {}{kind}", d.hash.to_hex(), human_bytes(d.size), d.name);
            }
        }
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(hash: u8, name: &str) -> DatasetInfo {
        DatasetInfo {
            hash: BlobHash([hash; 32]),
            name: name.into(),
            kind: DatasetKind::File,
            size: 1,
            added: 0,
            directory: None,
        }
    }

    #[test]
    fn datasets_are_found_by_hash_prefix_or_name() {
        let datasets = [dataset(0xab, "traj.h5md"), dataset(0xac, "other"), dataset(0xad, "abababab")];
        assert_eq!(resolve(&datasets, "abababab").unwrap().name, "traj.h5md", "a hash prefix before a name");
        assert_eq!(resolve(&datasets, &"ac".repeat(32)).unwrap().name, "other");
        assert_eq!(resolve(&datasets, "other").unwrap().hash, BlobHash([0xac; 32]));
        assert!(resolve(&datasets, "abc").unwrap_err().to_string().contains("no dataset 'abc'"));
        let twins = [dataset(0xab, "x"), dataset(0xab, "y")];
        assert_eq!(resolve(&twins, "abababab").unwrap().hash, BlobHash([0xab; 32]), "one blob, two names");
        let prefix_twins = [
            dataset(0xab, "x"),
            DatasetInfo {
                hash: BlobHash([0xab; 31].iter().copied().chain([1]).collect::<Vec<u8>>().try_into().unwrap()),
                ..dataset(0, "y")
            },
        ];
        assert!(resolve(&prefix_twins, "abababab").unwrap_err().to_string().contains("several"));
    }
}
