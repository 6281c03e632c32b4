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
        [jobs.one]\nkind = \"command\"\nargv = [\"sh\", \"-c\", \"echo ok > ok.txt\"]\ntasks = \"1-3\"\noutputs = [\"ok.txt\"]\n\
        [jobs.one.resources]\ngpus = 1\n\
        [jobs.four]\nkind = \"command\"\nargv = [\"true\"]\n[jobs.four.resources]\ngpus = 4\n";
    cluster.submit(workflow);
    cluster.wait_for("the GPU job", Duration::from_secs(60), |c| c.job("gpu.one")["state"] == "completed");
    let workers = cluster.json(&["workers"]);
    let completed = |name: &str| {
        workers.as_array().unwrap().iter().find(|w| w["name"] == name).unwrap()["completed"].as_u64().unwrap()
    };
    assert_eq!((completed("worker-1"), completed("worker-2")), (3, 0), "GPU tasks ran where the GPUs are");
    let four = cluster.job("gpu.four");
    assert_eq!(four["state"], "running");
    assert_eq!(four["waiting"], "no worker has 4 GPUs (the most any has is 2)");
    let text = cluster.run(&["status", "gpu.four"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("waits: no worker has 4 GPUs"), "{text:?}");
}
