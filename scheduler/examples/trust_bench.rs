//! Runs the trust bench with its defaults and prints the report as one JSON object:
//! `cargo run --release -p upglobe-scheduler --example trust_bench [SEED]`.

use upglobe_scheduler::trust_bench::{TrustBenchConfig, run};

fn main() {
    let seed = std::env::args().nth(1).map_or(1, |s| s.parse().expect("the seed is a number"));
    let config = TrustBenchConfig { seed, progress: true, ..TrustBenchConfig::default() };
    let started = std::time::Instant::now();
    let report = run(&config);
    eprintln!("trust bench: {:.1} s", started.elapsed().as_secs_f64());
    println!("{}", serde_json::to_string(&report).expect("the report serializes"));
}
