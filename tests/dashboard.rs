//! The dashboard in a real browser and `/metrics` read by a Prometheus text-format parser.
//!
//! Headless Chromium (Debian `chromium`, which `.ci/run` installs; `UPGLOBE_CHROMIUM` names
//! another) opens a job's page while its workflow runs, driven over the DevTools protocol: the
//! test waits until the thermo plot holds every thermo line of the job and the page shows the
//! job's verified chunk count, then takes a screenshot. Without Chromium the browser test skips
//! with a note, unless `CI` is set.

mod cluster;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cluster::Cluster;
use serde_json::{Value, json};

/// 500 atoms, 4 chunks of 100 steps, a thermo line at step 0 and every 20 steps after: 21 lines.
const MELT: &str = r#"
name = "dash"

[jobs.melt]
kind = "md"

[jobs.melt.system]
lattice = "fcc"
cells = 5
density = 0.8442
temperature = 1.44
seed = 3

[jobs.melt.potential]
cutoff = 2.5

[jobs.melt.run]
steps = 400
chunk_steps = 100
thermo = 20
"#;
const CHUNKS: u64 = 4;
const THERMO_LINES: u64 = 21;

fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("UPGLOBE_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let paths = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&paths).map(move |dir| dir.join(name)))
        .find(|path| path.is_file())
}

/// One HTTP/1.1 exchange with a local server: the status code and the body (read to its
/// Content-Length, since Chromium's DevTools server keeps the connection open).
fn http(address: &str, method: &str, path: &str) -> (u16, String) {
    let stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(&stream, "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let code = status.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut length = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let mut body = Vec::new();
    match length {
        Some(length) => {
            body.resize(length, 0);
            reader.read_exact(&mut body).unwrap();
        }
        None => _ = reader.read_to_end(&mut body).unwrap(),
    }
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// Headless Chromium with the DevTools protocol on a WebSocket.
struct Browser {
    child: Child,
    socket: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(binary: &PathBuf, url: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(binary)
            .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"])
            .args(["--window-size=1280,1600", "--remote-debugging-port=0"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…"
        let mut port = None;
        for line in BufReader::new(child.stderr.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                port = rest.split('/').next().map(str::to_string);
                break;
            }
        }
        let debugger = format!("127.0.0.1:{}", port.expect("chromium printed its DevTools address"));
        let (code, body) = http(&debugger, "PUT", &format!("/json/new?{url}"));
        assert_eq!(code, 200, "{body}");
        let target: Value = serde_json::from_str(&body).unwrap();
        let (socket, _) = tungstenite::connect(target["webSocketDebuggerUrl"].as_str().unwrap()).unwrap();
        Browser { child, socket, next_id: 1, _profile: profile }
    }

    /// Sends one DevTools command and returns its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let message = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket.send(tungstenite::Message::text(message)).unwrap();
        loop {
            let reply: Value = match self.socket.read().unwrap() {
                tungstenite::Message::Text(text) => serde_json::from_str(text.as_str()).unwrap(),
                _ => continue,
            };
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true}));
        result["result"]["value"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_job_page_plots_the_thermo_live_and_counts_the_verified_chunks() {
    let Some(chromium) = chromium() else {
        assert!(std::env::var_os("CI").is_none(), "CI is set but there is no chromium (.ci/run installs it)");
        eprintln!("skipping: no chromium (set UPGLOBE_CHROMIUM)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 2);
    cluster.wait_for("two workers", Duration::from_secs(60), |c| c.connected_workers() == 2);
    let job = cluster.submit(MELT);
    // Opened while the job runs: the page fills in as chunks are verified.
    let mut browser = Browser::open(&chromium, &format!("http://{}/jobs/{job}", cluster.http));
    let expected_points = THERMO_LINES;
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut seen = Value::Null;
    let probe = r#"(() => {
        const text = (id) => (document.getElementById(id) || {}).textContent;
        const plot = document.getElementById('plot-temp');
        return { state: text('state'), verified: text('verified'), total: text('total'),
                 points: plot ? Number(plot.dataset.points) : -1,
                 rows: document.querySelectorAll('#chunks tbody tr').length };
    })()"#;
    while Instant::now() < deadline {
        seen = browser.eval(probe);
        if seen["state"] == "completed" && seen["points"] == expected_points {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let status = cluster.job(&job);
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(seen["points"], expected_points, "the plot holds every thermo line: {seen}");
    assert_eq!(seen["verified"], status["chunks_verified"].to_string(), "{seen} {status}");
    assert_eq!(seen["total"], CHUNKS.to_string(), "{seen}");
    assert_eq!(seen["rows"], CHUNKS, "one timeline row per chunk: {seen}");
    // Three plots drawn on canvases, and a screenshot of the page as the test saw it.
    assert_eq!(browser.eval("document.querySelectorAll('.plot canvas').length"), 3);
    let shot = browser.call("Page.captureScreenshot", json!({"format": "png"}));
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 20_000, "a blank page would be a few kilobytes: {} bytes", png.len());
    let path = dir.path().join("dashboard.png");
    std::fs::write(&path, &png).unwrap();
    if let Some(keep) = std::env::var_os("UPGLOBE_KEEP_SCREENSHOT") {
        std::fs::copy(&path, keep).unwrap();
    }

    // The index page lists the job with the same counts.
    let (code, index) = http(&cluster.http, "GET", "/");
    assert_eq!(code, 200);
    assert!(index.contains(&format!("<a href=\"/jobs/{job}\">{job}</a>")), "{index}");
}

#[test]
fn metrics_parse_and_match_status() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 2);
    cluster.wait_for("two workers", Duration::from_secs(60), |c| c.connected_workers() == 2);
    let job = cluster.submit(MELT);
    cluster.wait_for("the job to complete", Duration::from_secs(180), |c| c.job(&job)["state"] == "completed");
    let statuses = cluster.json(&["status"]);
    let sum = |key: &str| statuses.as_array().unwrap().iter().map(|s| s[key].as_u64().unwrap()).sum::<u64>() as f64;

    let (code, text) = http(&cluster.http, "GET", "/metrics");
    assert_eq!(code, 200, "{text}");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"));
        match &sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            other => panic!("{name}: unexpected {other:?}"),
        }
    };
    assert_eq!(value("upglobe_chunks", &[("state", "total")]), sum("chunks_total"));
    assert_eq!(value("upglobe_chunks", &[("state", "verified")]), sum("chunks_verified"));
    assert_eq!(value("upglobe_chunks", &[("state", "final")]), sum("chunks_final"));
    assert_eq!(value("upglobe_chunks", &[("state", "running")]), sum("chunks_running"));
    assert_eq!(value("upglobe_workers", &[("role", "worker"), ("connected", "true")]), 2.0);
    // Every chunk was dispatched and verified once since the scheduler started.
    assert_eq!(value("upglobe_chunk_dispatch_seconds", &[]), sum("chunks_verified"));
    // Accepted for good or provisionally (new workers' chunks wait for audits).
    let accepted: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "upglobe_verification_outcomes_total")
        .filter(|s| matches!(s.labels.get("outcome"), Some("accepted_final" | "accepted_provisional")))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(accepted, sum("chunks_verified"));
    assert!(value("upglobe_bytes_received_total", &[]) > 0.0, "results and checkpoints were uploaded");
    assert!(value("upglobe_store_commit_seconds", &[]) > 0.0);

    // The same thermo as a PNG from the command line.
    let out = dir.path().join("results");
    let plot = dir.path().join("thermo.png");
    cluster.json(&["results", &job, "--out", out.to_str().unwrap(), "--plot", plot.to_str().unwrap()]);
    let png = std::fs::read(&plot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let refused = cluster.run(&["results", &job, "--out", out.to_str().unwrap(), "--plot", "thermo.jpg"]);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && why.contains("name the file NAME.png"), "{why}");
}

#[test]
fn a_dashboard_beyond_loopback_asks_for_the_client_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 0);
    drop(cluster.scheduler.take());
    cluster.scheduler_flags = vec!["--http".into(), "0.0.0.0:0".into()];
    cluster.start_scheduler();
    let port = cluster.http.rsplit(':').next().unwrap().to_string();
    assert!(cluster.http.starts_with("0.0.0.0:") && port != "0", "the scheduler serves on {}", cluster.http);
    let address = format!("127.0.0.1:{port}");
    let (code, body) = http(&address, "GET", "/metrics");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("client token"), "{body}");
    let secret = cluster.client_token.split("secret=").nth(1).unwrap().split('&').next().unwrap().to_string();
    assert_eq!(http(&address, "GET", &format!("/metrics?token={secret}")).0, 200);
    assert_eq!(http(&address, "GET", "/?token=wrong").0, 401);
}
