//! Test-only cheating, for end-to-end tests of verification: with the `cheat` cargo feature, the
//! environment variable `UPGLOBE_CHEAT` makes this worker lie in one chosen way.
//!
//! - `wrong:N`: on MD chunks whose index is N-1 modulo N, the state is perturbed after the middle
//!   link (one velocity unit of the first atom) and the run goes on honestly from there: the chain is
//!   right up to that link and wrong after it, and every state it serves is one it really computed.
//! - `forge-link:N`: on those chunks the first link's hash is replaced by garbage; the states (and
//!   the final one) are honest.
//! - `refuse-serve`: never serves an intermediate state.
//! - `corrupt-peers`: serves other workers blobs with a byte flipped in every MiB (and the true
//!   hash pairs), as a peer whose disk rotted would.
//!
//! Without the feature, a worker started with `UPGLOBE_CHEAT` set refuses to start, so a test can
//! never pass with an honest binary by mistake.

use upglobe_kernels::system::State;

pub const VARIABLE: &str = "UPGLOBE_CHEAT";

/// What this worker does wrong on one chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Cheat {
    #[default]
    Honest,
    Wrong,
    ForgeLink,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Wrong(u32),
    ForgeLink(u32),
    RefuseServe,
    CorruptPeers,
}

fn parse(text: &str) -> Result<Mode, String> {
    let every = |n: Option<&str>| -> Result<u32, String> {
        let n = n.unwrap_or("1");
        n.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| format!("{VARIABLE}: '{n}' is not a count of chunks"))
    };
    let (mode, n) = match text.split_once(':') {
        Some((mode, n)) => (mode, Some(n)),
        None => (text, None),
    };
    match mode {
        "wrong" => Ok(Mode::Wrong(every(n)?)),
        "forge-link" => Ok(Mode::ForgeLink(every(n)?)),
        "refuse-serve" => Ok(Mode::RefuseServe),
        "corrupt-peers" => Ok(Mode::CorruptPeers),
        other => {
            Err(format!("{VARIABLE}: unknown mode '{other}' (wrong:N, forge-link:N, refuse-serve or corrupt-peers)"))
        }
    }
}

fn mode() -> Option<Mode> {
    if !cfg!(feature = "cheat") {
        return None;
    }
    std::env::var(VARIABLE).ok().and_then(|text| parse(&text).ok())
}

/// `UPGLOBE_FAKE_GPUS=COUNTxNAME:GiB` (e.g. `2xA100:80`): the worker describes that many fake
/// GPUs instead of asking NVML, so tests can place GPU jobs on machines without one.
pub const FAKE_GPUS: &str = "UPGLOBE_FAKE_GPUS";

/// The fake GPUs asked for, if any (only with the `cheat` feature).
pub fn fake_gpus() -> Option<Result<Vec<upglobe_protocol::messages::GpuDevice>, String>> {
    if !cfg!(feature = "cheat") {
        return None;
    }
    let text = std::env::var(FAKE_GPUS).ok()?;
    Some(parse_fake_gpus(&text))
}

fn parse_fake_gpus(text: &str) -> Result<Vec<upglobe_protocol::messages::GpuDevice>, String> {
    let bad = || format!("{FAKE_GPUS}: '{text}' is not COUNTxNAME:GiB (e.g. 2xA100:80)");
    let (count, rest) = text.split_once('x').ok_or_else(bad)?;
    let (name, gib) = rest.rsplit_once(':').ok_or_else(bad)?;
    let count: usize = count.parse().ok().filter(|c| (1..=16).contains(c)).ok_or_else(bad)?;
    let gib: u64 = gib.parse().ok().filter(|g| (1..=1024).contains(g)).ok_or_else(bad)?;
    Ok((0..count)
        .map(|k| upglobe_protocol::messages::GpuDevice {
            name: name.to_string(),
            uuid: format!("GPU-fake-{k}"),
            vram_total_bytes: gib << 30,
            vram_free_bytes: gib << 30,
            driver: "fake".into(),
            utilisation_percent: 0,
        })
        .collect())
}

/// Checked when the worker starts: a cheat asked of a build without the feature, or a mode that
/// does not parse, stops it.
pub fn check_environment() -> Result<(), String> {
    if let Ok(text) = std::env::var(FAKE_GPUS) {
        if !cfg!(feature = "cheat") {
            return Err(format!("{FAKE_GPUS} is set but this build has no cheat feature"));
        }
        parse_fake_gpus(&text)?;
    }
    let Ok(text) = std::env::var(VARIABLE) else { return Ok(()) };
    if !cfg!(feature = "cheat") {
        return Err(format!("{VARIABLE} is set but this build has no cheat feature"));
    }
    parse(&text).map(|_| ())
}

/// What to do wrong on the chunk with this index.
pub fn for_chunk(index: u32) -> Cheat {
    let selected = |n: u32| index % n == n - 1;
    match mode() {
        Some(Mode::Wrong(n)) if selected(n) => Cheat::Wrong,
        Some(Mode::ForgeLink(n)) if selected(n) => Cheat::ForgeLink,
        _ => Cheat::Honest,
    }
}

/// Whether this worker serves peers corrupt blobs.
pub fn corrupts_peers() -> bool {
    mode() == Some(Mode::CorruptPeers)
}

/// Serves peers from a store of rotten copies: each blob asked for is copied from `cache` with a
/// byte flipped in every MiB, beside the outboard of the true bytes.
pub async fn serve_corrupt(connection: quinn::Connection, cache: upglobe_datasets::BlobStore) {
    use upglobe_protocol::frame;
    use upglobe_protocol::messages::StreamRequest;
    let rotten_root = cache.root().join("rotten");
    let Ok(rotten) = upglobe_datasets::BlobStore::open(&rotten_root) else { return };
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let (cache, rotten, rotten_root) = (cache.clone(), rotten.clone(), rotten_root.clone());
        tokio::spawn(async move {
            if let Ok(StreamRequest::GetSlices { hash, ranges }) = frame::expect::<StreamRequest, _>(&mut recv).await {
                // One rotten copy, made whole before any request sees it (streams ask at once).
                static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
                let making = MAKING.lock().expect("rotten copies");
                if !rotten.contains(&hash) && cache.outboard(&hash).is_ok() {
                    tracing::warn!(blob = %hash.short(), "cheating: serving a peer rotten bytes");
                    let mut bytes = std::fs::read(cache.path(&hash)).unwrap_or_default();
                    for at in (100..bytes.len()).step_by(1 << 20) {
                        bytes[at] ^= 0x20;
                    }
                    let target = rotten.path(&hash);
                    let _ = std::fs::create_dir_all(target.parent().expect("a parent"));
                    let _ = std::fs::copy(cache.outboard_path(&hash), rotten.outboard_path(&hash));
                    let staged = rotten_root.join("tmp").join("staged");
                    let _ = std::fs::write(&staged, &bytes);
                    let _ = std::fs::rename(&staged, &target);
                }
                drop(making);
                let _ = upglobe_datasets::transfer::serve_slices(&mut send, &rotten, hash, &ranges).await;
            }
        });
    }
}

/// Whether this worker ignores requests to serve its intermediate states.
pub fn refuses_to_serve() -> bool {
    mode() == Some(Mode::RefuseServe)
}

impl Cheat {
    /// Called after each link with the state it reached.
    pub fn after_link(self, link: u64, links: u64, state: &mut State) {
        if self == Cheat::Wrong && link == links / 2 {
            tracing::warn!(link, "cheating: perturbing the state");
            state.velocities[0][0] = state.velocities[0][0].wrapping_add(1);
        }
    }

    /// Called with the finished chain.
    pub fn forge(self, chain: &mut [[u8; 32]]) {
        if self == Cheat::ForgeLink {
            tracing::warn!("cheating: forging the first link of the chain");
            chain[0] = [0xee; 32];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_gpus_parse() {
        let gpus = parse_fake_gpus("2xA100:80").unwrap();
        assert_eq!(gpus.len(), 2);
        assert_eq!((gpus[1].name.as_str(), gpus[1].vram_total_bytes), ("A100", 80 << 30));
        assert!(parse_fake_gpus("2xA100").is_err() && parse_fake_gpus("0xA100:80").is_err());
    }

    #[test]
    fn modes_parse() {
        assert_eq!(parse("wrong:2"), Ok(Mode::Wrong(2)));
        assert_eq!(parse("wrong"), Ok(Mode::Wrong(1)));
        assert_eq!(parse("forge-link:3"), Ok(Mode::ForgeLink(3)));
        assert_eq!(parse("refuse-serve"), Ok(Mode::RefuseServe));
        assert!(parse("wrong:0").is_err());
        assert!(parse("lie").unwrap_err().contains("unknown mode"));
    }
}
