//! Test-only cheating, for end-to-end tests of verification: with the `cheat` cargo feature, the
//! environment variable `UPGLOBE_CHEAT` makes this worker lie in one chosen way.
//!
//! - `wrong:N`: on MD chunks whose index is N-1 modulo N, the state is perturbed after the middle
//!   link (one velocity unit of the first atom) and the run goes on honestly from there: the chain is
//!   right up to that link and wrong after it, and every state it serves is one it really computed.
//! - `forge-link:N`: on those chunks the first link's hash is replaced by garbage; the states (and
//!   the final one) are honest.
//! - `refuse-serve`: never serves an intermediate state.
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
        other => Err(format!("{VARIABLE}: unknown mode '{other}' (wrong:N, forge-link:N or refuse-serve)")),
    }
}

fn mode() -> Option<Mode> {
    if !cfg!(feature = "cheat") {
        return None;
    }
    std::env::var(VARIABLE).ok().and_then(|text| parse(&text).ok())
}

/// Checked when the worker starts: a cheat asked of a build without the feature, or a mode that
/// does not parse, stops it.
pub fn check_environment() -> Result<(), String> {
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
    fn modes_parse() {
        assert_eq!(parse("wrong:2"), Ok(Mode::Wrong(2)));
        assert_eq!(parse("wrong"), Ok(Mode::Wrong(1)));
        assert_eq!(parse("forge-link:3"), Ok(Mode::ForgeLink(3)));
        assert_eq!(parse("refuse-serve"), Ok(Mode::RefuseServe));
        assert!(parse("wrong:0").is_err());
        assert!(parse("lie").unwrap_err().contains("unknown mode"));
    }
}
