//! Helpers shared by the core's test binaries.

#![allow(dead_code)]

use std::sync::OnceLock;

use upglobe_protocol::AssignmentId;
use upglobe_protocol::messages::{Hello, Outcome, Output, Resources};
use upglobe_protocol::trust::{NodeRole, Signature, SigningKey, Usage};
use upglobe_scheduler::core::checks::output_blobs;
use upglobe_scheduler::core::{BlobFact, Core, Evidence, Finished};

/// The key every simulated worker signs with (which key signs does not matter to the core's
/// decisions, only that the signature verifies with the key in the hello).
pub fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::from_pkcs8(&SigningKey::generate()).expect("a fresh key"))
}

/// A worker's answer, signed as an honest worker signs it. An assignment the core no longer runs
/// gets no valid signature (the core ignores such answers anyway).
pub fn sign(core: &Core, assignment: AssignmentId, outcome: Outcome) -> Finished {
    let usage = Usage::default();
    let signature = match core.result_statement(assignment, &outcome, usage) {
        Some(statement) => key().sign(&statement),
        None => Signature::default(),
    };
    Finished { assignment, outcome, usage, signature }
}

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
        role: NodeRole::Worker,
        signing_key: key().public(),
        owner: None,
        peer_address: None,
        gpus: vec![],
        adapters: vec![],
        containers: None,
        allow_network: false,
        hub: None,
    }
}
