//! What verification puts on the wire: a job's verification policy, the usage a worker reports, the
//! statement it signs for every result, and the record of verification decisions a client can read.
//!
//! Signatures are Ed25519 (through `ring`, which the TLS stack already carries). A worker signs the
//! BLAKE3 hash of a [`ResultStatement`]: which chunk and assignment, which input, the digest of
//! everything the result asserts (hash chain included) and the usage it claims. A signed wrong result
//! is evidence against the key that signed it.

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::ids::{AssignmentId, BlobHash, ChunkId, Digest, JobId, WorkerId};

/// How the results of a job's chunks are trusted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Verification {
    /// Bit-deterministic work (MD): new workers are replicated, trusted ones run alone under random
    /// audits of their hash chains.
    Adaptive,
    /// Every chunk runs on `replicas` workers whose digests must agree exactly.
    Quorum,
    /// Results agree when their exit codes match and the named outputs agree within tolerances.
    Tolerance(Vec<ToleranceRule>),
    /// One execution, trusted on its signed usage alone.
    Metered,
}

impl Verification {
    pub fn name(&self) -> &'static str {
        match self {
            Verification::Adaptive => "adaptive",
            Verification::Quorum => "quorum",
            Verification::Tolerance(_) => "tolerance",
            Verification::Metered => "metered",
        }
    }
}

/// Which numbers of an output file are compared, and how closely they must agree: two values `a`, `b`
/// agree when `|a - b| <= absolute + relative * max(|a|, |b|)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToleranceRule {
    /// An output file name, as the command job lists it in `outputs` (or one it matches).
    pub file: String,
    pub values: Compared,
    pub absolute: f64,
    pub relative: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Compared {
    /// Whitespace-separated columns of a text file, numbered from 1 (empty: every column). Lines
    /// that start with `#` are comments; every other token must match exactly.
    Columns(Vec<u32>),
    /// Datasets of an HDF5 file, by path.
    Datasets(Vec<String>),
}

/// Rules of one job, and columns or datasets of one rule, at most.
pub const TOLERANCE_RULES_MAX: usize = 64;
/// Links of one chunk's hash chain at most.
pub const CHAIN_LINKS_MAX: usize = 1024;

/// What a worker claims it used for a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub elapsed_ms: u64,
    pub cpus: u32,
    pub gpus: u32,
    /// MD steps computed (0 for other work).
    pub steps: u64,
    /// CPU time the task's processes used, user and system (measured for commands: the kernel's
    /// account of the process and everything it waited for).
    #[serde(default)]
    pub cpu_ms: Option<u64>,
    /// Their peak resident memory.
    #[serde(default)]
    pub peak_memory_bytes: Option<u64>,
    /// Bytes fetched for the task (inputs) and uploaded from it (results).
    #[serde(default)]
    pub bytes_in: u64,
    #[serde(default)]
    pub bytes_out: u64,
    /// GPU time: each GPU the task held for as long as it ran (an MD chunk on a wgpu adapter
    /// counts its kernel's run).
    #[serde(default)]
    pub gpu_ms: u64,
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", hex::encode(&self.0[..8]))
    }
}

/// An Ed25519 signature (64 bytes; a vector because serde has no 64-byte arrays).
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Signature(pub Vec<u8>);

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({})", hex::encode(&self.0[..self.0.len().min(8)]))
    }
}

/// What a worker signs for a result.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultStatement {
    pub chunk: ChunkId,
    pub assignment: AssignmentId,
    /// The MD input checkpoint (None for other work).
    pub input: Option<BlobHash>,
    /// [`crate::messages::Output::digest`] of the result, or of the failure reason.
    pub digest: Digest,
    pub usage: Usage,
}

impl ResultStatement {
    /// The 32 bytes that are signed: a domain-separated hash of every field.
    pub fn hash(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key("upglobe result statement v1");
        hasher.update(&self.chunk.job.0.to_le_bytes());
        hasher.update(&self.chunk.index.to_le_bytes());
        hasher.update(&self.assignment.0.to_le_bytes());
        match self.input {
            Some(input) => hasher.update(&[1]).update(&input.0),
            None => hasher.update(&[0]),
        };
        hasher.update(&self.digest.0);
        let Usage { elapsed_ms, cpus, gpus, steps, cpu_ms, peak_memory_bytes, bytes_in, bytes_out, gpu_ms } =
            self.usage;
        hasher.update(&elapsed_ms.to_le_bytes());
        hasher.update(&cpus.to_le_bytes());
        hasher.update(&gpus.to_le_bytes());
        hasher.update(&steps.to_le_bytes());
        for measured in [cpu_ms, peak_memory_bytes] {
            match measured {
                Some(value) => hasher.update(&[1]).update(&value.to_le_bytes()),
                None => hasher.update(&[0]),
            };
        }
        hasher.update(&bytes_in.to_le_bytes());
        hasher.update(&bytes_out.to_le_bytes());
        hasher.update(&gpu_ms.to_le_bytes());
        *hasher.finalize().as_bytes()
    }

    /// Whether `signature` is `key`'s signature of this statement.
    pub fn verify(&self, key: &PublicKey, signature: &Signature) -> bool {
        signature.0.len() == 64 && UnparsedPublicKey::new(&ED25519, key.0).verify(&self.hash(), &signature.0).is_ok()
    }
}

/// A worker's signing key, kept as PKCS#8 in its data directory.
pub struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    /// A new key, as PKCS#8 bytes to store.
    pub fn generate() -> Vec<u8> {
        let random = ring::rand::SystemRandom::new();
        Ed25519KeyPair::generate_pkcs8(&random).expect("the system's random source works").as_ref().to_vec()
    }

    pub fn from_pkcs8(bytes: &[u8]) -> Result<SigningKey, String> {
        Ed25519KeyPair::from_pkcs8(bytes).map(SigningKey).map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.public_key().as_ref().try_into().expect("Ed25519 public keys are 32 bytes"))
    }

    pub fn sign(&self, statement: &ResultStatement) -> Signature {
        Signature(self.0.sign(&statement.hash()).as_ref().to_vec())
    }
}

/// The role a node joins in. Verifiers run audits and dispute intervals on a reference kernel, never
/// ordinary chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum NodeRole {
    #[default]
    Worker,
    Verifier,
}

/// Whether an accepted chunk result may still be overturned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Finality {
    /// Confirmed: by agreeing trusted workers, a full re-check by a verifier, or a challenge window
    /// that passed without its workers failing any check (a passed one-link audit says nothing of
    /// the other links, so it confirms the worker, not the chunk).
    Final,
    /// Accepted on its worker's record; a later failure of that worker re-checks it.
    Provisional,
}

/// One verification decision, as `upglobe status JOB --verification` and `upglobe workers` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustEvent {
    /// Scheduler clock, milliseconds.
    pub time_ms: u64,
    pub job: Option<JobId>,
    pub chunk: Option<u32>,
    pub worker: Option<WorkerId>,
    pub what: TrustEventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TrustEventKind {
    /// A chunk was accepted: how (for example "quorum of 2", "single execution, audit pending").
    Accepted {
        finality: Finality,
        how: String,
    },
    /// An audit was ordered on interval `link` of the worker's chain.
    AuditOrdered {
        link: u32,
    },
    /// The verifier re-ran `steps` steps and found the hash the chain claims.
    AuditPassed {
        link: u32,
        verifier: Option<WorkerId>,
        steps: u64,
    },
    AuditFailed {
        link: u32,
        reason: String,
    },
    /// Two results disagreed; bisection found the first diverging link in `rounds` rounds.
    Dispute {
        other: WorkerId,
        link: u32,
        rounds: u32,
    },
    /// A dispute was settled by re-running one interval: `winner` matched, `loser` did not.
    DisputeSettled {
        link: u32,
        winner: Option<WorkerId>,
        loser: Vec<WorkerId>,
        steps: u64,
        verifier: Option<WorkerId>,
    },
    /// A worker's standing changed, for a reason.
    Reputation {
        from: String,
        to: String,
        reason: String,
    },
    /// Chunks from `chunk` on were invalidated because the result they were chained after was
    /// overturned; they run again.
    Invalidated {
        reason: String,
    },
    /// A signed result was rejected: the signature is kept as evidence.
    Rejected {
        reason: String,
    },
}

/// A job's verification record: where each chunk stands and the decisions about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerificationReport {
    pub job: JobId,
    pub policy: Verification,
    pub chunks_final: u64,
    pub chunks_provisional: u64,
    /// The newest decisions about this job, at most [`TRUST_EVENTS_SHOWN_MAX`].
    pub events: Vec<TrustEvent>,
}

pub const TRUST_EVENTS_SHOWN_MAX: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_binds_every_field() {
        let key = SigningKey::from_pkcs8(&SigningKey::generate()).unwrap();
        let statement = ResultStatement {
            chunk: ChunkId { job: JobId(1), index: 2 },
            assignment: AssignmentId(3),
            input: Some(BlobHash([4; 32])),
            digest: Digest([5; 32]),
            usage: Usage { elapsed_ms: 6, cpus: 7, gpus: 0, steps: 8, ..Usage::default() },
        };
        let signature = key.sign(&statement);
        assert!(statement.verify(&key.public(), &signature));
        let other = SigningKey::from_pkcs8(&SigningKey::generate()).unwrap();
        assert!(!statement.verify(&other.public(), &signature));
        let changed = [
            ResultStatement { assignment: AssignmentId(9), ..statement.clone() },
            ResultStatement { input: None, ..statement.clone() },
            ResultStatement { digest: Digest([6; 32]), ..statement.clone() },
            ResultStatement { usage: Usage { steps: 9, ..statement.usage }, ..statement.clone() },
        ];
        for forged in changed {
            assert!(!forged.verify(&key.public(), &signature), "{forged:?}");
        }
        assert!(!statement.verify(&key.public(), &Signature(signature.0[..63].to_vec())));
        assert!(SigningKey::from_pkcs8(b"not a key").is_err());
    }
}
