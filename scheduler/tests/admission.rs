//! The real server in-process: peers speaking another protocol get a clear answer, not a hang.

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
