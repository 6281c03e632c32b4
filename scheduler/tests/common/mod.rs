//! Helpers shared by the core's test binaries.

#![allow(dead_code)]

use upglobe_protocol::messages::{Hello, Output, Resources};
use upglobe_scheduler::core::checks::output_blobs;
use upglobe_scheduler::core::{BlobFact, Evidence};

/// What the scheduler's blob store holds once a worker has uploaded the blobs of `output` honestly
/// (an MD checkpoint ends with the state hash).
pub fn uploaded(output: &Output) -> Evidence {
    Evidence::gather(output_blobs(output), |hash| match output {
        Output::Md { state_hash, checkpoint_bytes, .. } => {
            Some(BlobFact { size: *checkpoint_bytes, tail: state_hash.to_vec() })
        }
        Output::Command { files, stdout, stderr, .. } => files
            .iter()
            .chain([stdout, stderr])
            .find(|f| f.blob == *hash)
            .map(|f| BlobFact { size: f.size, tail: Vec::new() }),
        Output::Empty { .. } => None,
    })
}

pub fn hello(name: &str, cpus: u32, allow_commands: bool) -> Hello {
    Hello {
        protocol: upglobe_protocol::PROTOCOL_VERSION,
        secret: String::new(),
        software: "sim".into(),
        name: name.into(),
        resources: Resources { cpus, memory_bytes: 1 << 30, gpus: 0 },
        allow_commands,
        device: "sim".into(),
    }
}
