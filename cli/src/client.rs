//! A client connection to the scheduler, for the commands that submit and inspect work.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use upglobe_datasets::{BlobStore, transfer};
use upglobe_protocol::messages::{ClientHello, ClientRequest, ClientResponse, ClientWelcome, Greeting, StreamRequest};
use upglobe_protocol::tls::PeerIdentity;
use upglobe_protocol::{BlobHash, PROTOCOL_VERSION, Role, Token, frame, net};

pub struct Client {
    connection: quinn::Connection,
    blobs: BlobStore,
    address: String,
}

/// A token given on the command line: the token itself, or a file holding it.
pub fn parse_token(text: &str) -> Result<Token> {
    let text = text.trim();
    if text.starts_with("upglobe://") {
        return Ok(text.parse()?);
    }
    let path = Path::new(text.strip_prefix('@').unwrap_or(text));
    if !path.exists() {
        bail!("'{text}' is neither a token (upglobe://HOST:PORT/ROLE?ca=…&secret=…) nor a file holding one");
    }
    let contents =
        std::fs::read_to_string(path).with_context(|| format!("cannot read token file {}", path.display()))?;
    contents.trim().parse().with_context(|| format!("token file {}", path.display()))
}

/// The client token: given, or the one a local scheduler wrote into its data directory.
pub fn client_token(given: Option<&str>, home: &Path) -> Result<Token> {
    let token = match given {
        Some(text) => parse_token(text)?,
        None => {
            let path = home.join("scheduler").join("client.token");
            if !path.exists() {
                bail!(
                    "no scheduler to talk to: pass --connect TOKEN (the client token printed by `upglobe scheduler`), \
                     or run a scheduler with data directory {}",
                    home.join("scheduler").display()
                );
            }
            parse_token(&path.to_string_lossy())?
        }
    };
    if token.role != Role::Client {
        bail!("this is a {} token; commands that submit or inspect work need the client token", token.role.as_str());
    }
    Ok(token)
}

impl Client {
    pub async fn connect(token: &Token, home: &Path) -> Result<Client> {
        let identity = PeerIdentity::load_or_create(&home.join("client"), "upglobe client")?;
        let blobs = BlobStore::open(cache_dir(home))?;
        let connection = net::connect(token, &identity, net::IDLE_TIMEOUT_DEFAULT).await?;
        let (mut send, mut recv) = connection.open_bi().await?;
        let hello = ClientHello {
            protocol: PROTOCOL_VERSION,
            secret: token.secret.clone(),
            software: upglobe_worker::SOFTWARE.into(),
        };
        frame::write(&mut send, &Greeting::Client(hello)).await?;
        let _ = send.finish();
        let welcome = tokio::time::timeout(Duration::from_secs(15), frame::read::<ClientWelcome, _>(&mut recv))
            .await
            .map_err(|_| anyhow!("the scheduler at {} did not answer", token.address))?;
        match welcome {
            Ok(Some(ClientWelcome::Welcome { .. })) => {}
            Ok(Some(ClientWelcome::Refused { reason })) => {
                bail!("refused by the scheduler at {}: {reason}", token.address)
            }
            _ => match connection.close_reason() {
                Some(quinn::ConnectionError::ApplicationClosed(close)) => {
                    bail!("refused by the scheduler at {}: {}", token.address, String::from_utf8_lossy(&close.reason))
                }
                _ => bail!("the scheduler at {} closed the connection", token.address),
            },
        }
        Ok(Client { connection, blobs, address: token.address.clone() })
    }

    pub async fn request(&self, request: ClientRequest) -> Result<ClientResponse> {
        let (mut send, mut recv) =
            self.connection.open_bi().await.with_context(|| format!("scheduler at {}", self.address))?;
        frame::write(&mut send, &StreamRequest::Client(request)).await?;
        let _ = send.finish();
        match frame::expect::<ClientResponse, _>(&mut recv)
            .await
            .with_context(|| format!("scheduler at {}", self.address))?
        {
            ClientResponse::Error { message } => Err(anyhow!("{message}")),
            response => Ok(response),
        }
    }

    pub async fn upload_bytes(&self, bytes: &[u8]) -> Result<BlobHash> {
        let hash = self.blobs.put(bytes)?;
        transfer::upload(&self.connection, &self.blobs, hash).await?;
        Ok(hash)
    }

    pub async fn upload_file(&self, path: &Path) -> Result<(BlobHash, u64)> {
        self.upload_path(path, &std::sync::atomic::AtomicU64::new(0)).await
    }

    /// Uploads a file straight from where it is (no copy in the local cache), hashing it first so
    /// that bytes the scheduler already holds are not sent again; `sent` counts bytes as they go.
    pub async fn upload_path(&self, path: &Path, sent: &std::sync::atomic::AtomicU64) -> Result<(BlobHash, u64)> {
        let owned = path.to_path_buf();
        let (hash, size) = tokio::task::spawn_blocking(move || upglobe_datasets::blobs::hash_file(&owned)).await??;
        transfer::upload_path(&self.connection, path, hash, sent).await?;
        Ok((hash, size))
    }

    pub async fn download(&self, hash: BlobHash) -> Result<Vec<u8>> {
        transfer::download(&self.connection, &self.blobs, hash).await?;
        Ok(self.blobs.get(&hash)?)
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Fetches a blob (or with `options.only`, part of it) into the local cache, in verified
    /// slices; returns where the whole blob is once it is.
    pub async fn fetch(&self, hash: BlobHash, options: &transfer::Options) -> Result<PathBuf> {
        let source =
            transfer::Source { name: format!("scheduler at {}", self.address), connection: self.connection.clone() };
        transfer::download_from(&[source], &self.blobs, hash, options).await?;
        Ok(self.blobs.path(&hash))
    }

    /// Waits until at least `count` workers are connected; returns the workers the scheduler knows.
    pub async fn wait_for_workers(
        &self,
        count: u32,
        timeout: Duration,
    ) -> Result<Vec<upglobe_protocol::messages::WorkerStatus>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let ClientResponse::Workers(workers) = self.request(ClientRequest::Workers).await?
                && workers.iter().filter(|w| w.connected).count() as u32 >= count
            {
                return Ok(workers);
            }
            if std::time::Instant::now() > deadline {
                bail!("{count} workers did not join within {} s", timeout.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn close(&self) {
        self.connection.close(0u32.into(), b"done");
    }
}

pub fn cache_dir(home: &Path) -> PathBuf {
    home.join("cache").join("blobs")
}
