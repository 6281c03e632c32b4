//! A local anvil (Foundry's development node) for the demo and the tests.
//!
//! Found in this order: `$UPGLOBE_ANVIL`; `anvil` on `PATH`; the binary `npm ci` puts in
//! `contracts/node_modules` (the platform package of `@foundry-rs/anvil`, pinned in
//! `contracts/package.json`).

use std::path::PathBuf;

use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::signers::local::PrivateKeySigner;

use crate::error::{ChainError, Result};

/// Where an anvil binary is, or why there is none.
pub fn find() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("UPGLOBE_ANVIL") {
        return Ok(PathBuf::from(path));
    }
    if let Some(paths) = std::env::var_os("PATH")
        && let Some(found) = std::env::split_paths(&paths).map(|dir| dir.join("anvil")).find(|p| p.is_file())
    {
        return Ok(found);
    }
    let modules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node_modules/@foundry-rs");
    if let Ok(entries) = std::fs::read_dir(&modules) {
        for entry in entries.flatten() {
            let binary = entry.path().join("bin/anvil");
            if entry.file_name().to_string_lossy().starts_with("anvil-") && binary.is_file() {
                return Ok(binary);
            }
        }
    }
    Err(ChainError::Invalid(format!(
        "no anvil found: set UPGLOBE_ANVIL, put anvil on PATH, or run `npm ci` in {}",
        env!("CARGO_MANIFEST_DIR")
    )))
}

/// A running anvil; it stops when this is dropped.
pub struct LocalChain {
    instance: AnvilInstance,
}

impl LocalChain {
    /// Starts anvil on a free port with its ten funded development accounts.
    pub fn start() -> Result<LocalChain> {
        let binary = find()?;
        let instance = Anvil::at(&binary)
            .try_spawn()
            .map_err(|e| ChainError::Invalid(format!("cannot start {}: {e}", binary.display())))?;
        Ok(LocalChain { instance })
    }

    pub fn endpoint(&self) -> String {
        self.instance.endpoint()
    }

    /// Development account `index` (0..10), funded with 10 000 ETH.
    pub fn key(&self, index: usize) -> PrivateKeySigner {
        PrivateKeySigner::from_signing_key(self.instance.keys()[index].clone().into())
    }

    pub fn pid(&self) -> u32 {
        self.instance.child().id()
    }
}
