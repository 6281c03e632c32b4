// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// Shared pieces of the UpGlobe contracts: a reentrancy guard and token transfers that accept
/// ERC-20 tokens which return nothing (such as USDT) as well as those that return a bool.
abstract contract Guard {
    /// A second entry into a guarded function while the first is still running.
    error Reentrancy();
    /// An ETH or token transfer failed; `to` is the recipient.
    error TransferFailed(address token, address to, uint256 amount);

    // Transient storage (EIP-1153) costs 100 gas a write instead of 2 900-20 000 for a storage slot,
    // and it is cleared at the end of every transaction, so a reverted call cannot leave it set.
    bool private transient entered;

    modifier nonReentrant() {
        if (entered) revert Reentrancy();
        entered = true;
        _;
        entered = false;
    }

    /// Sends `amount` of `token` (address(0) means ETH) to `to`.
    function _send(address token, address to, uint256 amount) internal {
        if (amount == 0) return;
        bool ok;
        if (token == address(0)) {
            (ok,) = to.call{value: amount}("");
        } else {
            ok = _tokenCall(token, abi.encodeWithSelector(0xa9059cbb, to, amount)); // transfer
        }
        if (!ok) revert TransferFailed(token, to, amount);
    }

    /// Calls a token and accepts either no return data or a true bool; a call to an address
    /// without code would "succeed" with no data, so that is refused.
    function _tokenCall(address token, bytes memory data) internal returns (bool) {
        if (token.code.length == 0) return false;
        (bool ok, bytes memory ret) = token.call(data);
        return ok && (ret.length == 0 || abi.decode(ret, (bool)));
    }
}
