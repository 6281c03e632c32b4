//! Runs the trust bench and prints the report as one JSON object:
//! `cargo run --release -p upglobe-scheduler --example trust_bench [SEED [TRUST_AFTER AUDIT_RATE_MIN CHAIN_LINKS]]`.

use upglobe_scheduler::trust_bench::{TrustBenchConfig, run};

fn main() {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let number = |k: usize| arguments.get(k).map(|a| a.parse::<f64>().expect("arguments are numbers"));
    let mut config = TrustBenchConfig { progress: true, ..TrustBenchConfig::default() };
    if let Some(seed) = number(0) {
        config.seed = seed as u64;
    }
    if let (Some(trust_after), Some(rate), Some(links)) = (number(1), number(2), number(3)) {
        config.core.trust_after = trust_after as u64;
        config.core.audit_rate_min = rate;
        config.core.chain_links = links as u32;
    }
    let started = std::time::Instant::now();
    let report = run(&config);
    eprintln!("trust bench: {:.1} s", started.elapsed().as_secs_f64());
    println!("{}", serde_json::to_string(&report).expect("the report serializes"));
}
