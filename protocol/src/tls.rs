//! Certificates and rustls configurations.
//!
//! - The scheduler makes a CA and a server certificate signed by it on first start
//!   (`tls/ca.crt`, `tls/ca.key`, `tls/server.crt`, `tls/server.key` in its data directory).
//! - Workers and clients make an Ed25519 key pair and a self-signed certificate once
//!   (`identity.crt`, `identity.key`); the BLAKE3 hash of the public key is their id.
//! - Peers verify the scheduler's chain against the CA pinned by their token. The scheduler accepts
//!   any client key (it proves possession in the handshake); admission is by the token's secret.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};

use crate::{ALPN, ProtocolError, Result, SERVER_NAME, WorkerId};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(context: &str, e: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::Tls(format!("{context}: {e}"))
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    let io = |source| ProtocolError::Io { context: format!("cannot write {}", path.display()), cause: source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io)?;
    std::io::Write::write_all(&mut file, contents.as_bytes()).map_err(io)
}

fn write_public(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents)
        .map_err(|source| ProtocolError::Io { context: format!("cannot write {}", path.display()), cause: source })
}

fn read_certificate(path: &Path) -> Result<CertificateDer<'static>> {
    CertificateDer::from_pem_file(path).map_err(|e| tls_error(&format!("cannot read {}", path.display()), e))
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| tls_error(&format!("cannot read {}", path.display()), e))
}

/// How a pinned-CA mismatch reads; `net::connect` recognises it to make it a fatal error.
pub const WRONG_SCHEDULER: &str =
    "the scheduler's certificate authority does not match the join token (wrong token, or a different scheduler)";

/// BLAKE3 fingerprint of a DER certificate.
pub fn fingerprint(certificate: &CertificateDer<'_>) -> [u8; 32] {
    *blake3::hash(certificate.as_ref()).as_bytes()
}

/// The scheduler's CA and server certificate.
pub struct SchedulerIdentity {
    pub ca: CertificateDer<'static>,
    pub server: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl SchedulerIdentity {
    /// Loads `dir/tls`, creating the CA and server certificate on first start. Returns whether they
    /// were created.
    pub fn load_or_create(dir: &Path) -> Result<(SchedulerIdentity, bool)> {
        let tls = dir.join("tls");
        let path = |name: &str| -> PathBuf { tls.join(name) };
        if path("ca.crt").exists() {
            for name in ["server.crt", "server.key"] {
                if !path(name).exists() {
                    return Err(ProtocolError::Tls(format!(
                        "{} is missing; restore it, or delete {} to make a new CA (which invalidates every join token)",
                        path(name).display(),
                        tls.display()
                    )));
                }
            }
            let identity = SchedulerIdentity {
                ca: read_certificate(&path("ca.crt"))?,
                server: read_certificate(&path("server.crt"))?,
                key: read_key(&path("server.key"))?,
            };
            return Ok((identity, false));
        }
        std::fs::create_dir_all(&tls).map_err(|source| ProtocolError::Io {
            context: format!("cannot create {}", tls.display()),
            cause: source,
        })?;
        let ca_key = rcgen::KeyPair::generate().map_err(|e| tls_error("generating the CA key", e))?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| tls_error("CA", e))?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "UpGlobe scheduler CA");
        ca_params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(|e| tls_error("signing the CA", e))?;
        let server_key = rcgen::KeyPair::generate().map_err(|e| tls_error("generating the server key", e))?;
        let mut server_params =
            rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(|e| tls_error("server", e))?;
        server_params.distinguished_name.push(rcgen::DnType::CommonName, SERVER_NAME);
        server_params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let server =
            server_params.signed_by(&server_key, &ca).map_err(|e| tls_error("signing the server certificate", e))?;
        write_public(&path("ca.crt"), &ca.pem())?;
        write_private(&path("ca.key"), &ca.key().serialize_pem())?;
        write_public(&path("server.crt"), &server.pem())?;
        write_private(&path("server.key"), &server_key.serialize_pem())?;
        let identity = SchedulerIdentity {
            ca: ca.der().clone(),
            server: server.der().clone(),
            key: PrivatePkcs8KeyDer::from(server_key.serialize_der()).into(),
        };
        Ok((identity, true))
    }

    pub fn ca_fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.ca)
    }

    pub fn server_config(&self) -> Result<rustls::ServerConfig> {
        let provider = provider();
        let verifier = Arc::new(AnyClientKey { algorithms: provider.signature_verification_algorithms });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error("server config", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.server.clone(), self.ca.clone()], self.key.clone_key())
            .map_err(|e| tls_error("server certificate", e))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

/// A worker's or client's key pair and self-signed certificate.
pub struct PeerIdentity {
    pub certificate: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl PeerIdentity {
    /// A fresh identity that lives only in memory (benchmarks, tests).
    pub fn generate(name: &str) -> Result<PeerIdentity> {
        Ok(Self::create(name)?.0)
    }

    fn create(name: &str) -> Result<(PeerIdentity, String, String)> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(|e| tls_error("generating a key", e))?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| tls_error("identity", e))?;
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let certificate = params.self_signed(&key).map_err(|e| tls_error("signing the identity", e))?;
        let identity = PeerIdentity {
            certificate: certificate.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        };
        Ok((identity, certificate.pem(), key.serialize_pem()))
    }

    /// Loads `dir/identity.{crt,key}`, creating them the first time.
    pub fn load_or_create(dir: &Path, name: &str) -> Result<PeerIdentity> {
        let certificate_path = dir.join("identity.crt");
        let key_path = dir.join("identity.key");
        if certificate_path.exists() {
            return Ok(PeerIdentity { certificate: read_certificate(&certificate_path)?, key: read_key(&key_path)? });
        }
        std::fs::create_dir_all(dir).map_err(|source| ProtocolError::Io {
            context: format!("cannot create {}", dir.display()),
            cause: source,
        })?;
        let (identity, certificate_pem, key_pem) = Self::create(name)?;
        write_private(&key_path, &key_pem)?;
        write_public(&certificate_path, &certificate_pem)?;
        Ok(identity)
    }

    pub fn id(&self) -> Result<WorkerId> {
        certificate_id(&self.certificate)
    }

    /// A client configuration that trusts only the CA with `ca_fingerprint`.
    pub fn client_config(&self, ca_fingerprint: [u8; 32]) -> Result<rustls::ClientConfig> {
        self.pinned_client_config(Pin::Ca(ca_fingerprint))
    }

    /// A client configuration that accepts only the peer whose key has the id `peer`.
    pub fn peer_client_config(&self, peer: WorkerId) -> Result<rustls::ClientConfig> {
        self.pinned_client_config(Pin::Key(peer))
    }

    fn pinned_client_config(&self, pin: Pin) -> Result<rustls::ClientConfig> {
        let provider = provider();
        let verifier = Arc::new(Pinned { pin, provider: provider.clone() });
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error("client config", e))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(vec![self.certificate.clone()], self.key.clone_key())
            .map_err(|e| tls_error("client certificate", e))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// A server configuration for serving blobs to other workers: this identity's certificate,
    /// and a client certificate required (its key is the peer's id).
    pub fn peer_server_config(&self) -> Result<rustls::ServerConfig> {
        let provider = provider();
        let verifier = Arc::new(AnyClientKey { algorithms: provider.signature_verification_algorithms });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error("peer server config", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.certificate.clone()], self.key.clone_key())
            .map_err(|e| tls_error("peer server certificate", e))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

/// The id of the key in a certificate.
pub fn certificate_id(certificate: &CertificateDer<'_>) -> Result<WorkerId> {
    let parsed = ParsedCertificate::try_from(certificate).map_err(|e| tls_error("peer certificate", e))?;
    Ok(WorkerId(*blake3::hash(parsed.subject_public_key_info().as_ref()).as_bytes()))
}

/// The id of the peer of an established connection.
pub fn peer_id(connection: &quinn::Connection) -> Result<WorkerId> {
    let identity =
        connection.peer_identity().ok_or_else(|| ProtocolError::Tls("the peer sent no certificate".into()))?;
    let certificates = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| ProtocolError::Tls("unexpected peer identity type".into()))?;
    let first = certificates.first().ok_or_else(|| ProtocolError::Tls("the peer sent no certificate".into()))?;
    certificate_id(first)
}

#[derive(Debug)]
struct AnyClientKey {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientKey {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        // The certificate only carries the peer's key; the handshake signature proves possession and
        // the first message's secret decides admission.
        ParsedCertificate::try_from(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What a client accepts as its server.
#[derive(Debug)]
enum Pin {
    /// The scheduler: a certificate chaining to the CA with this fingerprint (the token's).
    Ca([u8; 32]),
    /// A peer worker: a certificate carrying the key with the id the scheduler named; the
    /// handshake signature then proves the server holds that key.
    Key(WorkerId),
}

#[derive(Debug)]
struct Pinned {
    pin: Pin,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let fingerprint_pinned = match self.pin {
            Pin::Key(id) => {
                return match certificate_id(end_entity) {
                    Ok(found) if found == id => Ok(ServerCertVerified::assertion()),
                    _ => Err(rustls::Error::General("the peer is not the worker the scheduler named".into())),
                };
            }
            Pin::Ca(fingerprint_pinned) => fingerprint_pinned,
        };
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c) == fingerprint_pinned)
            .ok_or_else(|| rustls::Error::General(WRONG_SCHEDULER.into()))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// 32 random bytes as hex, from the operating system's generator.
pub fn random_secret() -> Result<String> {
    let mut bytes = [0u8; 32];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| ProtocolError::Tls("the system random generator failed".into()))?;
    Ok(hex::encode(bytes))
}
