//! The real server in-process: peers speaking another protocol get a clear answer, not a hang.

mod common;

use std::sync::Arc;
use std::time::Duration;

use upglobe_protocol::messages::{Greeting, Hello, Resources, ToWorker};
use upglobe_protocol::tls::PeerIdentity;
use upglobe_protocol::{frame, net};
use upglobe_scheduler::server::{Scheduler, ServerConfig};

#[tokio::test]
async fn another_protocol_version_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let scheduler =
        Scheduler::start(ServerConfig::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap())).await.unwrap();
    let identity = PeerIdentity::generate("old worker").unwrap();
    let connection = net::connect(&scheduler.worker_token, &identity, Duration::from_secs(5)).await.unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let hello = Hello {
        protocol: 999,
        secret: scheduler.worker_token.secret.clone(),
        software: "upglobe 9.9".into(),
        name: "old".into(),
        resources: Resources { cpus: 1, memory_bytes: 0, gpus: 0 },
        allow_commands: false,
        device: "cpu".into(),
        role: upglobe_protocol::trust::NodeRole::Worker,
        signing_key: common::key().public(),
        owner: None,
        peer_address: None,
        gpus: vec![],
        adapters: vec![],
        containers: None,
        allow_network: false,
        hub: None,
    };
    frame::write(&mut send, &Greeting::Worker(hello)).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), frame::read::<ToWorker, _>(&mut recv)).await.unwrap();
    match answer.unwrap() {
        Some(ToWorker::Refused { reason }) => assert!(reason.contains("protocol version 999"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    scheduler.shutdown().await.unwrap();
}

#[tokio::test]
async fn another_major_version_fails_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let scheduler =
        Scheduler::start(ServerConfig::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap())).await.unwrap();
    let identity = PeerIdentity::generate("future").unwrap();
    let mut tls = identity.client_config(scheduler.worker_token.ca_fingerprint).unwrap();
    tls.alpn_protocols = vec![b"upglobe/2".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let attempt = endpoint.connect(scheduler.address, upglobe_protocol::SERVER_NAME).unwrap();
    let error = tokio::time::timeout(Duration::from_secs(10), attempt).await.expect("no hang").unwrap_err();
    assert!(net::describe_connection_error(&error).contains("protocol"), "{error}");
    scheduler.shutdown().await.unwrap();
}

/// A raw client: submits one MD job (replicas 1) whose initial state is `initial`.
async fn submit_md(scheduler: &Scheduler, initial: &[u8]) {
    use upglobe_protocol::messages::{
        ClientRequest, ClientResponse, JobKind, JobSpec, MdJob, StreamRequest, Submission,
    };
    let connection = client_connection(scheduler).await;
    let dir = tempfile::tempdir().unwrap();
    let store = upglobe_datasets::BlobStore::open(dir.path()).unwrap();
    let hash = store.put(initial).unwrap();
    upglobe_datasets::transfer::upload(&connection, &store, hash).await.unwrap();
    let job = JobSpec {
        name: "md".into(),
        after: vec![],
        replicas: 1,
        gpu: Default::default(),
        verification: upglobe_protocol::trust::Verification::Quorum,
        resources: Resources { cpus: 1, memory_bytes: 0, gpus: 0 },
        kind: JobKind::Md(MdJob { initial: hash, atoms: 2, total_steps: 10, chunk_steps: 10, thermo_every: 10 }),
    };
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let submission = Submission { name: "w".into(), source: String::new(), jobs: vec![job] };
    frame::write(&mut send, &StreamRequest::Client(ClientRequest::Submit(submission))).await.unwrap();
    send.finish().unwrap();
    assert!(matches!(frame::expect::<ClientResponse, _>(&mut recv).await.unwrap(), ClientResponse::Submitted { .. }));
}

#[tokio::test]
async fn a_checkpoint_that_is_not_the_claimed_state_is_refused() {
    use upglobe_protocol::messages::{Outcome, Output, Task};
    let dir = tempfile::tempdir().unwrap();
    let scheduler =
        Scheduler::start(ServerConfig::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap())).await.unwrap();
    submit_md(&scheduler, b"initial state").await;

    let identity = PeerIdentity::generate("worker").unwrap();
    let connection = net::connect(&scheduler.worker_token, &identity, Duration::from_secs(5)).await.unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    frame::write(&mut send, &Greeting::Worker(worker_hello(&scheduler, "cheat"))).await.unwrap();
    assert!(matches!(frame::expect::<ToWorker, _>(&mut recv).await.unwrap(), ToWorker::Welcome(_)));
    let store_dir = tempfile::tempdir().unwrap();
    let store = upglobe_datasets::BlobStore::open(store_dir.path()).unwrap();
    // A "checkpoint" ends with the hash of the state it encodes.
    let claimed = [5u8; 32];
    let mut honest = b"some state".to_vec();
    honest.extend_from_slice(&claimed);
    let mut other = b"another state".to_vec();
    other.extend_from_slice(&[6u8; 32]);
    // The refused attempt comes back to this worker (the only one), which then answers honestly.
    for bytes in [other, honest] {
        let assignment = loop {
            match frame::expect::<ToWorker, _>(&mut recv).await.unwrap() {
                ToWorker::Assign(a) => break a,
                _ => continue,
            }
        };
        assert!(matches!(assignment.task, Task::Md { .. }));
        let blob = store.put(&bytes).unwrap();
        upglobe_datasets::transfer::upload(&connection, &store, blob).await.unwrap();
        let Task::Md { steps, chain_every, .. } = assignment.task else { unreachable!() };
        let chain = vec![claimed; (steps / chain_every) as usize];
        let checkpoint_bytes = bytes.len() as u64;
        let output = Output::Md { state_hash: claimed, checkpoint: blob, checkpoint_bytes, thermo: vec![], chain };
        let finished = signed(&assignment, Outcome::Completed(output));
        frame::write(&mut send, &finished).await.unwrap();
    }
    // The first (mismatched) result was refused as a failure; the second verified the chunk. The
    // database is read until both are there, and must then hold exactly these.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while count_outcomes(dir.path()) != (1, 1) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count_outcomes(dir.path()), (1, 1), "one verified chunk, one refused attempt");
    scheduler.shutdown().await.unwrap();
}

/// (verified chunks, failed attempts) in the scheduler's database.
fn count_outcomes(dir: &std::path::Path) -> (i64, i64) {
    let connection = rusqlite::Connection::open(dir.join("scheduler.db")).unwrap();
    let verified = connection.query_row("SELECT COUNT(*) FROM verified", [], |r| r.get(0)).unwrap();
    let failures: i64 = connection
        .query_row("SELECT COUNT(*) FROM failures WHERE reason LIKE '%is not the state the result claims%'", [], |r| {
            r.get(0)
        })
        .unwrap();
    (verified, failures)
}

fn worker_hello(scheduler: &Scheduler, name: &str) -> Hello {
    Hello {
        protocol: upglobe_protocol::PROTOCOL_VERSION,
        secret: scheduler.worker_token.secret.clone(),
        software: "test".into(),
        name: name.into(),
        resources: Resources { cpus: 1, memory_bytes: 0, gpus: 0 },
        allow_commands: false,
        device: "cpu".into(),
        role: upglobe_protocol::trust::NodeRole::Worker,
        signing_key: common::key().public(),
        owner: None,
        peer_address: None,
        gpus: vec![],
        adapters: vec![],
        containers: None,
        allow_network: false,
        hub: None,
    }
}

/// A worker's answer, signed with the key its hello announced.
fn signed(
    assignment: &upglobe_protocol::messages::Assignment,
    outcome: upglobe_protocol::messages::Outcome,
) -> upglobe_protocol::messages::FromWorker {
    use upglobe_protocol::trust::{ResultStatement, Usage};
    let input = match &assignment.task {
        upglobe_protocol::messages::Task::Md { input, .. } => Some(*input),
        _ => None,
    };
    let usage = Usage::default();
    let statement =
        ResultStatement { chunk: assignment.chunk, assignment: assignment.id, input, digest: outcome.digest(), usage };
    let signature = common::key().sign(&statement);
    upglobe_protocol::messages::FromWorker::Finished { assignment: assignment.id, outcome, usage, signature }
}

/// Before a peer has proven its secret it may send one small frame: a greeting that claims to be
/// large is refused at its length prefix, not waited for.
#[tokio::test]
async fn an_oversized_greeting_is_refused_at_its_length() {
    let dir = tempfile::tempdir().unwrap();
    let scheduler =
        Scheduler::start(ServerConfig::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap())).await.unwrap();
    let identity = PeerIdentity::generate("stranger").unwrap();
    let connection = net::connect(&scheduler.worker_token, &identity, Duration::from_secs(5)).await.unwrap();
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    // Claims a 1 MiB greeting, sends 8 KiB of it and waits.
    send.write_all(&(1u32 << 20).to_le_bytes()).await.unwrap();
    send.write_all(&[0u8; 8 << 10]).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), connection.closed()).await;
    assert!(closed.is_ok(), "the scheduler kept waiting for an oversized greeting");
    scheduler.shutdown().await.unwrap();
}

/// Connections that never say who they are cannot pile up: past the limit, new ones are refused
/// until the silent ones time out.
#[tokio::test]
async fn unauthenticated_connections_are_bounded() {
    use upglobe_protocol::messages::limits::UNAUTHENTICATED_CONNECTIONS_MAX;
    let dir = tempfile::tempdir().unwrap();
    // Silent connections must still hold their slots when the last is tried, however slowly a
    // loaded machine makes the handshakes before it.
    let config = ServerConfig {
        greeting_timeout: Duration::from_secs(300),
        ..ServerConfig::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap())
    };
    let scheduler = Scheduler::start(config).await.unwrap();
    let identity = PeerIdentity::generate("crowd").unwrap();
    let mut silent = Vec::new();
    for _ in 0..UNAUTHENTICATED_CONNECTIONS_MAX {
        silent.push(net::connect(&scheduler.worker_token, &identity, Duration::from_secs(5)).await.unwrap());
    }
    let refused = net::connect(&scheduler.worker_token, &identity, Duration::from_secs(5)).await;
    assert!(refused.is_err(), "connection {} was accepted", UNAUTHENTICATED_CONNECTIONS_MAX + 1);
    drop(silent);
    scheduler.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_hello_beyond_the_limits_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let scheduler =
        Scheduler::start(ServerConfig::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap())).await.unwrap();
    let identity = PeerIdentity::generate("long").unwrap();
    let connection = net::connect(&scheduler.worker_token, &identity, Duration::from_secs(5)).await.unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    frame::write(&mut send, &Greeting::Worker(worker_hello(&scheduler, &"n".repeat(100)))).await.unwrap();
    match frame::expect::<ToWorker, _>(&mut recv).await.unwrap() {
        ToWorker::Refused { reason } => assert!(reason.contains("worker name is 100 bytes"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    scheduler.shutdown().await.unwrap();
}

/// A connection that has proven its client secret.
async fn client_connection(scheduler: &Scheduler) -> quinn::Connection {
    use upglobe_protocol::messages::{ClientHello, ClientWelcome};
    let identity = PeerIdentity::generate("client").unwrap();
    let connection = net::connect(&scheduler.client_token, &identity, Duration::from_secs(5)).await.unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let hello = ClientHello {
        protocol: upglobe_protocol::PROTOCOL_VERSION,
        secret: scheduler.client_token.secret.clone(),
        software: "test".into(),
    };
    frame::write(&mut send, &Greeting::Client(hello)).await.unwrap();
    assert!(matches!(frame::expect::<ClientWelcome, _>(&mut recv).await.unwrap(), ClientWelcome::Welcome { .. }));
    connection
}

#[tokio::test]
async fn blobs_that_nothing_needs_are_collected_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap());
    config.garbage_interval = Duration::from_millis(100);
    // Long enough that the submitted job's input is named before it could count as garbage.
    config.garbage_grace = Duration::from_secs(5);
    let scheduler = Scheduler::start(config).await.unwrap();
    let connection = client_connection(&scheduler).await;
    let local = tempfile::tempdir().unwrap();
    let store = upglobe_datasets::BlobStore::open(local.path()).unwrap();
    let orphan = store.put(b"uploaded, never submitted").unwrap();
    upglobe_datasets::transfer::upload(&connection, &store, orphan).await.unwrap();
    submit_md(&scheduler, b"the initial state of a submitted job").await;
    let held = upglobe_datasets::BlobStore::open(dir.path().join("blobs")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while held.contains(&orphan) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!held.contains(&orphan), "an upload nothing names was kept");
    let initial = upglobe_protocol::BlobHash::of(b"the initial state of a submitted job");
    assert!(held.contains(&initial), "a submitted job's input was removed");
    scheduler.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_worker_cannot_pile_up_uploads_that_no_result_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap());
    config.worker_unclaimed_bytes_max = 100;
    let scheduler = Scheduler::start(config).await.unwrap();
    let identity = PeerIdentity::generate("hoarder").unwrap();
    let connection = net::connect(&scheduler.worker_token, &identity, Duration::from_secs(5)).await.unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    frame::write(&mut send, &Greeting::Worker(worker_hello(&scheduler, "hoarder"))).await.unwrap();
    assert!(matches!(frame::expect::<ToWorker, _>(&mut recv).await.unwrap(), ToWorker::Welcome(_)));
    let local = tempfile::tempdir().unwrap();
    let store = upglobe_datasets::BlobStore::open(local.path()).unwrap();
    let first = store.put(&[1u8; 60]).unwrap();
    let second = store.put(&[2u8; 60]).unwrap();
    upglobe_datasets::transfer::upload(&connection, &store, first).await.unwrap();
    let refused = upglobe_datasets::transfer::upload(&connection, &store, second).await.unwrap_err().to_string();
    assert!(refused.contains("no result names"), "{refused}");
    // A blob the scheduler already holds costs nothing.
    upglobe_datasets::transfer::upload(&connection, &store, first).await.unwrap();
    scheduler.shutdown().await.unwrap();
}

/// Results come in pages: a job of more chunks than a page holds is read in several requests, the
/// spec only on the first.
#[tokio::test]
async fn results_of_a_large_job_come_in_pages() {
    use upglobe_protocol::messages::limits::RESULTS_PAGE_CHUNKS_MAX;
    use upglobe_protocol::messages::{
        ClientRequest, ClientResponse, JobKind, JobSpec, Outcome, Output, StreamRequest, Submission, Task,
    };
    let dir = tempfile::tempdir().unwrap();
    let scheduler =
        Scheduler::start(ServerConfig::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap())).await.unwrap();
    let client = client_connection(&scheduler).await;
    let request = |request: ClientRequest| {
        let client = client.clone();
        async move {
            let (mut send, mut recv) = client.open_bi().await.unwrap();
            frame::write(&mut send, &StreamRequest::Client(request)).await.unwrap();
            send.finish().unwrap();
            frame::expect::<ClientResponse, _>(&mut recv).await.unwrap()
        }
    };
    let chunks = RESULTS_PAGE_CHUNKS_MAX + 10;
    let job = JobSpec {
        name: "many".into(),
        after: vec![],
        replicas: 1,
        gpu: Default::default(),
        verification: upglobe_protocol::trust::Verification::Quorum,
        resources: Resources { cpus: 1, memory_bytes: 0, gpus: 0 },
        kind: JobKind::Empty { chunks },
    };
    let submission = Submission { name: "w".into(), source: String::new(), jobs: vec![job] };
    assert!(matches!(request(ClientRequest::Submit(submission)).await, ClientResponse::Submitted { .. }));

    let identity = PeerIdentity::generate("fast").unwrap();
    let worker = net::connect(&scheduler.worker_token, &identity, Duration::from_secs(5)).await.unwrap();
    let (mut send, mut recv) = worker.open_bi().await.unwrap();
    let mut hello = worker_hello(&scheduler, "fast");
    hello.resources.cpus = 256;
    frame::write(&mut send, &Greeting::Worker(hello)).await.unwrap();
    let mut answered = 0;
    while answered < chunks {
        if let ToWorker::Assign(assignment) = frame::expect::<ToWorker, _>(&mut recv).await.unwrap() {
            let Task::Empty { value } = assignment.task else { panic!("an empty task") };
            let outcome = Outcome::Completed(Output::Empty { value });
            let finished = signed(&assignment, outcome);
            frame::write(&mut send, &finished).await.unwrap();
            answered += 1;
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut pages = Vec::new();
    loop {
        let first_chunk =
            pages.last().and_then(|p: &upglobe_protocol::messages::ResultsPage| p.next_chunk).unwrap_or(0);
        let page = match request(ClientRequest::Results { job: "w.many".into(), first_chunk }).await {
            ClientResponse::Results(page) => *page,
            other => panic!("{other:?}"),
        };
        if pages.is_empty() && page.status.chunks_verified < chunks as u64 {
            assert!(std::time::Instant::now() < deadline, "the chunks were not all verified");
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let last = page.next_chunk.is_none();
        pages.push(page);
        if last {
            break;
        }
    }
    assert_eq!(pages.len(), 2);
    assert!(pages[0].spec.is_some() && pages[1].spec.is_none());
    assert_eq!(pages[0].chunks.len() as u32, RESULTS_PAGE_CHUNKS_MAX);
    assert_eq!(pages[0].next_chunk, Some(RESULTS_PAGE_CHUNKS_MAX));
    let indexes: Vec<u32> = pages.iter().flat_map(|p| p.chunks.iter().map(|c| c.index)).collect();
    assert_eq!(indexes, (0..chunks).collect::<Vec<_>>());
    scheduler.shutdown().await.unwrap();
}
