//! The dashboard: `upglobe scheduler --http ADDR` serves read-only pages of the workflows and jobs,
//! one job with live thermo plots and its chunk timeline, the workers, and `/metrics` for
//! Prometheus.
//!
//! Pages are HTML rendered here with a small script (`assets/dashboard.js`) and uPlot (vendored
//! from npm, MIT, `assets/uPlot.LICENSE`) built into the binary: nothing to build or fetch. Live
//! updates are server-sent events, one message a second, made from the same client requests the
//! CLI sends to the owner task; the dashboard never touches the core or the store itself.
//! Bound to loopback it is open; bound elsewhere every request must carry the client token's
//! secret (`Authorization: Bearer SECRET`, or `?token=SECRET` for a browser).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures_util::Stream;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use upglobe_protocol::messages::{
    ClientRequest, ClientResponse, FundedWorkflow, JobStatus, Output, PaymentAnswer, PaymentRequest, ResultsPage,
    VerifiedChunk, WorkerStatus,
};
use upglobe_protocol::token::secrets_match;
use upglobe_protocol::trust::{Finality, NodeRole, TrustEvent};
use upglobe_protocol::{JobId, WorkerId};

use super::Input;
use super::metrics::Metrics;

const UPLOT_JS: &str = include_str!("../../assets/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../assets/uPlot.min.css");
const DASHBOARD_JS: &str = include_str!("../../assets/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../../assets/dashboard.css");

/// How often live pages get a new message.
const TICK: Duration = Duration::from_secs(1);
/// Result pages a job's stream reads per tick (each at most 1000 chunks), so a huge job's first
/// messages come in steps instead of one stall.
const RESULT_PAGES_PER_TICK: usize = 4;
/// Verification decisions shown on a job's page, newest first.
const EVENTS_SHOWN: usize = 200;

#[derive(Clone)]
pub(super) struct Dashboard {
    pub inputs: mpsc::Sender<Input>,
    /// The client token's secret, required when the dashboard is not bound to loopback.
    pub secret: Option<String>,
    pub metrics: Arc<Metrics>,
}

pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    dashboard: Dashboard,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/", get(index))
        .route("/workers", get(workers_page))
        .route("/jobs/{id}", get(job_page))
        .route("/events", get(overview_events))
        .route("/jobs/{id}/events", get(job_events))
        .route("/metrics", get(metrics))
        .route("/assets/{name}", get(asset))
        .layer(axum::middleware::from_fn_with_state(dashboard.clone(), authorize))
        .with_state(dashboard);
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
        tracing::error!(error = %e, "the dashboard stopped");
    }
}

async fn authorize(State(dashboard): State<Dashboard>, request: Request, next: Next) -> Response {
    if let Some(secret) = &dashboard.secret {
        let bearer = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .is_some_and(|given| secrets_match(given, secret));
        let query = request
            .uri()
            .query()
            .into_iter()
            .flat_map(|query| query.split('&'))
            .filter_map(|pair| pair.strip_prefix("token="))
            .any(|given| secrets_match(given, secret));
        if !(bearer || query) {
            let message = "this dashboard needs the client token's secret: add ?token=SECRET to the address, \
                           or send Authorization: Bearer SECRET";
            return (StatusCode::UNAUTHORIZED, message).into_response();
        }
    }
    next.run(request).await
}

/// Asks the owner task, the way a CLI client does.
async fn ask(dashboard: &Dashboard, request: ClientRequest) -> Result<ClientResponse, String> {
    let (reply, answer) = oneshot::channel();
    let stopped = || "the scheduler is stopping".to_string();
    dashboard.inputs.send(Input::Client { request, reply }).await.map_err(|_| stopped())?;
    match answer.await.map_err(|_| stopped())? {
        ClientResponse::Error { message } => Err(message),
        response => Ok(response),
    }
}

async fn statuses(dashboard: &Dashboard) -> Result<Vec<JobStatus>, String> {
    match ask(dashboard, ClientRequest::Status { job: None }).await? {
        ClientResponse::Status { jobs } => Ok(jobs),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

async fn workers(dashboard: &Dashboard) -> Result<Vec<WorkerStatus>, String> {
    match ask(dashboard, ClientRequest::Workers).await? {
        ClientResponse::Workers(workers) => Ok(workers),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

fn unavailable(message: String) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, message).into_response()
}

// ---- Pages -----------------------------------------------------------------------------------

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str, start: &str) -> Html<String> {
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} · UpGlobe</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/assets/uPlot.min.css"><link rel="stylesheet" href="/assets/dashboard.css">
</head><body>
<nav><b>UpGlobe</b> <a data-nav href="/">Jobs</a> <a data-nav href="/workers">Workers</a> <a data-nav href="/metrics">Metrics</a> <span id="live">connecting…</span></nav>
<main>{body}</main>
<script src="/assets/uPlot.iife.min.js"></script><script src="/assets/dashboard.js"></script>
<script>{start}</script>
</body></html>"#,
        title = escape(title)
    ))
}

const JOB_COLUMNS: &[&str] =
    &["job", "workflow", "name", "kind", "state", "verified", "final", "running", "failures", "waiting for"];

/// A table row of plain values, as the page script renders the same values live.
fn row_html(cells: &[Value]) -> String {
    let cell = |value: &Value| match value {
        Value::String(text) => format!("<td>{}</td>", escape(text)),
        Value::Null => "<td></td>".to_string(),
        other => format!("<td>{}</td>", escape(&other.to_string())),
    };
    format!("<tr>{}</tr>", cells.iter().map(cell).collect::<String>())
}

fn table(id: &str, columns: &[&str], rows: &str) -> String {
    let head: String = columns.iter().map(|c| format!("<th>{}</th>", escape(c))).collect();
    format!(r#"<table id="{id}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"#)
}

const PAYMENT_COLUMNS: &[&str] =
    &["workflow", "escrow job", "paid", "final", "unpayable", "batches", "evidence", "state"];

async fn index(State(dashboard): State<Dashboard>) -> Response {
    let jobs = match statuses(&dashboard).await {
        Ok(jobs) => jobs,
        Err(e) => return unavailable(e),
    };
    let rows: String = jobs
        .iter()
        .map(|j| {
            format!(
                r#"<tr><td><a href="/jobs/{id}">{id}</a></td><td>{w}</td><td>{n}</td><td>{k}</td><td class="state {s}">{s}</td><td>{v}/{t}</td><td>{f}</td><td>{r}</td><td>{x}</td><td>{wait}</td></tr>"#,
                id = j.id.0,
                w = escape(&j.workflow_name),
                n = escape(&j.name),
                k = escape(&j.kind),
                s = j.state.label(),
                v = j.chunks_verified,
                t = j.chunks_total,
                f = j.chunks_final,
                r = j.chunks_running,
                x = j.failures.len(),
                wait = escape(j.waiting.as_deref().unwrap_or("")),
            )
        })
        .collect();
    let mut body = format!("<h1>Workflows and jobs</h1>{}", table("jobs", JOB_COLUMNS, &rows));
    if let Ok(ClientResponse::Payments(PaymentAnswer::Funded(funded))) =
        ask(&dashboard, ClientRequest::Payments(PaymentRequest::Status)).await
        && !funded.is_empty()
    {
        let rows: String = funded.iter().map(|f| row_html(&payment_cells(f))).collect();
        body.push_str(&format!("<h2>Payments</h2>{}", table("payments", PAYMENT_COLUMNS, &rows)));
    }
    page("Jobs", &body, "upglobe.overview();").into_response()
}

const WORKER_COLUMNS: &[&str] = &[
    "name",
    "id",
    "role",
    "connected",
    "device",
    "CPUs busy",
    "GPUs busy",
    "running",
    "completed",
    "standing",
    "audits passed",
    "audits failed",
    "disagreements",
];

async fn workers_page(State(dashboard): State<Dashboard>) -> Response {
    let workers = match workers(&dashboard).await {
        Ok(workers) => workers,
        Err(e) => return unavailable(e),
    };
    let rows: String = workers.iter().map(|w| row_html(&worker_cells(w))).collect();
    let body = format!("<h1>Workers</h1>{}", table("workers", WORKER_COLUMNS, &rows));
    page("Workers", &body, "upglobe.overview();").into_response()
}

fn payment_cells(f: &FundedWorkflow) -> Vec<Value> {
    let state =
        if f.completed { "completed".to_string() } else { f.problem.clone().unwrap_or_else(|| "settling".into()) };
    vec![
        json!(format!("{} {}", f.workflow, f.name)),
        json!(f.escrow_job),
        json!(format!("{}/{}", f.paid, f.chunks)),
        json!(f.verified),
        json!(f.unpayable),
        json!(f.batches),
        json!(f.evidence),
        json!(state),
    ]
}

fn worker_cells(w: &WorkerStatus) -> Vec<Value> {
    let role = match w.role {
        NodeRole::Worker => "worker",
        NodeRole::Verifier => "verifier",
    };
    let gpus = w.gpus.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(", ");
    let device = if gpus.is_empty() { w.device.clone() } else { format!("{} + {gpus}", w.device) };
    vec![
        json!(w.name),
        json!(w.id.short()),
        json!(role),
        json!(if w.connected { "yes" } else { "no" }),
        json!(device),
        json!(format!("{}/{}", w.busy.cpus, w.resources.cpus)),
        json!(format!("{}/{}", w.busy.gpus, w.resources.gpus)),
        json!(w.running),
        json!(w.completed),
        json!(w.standing),
        json!(w.audits_passed),
        json!(w.audits_failed),
        json!(w.disagreements),
    ]
}

async fn job_page(State(dashboard): State<Dashboard>, Path(id): Path<u64>) -> Response {
    let status = match ask(&dashboard, ClientRequest::Status { job: Some(id.to_string()) }).await {
        Ok(ClientResponse::Status { jobs }) => match jobs.into_iter().next() {
            Some(status) => status,
            None => return (StatusCode::NOT_FOUND, format!("no job {id}")).into_response(),
        },
        Ok(_) => return unavailable("unexpected answer".into()),
        Err(e) => return (StatusCode::NOT_FOUND, e).into_response(),
    };
    let plots = if status.kind == "md" {
        r#"<h2>Thermo</h2>
<div class="plot" id="plot-temp" data-points="0"></div>
<div class="plot" id="plot-energy" data-points="0"></div>
<div class="plot" id="plot-press" data-points="0"></div>"#
    } else {
        ""
    };
    let body = format!(
        r#"<h1>{workflow}.{name} <small>job {id}, {kind}</small></h1>
<p class="summary">state <b id="state" class="state {state}">{state}</b> ·
verified <b id="verified">{verified}</b> of <b id="total">{total}</b> chunks ·
final <b id="final">{final_}</b> · running <b id="running">{running}</b> · failures <b id="failures">{failures}</b>
<span id="waiting"></span></p>
{plots}
<h2>Chunks</h2>
{chunks}
<h2>Failures and retries</h2>
{failed}
<h2>Verification decisions</h2>
{events}"#,
        workflow = escape(&status.workflow_name),
        name = escape(&status.name),
        id = status.id.0,
        kind = escape(&status.kind),
        state = status.state.label(),
        verified = status.chunks_verified,
        total = status.chunks_total,
        final_ = status.chunks_final,
        running = status.chunks_running,
        failures = status.failures.len(),
        chunks = table("chunks", &["chunk", "finality", "agreed by", "disagreed"], ""),
        failed = table("failed", &["chunk", "worker", "why"], ""),
        events = table("events", &["time", "chunk", "worker", "decision"], ""),
    );
    page(&format!("{}.{}", status.workflow_name, status.name), &body, &format!("upglobe.job({});", status.id.0))
        .into_response()
}

async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "uPlot.iife.min.js" => (UPLOT_JS, "text/javascript"),
        "uPlot.min.css" => (UPLOT_CSS, "text/css"),
        "dashboard.js" => (DASHBOARD_JS, "text/javascript"),
        "dashboard.css" => (DASHBOARD_CSS, "text/css"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "max-age=3600")], body).into_response()
}

async fn metrics(State(dashboard): State<Dashboard>) -> Response {
    let (jobs, workers) = match (statuses(&dashboard).await, workers(&dashboard).await) {
        (Ok(jobs), Ok(workers)) => (jobs, workers),
        (Err(e), _) | (_, Err(e)) => return unavailable(e),
    };
    let text = dashboard.metrics.render(&jobs, &workers);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

// ---- Live updates ----------------------------------------------------------------------------

fn job_json(j: &JobStatus) -> Value {
    json!({
        "id": j.id.0, "workflow": j.workflow_name, "name": j.name, "kind": j.kind, "state": j.state.label(),
        "verified": j.chunks_verified, "final": j.chunks_final, "total": j.chunks_total,
        "running": j.chunks_running, "failures": j.failures.len(), "waiting": j.waiting,
        "reason": match &j.state { upglobe_protocol::messages::JobState::Failed { reason } => Some(reason), _ => None },
    })
}

type EventStream = std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>;
type Events = Sse<axum::response::sse::KeepAliveStream<EventStream>>;

fn sse<S, F>(state: S, step: impl Fn(S) -> F + Send + Sync + 'static) -> Events
where
    S: Send + 'static,
    F: std::future::Future<Output = (Value, S)> + Send + 'static,
{
    let stream = futures_util::stream::unfold((state, true), move |(state, first)| {
        let next = step(state);
        async move {
            if !first {
                tokio::time::sleep(TICK).await;
            }
            let (value, state) = next.await;
            Some((Ok(Event::default().data(value.to_string())), (state, false)))
        }
    });
    Sse::new(Box::pin(stream) as EventStream).keep_alive(KeepAlive::default())
}

/// Jobs and workers, every second (the index and workers pages).
async fn overview_events(State(dashboard): State<Dashboard>) -> Events {
    sse(dashboard, |dashboard| async move {
        let payments = match ask(&dashboard, ClientRequest::Payments(PaymentRequest::Status)).await {
            Ok(ClientResponse::Payments(PaymentAnswer::Funded(funded))) => funded.iter().map(payment_cells).collect(),
            _ => Vec::new(),
        };
        let value = match (statuses(&dashboard).await, workers(&dashboard).await) {
            (Ok(jobs), Ok(workers)) => json!({
                "jobs": jobs.iter().map(job_json).collect::<Vec<_>>(),
                "workers": workers.iter().map(worker_cells).collect::<Vec<_>>(),
                "payments": payments,
            }),
            (Err(e), _) | (_, Err(e)) => json!({ "error": e }),
        };
        (value, dashboard)
    })
}

/// What one job page's stream has sent so far.
struct JobStream {
    dashboard: Dashboard,
    job: JobId,
    /// The next chunk to read; chunks before it were sent.
    next_chunk: u32,
    names: HashMap<WorkerId, String>,
}

async fn job_events(State(dashboard): State<Dashboard>, Path(id): Path<u64>) -> Events {
    let stream = JobStream { dashboard, job: JobId(id), next_chunk: 0, names: HashMap::new() };
    sse(stream, |mut stream| async move {
        let value = match stream.tick().await {
            Ok(value) => value,
            Err(e) => json!({ "error": e }),
        };
        (value, stream)
    })
}

impl JobStream {
    /// The job's status, the chunks verified since the last tick with their thermo, its
    /// failures and its latest verification decisions. `reset` tells the page to start over
    /// (the first message, or when chunks were overturned).
    async fn tick(&mut self) -> Result<Value, String> {
        let job = self.job.0.to_string();
        let status = match ask(&self.dashboard, ClientRequest::Status { job: Some(job.clone()) }).await? {
            ClientResponse::Status { jobs } => jobs.into_iter().next().ok_or_else(|| format!("no job {job}"))?,
            other => return Err(format!("unexpected answer {other:?}")),
        };
        let mut reset = self.next_chunk == 0;
        if status.chunks_verified < u64::from(self.next_chunk) {
            // Overturned chunks: send everything again.
            self.next_chunk = 0;
            reset = true;
        }
        let mut chunks: Vec<VerifiedChunk> = Vec::new();
        for _ in 0..RESULT_PAGES_PER_TICK {
            let request = ClientRequest::Results { job: job.clone(), first_chunk: self.next_chunk };
            let page: ResultsPage = match ask(&self.dashboard, request).await? {
                ClientResponse::Results(page) => *page,
                other => return Err(format!("unexpected answer {other:?}")),
            };
            // Chained jobs verify in order; an array's chunks may come out of order, so only a
            // run of consecutive ones moves the cursor.
            for chunk in page.chunks {
                if chunk.index == self.next_chunk {
                    self.next_chunk += 1;
                    chunks.push(chunk);
                } else {
                    break;
                }
            }
            if page.next_chunk.is_none_or(|next| next != self.next_chunk) {
                break;
            }
        }
        let mut thermo: [Vec<Value>; 6] = Default::default();
        for chunk in &chunks {
            if let Output::Md { thermo: lines, .. } = &chunk.output {
                for line in lines {
                    for (k, v) in
                        [line.step as f64, line.temp, line.pe, line.ke, line.etotal, line.press].into_iter().enumerate()
                    {
                        thermo[k].push(if v.is_finite() { json!(v) } else { Value::Null });
                    }
                }
            }
        }
        let events: Vec<TrustEvent> = match ask(&self.dashboard, ClientRequest::Verification { job: job.clone() }).await
        {
            Ok(ClientResponse::Verification(report)) => report.events.into_iter().rev().take(EVENTS_SHOWN).collect(),
            _ => Vec::new(),
        };
        // Worker names are asked for only when a worker not seen yet turns up.
        let named = chunks
            .iter()
            .flat_map(|c| c.agreeing.iter().chain(&c.disagreeing))
            .chain(status.failures.iter().filter_map(|f| f.worker.as_ref()))
            .chain(events.iter().filter_map(|e| e.worker.as_ref()));
        if named.into_iter().any(|w| !self.names.contains_key(w)) {
            self.names = workers(&self.dashboard).await?.into_iter().map(|w| (w.id, w.name)).collect();
        }
        let name = |w: &WorkerId| self.names.get(w).cloned().unwrap_or_else(|| w.short());
        let rows: Vec<Value> = chunks
            .iter()
            .map(|c| {
                json!({
                    "index": c.index,
                    "finality": match c.finality { Finality::Final => "final", Finality::Provisional => "provisional" },
                    "agreeing": c.agreeing.iter().map(name).collect::<Vec<_>>(),
                    "disagreeing": c.disagreeing.iter().map(name).collect::<Vec<_>>(),
                })
            })
            .collect();
        let failures: Vec<Value> = status
            .failures
            .iter()
            .map(|f| json!({"chunk": f.chunk, "worker": f.worker.as_ref().map(name), "reason": f.reason}))
            .collect();
        let events: Vec<Value> = events.iter().map(|e| event_json(e, &name)).collect();
        let [step, temp, pe, ke, etotal, press] = thermo;
        Ok(json!({
            "reset": reset,
            "status": job_json(&status),
            "thermo": {"step": step, "temp": temp, "pe": pe, "ke": ke, "etotal": etotal, "press": press},
            "chunks": rows,
            "failures": failures,
            "events": events,
        }))
    }
}

fn event_json(event: &TrustEvent, name: &dyn Fn(&WorkerId) -> String) -> Value {
    let what = format!("{:?}", event.what);
    json!({
        "time_s": event.time_ms as f64 / 1000.0,
        "chunk": event.chunk,
        "worker": event.worker.as_ref().map(name),
        "what": what,
    })
}
