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
