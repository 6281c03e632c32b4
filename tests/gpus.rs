//! GPU inventories and placement end to end, with workers that describe fake GPUs (the `cheat`
//! feature's `UPGLOBE_FAKE_GPUS`; real discovery through NVML is tested where a GPU is lent).
//! Run with `cargo nextest run -p upglobe-cli --features cheat --test gpus`; without the feature
//! the faking worker refuses to start, so this fails rather than passes vacuously.

mod cluster;

use std::time::Duration;

use cluster::Cluster;

#[test]
fn gpu_jobs_run_on_gpu_workers_and_the_rest_say_why_they_wait() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 0);
    cluster.add_worker_with(&["--allow-commands"], &[("UPGLOBE_FAKE_GPUS", "2xA100:80")]);
    cluster.add_worker(&["--allow-commands"]);
    cluster.wait_for("two workers", Duration::from_secs(30), |c| c.connected_workers() == 2);

    let workers = cluster.json(&["workers"]);
    let with_gpus = workers.as_array().unwrap().iter().find(|w| w["name"] == "worker-1").unwrap();
    assert_eq!(with_gpus["gpus"].as_array().unwrap().len(), 2, "{with_gpus}");
    assert_eq!(with_gpus["gpus"][0]["name"], "A100");
    assert_eq!(with_gpus["gpus"][0]["vram_total_bytes"], 80u64 << 30);
    let plain = workers.as_array().unwrap().iter().find(|w| w["name"] == "worker-2").unwrap();
    assert_eq!(plain["gpus"].as_array().unwrap().len(), 0);

    let workflow = "name = \"gpu\"\n\
        [jobs.one]\nkind = \"command\"\nargv = [\"sh\", \"-c\", \"echo $CUDA_VISIBLE_DEVICES > ok.txt\"]\ntasks = \"1-3\"\noutputs = [\"ok.txt\"]\n\
        [jobs.one.resources]\ngpus = 1\n\
        [jobs.four]\nkind = \"command\"\nargv = [\"true\"]\n[jobs.four.resources]\ngpus = 4\n";
    cluster.submit(workflow);
    cluster.wait_for("the GPU job", Duration::from_secs(60), |c| c.job("gpu.one")["state"] == "completed");
    let workers = cluster.json(&["workers"]);
    let completed = |name: &str| {
        workers.as_array().unwrap().iter().find(|w| w["name"] == name).unwrap()["completed"].as_u64().unwrap()
    };
    assert_eq!((completed("worker-1"), completed("worker-2")), (3, 0), "GPU tasks ran where the GPUs are");
    // Each task saw the one GPU it was given.
    let out = dir.path().join("out");
    cluster.json(&["results", "gpu.one", "--out", out.to_str().unwrap()]);
    for task in 1..=3 {
        let visible = std::fs::read_to_string(out.join("gpu.one").join(task.to_string()).join("ok.txt")).unwrap();
        assert!(["GPU-fake-0\n", "GPU-fake-1\n"].contains(&visible.as_str()), "task {task} saw {visible:?}");
    }
    let four = cluster.job("gpu.four");
    assert_eq!(four["state"], "running");
    assert_eq!(four["waiting"], "no worker has 4 GPUs (the most any has is 2)");
    let text = cluster.run(&["status", "gpu.four"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("waits: no worker has 4 GPUs"), "{text:?}");
}

/// A job's GPU memory and backend requests: met by a worker whose GPUs have the memory and whose
/// adapters run the backend, where an MD job that asks for a GPU runs on the wgpu engine (lavapipe
/// in CI) and gives the bytes a one-process CPU run gives; GPU time is metered. Requests nobody
/// can meet say why they wait.
#[test]
fn gpu_memory_and_backend_requests_place_md_on_the_wgpu_engine() {
    let adapters = upglobe_kernels::gpu::adapters();
    let Some(vulkan) = adapters.iter().find(|a| a.backend == "vulkan") else {
        assert!(
            std::env::var_os("UPGLOBE_REQUIRE_GPU").is_none(),
            "UPGLOBE_REQUIRE_GPU is set but no Vulkan adapter exists"
        );
        eprintln!("no Vulkan adapter: skipping (install mesa-vulkan-drivers)");
        return;
    };
    eprintln!("on {vulkan}");
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 0);
    cluster.add_worker_with(&["--allow-commands"], &[("UPGLOBE_FAKE_GPUS", "1xL4:24")]);
    cluster.add_worker(&["--allow-commands"]);
    cluster.wait_for("two workers", Duration::from_secs(30), |c| c.connected_workers() == 2);
    let workflow = "name = \"g\"\n\
        [jobs.md]\nkind = \"md\"\nreplicas = 1\n\
        [jobs.md.system]\nlattice = \"fcc\"\ncells = 4\ndensity = 0.8442\ntemperature = 1.44\nseed = 4242\n\
        [jobs.md.potential]\ncutoff = 2.5\n[jobs.md.run]\nsteps = 200\nchunk_steps = 100\n\
        [jobs.md.resources]\ngpus = 1\nvram = \"16GiB\"\nbackend = \"vulkan\"\n\
        [jobs.huge]\nkind = \"command\"\nargv = [\"true\"]\n[jobs.huge.resources]\ngpus = 1\nvram = \"40GiB\"\n";
    cluster.submit(workflow);
    cluster.wait_for("the md job", Duration::from_secs(120), |c| c.job("g.md")["state"] == "completed");
    let args = ["--cells", "4", "--temperature", "1.44", "--seed", "4242"];
    assert_eq!(cluster.final_state_hash("g.md"), cluster::single_process_hash(&args, 200));
    let log = cluster.workers[0].log();
    assert!(log.contains("engine=wgpu"), "the GPU worker did not run the chunks on wgpu: {log}");
    let usage = cluster.json(&["status", "g.md", "--usage"]);
    assert!(usage.as_array().unwrap().iter().all(|u| u["gpu_ms"].as_u64() > Some(0)), "{usage}");
    let huge = cluster.job("g.huge");
    assert_eq!(huge["waiting"], "no worker has a GPU with 40.0 GiB free (the most any GPU has is 24.0 GiB)");
}
