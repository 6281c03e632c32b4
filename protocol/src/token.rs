//! Join tokens: `upglobe://HOST:PORT/ROLE?ca=FINGERPRINT&secret=SECRET`.
//!
//! The fingerprint pins the scheduler's certificate authority (BLAKE3 of its DER certificate); the
//! secret admits the bearer in a role (a worker, or a client that submits and inspects work).

use std::fmt;
use std::str::FromStr;

use crate::ProtocolError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Worker,
    Client,
    /// A node that runs audits and dispute intervals (`upglobe verify`).
    Verifier,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Client => "client",
            Role::Verifier => "verifier",
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// `host:port` of the scheduler.
    pub address: String,
    pub role: Role,
    pub ca_fingerprint: [u8; 32],
    /// 64 hex digits.
    pub secret: String,
}

const SCHEME: &str = "upglobe://";

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/{}?ca={}&secret={}",
            self.address,
            self.role.as_str(),
            hex::encode(self.ca_fingerprint),
            self.secret
        )
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret by accident.
        write!(
            f,
            "Token({SCHEME}{}/{}, ca={})",
            self.address,
            self.role.as_str(),
            hex::encode(&self.ca_fingerprint[..6])
        )
    }
}

impl FromStr for Token {
    type Err = ProtocolError;

    fn from_str(text: &str) -> Result<Token, ProtocolError> {
        let bad = |m: &str| ProtocolError::Token(m.to_string());
        let text = text.trim();
        let rest = text.strip_prefix(SCHEME).ok_or_else(|| bad("it must start with upglobe://"))?;
        let (address, rest) = rest.split_once('/').ok_or_else(|| bad("missing '/ROLE' after the address"))?;
        if address.is_empty() || !address.contains(':') {
            return Err(bad("the address must be HOST:PORT"));
        }
        let (role, query) = rest.split_once('?').ok_or_else(|| bad("missing '?ca=...&secret=...'"))?;
        let role = match role {
            "worker" => Role::Worker,
            "client" => Role::Client,
            "verifier" => Role::Verifier,
            other => {
                return Err(ProtocolError::Token(format!("unknown role '{other}' (worker, verifier or client)")));
            }
        };
        let mut ca = None;
        let mut secret = None;
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("ca", value)) => ca = Some(value),
                Some(("secret", value)) => secret = Some(value),
                _ => return Err(ProtocolError::Token(format!("unexpected '{pair}'"))),
            }
        }
        let mut ca_fingerprint = [0u8; 32];
        hex::decode_to_slice(ca.ok_or_else(|| bad("missing ca="))?, &mut ca_fingerprint)
            .map_err(|_| bad("ca= must be 64 hex digits"))?;
        let secret = secret.ok_or_else(|| bad("missing secret="))?;
        if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("secret= must be 64 hex digits"));
        }
        Ok(Token { address: address.to_string(), role, ca_fingerprint, secret: secret.to_ascii_lowercase() })
    }
}

/// Compares secrets in time that does not depend on where they differ.
pub fn secrets_match(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a worker shows a peer to be served: a keyed hash of the cluster's worker secret over both
/// ends' ids. Only holders of the worker token can make it, and a peer that receives it cannot
/// replay it to a third worker.
pub fn peer_proof(worker_secret: &str, client: &crate::WorkerId, server: &crate::WorkerId) -> [u8; 32] {
    let key = blake3::derive_key("upglobe 2026-12 peer proof", worker_secret.as_bytes());
    let mut hasher = blake3::Hasher::new_keyed(&key);
    hasher.update(&client.0);
    hasher.update(&server.0);
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_proofs_bind_the_secret_and_both_ends() {
        let (a, b) = (crate::WorkerId([1; 32]), crate::WorkerId([2; 32]));
        let proof = peer_proof("secret", &a, &b);
        assert_eq!(proof, peer_proof("secret", &a, &b));
        assert_ne!(proof, peer_proof("other", &a, &b));
        assert_ne!(proof, peer_proof("secret", &b, &a));
        assert_ne!(proof, peer_proof("secret", &a, &crate::WorkerId([3; 32])));
    }

    #[test]
    fn round_trips() {
        let token = Token {
            address: "[::1]:7400".into(),
            role: Role::Worker,
            ca_fingerprint: [0xab; 32],
            secret: "0f".repeat(32),
        };
        let text = token.to_string();
        assert!(text.starts_with("upglobe://[::1]:7400/worker?ca=abab"));
        assert_eq!(text.parse::<Token>().unwrap(), token);
        assert!(!format!("{token:?}").contains(&token.secret));
    }

    #[test]
    fn explains_bad_tokens() {
        let error = |t: &str| t.parse::<Token>().unwrap_err().to_string();
        assert_eq!(error("http://x:1/worker?ca=00&secret=00"), "invalid token: it must start with upglobe://");
        assert_eq!(
            error("upglobe://x:1/boss?ca=00&secret=00"),
            "invalid token: unknown role 'boss' (worker, verifier or client)"
        );
        assert_eq!(error("upglobe://x:1/worker?ca=00&secret=00"), "invalid token: ca= must be 64 hex digits");
        let ca = "a".repeat(64);
        assert_eq!(
            error(&format!("upglobe://x:1/worker?ca={ca}&secret=12")),
            "invalid token: secret= must be 64 hex digits"
        );
    }

    #[test]
    fn secret_comparison() {
        assert!(secrets_match("abc", "abc"));
        assert!(!secrets_match("abc", "abd"));
        assert!(!secrets_match("abc", "abcd"));
    }
}
