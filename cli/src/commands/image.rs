//! Container images: `upglobe image push` keeps a `docker save` archive as a dataset named
//! `images/NAME`, and a submission pins each container job's image to exact bytes.

use anyhow::{Result, bail};
use upglobe_protocol::messages::{DatasetInfo, DatasetKind, FileRef, ImagePin};

use crate::client::Client;

/// The dataset name an image's archive is kept under.
pub fn dataset_name(image: &str) -> String {
    format!("images/{image}")
}

/// Pins an image as written in a workflow: an image id (`sha256:…`) or a registry digest
/// (`repo@sha256:…`) pins itself; any other name must have been pushed, and is pinned to the newest
/// archive kept under it.
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
    let name = dataset_name(image);
    let newest =
        datasets.iter().flatten().filter(|d| d.name == name && d.kind == DatasetKind::File).max_by_key(|d| d.added);
    let Some(archive) = newest else {
        bail!(
            "image '{image}' is not on the scheduler: send it with `upglobe image push {image}` \
             (or name it by id, sha256:…, or by registry digest, repo@sha256:…)"
        );
    };
    let archive = FileRef { name: "image.tar".into(), blob: archive.hash, size: archive.size };
    Ok(ImagePin { name: image.into(), id: None, archive: Some(archive) })
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
    let id = inspected.id.unwrap_or_default();
    let dir = crate::client::cache_dir(&context.home).join("images");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut file = tempfile::NamedTempFile::new_in(&dir).context("cannot create a file for the image")?;
    let mut saved = docker.export_image(image);
    while let Some(bytes) = saved.next().await {
        let bytes = bytes.with_context(|| format!("docker save {image}"))?;
        file.write_all(&bytes).context("writing the image archive")?;
    }
    file.flush()?;
    let added = super::dataset::put(client, file.path(), Some(dataset_name(image))).await?;
    let archive = added.into_iter().next().context("the scheduler kept no dataset")?;
    Ok((id, archive))
}
