//! What `/metrics` exposes, in the Prometheus text format. Counters and histograms are fed where
//! things happen (the owner's commits, the transfer streams); gauges of the current state (chunks
//! by state, workers connected) are read from the core when Prometheus scrapes.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};
use upglobe_protocol::messages::{JobStatus, WorkerStatus};

use crate::core::Record;

pub struct Metrics {
    registry: Registry,
    /// Seconds from a chunk's first assignment to its verification.
    pub dispatch_seconds: Histogram,
    /// Seconds one batch of records takes to commit to SQLite.
    pub commit_seconds: Histogram,
    /// Verification decisions by outcome.
    pub outcomes: IntCounterVec,
    /// Blob bytes served (slices) and received (uploads).
    pub bytes_sent: IntCounter,
    pub bytes_received: IntCounter,
    chunks: IntGaugeVec,
    workers: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("upglobe".into()), None).expect("a valid prefix");
        let buckets = vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
        let dispatch_seconds = Histogram::with_opts(
            HistogramOpts::new("chunk_dispatch_seconds", "From a chunk's first assignment to its verification")
                .buckets(buckets),
        )
        .expect("valid histogram");
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new("store_commit_seconds", "One batch of decisions written to SQLite")
                .buckets(vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0]),
        )
        .expect("valid histogram");
        let outcomes = IntCounterVec::new(
            Opts::new("verification_outcomes_total", "Verification decisions since the scheduler started"),
            &["outcome"],
        )
        .expect("valid counter");
        let bytes_sent = IntCounter::new("bytes_sent_total", "Blob bytes served as verified slices").expect("valid");
        let bytes_received = IntCounter::new("bytes_received_total", "Blob bytes received as uploads").expect("valid");
        let chunks =
            IntGaugeVec::new(Opts::new("chunks", "Chunks of all jobs by state"), &["state"]).expect("valid gauge");
        let workers = IntGaugeVec::new(
            Opts::new("workers", "Nodes the scheduler knows, by role and connection"),
            &["role", "connected"],
        )
        .expect("valid gauge");
        for collector in [
            Box::new(dispatch_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(commit_seconds.clone()),
            Box::new(outcomes.clone()),
            Box::new(bytes_sent.clone()),
            Box::new(bytes_received.clone()),
            Box::new(chunks.clone()),
            Box::new(workers.clone()),
        ] {
            registry.register(collector).expect("each metric registered once");
        }
        Metrics { registry, dispatch_seconds, commit_seconds, outcomes, bytes_sent, bytes_received, chunks, workers }
    }

    /// Counts the verification decisions among a batch of records.
    pub fn observe_records(&self, records: &[Record]) {
        for record in records {
            let outcome = match record {
                Record::ChunkVerified { provisional: None, .. } => "accepted_final",
                Record::ChunkVerified { provisional: Some(_), .. } => "accepted_provisional",
                Record::Finalized { .. } => "finalized",
                Record::Invalidated { .. } => "overturned",
                Record::AttemptFailed { .. } => "attempt_failed",
                Record::WorkerDisagreed { .. } => "disagreement",
                _ => continue,
            };
            self.outcomes.with_label_values(&[outcome]).inc();
        }
    }

    /// The text Prometheus scrapes, with the state gauges set from `jobs` and `workers`.
    pub fn render(&self, jobs: &[JobStatus], workers: &[WorkerStatus]) -> String {
        let sum = |f: fn(&JobStatus) -> u64| jobs.iter().map(f).sum::<u64>() as i64;
        let total = sum(|j| j.chunks_total);
        let verified = sum(|j| j.chunks_verified);
        let running = sum(|j| j.chunks_running);
        for (state, value) in [
            ("total", total),
            ("verified", verified),
            ("final", sum(|j| j.chunks_final)),
            ("provisional", verified - sum(|j| j.chunks_final)),
            ("running", running),
            ("waiting", (total - verified - running).max(0)),
        ] {
            self.chunks.with_label_values(&[state]).set(value);
        }
        self.workers.reset();
        for worker in workers {
            let role = match worker.role {
                upglobe_protocol::trust::NodeRole::Worker => "worker",
                upglobe_protocol::trust::NodeRole::Verifier => "verifier",
            };
            self.workers.with_label_values(&[role, if worker.connected { "true" } else { "false" }]).inc();
        }
        let mut out = Vec::new();
        prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("encoding to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}
