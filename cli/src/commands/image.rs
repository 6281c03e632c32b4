//! Container images: `upglobe image push` keeps a `docker save` archive (by id) as a dataset named
//! `images/NAME@ID`, and a submission pins each container job's image to exact bytes.

use anyhow::{Result, bail};
use upglobe_protocol::messages::{DatasetInfo, DatasetKind, FileRef, ImagePin};

use crate::client::Client;

/// The dataset name an image's archive is kept under: its name and its id, so a submission knows
/// which id it pins without reading the archive, and a rebuilt image is a new dataset.
pub fn dataset_name(image: &str, id: &str) -> String {
    format!("images/{image}@{id}")
}

/// The id the local dockerd gives `image`, if there is a dockerd and it has the image.
async fn local_image_id(image: &str) -> Option<String> {
    let docker = bollard::Docker::connect_with_unix_defaults().ok()?;
    let inspected = tokio::time::timeout(std::time::Duration::from_secs(5), docker.inspect_image(image)).await.ok()?;
    inspected.ok()?.id
}

/// Pins an image as written in a workflow: an image id (`sha256:…`) or a registry digest
/// (`repo@sha256:…`) pins itself; any other name must have been pushed, and is pinned to the archive
/// of the id the local dockerd gives it (so a rebuilt image is not silently replaced by an older
/// push), or, without a local image, to the newest archive pushed under the name.
pub async fn pin(client: &Client, image: &str, datasets: &mut Option<Vec<DatasetInfo>>) -> Result<ImagePin> {
    if ImagePin::check_id(image).is_ok() {
        return Ok(ImagePin { name: image.into(), id: Some(image.into()), archive: None });
    }
    let by_digest = ImagePin { name: image.into(), id: None, archive: None };
    if image.contains("@sha256:") && by_digest.check().is_ok() {
        return Ok(by_digest);
    }
    if datasets.is_none() {
        *datasets = Some(super::dataset::list(client).await?);
    }
    let prefix = format!("images/{image}@");
    let pushed: Vec<(&DatasetInfo, &str)> = datasets
        .iter()
        .flatten()
        .filter(|d| d.kind == DatasetKind::File)
        .filter_map(|d| d.name.strip_prefix(&prefix).map(|id| (d, id)))
        .filter(|(_, id)| ImagePin::check_id(id).is_ok())
        .collect();
    let local = local_image_id(image).await;
    let chosen = match &local {
        Some(local) => pushed.iter().find(|(_, id)| id == local),
        None => pushed.iter().max_by_key(|(d, _)| d.added),
    };
    let Some((archive, id)) = chosen else {
        match (&local, pushed.is_empty()) {
            (Some(local), false) => bail!(
                "image '{image}' was rebuilt since it was pushed (the local dockerd has {local}): \
                 send it again with `upglobe image push {image}`"
            ),
            _ => bail!(
                "image '{image}' is not on the scheduler: send it with `upglobe image push {image}` \
                 (or name it by id, sha256:…, or by registry digest, repo@sha256:…)"
            ),
        }
    };
    let file = FileRef { name: "image.tar".into(), blob: archive.hash, size: archive.size };
    Ok(ImagePin { name: image.into(), id: Some(id.to_string()), archive: Some(file) })
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Send an image from the local dockerd (`docker save`) to the scheduler, where container jobs
    /// naming it find it; workers that lack it load it from there, by content.
    Push {
        /// The image, as the local docker names it (`busybox:1.36`).
        image: String,
        #[arg(long, env = "UPGLOBE_CONNECT")]
        connect: Option<String>,
    },
}

pub async fn run(context: &super::Context, command: Command) -> Result<i32> {
    match command {
        Command::Push { image, connect } => {
            let client = super::status::connect(context, connect.as_deref()).await?;
            let (id, archive) = push(context, &client, &image).await?;
            match context.format {
                crate::output::Format::Json => crate::output::json(&serde_json::json!({
                    "image": image, "id": id, "archive": archive.hash.to_hex(), "size": archive.size,
                })),
                crate::output::Format::Text => {
                    println!("pushed {image} ({id}) as dataset {} ({} bytes)", archive.name, archive.size)
                }
            }
            client.close();
        }
    }
    Ok(0)
}

/// Saves `image` from the local dockerd into a file and puts it as dataset `images/IMAGE`; the
/// image id and the dataset.
pub async fn push(context: &super::Context, client: &Client, image: &str) -> Result<(String, DatasetInfo)> {
    use anyhow::Context as _;
    use futures_util::StreamExt;
    use std::io::Write;
    let docker = bollard::Docker::connect_with_unix_defaults()
        .context("cannot reach the local dockerd (set DOCKER_HOST, or start docker)")?;
    let inspected = docker.inspect_image(image).await.map_err(|e| match e {
        bollard::errors::Error::DockerResponseServerError { status_code: 404, .. } => {
            anyhow::anyhow!("the local dockerd has no image '{image}' (pull or build it first)")
        }
        other => anyhow::anyhow!("cannot inspect image '{image}': {other}"),
    })?;
    let id = inspected.id.filter(|id| ImagePin::check_id(id).is_ok()).context("dockerd gave the image no id")?;
    let dir = crate::client::cache_dir(&context.home).join("images");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut file = tempfile::NamedTempFile::new_in(&dir).context("cannot create a file for the image")?;
    // Saved by id, not by name: the archive then names no image, and workers refuse archives
    // that do (loading one would tag their own images).
    let mut saved = docker.export_image(&id);
    while let Some(bytes) = saved.next().await {
        let bytes = bytes.with_context(|| format!("docker save {image}"))?;
        file.write_all(&bytes).context("writing the image archive")?;
    }
    file.flush()?;
    let added = super::dataset::put(client, file.path(), Some(dataset_name(image, &id))).await?;
    let archive = added.into_iter().next().context("the scheduler kept no dataset")?;
    Ok((id, archive))
}
