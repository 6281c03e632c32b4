//! Bindings generated from the committed artifacts (`contracts/artifacts/*.json`, written by
//! `build.js`): ABI and bytecode, so `deploy` needs nothing else.

#![allow(missing_docs, clippy::too_many_arguments)]

use alloy::sol;

sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    Registry,
    "artifacts/Registry.json"
);

sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    JobEscrow,
    "artifacts/JobEscrow.json"
);

/// Test-only contracts (`sol/test/`): an ERC-20 and a receiver that calls back in.
pub mod test {
    use alloy::sol;

    sol!(
        #[sol(rpc)]
        #[derive(Debug)]
        TestToken,
        "artifacts/test/TestToken.json"
    );

    sol!(
        #[sol(rpc)]
        #[derive(Debug)]
        Reenterer,
        "artifacts/test/Reenterer.json"
    );
}
