//! `upglobe demo`: a scheduler and three workers as separate processes in a temporary directory, the
//! example LJ workflow with two replicas per chunk, verification, an H5MD file, and a clean shutdown.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use upglobe_kernels::{Checkpoint, RunOptions, State};
use upglobe_protocol::messages::JobState;
use upglobe_protocol::{Role, Token};

use super::Context;
use super::results::{fetch, final_state_hash, write_md};
use super::status::watch;
use super::submit::submit;
use crate::client::Client;
use crate::output::Format;

/// Workers the demo starts as processes: the example workflow needs two replicas of each chunk.
const DEMO_WORKERS: std::ops::RangeInclusive<u32> = 2..=16;

const WORKFLOW: &str = include_str!("../../../workflows/examples/lj-melt.toml");

#[derive(clap::Args)]
pub struct Args {
    /// Directory for the H5MD result.
    #[arg(long, default_value = "upglobe-demo")]
    out: PathBuf,
    /// Workers to start (2 to 16: the example workflow runs each chunk on 2 of them).
    #[arg(long, default_value_t = 3, value_parser = crate::flags::integer(DEMO_WORKERS))]
    workers: u32,
    /// Keep the temporary directory with the scheduler's and workers' state and logs.
    #[arg(long)]
    keep: bool,
}

/// Child processes, stopped when dropped.
struct Processes(Vec<(String, Child)>);

impl Processes {
    fn stop(&mut self) {
        for (_, child) in &mut self.0 {
            #[cfg(unix)]
            // SAFETY: sending a signal to our own child process.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, child) in &mut self.0 {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.0.clear();
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(name: &str, args: &[&str], log: &Path, stdout: Stdio) -> Result<Child> {
    let exe = std::env::current_exe().context("cannot find the upglobe executable")?;
    let log_file = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(log_file)
        .env_remove("UPGLOBE_HOME")
        .spawn()
        .with_context(|| format!("cannot start the {name}"))
}

pub async fn run(context: &Context, args: Args) -> Result<i32> {
    let text = context.format == Format::Text;
    // Narration for people; with --output json, one summary object at the end instead.
    macro_rules! say {
        ($($arg:tt)*) => { if text { println!($($arg)*); } };
    }
    let started = Instant::now();
    let temporary = tempfile::Builder::new().prefix("upglobe-demo-").tempdir()?;
    let dir = temporary.path().to_path_buf();
    let workflow_path = dir.join("lj-melt.toml");
    std::fs::write(&workflow_path, WORKFLOW)?;
    let workflow =
        upglobe_workflows::load(&workflow_path).map_err(|d| anyhow::anyhow!("the example workflow: {}", d[0]))?;
    let job = &workflow.jobs[0];
    let upglobe_workflows::JobKind::Md(md) = &job.kind else { bail!("the example workflow starts with an MD job") };

    say!(
        "1/5  starting a scheduler, {} workers and a verifier as separate processes in {}",
        args.workers,
        dir.display()
    );
    let mut processes = Processes(Vec::new());
    let scheduler_dir = dir.join("scheduler");
    let mut scheduler = spawn(
        "scheduler",
        &[
            "scheduler",
            "--data-dir",
            &scheduler_dir.to_string_lossy(),
            "--listen",
            "127.0.0.1:0",
            "--output",
            "json",
            "--lease-timeout",
            "10",
            "--heartbeat",
            "0.5",
        ],
        &dir.join("scheduler.log"),
        Stdio::piped(),
    )?;
    let stdout = scheduler.stdout.take().expect("piped stdout");
    processes.0.push(("scheduler".into(), scheduler));
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let started_json: serde_json::Value = serde_json::from_str(&line)
        .with_context(|| format!("the scheduler did not start; see {}", dir.join("scheduler.log").display()))?;
    let token = |key: &str| -> Result<Token> { Ok(started_json[key].as_str().context("token")?.parse()?) };
    let (worker_token, client_token) = (token("worker_token")?, token("client_token")?);
    let verifier_token = token("verifier_token")?;
    assert_eq!(client_token.role, Role::Client);
    let verifier_data = dir.join("demo-verifier");
    let verifier = spawn(
        "verifier",
        &[
            "verify",
            "--join",
            &verifier_token.to_string(),
            "--data-dir",
            &verifier_data.to_string_lossy(),
            "--name",
            "demo-verifier",
            "--device",
            "cpu",
            "--cpus",
            "1",
        ],
        &dir.join("demo-verifier.log"),
        Stdio::null(),
    )?;
    processes.0.push(("demo-verifier".into(), verifier));
    for k in 0..args.workers {
        let name = format!("demo-{}", k + 1);
        let data = dir.join(&name);
        let child = spawn(
            "worker",
            &[
                "worker",
                "--join",
                &worker_token.to_string(),
                "--data-dir",
                &data.to_string_lossy(),
                "--name",
                &name,
                "--cpus",
                "1",
            ],
            &dir.join(format!("{name}.log")),
            Stdio::null(),
        )?;
        processes.0.push((name, child));
    }
    let client = Client::connect(&client_token, &dir.join("client")).await?;
    let names: std::collections::HashMap<_, _> = client
        .wait_for_workers(args.workers + 1, Duration::from_secs(30))
        .await?
        .into_iter()
        .map(|w| (w.id, w.name))
        .collect();

    say!(
        "2/5  submitting workflows/examples/lj-melt.toml: {} atoms, {} steps in chunks of {}, each chunk run by {} different workers",
        md.system.ids.len(),
        md.total_steps,
        md.chunk_steps,
        job.replicas
    );
    let (_, jobs) = submit(&client, &workflow).await?;
    let code = watch(&client, &[jobs[0].1], if text { Format::Text } else { Format::Json }).await?;
    let results = fetch(&client, &jobs[0].1.0.to_string()).await?;
    if code != 0 || results.status.state != JobState::Completed {
        bail!("the demo job did not complete: {:?}; logs are in {}", results.status.state, keep(temporary));
    }

    let audits = wait_for_audits(&client, &jobs[0].1.0.to_string(), Duration::from_secs(60)).await?;
    say!(
        "3/5  verified: every chunk's output state hash was agreed on by {} workers, and the verifier re-ran one link of each ({audits} audits passed)",
        job.replicas
    );
    for chunk in &results.chunks {
        let who: Vec<String> =
            chunk.agreeing.iter().map(|w| names.get(w).cloned().unwrap_or_else(|| w.short())).collect();
        let hash = match &chunk.output {
            upglobe_protocol::messages::Output::Md { state_hash, .. } => hex::encode(&state_hash[..8]),
            _ => String::new(),
        };
        say!("       chunk {}  state {hash}…  agreed by {}", chunk.index, who.join(", "));
    }

    let distributed = final_state_hash(&results).context("no final state")?;
    say!("4/5  checking against one process on this machine running all {} steps in one go…", md.total_steps);
    let local = local_run(md.system.clone(), md.total_steps).await?;
    if local != distributed {
        bail!("the local run ended in state {local}, the distributed run in {distributed}");
    }
    say!("       same final state hash: {distributed}");

    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let h5 = args.out.join(format!("{}.{}.h5md", workflow.name, job.name));
    write_md(&client, &results, &h5).await?;
    client.close();
    say!("5/5  wrote {} (H5MD: positions, velocities, box, thermo, provenance)", h5.display());
    processes.stop();
    let seconds = started.elapsed().as_secs_f64();
    let kept = args.keep.then(|| keep(temporary));
    if text {
        let kept = kept.map_or(String::new(), |dir| format!(", state kept in {dir}"));
        println!("done in {seconds:.0} s; scheduler and workers stopped{kept}");
    } else {
        crate::output::json(&serde_json::json!({
            "h5md": h5,
            "final_state_hash": distributed,
            "single_process_state_hash": local,
            "chunks": results.chunks.iter().map(|c| serde_json::json!({
                "index": c.index,
                "agreeing": c.agreeing.iter().map(|w| names.get(w).cloned().unwrap_or_else(|| w.to_hex())).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "audits_passed": audits,
            "seconds": seconds,
            "kept": kept,
        }));
    }
    Ok(0)
}

/// Waits until every audit the scheduler ordered for the job has an answer; returns how many passed.
async fn wait_for_audits(client: &Client, job: &str, timeout: Duration) -> Result<usize> {
    use upglobe_protocol::messages::{ClientRequest, ClientResponse};
    use upglobe_protocol::trust::TrustEventKind;
    let deadline = Instant::now() + timeout;
    loop {
        let ClientResponse::Verification(report) =
            client.request(ClientRequest::Verification { job: job.to_string() }).await?
        else {
            bail!("unexpected answer to a verification request");
        };
        let count = |f: fn(&TrustEventKind) -> bool| report.events.iter().filter(|e| f(&e.what)).count();
        let ordered = count(|w| matches!(w, TrustEventKind::AuditOrdered { .. }));
        let passed = count(|w| matches!(w, TrustEventKind::AuditPassed { .. }));
        let failed = count(|w| matches!(w, TrustEventKind::AuditFailed { .. }));
        if failed > 0 {
            bail!("{failed} audits failed in the demo: honest workers disagree with the verifier");
        }
        if passed == ordered {
            return Ok(passed);
        }
        if Instant::now() > deadline {
            bail!("{} of {ordered} audits were still running after {} s", ordered - passed, timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn keep(temporary: tempfile::TempDir) -> String {
    temporary.keep().display().to_string()
}

async fn local_run(system: upglobe_kernels::system::PhysicalSystem, steps: u64) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let state = State::from_physical(system)?;
        let mut engine = upglobe_kernels::engine(&upglobe_kernels::Device::Cpu { threads: 0 })?;
        let output = engine.run(&state, &RunOptions::new(steps), &mut |_| std::ops::ControlFlow::Continue(()))?;
        Ok(Checkpoint::hash(&output.state).to_string())
    })
    .await?
}
