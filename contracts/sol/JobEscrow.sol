// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {Guard} from "./Guard.sol";

interface IRegistry {
    function credit(address token, address[] calldata hubs, uint256[] calldata amounts) external payable;
}

/// Holds a requester's deposit for one job and pays hubs for verified chunks, each chunk at most
/// once (one bit per chunk), in batches sent by the job's reporter (its scheduler). Payouts go to
/// the Registry in one transfer per batch, where hubs pull them; the unspent deposit goes back to
/// the requester after the reporter completes the job or after the deadline.
///
/// Invariant, per asset: this contract's balance = sum over jobs of (deposit - paid - refunded).
contract JobEscrow is Guard {
    enum Status {
        None,
        Open, // deposit held; the reporter pays batches
        Completed, // the reporter says all is paid; the requester may refund at once
        Closed // refunded; nothing more moves
    }

    struct Job {
        // slot 0
        address requester;
        uint64 deadline; // after it the requester may refund even if the job is not completed
        uint32 unitsPerChunkMax; // 1 for jobs priced per chunk; the metering cap otherwise
        // slot 1
        address reporter; // the only key that may pay batches and complete the job
        uint32 chunksMax; // chunk indices run from 0 to chunksMax - 1
        Status status;
        // slot 2
        address token; // address(0) for ETH
        // slot 3
        uint128 pricePerUnit;
        uint128 deposit;
        // slot 4
        uint128 paid;
        uint128 refunded;
    }

    uint256 public constant BATCH_CHUNKS_MAX = 1_024;
    uint256 public constant BATCH_HUBS_MAX = 64;
    uint32 public constant JOB_CHUNKS_MAX = 1 << 24;

    IRegistry public immutable registry;
    uint256 public jobCount;
    mapping(uint256 jobId => Job) public jobs;
    /// Chunk i of a job is bit (i % 256) of word (i / 256): a batch of consecutive chunks touches
    /// one or two storage words, and a chunk costs one bit of storage.
    mapping(uint256 jobId => mapping(uint256 word => uint256 bits)) public paidChunks;

    error Unauthorized(address caller);
    error UnknownJob(uint256 jobId);
    error BadJob();
    error WrongJobStatus(uint256 jobId, Status status);
    error BadBatch();
    error ChunkOutOfRange(uint256 chunkIndex, uint32 chunksMax);
    error ChunkAlreadyPaid(uint256 jobId, uint256 chunkIndex);
    error TooManyUnits(address hub, uint256 units, uint256 unitsMax);
    error DepositExceeded(uint256 requested, uint256 available);
    error RefundTooEarly(uint64 deadline);

    event JobCreated(
        uint256 indexed jobId,
        address indexed requester,
        address indexed reporter,
        address token,
        uint256 pricePerUnit,
        uint256 deposit
    );
    /// One per hub per batch; the Rust side reconciles its outbox against these.
    event BatchPaid(uint256 indexed jobId, address indexed hub, uint256 chunks, uint256 units, uint256 amount);
    event JobCompleted(uint256 indexed jobId);
    event JobRefunded(uint256 indexed jobId, uint256 amount);

    constructor(IRegistry registry_) {
        registry = registry_;
    }

    /// Opens a job. For ETH send the deposit as msg.value with amount = 0; for an ERC-20 approve
    /// `amount` first. The deposit is what arrived, so a token that takes a fee cannot make the
    /// escrow promise more than it holds.
    function createJob(
        address token,
        uint128 pricePerUnit,
        uint32 unitsPerChunkMax,
        uint32 chunksMax,
        address reporter,
        uint64 deadline,
        uint256 amount
    ) external payable nonReentrant returns (uint256 jobId) {
        bool shapeOk = pricePerUnit != 0 && unitsPerChunkMax != 0 && chunksMax != 0 && chunksMax <= JOB_CHUNKS_MAX;
        if (!shapeOk || reporter == address(0) || deadline <= block.timestamp) revert BadJob();
        uint256 deposit = token == address(0) ? _receiveEth(amount) : _receiveToken(token, amount);
        if (deposit == 0 || deposit > type(uint128).max) revert BadJob();
        jobId = ++jobCount;
        jobs[jobId] = Job({
            requester: msg.sender,
            deadline: deadline,
            unitsPerChunkMax: unitsPerChunkMax,
            reporter: reporter,
            chunksMax: chunksMax,
            status: Status.Open,
            token: token,
            pricePerUnit: pricePerUnit,
            deposit: uint128(deposit),
            paid: 0,
            refunded: 0
        });
        emit JobCreated(jobId, msg.sender, reporter, token, pricePerUnit, deposit);
    }

    /// Pays verified chunks, grouped by hub: hubs[h] did the next chunkCounts[h] entries of
    /// chunkIndices and is paid units[h] * pricePerUnit (units[h] <= its chunks * unitsPerChunkMax).
    /// Any chunk already paid, in this batch or an earlier one, reverts the whole batch, so a
    /// resent batch pays nothing twice.
    function payBatch(
        uint256 jobId,
        uint32[] calldata chunkIndices,
        address[] calldata hubs,
        uint32[] calldata chunkCounts,
        uint64[] calldata units
    ) external nonReentrant {
        Job storage job = _job(jobId);
        if (msg.sender != job.reporter) revert Unauthorized(msg.sender);
        if (job.status != Status.Open) revert WrongJobStatus(jobId, job.status);
        bool shapeOk = hubs.length == chunkCounts.length && hubs.length == units.length && hubs.length != 0;
        if (!shapeOk || hubs.length > BATCH_HUBS_MAX || chunkIndices.length > BATCH_CHUNKS_MAX) revert BadBatch();

        _markPaid(jobId, job.chunksMax, chunkIndices);
        uint256[] memory amounts = _amounts(job, chunkIndices.length, hubs, chunkCounts, units);
        uint256 total = 0;
        for (uint256 h = 0; h < amounts.length; h++) {
            total += amounts[h];
            emit BatchPaid(jobId, hubs[h], chunkCounts[h], units[h], amounts[h]);
        }
        uint256 available = job.deposit - job.paid;
        if (total > available) revert DepositExceeded(total, available);
        job.paid += uint128(total);

        // Interactions last: the bitmap and job.paid are already written.
        address token = job.token;
        if (token == address(0)) {
            registry.credit{value: total}(token, hubs, amounts);
        } else {
            _send(token, address(registry), total);
            registry.credit(token, hubs, amounts);
        }
    }

    function complete(uint256 jobId) external {
        Job storage job = _job(jobId);
        if (msg.sender != job.reporter) revert Unauthorized(msg.sender);
        if (job.status != Status.Open) revert WrongJobStatus(jobId, job.status);
        job.status = Status.Completed;
        emit JobCompleted(jobId);
    }

    /// Sends the unspent deposit back to the requester. Anyone may trigger it; the money only
    /// ever goes to the requester.
    function refund(uint256 jobId) external nonReentrant {
        Job storage job = _job(jobId);
        if (job.status == Status.Closed) revert WrongJobStatus(jobId, job.status);
        if (job.status == Status.Open && block.timestamp < job.deadline) revert RefundTooEarly(job.deadline);
        uint128 amount = job.deposit - job.paid;
        job.status = Status.Closed;
        job.refunded = amount;
        _send(job.token, job.requester, amount);
        emit JobRefunded(jobId, amount);
    }

    // ---- Views ------------------------------------------------------------------------------

    /// What the registry checks evidence against: who opened the job, who reports it, and how
    /// many chunks it has (evidence names a chunk index below chunksMax).
    function jobParties(uint256 jobId) external view returns (address requester, address reporter, uint32 chunksMax) {
        Job storage job = _job(jobId);
        return (job.requester, job.reporter, job.chunksMax);
    }

    function isChunkPaid(uint256 jobId, uint256 chunkIndex) external view returns (bool) {
        return paidChunks[jobId][chunkIndex >> 8] & (1 << (chunkIndex & 255)) != 0;
    }

    // ---- Internals --------------------------------------------------------------------------

    /// Sets one bit per chunk. The current word is kept in memory and written back only when the
    /// next chunk falls in another word, so sorted indices cost one SSTORE per 256 chunks.
    function _markPaid(uint256 jobId, uint32 chunksMax, uint32[] calldata chunkIndices) internal {
        mapping(uint256 => uint256) storage bitmap = paidChunks[jobId];
        uint256 wordIndex = type(uint256).max;
        uint256 word = 0;
        for (uint256 i = 0; i < chunkIndices.length; i++) {
            uint256 chunk = chunkIndices[i];
            if (chunk >= chunksMax) revert ChunkOutOfRange(chunk, chunksMax);
            if (chunk >> 8 != wordIndex) {
                if (wordIndex != type(uint256).max) bitmap[wordIndex] = word;
                wordIndex = chunk >> 8;
                word = bitmap[wordIndex];
            }
            uint256 bit = 1 << (chunk & 255);
            if (word & bit != 0) revert ChunkAlreadyPaid(jobId, chunk);
            word |= bit;
        }
        if (wordIndex != type(uint256).max) bitmap[wordIndex] = word;
    }

    /// What each hub of a batch earns. The counts must add up to the number of chunk indices, and
    /// a hub cannot claim more units than its chunks allow.
    function _amounts(
        Job storage job,
        uint256 chunksInBatch,
        address[] calldata hubs,
        uint32[] calldata chunkCounts,
        uint64[] calldata units
    ) internal view returns (uint256[] memory amounts) {
        amounts = new uint256[](hubs.length);
        uint256 price = job.pricePerUnit;
        uint256 unitsPerChunkMax = job.unitsPerChunkMax;
        uint256 chunksCounted = 0;
        for (uint256 h = 0; h < hubs.length; h++) {
            uint256 unitsMax = uint256(chunkCounts[h]) * unitsPerChunkMax;
            if (units[h] > unitsMax) revert TooManyUnits(hubs[h], units[h], unitsMax);
            chunksCounted += chunkCounts[h];
            amounts[h] = units[h] * price;
        }
        if (chunksCounted != chunksInBatch) revert BadBatch();
    }

    function _job(uint256 jobId) internal view returns (Job storage job) {
        job = jobs[jobId];
        if (job.status == Status.None) revert UnknownJob(jobId);
    }

    function _receiveEth(uint256 amount) internal view returns (uint256) {
        if (amount != 0) revert BadJob();
        return msg.value;
    }

    function _receiveToken(address token, uint256 amount) internal returns (uint256) {
        if (msg.value != 0) revert BadJob();
        uint256 before = _balanceOf(token);
        bool ok = _tokenCall(token, abi.encodeWithSelector(0x23b872dd, msg.sender, address(this), amount));
        if (!ok) revert TransferFailed(token, address(this), amount);
        return _balanceOf(token) - before;
    }

    function _balanceOf(address token) internal view returns (uint256) {
        (bool ok, bytes memory ret) = token.staticcall(abi.encodeWithSelector(0x70a08231, address(this)));
        if (!ok || ret.length < 32) revert TransferFailed(token, address(this), 0);
        return abi.decode(ret, (uint256));
    }
}
