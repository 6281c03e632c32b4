//! `upglobe submit`

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use serde_json::json;
use upglobe_kernels::{Checkpoint, State};
use upglobe_protocol::messages::{
    ClientRequest, ClientResponse, CommandJob, ContainerSpec, DatasetKind, FileRef, JobKind, JobSpec, MdJob, Submission,
};
use upglobe_protocol::{JobId, WorkflowId};
use upglobe_workflows::{InputSource, Workflow};

use super::Context;
use super::status::{connect, watch};
use super::workflow::print_diagnostics;
use crate::client::Client;
use crate::output::{self, Format};

#[derive(clap::Args)]
pub struct Args {
    /// The workflow file (TOML).
    file: PathBuf,
    /// Show progress until the jobs finish (exit code 3 if any fails).
    #[arg(long)]
    watch: bool,
    /// The client token (or a file holding it). Default: HOME/scheduler/client.token.
    #[arg(long, env = "UPGLOBE_CONNECT")]
    connect: Option<String>,
    /// For a workflow with [payment]: where the contracts are and the requester's key.
    #[command(flatten)]
    chain: super::pay::ChainArgs,
}

pub async fn run(context: &Context, args: Args) -> Result<i32> {
    let workflow = match upglobe_workflows::load(&args.file) {
        Ok(workflow) => workflow,
        Err(diagnostics) => {
            print_diagnostics(&diagnostics);
            return Ok(2);
        }
    };
    // A paid workflow needs the requester's account: found out before anything is submitted.
    let chain = match &workflow.payment {
        Some(_) => Some(args.chain.connect(context).await.context("the workflow has [payment]")?),
        None => None,
    };
    let client = connect(context, args.connect.as_deref()).await?;
    let (workflow_id, jobs) = submit(&client, &workflow).await?;
    match context.format {
        Format::Json => output::json(&json!({
            "workflow": workflow_id.0,
            "jobs": jobs.iter().map(|(name, id)| json!({"job": name, "id": id.0})).collect::<Vec<_>>(),
        })),
        Format::Text => {
            println!("submitted workflow '{}' ({workflow_id})", workflow.name);
            for (name, id) in &jobs {
                println!("  job {id}: {}.{name}", workflow.name);
            }
        }
    }
    if let (Some(payment), Some(chain)) = (&workflow.payment, &chain) {
        let terms = super::pay::Terms {
            price: upglobe_contracts::U256::from(payment.price_per_chunk),
            deposit: payment.deposit.map(upglobe_contracts::U256::from),
            deadline: std::time::Duration::from_secs(payment.deadline_days * 86_400),
        };
        let funded = super::pay::fund(&client, chain, &workflow_id.to_string(), &terms).await.with_context(|| {
            format!(
                "workflow {workflow_id} was submitted but not funded; fund it with `upglobe job fund {workflow_id} …`"
            )
        })?;
        super::pay::print_funded(context, &funded);
    }
    let code = if args.watch {
        watch(&client, &jobs.iter().map(|(_, id)| *id).collect::<Vec<_>>(), context.format).await?
    } else {
        0
    };
    client.close();
    Ok(code)
}

/// Uploads what the jobs need (initial MD states, input files) and submits the workflow.
pub async fn submit(client: &Client, workflow: &Workflow) -> Result<(WorkflowId, Vec<(String, JobId)>)> {
    let mut jobs = Vec::with_capacity(workflow.jobs.len());
    let mut datasets = None;
    for job in &workflow.jobs {
        let kind = match &job.kind {
            upglobe_workflows::JobKind::Md(md) => {
                let state = State::from_physical(md.system.clone()).with_context(|| format!("job '{}'", job.name))?;
                let initial = client.upload_bytes(&Checkpoint::encode(&state)).await?;
                JobKind::Md(MdJob {
                    initial,
                    atoms: state.atoms() as u64,
                    total_steps: md.total_steps,
                    chunk_steps: md.chunk_steps,
                    thermo_every: md.thermo_every,
                })
            }
            upglobe_workflows::JobKind::Command(command) => {
                let mut inputs = Vec::new();
                for input in &command.inputs {
                    let (blob, size) = match &input.source {
                        InputSource::Path(path) => {
                            client.upload_file(path).await.with_context(|| format!("uploading {}", path.display()))?
                        }
                        InputSource::Dataset(hash) => {
                            if datasets.is_none() {
                                datasets = Some(super::dataset::list(client).await?);
                            }
                            let kept = datasets.iter().flatten().find(|d| d.hash == *hash);
                            let Some(kept) = kept.filter(|d| d.kind == DatasetKind::File) else {
                                bail!(
                                    "input '{}' of job '{}' names dataset {}, which the scheduler does not keep as a file \
                                     (put it with `upglobe dataset put`; see `upglobe dataset ls`)",
                                    input.name,
                                    job.name,
                                    hash.to_hex()
                                );
                            };
                            (kept.hash, kept.size)
                        }
                    };
                    inputs.push(FileRef { name: input.name.clone(), blob, size });
                }
                let container = match &command.container {
                    Some(container) => {
                        let image = super::image::pin(client, &container.image, &mut datasets).await.map_err(|e| {
                            anyhow::anyhow!(
                                "{}:{}: job '{}': {e}",
                                workflow.path.display(),
                                container.location,
                                job.name
                            )
                        })?;
                        Some(ContainerSpec { image, network: container.network })
                    }
                    None => None,
                };
                JobKind::Command(CommandJob {
                    argv: command.argv.clone(),
                    tasks: upglobe_protocol::messages::TaskIds::from_ids(command.tasks.iter().copied()),
                    inputs,
                    outputs: command.outputs.clone(),
                    timeout_s: command.timeout_s,
                    container,
                    checkpoint: command.checkpoint.clone(),
                })
            }
        };
        jobs.push(JobSpec {
            name: job.name.clone(),
            after: job.after.clone(),
            replicas: job.replicas,
            resources: job.resources,
            kind,
            gpu: job.gpu.clone(),
            verification: job.verification.clone(),
        });
    }
    let submission = Submission { name: workflow.name.clone(), source: workflow.source.clone(), jobs };
    match client.request(ClientRequest::Submit(submission)).await? {
        ClientResponse::Submitted { workflow, jobs } => Ok((workflow, jobs)),
        other => bail!("unexpected answer {other:?}"),
    }
}
