// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {Guard} from "./Guard.sol";

/// What the registry needs to know about a job to settle evidence against it.
interface IJobParties {
    function jobParties(uint256 jobId) external view returns (address requester, address reporter, uint32 chunksMax);
}

/// Hubs (labs) register here with an ETH stake, attach their workers, and collect what the job
/// escrow pays them. Every hub fund lives here (stake, earnings, held-back money) so that the DAO's
/// lock covers all of them at once. All payments are pulled: nobody is ever sent money inside
/// someone else's transaction. See contracts/README.md for the state machine.
contract Registry is Guard {
    enum State {
        None, // never registered
        Active, // registered; funds move under the usual rules (and the 30 % holdback when set)
        Suspected, // the DAO suspects the hub: every fund is locked until lockedUntil
        Punished // the DAO slashed the hub; it is never paid again, the rest unlocks at lockedUntil
    }

    struct Hub {
        // slot 0: everything a credit reads, so paying a hub costs one storage read
        State state;
        bool whitelisted; // set by the DAO; only whitelisted hubs are paid for chunks
        bool holdback; // the hub waited out a lock: 30 % of each later withdrawal stays locked
        uint16 tokenAccounts; // ERC-20 accounts with funds, so releaseEarly can charge each one
        uint32 evidencePending; // open evidence against the hub; the stake cannot leave meanwhile
        uint128 stake; // ETH; a hub staked below stakeMin is not paid
        // slot 1
        uint64 lockedUntil; // end of the current or last DAO lock
        uint64 unstakeAt; // when the stake may be withdrawn; 0 = no withdrawal requested
    }

    /// Earnings of a hub in one asset (address(0) = ETH).
    struct Account {
        uint128 balance; // withdrawable when the hub is not locked
        uint128 heldBack; // the 30 % holdback; only the DAO's clear gives it back
    }

    enum EvidenceStatus {
        None,
        Open,
        Dismissed,
        Executed
    }

    struct Evidence {
        address hub;
        uint64 disputeEndsAt;
        EvidenceStatus status;
        bool byDao; // the DAO submitted it
        bool reporterApproved; // the job's reporter was approved by the DAO when it was submitted
        address requester;
        address reporter;
    }

    uint64 public constant LOCK_DURATION = 120 days;
    /// The stake stays slashable this long after the hub asks for it back; longer than the dispute
    /// window, so evidence opened on the last day can still be executed.
    uint64 public constant UNSTAKE_DELAY = 14 days;
    uint64 public constant DISPUTE_WINDOW = 7 days;
    uint256 public constant BPS = 10_000;
    uint256 public constant EARLY_RELEASE_FEE_BPS = 50; // 0.5 % of locked funds, paid to the DAO
    uint256 public constant HOLDBACK_BPS = 3_000; // 30 % of each withdrawal after a lock ran out
    uint256 public constant SLASH_BPS = 1_000; // one piece of evidence takes 10 % of the stake
    uint256 public constant SLASH_REPORTER_BPS = 2_000; // of the slash: 20 % reporter, 80 % requester
    uint256 public constant HUBS_PER_CREDIT_MAX = 256;
    uint16 public constant TOKEN_ACCOUNTS_MAX = 16;

    uint256 public immutable stakeMin;
    address public dao;
    address public escrow; // set once by the DAO; the only caller of credit

    mapping(address hub => Hub) public hubs;
    mapping(address hub => mapping(address token => Account)) public accounts;
    /// The hub of each worker, by protocol::WorkerId (BLAKE3 of the worker's Ed25519 public key).
    mapping(bytes32 workerId => address hub) public workerHub;
    /// Money owed to anyone who is not paid as a hub: the DAO (fees, punishments), requesters and
    /// reporters (slashes).
    mapping(address owner => mapping(address token => uint256)) public claimable;
    mapping(bytes32 evidenceId => Evidence) public evidence;
    /// Reporters (schedulers) the DAO vouches for: anyone may execute their evidence after the
    /// dispute window. Anyone can open a job naming any reporter, so evidence from any other
    /// reporter is executed by the DAO alone.
    mapping(address reporter => bool) public reporterApproved;

    error Unauthorized(address caller);
    error EscrowAlreadySet();
    error StakeTooSmall(uint256 sent, uint256 required);
    error WrongHubState(address hub, State state);
    error HubLocked(address hub, uint64 lockedUntil);
    error HubNotPayable(address hub);
    error WorkerTaken(bytes32 workerId, address hub);
    error NotYourWorker(bytes32 workerId);
    error UnstakeNotReady(uint64 unstakeAt);
    error EvidencePending(address hub, uint32 count);
    error InsufficientFunds(uint256 requested, uint256 available);
    error BadCredit();
    error TokenListIncomplete(uint16 listed, uint16 held);
    error TooManyTokenAccounts(address hub);
    error EvidenceExists(bytes32 evidenceId);
    error EvidenceNotOpen(bytes32 evidenceId);
    error DisputeWindowOpen(uint64 endsAt);
    error DisputeWindowClosed(uint64 endsAt);
    error EvidenceChunkOutOfRange(uint256 chunkIndex, uint32 chunksMax);
    error ReporterNotApproved(bytes32 evidenceId, address reporter);

    event HubRegistered(address indexed hub, uint256 stake);
    event HubWhitelisted(address indexed hub, bool whitelisted);
    event ReporterApproved(address indexed reporter, bool approved);
    event WorkerAttached(address indexed hub, bytes32 indexed workerId, bool attached);
    event HubSuspected(address indexed hub, uint64 lockedUntil);
    event HubCleared(address indexed hub);
    event HubPunished(address indexed hub, uint256 amount);
    event HubReleasedEarly(address indexed hub);
    event HoldbackStarted(address indexed hub);
    event Credited(address indexed hub, address indexed token, uint256 amount);
    event Withdrawn(address indexed to, address indexed token, uint256 paid, uint256 heldBack);
    event EvidenceSubmitted(
        bytes32 indexed evidenceId,
        address indexed hub,
        uint256 indexed jobId,
        uint256 chunkIndex,
        bytes32 workerId,
        bytes32 evidenceHash,
        uint64 disputeEndsAt
    );
    event EvidenceDismissed(bytes32 indexed evidenceId);
    event Slashed(bytes32 indexed evidenceId, address indexed hub, uint256 toRequester, uint256 toReporter);

    modifier onlyDao() {
        if (msg.sender != dao) revert Unauthorized(msg.sender);
        _;
    }

    constructor(address dao_, uint256 stakeMin_) {
        dao = dao_;
        stakeMin = stakeMin_;
    }

    // ---- DAO --------------------------------------------------------------------------------

    function setDao(address dao_) external onlyDao {
        dao = dao_;
    }

    /// Links the job escrow. Once only: a DAO able to swap the escrow could credit anyone.
    function setEscrow(address escrow_) external onlyDao {
        if (escrow != address(0)) revert EscrowAlreadySet();
        escrow = escrow_;
    }

    function setWhitelisted(address hub, bool whitelisted) external onlyDao {
        Hub storage h = _settled(hub);
        if (h.state != State.Active) revert WrongHubState(hub, h.state);
        h.whitelisted = whitelisted;
        emit HubWhitelisted(hub, whitelisted);
    }

    /// Vouches for a reporter's evidence (or stops vouching). Withdrawing approval also stops
    /// anyone but the DAO from executing the reporter's evidence that is still open.
    function setReporterApproved(address reporter, bool approved) external onlyDao {
        reporterApproved[reporter] = approved;
        emit ReporterApproved(reporter, approved);
    }

    /// Blocks every fund of the hub for LOCK_DURATION. A suspected hub is still credited for
    /// chunks it already computed (that money is locked too), so requesters' work is not lost.
    function suspect(address hub) external onlyDao {
        Hub storage h = _settled(hub);
        if (h.state != State.Active) revert WrongHubState(hub, h.state);
        h.state = State.Suspected;
        h.lockedUntil = uint64(block.timestamp) + LOCK_DURATION;
        emit HubSuspected(hub, h.lockedUntil);
    }

    /// Ends a suspicion or a punishment with no penalty, and gives back anything held back.
    function clear(address hub, address[] calldata tokens) external onlyDao {
        Hub storage h = hubs[hub];
        if (h.state != State.Suspected && h.state != State.Punished) revert WrongHubState(hub, h.state);
        h.state = State.Active;
        h.holdback = false;
        h.lockedUntil = uint64(block.timestamp);
        _unhold(hub, address(0));
        for (uint256 i = 0; i < tokens.length; i++) {
            _unhold(hub, tokens[i]);
        }
        emit HubCleared(hub);
    }

    /// Takes up to `amountWei` of the hub's ETH funds for the DAO. The rest stays locked until
    /// lockedUntil; a punished hub is not whitelisted or credited until the DAO clears it.
    function punish(address hub, uint256 amountWei) external onlyDao {
        Hub storage h = hubs[hub];
        bool locked = block.timestamp < h.lockedUntil;
        if (!locked || (h.state != State.Suspected && h.state != State.Punished)) revert WrongHubState(hub, h.state);
        h.state = State.Punished;
        h.whitelisted = false;
        uint256 taken = _take(hub, address(0), amountWei);
        claimable[dao][address(0)] += taken;
        emit HubPunished(hub, taken);
    }

    // ---- Hub --------------------------------------------------------------------------------

    function register() external payable {
        Hub storage h = hubs[msg.sender];
        if (h.state != State.None) revert WrongHubState(msg.sender, h.state);
        if (msg.value < stakeMin) revert StakeTooSmall(msg.value, stakeMin);
        h.state = State.Active;
        h.stake = uint128(msg.value);
        emit HubRegistered(msg.sender, msg.value);
    }

    function addStake() external payable {
        Hub storage h = _activeHub(msg.sender);
        h.stake += uint128(msg.value);
    }

    function attachWorker(bytes32 workerId) external {
        _activeHub(msg.sender);
        address owner = workerHub[workerId];
        if (owner != address(0)) revert WorkerTaken(workerId, owner);
        workerHub[workerId] = msg.sender;
        emit WorkerAttached(msg.sender, workerId, true);
    }

    /// A detached worker's past results still count as evidence: the evidence names the hub at
    /// the time it is submitted, so detach only after the dispute window of its last job.
    function detachWorker(bytes32 workerId) external {
        _activeHub(msg.sender);
        if (workerHub[workerId] != msg.sender) revert NotYourWorker(workerId);
        delete workerHub[workerId];
        emit WorkerAttached(msg.sender, workerId, false);
    }

    /// Starts the unstaking delay. The hub stays registered and paid meanwhile.
    function requestUnstake() external {
        Hub storage h = _unlockedHub(msg.sender);
        h.unstakeAt = uint64(block.timestamp) + UNSTAKE_DELAY;
    }

    function withdrawStake(uint256 amountWei) external nonReentrant {
        Hub storage h = _unlockedHub(msg.sender);
        if (h.unstakeAt == 0 || block.timestamp < h.unstakeAt) revert UnstakeNotReady(h.unstakeAt);
        if (h.evidencePending != 0) revert EvidencePending(msg.sender, h.evidencePending);
        if (amountWei > h.stake) revert InsufficientFunds(amountWei, h.stake);
        h.stake -= uint128(amountWei);
        h.unstakeAt = 0;
        _payOut(h, msg.sender, address(0), amountWei);
    }

    function withdraw(address token, uint256 amount) external nonReentrant {
        Hub storage h = _unlockedHub(msg.sender);
        Account storage a = accounts[msg.sender][token];
        if (amount > a.balance) revert InsufficientFunds(amount, a.balance);
        a.balance -= uint128(amount);
        // Only a withdrawal that empties the account stops counting it (amount != 0: it had funds).
        if (token != address(0) && amount != 0 && a.balance == 0 && a.heldBack == 0) h.tokenAccounts--;
        _payOut(h, msg.sender, token, amount);
    }

    /// Ends a lock early for 0.5 % of every locked asset, paid to the DAO out of those funds.
    /// `tokens` must list, in ascending order, every ERC-20 the hub holds, so none escapes the fee.
    function releaseEarly(address[] calldata tokens) external {
        Hub storage h = _settled(msg.sender);
        if (h.state != State.Suspected) revert WrongHubState(msg.sender, h.state);
        if (tokens.length != h.tokenAccounts) revert TokenListIncomplete(uint16(tokens.length), h.tokenAccounts);
        _chargeFee(msg.sender, address(0));
        address previous = address(0);
        for (uint256 i = 0; i < tokens.length; i++) {
            // Strictly ascending and non-zero: no token is listed twice and ETH is not counted again.
            if (tokens[i] <= previous) revert TokenListIncomplete(uint16(tokens.length), h.tokenAccounts);
            Account storage a = accounts[msg.sender][tokens[i]];
            if (a.balance == 0 && a.heldBack == 0) revert TokenListIncomplete(uint16(tokens.length), h.tokenAccounts);
            _chargeFee(msg.sender, tokens[i]);
            previous = tokens[i];
        }
        h.state = State.Active;
        h.lockedUntil = uint64(block.timestamp);
        emit HubReleasedEarly(msg.sender);
    }

    /// Money owed to the DAO, a requester or a reporter.
    function claim(address token) external nonReentrant {
        uint256 amount = claimable[msg.sender][token];
        claimable[msg.sender][token] = 0;
        _send(token, msg.sender, amount);
        emit Withdrawn(msg.sender, token, amount, 0);
    }

    // ---- Escrow -----------------------------------------------------------------------------

    /// Credits hubs for verified chunks. The escrow has already sent the total: as msg.value for
    /// ETH, or as one token transfer just before this call. One storage write per hub, none per chunk.
    function credit(address token, address[] calldata hubList, uint256[] calldata amounts) external payable {
        if (msg.sender != escrow) revert Unauthorized(msg.sender);
        if (hubList.length != amounts.length || hubList.length > HUBS_PER_CREDIT_MAX) revert BadCredit();
        uint256 total = 0;
        for (uint256 i = 0; i < hubList.length; i++) {
            _creditOne(hubList[i], token, amounts[i]);
            total += amounts[i];
        }
        if (msg.value != (token == address(0) ? total : 0)) revert BadCredit();
    }

    // ---- Evidence ---------------------------------------------------------------------------

    /// Records that a worker signed a result for (jobId, chunkIndex) that contradicts the verified
    /// one. The Ed25519 signature over the BLAKE3 statement is not checked here (the EVM has no
    /// cheap Ed25519): `signedStatement` is only logged, and during DISPUTE_WINDOW anyone can check
    /// it off chain and ask the DAO to dismiss false evidence. Only the DAO or the job's reporter
    /// may submit, one piece per (job, chunk, worker), for a chunk the job has. Whoever opens a job
    /// names its reporter, so the evidence records whether the DAO submitted it or had approved the
    /// reporter: only then may anyone but the DAO execute it.
    function submitEvidence(
        uint256 jobId,
        uint256 chunkIndex,
        bytes32 workerId,
        bytes32 evidenceHash,
        bytes calldata signedStatement
    ) external returns (bytes32 evidenceId) {
        (address requester, address reporter, uint32 chunksMax) = IJobParties(escrow).jobParties(jobId);
        bool byDao = msg.sender == dao;
        if (!byDao && msg.sender != reporter) revert Unauthorized(msg.sender);
        if (chunkIndex >= chunksMax) revert EvidenceChunkOutOfRange(chunkIndex, chunksMax);
        address hub = workerHub[workerId];
        if (hub == address(0)) revert NotYourWorker(workerId);
        evidenceId = keccak256(abi.encode(jobId, chunkIndex, workerId));
        if (evidence[evidenceId].status != EvidenceStatus.None) revert EvidenceExists(evidenceId);
        uint64 endsAt = uint64(block.timestamp) + DISPUTE_WINDOW;
        evidence[evidenceId] =
            Evidence(hub, endsAt, EvidenceStatus.Open, byDao, reporterApproved[reporter], requester, reporter);
        hubs[hub].evidencePending++;
        emit EvidenceSubmitted(evidenceId, hub, jobId, chunkIndex, workerId, evidenceHash, endsAt);
        signedStatement; // logged through calldata only; see the comment above
    }

    /// During the dispute window the DAO may dismiss any evidence; after it, only evidence that
    /// no one but the DAO may execute (it would otherwise keep the hub's stake in for good).
    function dismissEvidence(bytes32 evidenceId) external onlyDao {
        Evidence storage e = _openEvidence(evidenceId);
        if (block.timestamp >= e.disputeEndsAt && _trusted(e)) revert DisputeWindowClosed(e.disputeEndsAt);
        e.status = EvidenceStatus.Dismissed;
        hubs[e.hub].evidencePending--;
        emit EvidenceDismissed(evidenceId);
    }

    /// After the dispute window. Anyone may execute evidence the DAO submitted, or that an approved
    /// reporter submitted and is still approved, against a hub that is not locked. Everything else
    /// is the DAO's: evidence from a reporter anyone could have named, and any slash of a hub under
    /// a lock (Suspected or Punished), since during a lock only the DAO acts on the hub's funds.
    function executeSlash(bytes32 evidenceId) external {
        Evidence storage e = _openEvidence(evidenceId);
        if (block.timestamp < e.disputeEndsAt) revert DisputeWindowOpen(e.disputeEndsAt);
        Hub storage h = _settled(e.hub);
        if (msg.sender != dao) {
            if (!_trusted(e)) revert ReporterNotApproved(evidenceId, e.reporter);
            if (block.timestamp < h.lockedUntil) revert HubLocked(e.hub, h.lockedUntil);
        }
        e.status = EvidenceStatus.Executed;
        h.evidencePending--;
        uint256 slash = (uint256(h.stake) * SLASH_BPS) / BPS;
        h.stake -= uint128(slash);
        uint256 toReporter = (slash * SLASH_REPORTER_BPS) / BPS;
        claimable[e.reporter][address(0)] += toReporter;
        claimable[e.requester][address(0)] += slash - toReporter;
        emit Slashed(evidenceId, e.hub, slash - toReporter, toReporter);
    }

    // ---- Views ------------------------------------------------------------------------------

    /// Everything of one asset the hub has here: what a lock blocks and the early-release fee
    /// is computed on.
    function lockedFunds(address hub, address token) public view returns (uint256) {
        Account storage a = accounts[hub][token];
        uint256 funds = uint256(a.balance) + a.heldBack;
        if (token == address(0)) funds += hubs[hub].stake;
        return funds;
    }

    function earlyReleaseFee(address hub, address token) external view returns (uint256) {
        return (lockedFunds(hub, token) * EARLY_RELEASE_FEE_BPS) / BPS;
    }

    // ---- Internals --------------------------------------------------------------------------

    /// Applies a lock that ran out: a Suspected hub that waited the full LOCK_DURATION becomes
    /// Active with the holdback on; a Punished hub keeps its state and gets the holdback too.
    /// Done lazily, on the hub's next operation, so no one has to send a transaction at expiry.
    function _settled(address hub) internal returns (Hub storage h) {
        h = hubs[hub];
        if (h.state == State.None) revert WrongHubState(hub, State.None);
        bool expired = h.state != State.Active && block.timestamp >= h.lockedUntil;
        if (expired && !h.holdback) {
            h.holdback = true;
            emit HoldbackStarted(hub);
        }
        if (expired && h.state == State.Suspected) h.state = State.Active;
    }

    function _activeHub(address hub) internal returns (Hub storage h) {
        h = _settled(hub);
        if (h.state == State.Suspected) revert HubLocked(hub, h.lockedUntil);
        if (h.state != State.Active) revert WrongHubState(hub, h.state);
    }

    /// Active, or Punished with its lock over: the states in which a hub may take money out.
    /// Checking the time rather than the state covers both Suspected and Punished locks.
    function _unlockedHub(address hub) internal returns (Hub storage h) {
        h = _settled(hub);
        if (block.timestamp < h.lockedUntil) revert HubLocked(hub, h.lockedUntil);
    }

    /// A hub is paid only while whitelisted, not punished, and staked at least stakeMin: one that
    /// took its stake out would otherwise be paid with nothing left to slash.
    function _creditOne(address hub, address token, uint256 amount) internal {
        Hub storage h = hubs[hub];
        bool standing = h.state == State.Active || h.state == State.Suspected;
        bool payable_ = h.whitelisted && standing && h.stake >= stakeMin;
        if (!payable_) revert HubNotPayable(hub);
        Account storage a = accounts[hub][token];
        // A zero credit leaves the account empty, so it must not be counted: releaseEarly could never list it.
        if (token != address(0) && amount != 0 && a.balance == 0 && a.heldBack == 0) {
            if (h.tokenAccounts == TOKEN_ACCOUNTS_MAX) revert TooManyTokenAccounts(hub);
            h.tokenAccounts++;
        }
        a.balance += uint128(amount);
        emit Credited(hub, token, amount);
    }

    /// Sends a withdrawal to the hub, keeping HOLDBACK_BPS of it when the holdback is on.
    /// The kept part is rounded up so that splitting a withdrawal cannot shrink it.
    function _payOut(Hub storage h, address hub, address token, uint256 amount) internal {
        uint256 kept = 0;
        if (h.holdback) {
            kept = amount - (amount * (BPS - HOLDBACK_BPS)) / BPS;
            Account storage a = accounts[hub][token];
            if (token != address(0) && a.balance == 0 && a.heldBack == 0 && kept != 0) h.tokenAccounts++;
            a.heldBack += uint128(kept);
        }
        _send(token, hub, amount - kept);
        emit Withdrawn(hub, token, amount - kept, kept);
    }

    function _chargeFee(address hub, address token) internal {
        uint256 fee = (lockedFunds(hub, token) * EARLY_RELEASE_FEE_BPS) / BPS;
        claimable[dao][token] += _take(hub, token, fee);
    }

    /// Takes up to `amount` of one asset from the hub: its balance first, then (ETH) its stake,
    /// then what is held back. Returns what was taken.
    function _take(address hub, address token, uint256 amount) internal returns (uint256 taken) {
        Account storage a = accounts[hub][token];
        Hub storage h = hubs[hub];
        uint256 part = _min(amount, a.balance);
        a.balance -= uint128(part);
        taken = part;
        if (token == address(0)) {
            part = _min(amount - taken, h.stake);
            h.stake -= uint128(part);
            taken += part;
        }
        part = _min(amount - taken, a.heldBack);
        a.heldBack -= uint128(part);
        taken += part;
        if (token != address(0) && taken != 0 && a.balance == 0 && a.heldBack == 0) h.tokenAccounts--;
    }

    function _unhold(address hub, address token) internal {
        Account storage a = accounts[hub][token];
        a.balance += a.heldBack;
        a.heldBack = 0;
    }

    function _openEvidence(bytes32 evidenceId) internal view returns (Evidence storage e) {
        e = evidence[evidenceId];
        if (e.status != EvidenceStatus.Open) revert EvidenceNotOpen(evidenceId);
    }

    /// Whether anyone may execute the evidence: the DAO submitted it, or its reporter was approved
    /// when it was submitted and still is.
    function _trusted(Evidence storage e) internal view returns (bool) {
        return e.byDao || (e.reporterApproved && reporterApproved[e.reporter]);
    }

    function _min(uint256 a, uint256 b) internal pure returns (uint256) {
        return a < b ? a : b;
    }
}
