//! `upglobe`: the one binary. This is the only crate that knows about arguments and terminals; the
//! work is done by the library crates underneath.

mod client;
mod commands;
mod flags;
mod output;
mod plot;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::output::Format;

#[derive(Parser)]
#[command(
    name = "upglobe",
    version,
    about = "A fog supercomputer for science: bit-deterministic MD chunks, verified by hash quorum",
    after_help = "Start with `upglobe demo`, or see README.md."
)]
struct Cli {
    /// Where upglobe keeps its state (scheduler, worker and client data).
    #[arg(long, global = true, env = "UPGLOBE_HOME")]
    home: Option<PathBuf>,
    /// Output format for machines (`json`) or people (`text`).
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    output: Format,
    /// More logging (-v info, -vv debug); also RUST_LOG.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scheduler (creates its CA and join tokens on first start).
    Scheduler(commands::scheduler::Args),
    /// Run a worker that joins a scheduler.
    Worker(commands::worker::Args),
    /// Run a verifier: audits and dispute intervals on the reference kernel, never ordinary chunks.
    Verify(commands::worker::VerifyArgs),
    /// Submit a workflow file.
    Submit(commands::submit::Args),
    /// Show jobs (all, or one with its failures).
    Status(commands::status::StatusArgs),
    /// Cancel a job.
    Cancel(commands::status::CancelArgs),
    /// Show the workers the scheduler knows.
    Workers(commands::status::WorkersArgs),
    /// Fetch the verified results of a job (H5MD for MD jobs, files for commands).
    Results(commands::results::Args),
    /// Inputs kept on the scheduler: put, ls, get, rm.
    #[command(subcommand)]
    Dataset(commands::dataset::Command),
    /// Run a command in a container on the cluster; exits with its exit code.
    Run(commands::run::Args),
    /// A running container job's output, as it comes.
    Logs(commands::run::LogsArgs),
    /// Container images for `container` jobs: push.
    #[command(subcommand)]
    Image(commands::image::Command),
    /// Check workflow files.
    #[command(subcommand)]
    Workflow(commands::workflow::Command),
    /// Molecular dynamics on this machine.
    #[command(subcommand)]
    Md(commands::md::Command),
    /// Payment contracts: deploy them.
    #[command(subcommand)]
    Chain(commands::pay::ChainCommand),
    /// A hub (a lab) on the payment chain: register, attach workers, withdraw.
    #[command(subcommand)]
    Hub(commands::pay::HubCommand),
    /// What a hub has earned, holds in stake and has locked.
    Earnings(commands::pay::EarningsArgs),
    /// The DAO: whitelist, suspect, clear or punish hubs; claim fees.
    #[command(subcommand)]
    Dao(commands::pay::DaoCommand),
    /// Escrow jobs that pay a workflow's verified chunks: fund, show, refund.
    #[command(subcommand)]
    Job(commands::pay::JobCommand),
    /// How far the scheduler has paid its funded workflows.
    Payments(commands::pay::PaymentsArgs),
    /// Benchmarks that print JSON.
    #[command(subcommand)]
    Bench(commands::bench::Command),
    /// Start a scheduler and three workers, run the example workflow, verify, and clean up.
    Demo(commands::demo::Args),
}

fn init_logging(verbose: u8, default: &str) {
    let level = match verbose {
        0 => default,
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},wgpu_core=warn,wgpu_hal=error,naga=warn"))
    });
    // Colours only for a person at a terminal: a log file keeps `key=value` greppable.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .init();
}

fn default_home() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local").join("share").join("upglobe"),
        None => PathBuf::from(".upglobe"),
    }
}

fn main() {
    let cli = Cli::parse();
    let daemon = matches!(cli.command, Command::Scheduler(_) | Command::Worker(_) | Command::Verify(_));
    init_logging(cli.verbose, if daemon { "info" } else { "warn" });
    let home = cli.home.clone().unwrap_or_else(default_home);
    let context = commands::Context { home, format: cli.output };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Scheduler(args) => commands::scheduler::run(&context, args).await,
            Command::Worker(args) => commands::worker::run(&context, args).await,
            Command::Verify(args) => commands::worker::verify(&context, args).await,
            Command::Submit(args) => commands::submit::run(&context, args).await,
            Command::Status(args) => commands::status::status(&context, args).await,
            Command::Cancel(args) => commands::status::cancel(&context, args).await,
            Command::Workers(args) => commands::status::workers(&context, args).await,
            Command::Results(args) => commands::results::run(&context, args).await,
            Command::Dataset(command) => commands::dataset::run(&context, command).await,
            Command::Image(command) => commands::image::run(&context, command).await,
            Command::Run(args) => commands::run::run(&context, args).await,
            Command::Logs(args) => commands::run::logs(&context, args).await,
            Command::Workflow(command) => commands::workflow::run(&context, command),
            Command::Md(command) => commands::md::run(&context, command),
            Command::Bench(command) => commands::bench::run(&context, command).await,
            Command::Chain(command) => commands::pay::chain(&context, command).await,
            Command::Hub(command) => commands::pay::hub(&context, command).await,
            Command::Earnings(args) => commands::pay::earnings(&context, args).await,
            Command::Dao(command) => commands::pay::dao(&context, command).await,
            Command::Job(command) => commands::pay::job(&context, command).await,
            Command::Payments(args) => commands::pay::payments(&context, args).await,
            Command::Demo(args) => commands::demo::run(&context, args).await,
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::exit(1);
        }
    }
}
