//! `upglobe workflow check`

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;
use upglobe_workflows::{Diagnostic, JobKind};

use super::Context;
use crate::output::{self, Format};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Validate workflow files without submitting them.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub fn print_diagnostics(diagnostics: &[Diagnostic]) {
    for diagnostic in diagnostics {
        eprintln!("{diagnostic}");
    }
}

pub fn run(context: &Context, command: Command) -> Result<i32> {
    let Command::Check { files } = command;
    let mut code = 0;
    for file in files {
        match upglobe_workflows::load(&file) {
            Ok(workflow) => match context.format {
                Format::Json => {
                    output::json(&json!({"file": file, "ok": true, "name": workflow.name, "jobs": workflow.jobs.len()}))
                }
                Format::Text => {
                    println!("{}: ok, workflow '{}' with {} jobs", file.display(), workflow.name, workflow.jobs.len());
                    for job in &workflow.jobs {
                        let what = match &job.kind {
                            JobKind::Md(md) => format!(
                                "md, {} atoms, {} steps in {} chunks of {}",
                                md.system.ids.len(),
                                md.total_steps,
                                md.total_steps / md.chunk_steps,
                                md.chunk_steps
                            ),
                            JobKind::Command(c) => match &c.checkpoint {
                                Some(contract) => format!(
                                    "{}, {} checkpointed chunks resuming from {}",
                                    if c.container.is_some() { "container" } else { "command" },
                                    contract.chunks,
                                    contract.files.join(", ")
                                ),
                                None => format!("command, {} tasks", c.tasks.len().max(1)),
                            },
                        };
                        println!("  {}: {what}, {} replicas", job.name, job.replicas);
                    }
                }
            },
            Err(diagnostics) => {
                code = 1;
                match context.format {
                    Format::Json => output::json(&json!({
                        "file": file,
                        "ok": false,
                        "errors": diagnostics.iter().map(|d| json!({
                            "line": d.line, "column": d.column, "message": d.message, "hint": d.hint,
                        })).collect::<Vec<_>>(),
                    })),
                    Format::Text => print_diagnostics(&diagnostics),
                }
            }
        }
    }
    Ok(code)
}
