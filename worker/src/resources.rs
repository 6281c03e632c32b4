//! What this machine offers.

use upglobe_protocol::messages::Resources;

/// Cores and memory of this machine (GPUs are advertised by a later issue's device probing).
pub fn detect() -> Resources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    Resources { cpus, memory_bytes: memory_bytes().unwrap_or(0), gpus: 0 }
}

/// Total memory from /proc/meminfo (Linux); None elsewhere.
fn memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn detects_at_least_one_cpu() {
        let resources = super::detect();
        assert!(resources.cpus >= 1);
        #[cfg(target_os = "linux")]
        assert!(resources.memory_bytes > 0);
    }
}
