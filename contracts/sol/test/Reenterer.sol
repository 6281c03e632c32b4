// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// Test only: an account (hub or requester) whose receive() calls back into a contract while the
/// contract is still sending it money. Tests read `reentryError` to see the guard's revert reason,
/// and `received` to see that the money arrived exactly once.
contract Reenterer {
    address public target;
    bytes public reentry;
    bool public reentered;
    bool public reentryOk;
    bytes public reentryError;
    uint256 public received;

    /// The call to make, once, from inside the next receive().
    function setReentry(address target_, bytes calldata data) external {
        target = target_;
        reentry = data;
        reentered = false;
    }

    /// Acts as this contract: registers as a hub, creates a job, withdraws. Bubbles up reverts so
    /// the test sees the callee's reason.
    function act(address to, uint256 value, bytes calldata data) external payable returns (bytes memory) {
        (bool ok, bytes memory ret) = to.call{value: value}(data);
        if (!ok) {
            assembly {
                revert(add(ret, 32), mload(ret))
            }
        }
        return ret;
    }

    receive() external payable {
        received += msg.value;
        if (reentered || target == address(0)) return;
        reentered = true;
        (bool ok, bytes memory ret) = target.call(reentry);
        reentryOk = ok;
        reentryError = ret;
    }
}
