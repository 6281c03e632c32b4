//! What this machine offers.

use upglobe_protocol::messages::limits::GPUS_DESCRIBED_MAX;
use upglobe_protocol::messages::{GpuDevice, Resources};

/// NVIDIA GPUs through NVML (name, UUID, memory, driver, utilisation). Without the driver (or
/// its library) this is the reason, for the worker to say once.
pub fn detect_gpus() -> Result<Vec<GpuDevice>, String> {
    let nvml = nvml_wrapper::Nvml::init().map_err(|e| format!("no NVIDIA GPU ({e})"))?;
    let driver = nvml.sys_driver_version().unwrap_or_default();
    let count = nvml.device_count().map_err(|e| format!("NVML cannot count GPUs: {e}"))?;
    let mut gpus = Vec::new();
    for index in 0..count.min(GPUS_DESCRIBED_MAX as u32) {
        let device = nvml.device_by_index(index).map_err(|e| format!("NVML cannot open GPU {index}: {e}"))?;
        let memory = device.memory_info().map_err(|e| format!("NVML cannot read GPU {index}'s memory: {e}"))?;
        gpus.push(GpuDevice {
            name: device.name().unwrap_or_else(|_| format!("GPU {index}")),
            uuid: device.uuid().unwrap_or_default(),
            vram_total_bytes: memory.total,
            vram_free_bytes: memory.free.min(memory.total),
            driver: driver.clone(),
            utilisation_percent: device.utilization_rates().map(|u| u.gpu.min(100)).unwrap_or(0),
        });
    }
    Ok(gpus)
}

/// Cores and memory of this machine (GPUs come from [`detect_gpus`]).
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
    fn gpu_discovery_answers_with_devices_or_a_reason() {
        // On a machine without the NVIDIA driver NVML fails to load: a reason, not a panic.
        match super::detect_gpus() {
            Ok(gpus) => assert!(gpus.iter().all(|g| g.vram_free_bytes <= g.vram_total_bytes)),
            Err(reason) => assert!(reason.starts_with("no NVIDIA GPU"), "{reason}"),
        }
    }

    #[test]
    fn detects_at_least_one_cpu() {
        let resources = super::detect();
        assert!(resources.cpus >= 1);
        #[cfg(target_os = "linux")]
        assert!(resources.memory_bytes > 0);
    }
}
