//! `upglobe status`, `upglobe cancel`, `upglobe workers`, and the progress display of `submit --watch`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use upglobe_protocol::JobId;
use upglobe_protocol::messages::{ClientRequest, ClientResponse, JobState, JobStatus, WorkerStatus};
use upglobe_protocol::trust::{Finality, NodeRole, TrustEvent, TrustEventKind, VerificationReport};

use super::Context;
use crate::client::{Client, client_token};
use crate::output::{self, Format, table};

#[derive(clap::Args)]
pub struct StatusArgs {
    /// A job id or WORKFLOW.JOB; all jobs if absent.
    job: Option<String>,
    /// Keep watching until the jobs finish.
    #[arg(long)]
    watch: bool,
    /// Show the job's verification record: its policy, final and provisional chunks, and every
    /// decision (audits, disputes, reputation changes, invalidations).
    #[arg(long, requires = "job", conflicts_with = "watch")]
    verification: bool,
    /// Show what each of the job's results cost, as its worker signed it: wall time, CPU time,
    /// peak memory, bytes in and out (what payments will bill).
    #[arg(long, requires = "job", conflicts_with_all = ["watch", "verification"])]
    usage: bool,
    /// The client token (or a file holding it). Default: HOME/scheduler/client.token.
    #[arg(long, env = "UPGLOBE_CONNECT")]
    connect: Option<String>,
}

#[derive(clap::Args)]
pub struct CancelArgs {
    /// A job id or WORKFLOW.JOB.
    job: String,
    #[arg(long, env = "UPGLOBE_CONNECT")]
    connect: Option<String>,
}

#[derive(clap::Args)]
pub struct WorkersArgs {
    #[arg(long, env = "UPGLOBE_CONNECT")]
    connect: Option<String>,
}

pub async fn connect(context: &Context, given: Option<&str>) -> Result<Client> {
    let token = client_token(given, &context.home)?;
    Client::connect(&token, &context.home).await
}

pub async fn fetch(client: &Client, job: Option<String>) -> Result<Vec<JobStatus>> {
    match client.request(ClientRequest::Status { job }).await? {
        ClientResponse::Status { jobs } => Ok(jobs),
        other => bail!("unexpected answer {other:?}"),
    }
}

pub fn status_json(status: &JobStatus) -> Value {
    let reason = match &status.state {
        JobState::Failed { reason } => Some(reason.clone()),
        _ => None,
    };
    json!({
        "id": status.id.0,
        "workflow": status.workflow_name,
        "job": status.name,
        "kind": status.kind,
        "state": status.state.label(),
        "reason": reason,
        "chunks_total": status.chunks_total,
        "chunks_verified": status.chunks_verified,
        "chunks_final": status.chunks_final,
        "chunks_running": status.chunks_running,
        "running_s": status.running_ms as f64 / 1000.0,
        "disagreements": status.disagreements,
        "assignments": status.assignments,
        "assignments_local": status.assignments_local,
        "waiting": status.waiting,
        "failures": status.failures.iter().map(|f| json!({
            "chunk": f.chunk,
            "worker": f.worker.map(|w| w.to_hex()),
            "reason": f.reason,
        })).collect::<Vec<_>>(),
    })
}

fn state_text(status: &JobStatus) -> String {
    match &status.state {
        JobState::Failed { reason } => format!("failed: {reason}"),
        other => other.label().to_string(),
    }
}

fn print_statuses(jobs: &[JobStatus], detailed: bool) {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|s| {
            vec![
                s.id.to_string(),
                s.workflow_name.clone(),
                s.name.clone(),
                s.kind.clone(),
                s.state.label().to_string(),
                format!("{}/{}", s.chunks_verified, s.chunks_total),
                s.chunks_final.to_string(),
                s.chunks_running.to_string(),
                output::duration(s.running_ms as f64 / 1000.0),
            ]
        })
        .collect();
    let header = ["ID", "WORKFLOW", "JOB", "KIND", "STATE", "VERIFIED", "FINAL", "RUNNING", "ELAPSED"];
    println!("{}", table(&header, &rows));
    for status in jobs {
        if let JobState::Failed { reason } = &status.state {
            println!("job {} failed: {reason}", status.id);
        }
        if let Some(why) = &status.waiting {
            println!("job {} waits: {why}", status.id);
        }
        if detailed {
            if status.assignments > 0 {
                println!(
                    "locality: {} of {} assignments went to a worker that already held the inputs",
                    status.assignments_local, status.assignments
                );
            }
            if status.disagreements > 0 {
                println!("{} results disagreed with the verified ones", status.disagreements);
            }
            for failure in &status.failures {
                let worker = failure.worker.map_or("-".into(), |w| w.short());
                println!("  chunk {} on worker {worker}: {}", failure.chunk, failure.reason);
            }
        }
    }
}

pub async fn status(context: &Context, args: StatusArgs) -> Result<i32> {
    let client = connect(context, args.connect.as_deref()).await?;
    if args.usage {
        let job = args.job.clone().expect("clap requires a job");
        let rows = match client.request(ClientRequest::Usage { job }).await? {
            ClientResponse::Usage(rows) => rows,
            other => bail!("unexpected answer {other:?}"),
        };
        match context.format {
            Format::Json => output::json(&Value::Array(rows.iter().map(usage_json).collect())),
            Format::Text => print_usage(&rows),
        }
        client.close();
        return Ok(0);
    }
    if args.verification {
        let job = args.job.clone().expect("clap requires a job");
        let report = match client.request(ClientRequest::Verification { job }).await? {
            ClientResponse::Verification(report) => report,
            ClientResponse::Error { message } => bail!("{message}"),
            other => bail!("unexpected answer {other:?}"),
        };
        match context.format {
            Format::Json => output::json(&verification_json(&report)),
            Format::Text => print_verification(&report),
        }
        client.close();
        return Ok(0);
    }
    let jobs = fetch(&client, args.job.clone()).await?;
    if args.watch {
        let ids: Vec<JobId> = jobs.iter().map(|s| s.id).collect();
        return watch(&client, &ids, context.format).await;
    }
    match context.format {
        Format::Json => output::json(&Value::Array(jobs.iter().map(status_json).collect())),
        Format::Text if jobs.is_empty() => println!("no jobs"),
        Format::Text => print_statuses(&jobs, args.job.is_some()),
    }
    client.close();
    Ok(0)
}

fn usage_json(row: &upglobe_protocol::messages::ChunkUsage) -> Value {
    let u = &row.usage;
    json!({
        "chunk": row.chunk, "worker": row.worker.to_hex(), "elapsed_ms": u.elapsed_ms, "cpus": u.cpus,
        "gpus": u.gpus, "steps": u.steps, "cpu_ms": u.cpu_ms, "peak_memory_bytes": u.peak_memory_bytes,
        "bytes_in": u.bytes_in, "bytes_out": u.bytes_out, "gpu_ms": u.gpu_ms,
    })
}

fn print_usage(rows: &[upglobe_protocol::messages::ChunkUsage]) {
    if rows.is_empty() {
        println!("no signed results yet");
        return;
    }
    let seconds = |ms: u64| format!("{:.2}", ms as f64 / 1000.0);
    let mib = |bytes: u64| format!("{:.1}", bytes as f64 / (1u64 << 20) as f64);
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let u = &r.usage;
            vec![
                r.chunk.to_string(),
                r.worker.short(),
                seconds(u.elapsed_ms),
                u.cpu_ms.map_or("-".into(), seconds),
                u.peak_memory_bytes.map_or("-".into(), mib),
                mib(u.bytes_in),
                mib(u.bytes_out),
                seconds(u.gpu_ms),
                u.steps.to_string(),
            ]
        })
        .collect();
    let header = ["CHUNK", "WORKER", "WALL S", "CPU S", "PEAK MIB", "IN MIB", "OUT MIB", "GPU S", "STEPS"];
    println!("{}", table(&header, &body));
    let total = |f: fn(&upglobe_protocol::trust::Usage) -> u64| {
        rows.iter().fold(0u64, |sum, r| sum.saturating_add(f(&r.usage)))
    };
    println!(
        "{} signed results: {} s wall, {} s CPU, {} s GPU, {} MiB in, {} MiB out",
        rows.len(),
        seconds(total(|u| u.elapsed_ms)),
        seconds(total(|u| u.cpu_ms.unwrap_or(0))),
        seconds(total(|u| u.gpu_ms)),
        mib(total(|u| u.bytes_in)),
        mib(total(|u| u.bytes_out)),
    );
}

fn print_verification(report: &VerificationReport) {
    println!(
        "job {}: policy {}; {} chunks final, {} provisional",
        report.job,
        report.policy.name(),
        report.chunks_final,
        report.chunks_provisional
    );
    let rows: Vec<Vec<String>> = report
        .events
        .iter()
        .map(|event| {
            vec![
                output::duration(event.time_ms as f64 / 1000.0),
                event.chunk.map_or("-".into(), |c| c.to_string()),
                event.worker.map_or("-".into(), |w| w.short()),
                describe(&event.what),
            ]
        })
        .collect();
    println!("{}", table(&["AT", "CHUNK", "WORKER", "DECISION"], &rows));
}

fn verification_json(report: &VerificationReport) -> Value {
    json!({
        "job": report.job.0,
        "policy": report.policy.name(),
        "chunks_final": report.chunks_final,
        "chunks_provisional": report.chunks_provisional,
        "events": report.events.iter().map(event_json).collect::<Vec<_>>(),
    })
}

/// A decision as flat JSON: its kind, where, who (workers as hex ids), and the kind's fields.
fn event_json(event: &TrustEvent) -> Value {
    let hex = |w: &Option<upglobe_protocol::WorkerId>| w.map(|w| w.to_hex());
    let mut value = json!({
        "time_s": event.time_ms as f64 / 1000.0,
        "job": event.job.map(|j| j.0),
        "chunk": event.chunk,
        "worker": hex(&event.worker),
        "description": describe(&event.what),
    });
    let fields = match &event.what {
        TrustEventKind::Accepted { finality, how } => json!({
            "kind": "Accepted", "final": *finality == Finality::Final, "how": how,
        }),
        TrustEventKind::AuditOrdered { link } => json!({ "kind": "AuditOrdered", "link": link }),
        TrustEventKind::AuditPassed { link, verifier, steps } => json!({
            "kind": "AuditPassed", "link": link, "verifier": hex(verifier), "steps": steps,
        }),
        TrustEventKind::AuditFailed { link, reason } => {
            json!({ "kind": "AuditFailed", "link": link, "reason": reason })
        }
        TrustEventKind::Dispute { other, link, rounds } => json!({
            "kind": "Dispute", "other": other.to_hex(), "link": link, "rounds": rounds,
        }),
        TrustEventKind::DisputeSettled { link, winner, loser, steps, verifier } => json!({
            "kind": "DisputeSettled", "link": link, "winner": hex(winner),
            "loser": loser.iter().map(|w| w.to_hex()).collect::<Vec<_>>(), "steps": steps, "verifier": hex(verifier),
        }),
        TrustEventKind::Reputation { from, to, reason } => json!({
            "kind": "Reputation", "from": from, "to": to, "reason": reason,
        }),
        TrustEventKind::Invalidated { reason } => json!({ "kind": "Invalidated", "reason": reason }),
        TrustEventKind::Rejected { reason } => json!({ "kind": "Rejected", "reason": reason }),
    };
    if let (Value::Object(value), Value::Object(fields)) = (&mut value, fields) {
        value.extend(fields);
    }
    value
}

/// One verification decision in words.
fn describe(what: &TrustEventKind) -> String {
    let short = |w: &Option<upglobe_protocol::WorkerId>| w.map_or("-".to_string(), |w| w.short());
    match what {
        TrustEventKind::Accepted { finality: Finality::Final, how } => format!("final: {how}"),
        TrustEventKind::Accepted { finality: Finality::Provisional, how } => format!("provisional: {how}"),
        TrustEventKind::AuditOrdered { link } => format!("audit of link {link} ordered"),
        TrustEventKind::AuditPassed { link, verifier, steps } => {
            format!("audit of link {link} passed ({steps} steps re-run by verifier {})", short(verifier))
        }
        TrustEventKind::AuditFailed { link, reason } => format!("audit of link {link} FAILED: {reason}"),
        TrustEventKind::Dispute { other, link, rounds } => {
            format!("disagrees with {}: chains part at link {link} ({rounds} bisection rounds)", other.short())
        }
        TrustEventKind::DisputeSettled { link, winner, loser, steps, verifier } => format!(
            "dispute over link {link} settled by verifier {} ({steps} steps): {} right, {} wrong",
            short(verifier),
            short(winner),
            loser.iter().map(|w| w.short()).collect::<Vec<_>>().join(", ")
        ),
        TrustEventKind::Reputation { from, to, reason } => format!("standing {from} -> {to}: {reason}"),
        TrustEventKind::Invalidated { reason } => format!("this chunk and all after it run again: {reason}"),
        TrustEventKind::Rejected { reason } => format!("rejected: {reason}"),
    }
}

pub async fn cancel(context: &Context, args: CancelArgs) -> Result<i32> {
    let client = connect(context, args.connect.as_deref()).await?;
    match client.request(ClientRequest::Cancel { job: args.job }).await? {
        ClientResponse::Cancelled { job } => match context.format {
            Format::Json => output::json(&json!({ "cancelled": job.0 })),
            Format::Text => println!("cancelled job {job}"),
        },
        other => bail!("unexpected answer {other:?}"),
    }
    client.close();
    Ok(0)
}

fn worker_json(w: &WorkerStatus) -> Value {
    json!({
        "id": w.id.to_hex(), "name": w.name, "connected": w.connected, "device": w.device,
        "cpus": w.resources.cpus, "memory_bytes": w.resources.memory_bytes, "running": w.running,
        "completed": w.completed, "disagreements": w.disagreements, "quarantined": w.quarantined,
        "role": match w.role { NodeRole::Worker => "worker", NodeRole::Verifier => "verifier" },
        "owner": w.owner, "standing": w.standing, "audits_passed": w.audits_passed, "audits_failed": w.audits_failed,
        "gpus": w.gpus.iter().map(|g| json!({
            "name": g.name, "uuid": g.uuid, "vram_total_bytes": g.vram_total_bytes,
            "vram_free_bytes": g.vram_free_bytes, "driver": g.driver, "utilisation_percent": g.utilisation_percent,
        })).collect::<Vec<_>>(),
        "adapters": w.adapters,
        "containers": w.containers,
        "busy": { "cpus": w.busy.cpus, "gpus": w.busy.gpus, "memory_bytes": w.busy.memory_bytes },
    })
}

/// A worker's GPUs in a few words: "2× A100 (80 GiB)", or "-".
fn gpus_text(w: &WorkerStatus) -> String {
    let Some(first) = w.gpus.first() else { return "-".into() };
    let gib = first.vram_total_bytes as f64 / (1u64 << 30) as f64;
    let same = w.gpus.iter().all(|g| g.name == first.name && g.vram_total_bytes == first.vram_total_bytes);
    let devices = if same {
        format!("{}× {} ({gib:.0} GiB)", w.gpus.len(), first.name)
    } else {
        w.gpus.iter().map(|g| g.name.clone()).collect::<Vec<_>>().join(", ")
    };
    format!("{devices}, {} busy", w.busy.gpus)
}

pub async fn workers(context: &Context, args: WorkersArgs) -> Result<i32> {
    let client = connect(context, args.connect.as_deref()).await?;
    let ClientResponse::Workers(workers) = client.request(ClientRequest::Workers).await? else {
        bail!("unexpected answer");
    };
    match context.format {
        Format::Json => output::json(&Value::Array(workers.iter().map(worker_json).collect())),
        Format::Text => {
            let rows: Vec<Vec<String>> = workers
                .iter()
                .map(|w| {
                    let state = if w.quarantined {
                        "quarantined"
                    } else if w.connected {
                        "connected"
                    } else {
                        "gone"
                    };
                    vec![
                        w.id.short(),
                        w.name.clone(),
                        state.into(),
                        w.device.clone(),
                        gpus_text(w),
                        format!("{}/{}", w.busy.cpus, w.resources.cpus),
                        w.containers.as_ref().map_or("-".into(), |v| format!("docker {v}")),
                        w.running.to_string(),
                        w.completed.to_string(),
                        w.disagreements.to_string(),
                        format!("{}/{}", w.audits_passed, w.audits_failed),
                        w.standing.clone(),
                    ]
                })
                .collect();
            let header = [
                "ID",
                "NAME",
                "STATE",
                "DEVICE",
                "GPUS",
                "CPUS BUSY",
                "CONTAINERS",
                "RUNNING",
                "DONE",
                "DISAGREED",
                "AUDITS OK/FAILED",
                "STANDING",
            ];
            println!("{}", table(&header, &rows));
        }
    }
    client.close();
    Ok(0)
}

/// Polls until every job has finished, with a progress bar per job when a person is watching.
/// Returns 0 if all completed, 3 otherwise.
pub async fn watch(client: &Client, ids: &[JobId], format: Format) -> Result<i32> {
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>20} [{bar:30.cyan/blue}] {pos}/{len} chunks {msg}")
        .expect("a valid template")
        .progress_chars("=> ");
    let interactive = output::interactive() && format == Format::Text;
    let mut shown: BTreeMap<JobId, ProgressBar> = BTreeMap::new();
    let mut last: BTreeMap<JobId, (u64, String)> = BTreeMap::new();
    let started = Instant::now();
    loop {
        let all = fetch(client, None).await?;
        let jobs: Vec<&JobStatus> = all.iter().filter(|s| ids.contains(&s.id)).collect();
        for status in &jobs {
            let seen = (status.chunks_verified, state_text(status));
            if last.get(&status.id) == Some(&seen) {
                continue;
            }
            last.insert(status.id, seen);
            report(status, format, interactive, &bars, &style, &mut shown, started.elapsed());
        }
        if jobs.iter().all(|s| s.state.is_finished()) {
            for bar in shown.values() {
                bar.finish();
            }
            let failed = jobs.iter().filter(|s| s.state != JobState::Completed).count();
            return Ok(if failed == 0 { 0 } else { 3 });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn report(
    status: &JobStatus,
    format: Format,
    interactive: bool,
    bars: &MultiProgress,
    style: &ProgressStyle,
    shown: &mut BTreeMap<JobId, ProgressBar>,
    elapsed: Duration,
) {
    let rate = status.chunks_verified as f64 / (status.running_ms.max(1) as f64 / 1000.0);
    let remaining = status.chunks_total.saturating_sub(status.chunks_verified);
    let eta = if rate > 0.0 && status.state == JobState::Running {
        format!(", ETA {}", output::duration(remaining as f64 / rate))
    } else {
        String::new()
    };
    let message = format!("{} ({rate:.2} chunks/s{eta})", state_text(status));
    match format {
        Format::Json => output::json(&status_json(status)),
        Format::Text if interactive => {
            let bar = shown.entry(status.id).or_insert_with(|| {
                let bar = bars.add(ProgressBar::new(status.chunks_total));
                bar.set_style(style.clone());
                bar.set_prefix(format!("{}.{}", status.workflow_name, status.name));
                bar
            });
            bar.set_position(status.chunks_verified);
            bar.set_message(message);
        }
        Format::Text => println!(
            "[{}] {}.{}: {}/{} chunks verified, {message}",
            output::duration(elapsed.as_secs_f64()),
            status.workflow_name,
            status.name,
            status.chunks_verified,
            status.chunks_total
        ),
    }
}
