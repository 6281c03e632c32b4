//! Verified slices: BLAKE3 verified streaming of blobs in 16 KiB groups, through `bao-tree`.
//!
//! A blob's hash is the BLAKE3 root of its bytes; beside each stored blob lies its *outboard*, the
//! hash pairs of the tree above its 16 KiB groups (64 bytes per group, 0.4 % of the blob). A peer
//! asks for any set of ranges of a blob; the answer interleaves the hash pairs on the path from the
//! root with the data, so the receiver checks every group against the root before writing it. A
//! download lands in a *partial* (the data file, allocated at its full size, and its outboard) in
//! the store's `tmp/`; what is verified there survives a crash or a kill, and a later download asks
//! only for the ranges that are not. Nothing becomes visible as the blob until every group is
//! verified: only then is the partial renamed into place.
//!
//! The size of a blob is proved by its last group (a tree of another size has another root), so a
//! download verifies the last group first, before it trusts the size enough to ask several sources
//! for ranges in parallel.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use bao_tree::io::BaoContentItem;
use bao_tree::io::outboard::PreOrderOutboard;
use bao_tree::io::sync::{DecodeResponseIter, encode_ranges};
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};
use upglobe_protocol::BlobHash;
use upglobe_protocol::messages::limits::SLICE_RANGES_MAX;

use crate::{BlobStore, DatasetError, Result};

/// Groups of 16 BLAKE3 chunks (16 KiB): the unit that is verified and the outboard's resolution.
pub const BLOCK: BlockSize = BlockSize::from_chunk_log(4);
/// A BLAKE3 chunk: ranges on the wire count these.
pub const CHUNK_BYTES: u64 = 1024;
/// A range start past the end of any blob: asking for it is asking for the last group, which
/// proves the blob's size.
pub const PAST_THE_END: u64 = 1 << 54;

fn io(context: String) -> impl FnOnce(std::io::Error) -> DatasetError {
    move |cause| DatasetError::Io { context, cause }
}

/// Chunk ranges as sent on the wire: sorted, disjoint, non-empty `[start, end)` pairs in 1 KiB
/// chunks; an end of `u64::MAX` is open.
pub fn to_wire(ranges: &ChunkRanges) -> Vec<(u64, u64)> {
    let bounds = ranges.boundaries();
    bounds.chunks(2).map(|pair| (pair[0].0, pair.get(1).map_or(u64::MAX, |end| end.0))).collect()
}

/// Reads wire ranges from a peer: at most [`SLICE_RANGES_MAX`], sorted, disjoint, none empty.
pub fn from_wire(pairs: &[(u64, u64)]) -> std::result::Result<ChunkRanges, String> {
    if pairs.is_empty() {
        return Err("no ranges were asked for".into());
    }
    if pairs.len() > SLICE_RANGES_MAX {
        return Err(format!("{} ranges; at most {SLICE_RANGES_MAX} are allowed in one request", pairs.len()));
    }
    let mut ranges = ChunkRanges::empty();
    let mut previous_end = 0;
    for (k, &(start, end)) in pairs.iter().enumerate() {
        if start >= end || (k > 0 && start <= previous_end) {
            return Err(format!("range {k} ({start}..{end}) is empty, out of order or overlaps the one before"));
        }
        previous_end = end;
        ranges |= if end == u64::MAX {
            ChunkRanges::from(ChunkNum(start)..)
        } else {
            ChunkRanges::from(ChunkNum(start)..ChunkNum(end))
        };
    }
    Ok(ranges)
}

/// The ranges that prove a blob's size: its last group, however large it is.
pub fn last_group() -> ChunkRanges {
    ChunkRanges::from(ChunkNum(PAST_THE_END)..)
}

/// The ranges of a blob of `size` bytes that `ranges` name: clipped to the blob, and, if any
/// range reaches past its end, with its last chunk (whose group proves the size). Sender and
/// receiver both resolve a request by the size the sender claims; a false size fails to verify.
pub fn resolve(ranges: &ChunkRanges, size: u64) -> ChunkRanges {
    let chunks = size.div_ceil(CHUNK_BYTES).max(1);
    let blob = ChunkRanges::from(..ChunkNum(chunks));
    let mut inside = ranges & &blob;
    if !(ranges - &blob).is_empty() {
        inside |= ChunkRanges::from(ChunkNum(chunks - 1)..ChunkNum(chunks));
    }
    // Whole groups: the outboard holds no hashes inside a group, so only a whole group can be
    // verified again from the partial (when a download resumes).
    bao_tree::io::round_up_to_chunks_groups(inside, BLOCK) & &blob
}

/// The chunks that hold a range of bytes.
pub fn chunks_of(bytes: &std::ops::Range<u64>) -> ChunkRanges {
    if bytes.start >= bytes.end {
        return ChunkRanges::empty();
    }
    ChunkRanges::from(ChunkNum(bytes.start / CHUNK_BYTES)..ChunkNum(bytes.end.div_ceil(CHUNK_BYTES)))
}

/// Bytes of blob data that `ranges` cover in a blob of `size` bytes.
pub fn bytes_in(ranges: &ChunkRanges, size: u64) -> u64 {
    let bytes = |chunk: u64| chunk.saturating_mul(CHUNK_BYTES).min(size);
    to_wire(ranges).into_iter().map(|(start, stop)| bytes(stop) - bytes(start)).sum()
}

/// Cuts ranges into pieces of at most `chunks` chunks each (the work items of a download).
pub fn split(ranges: &ChunkRanges, chunks: u64, size: u64) -> Vec<ChunkRanges> {
    // Whole groups per piece, so that pieces never share a group.
    let group = BLOCK.bytes() as u64 / CHUNK_BYTES;
    let chunks = chunks.div_ceil(group).max(1) * group;
    let end = size.div_ceil(CHUNK_BYTES).max(1);
    let mut pieces = Vec::new();
    for (start, stop) in to_wire(ranges) {
        let stop = stop.min(end);
        let mut at = start;
        while at < stop {
            let next = (at + chunks).min(stop);
            pieces.push(ChunkRanges::from(ChunkNum(at)..ChunkNum(next)));
            at = next;
        }
    }
    pieces
}

impl BlobStore {
    pub fn outboard_path(&self, hash: &BlobHash) -> PathBuf {
        let mut path = self.path(hash).into_os_string();
        path.push(".obao");
        path.into()
    }

    /// The blob's outboard, made from the blob the first time it is asked for. Making it hashes the
    /// blob: one that no longer hashes to its name is corrupt and removed.
    pub fn outboard(&self, hash: &BlobHash) -> Result<PreOrderOutboard<File>> {
        let (blob, size) = self.open_blob(hash)?;
        let tree = BaoTree::new(size, BLOCK);
        let root = blake3::Hash::from_bytes(hash.0);
        let path = self.outboard_path(hash);
        if let Ok(file) = File::open(&path)
            && file.metadata().is_ok_and(|m| m.len() == tree.outboard_size())
        {
            return Ok(PreOrderOutboard { root, tree, data: file });
        }
        let temporary =
            self.root().join("tmp").join(format!("{}.obao.{}", hash.to_hex(), crate::blobs::unique_suffix()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)
            .map_err(io(format!("cannot create {}", temporary.display())))?;
        let mut outboard = PreOrderOutboard { root, tree, data: file };
        let reader = std::io::BufReader::with_capacity(1 << 20, blob);
        let made = bao_tree::io::sync::outboard(reader, tree, &mut outboard);
        let actual = match made {
            Ok(actual) => actual,
            Err(e) => {
                let _ = std::fs::remove_file(&temporary);
                return Err(io(format!("cannot hash {}", self.path(hash).display()))(e));
            }
        };
        if actual != root {
            let _ = std::fs::remove_file(&temporary);
            self.remove(hash)?;
            return Err(DatasetError::Corrupt { hash: hash.to_hex(), actual: actual.to_hex().to_string() });
        }
        std::fs::rename(&temporary, &path).map_err(io(format!("cannot move an outboard into {}", path.display())))?;
        Ok(outboard)
    }

    /// Writes the encoding of `ranges` of a stored blob (hash pairs and data, in the order the
    /// receiver verifies them) to `out`. The data is not re-hashed here: the receiver verifies
    /// every group, and a sender whose disk corrupted it is caught there.
    pub fn encode(&self, hash: &BlobHash, ranges: &ChunkRanges, out: impl std::io::Write) -> Result<()> {
        let outboard = self.outboard(hash)?;
        let (blob, size) = self.open_blob(hash)?;
        encode_ranges(&blob, &outboard, &resolve(ranges, size), out)
            .map_err(|e| DatasetError::Transfer { hash: hash.short(), message: format!("cannot encode slices: {e}") })
    }

    fn partial_paths(&self, hash: &BlobHash) -> (PathBuf, PathBuf) {
        let tmp = self.root().join("tmp");
        (tmp.join(format!("{}.part", hash.to_hex())), tmp.join(format!("{}.part.obao", hash.to_hex())))
    }

    /// The partial download of a blob left by an earlier transfer, if any.
    pub fn existing_partial(&self, hash: &BlobHash) -> Result<Option<Partial>> {
        let (data_path, outboard_path) = self.partial_paths(hash);
        let (Ok(data), Ok(outboard)) = (
            File::options().read(true).write(true).open(&data_path),
            File::options().read(true).write(true).open(&outboard_path),
        ) else {
            return Ok(None);
        };
        let size = data.metadata().map_err(io(format!("cannot stat {}", data_path.display())))?.len();
        let tree = BaoTree::new(size, BLOCK);
        let outboard_len = outboard.metadata().map_err(io(format!("cannot stat {}", outboard_path.display())))?.len();
        if outboard_len != tree.outboard_size() {
            self.remove_partial(hash);
            return Ok(None);
        }
        Ok(Some(Partial { hash: *hash, tree, data, outboard, data_path, outboard_path }))
    }

    /// A partial for a blob of `size` bytes: the one already there if it has that size, else a new
    /// one, allocated whole so that a full disk is found now, with a clear error, not half-way.
    pub fn partial(&self, hash: &BlobHash, size: u64) -> Result<Partial> {
        if let Some(partial) = self.existing_partial(hash)? {
            if partial.size() == size {
                return Ok(partial);
            }
            self.remove_partial(hash);
        }
        let (data_path, outboard_path) = self.partial_paths(hash);
        let tree = BaoTree::new(size, BLOCK);
        let create = |path: &PathBuf, len: u64| -> Result<File> {
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
                .map_err(io(format!("cannot create {}", path.display())))?;
            allocate(&file, len).map_err(|cause| match cause.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) => DatasetError::DiskFull {
                    path: path.display().to_string(),
                    needed: len,
                    available: available_bytes(path),
                },
                _ => DatasetError::Io { context: format!("cannot allocate {len} bytes for {}", path.display()), cause },
            })?;
            Ok(file)
        };
        let made = create(&data_path, size).and_then(|data| Ok((data, create(&outboard_path, tree.outboard_size())?)));
        match made {
            Ok((data, outboard)) => Ok(Partial { hash: *hash, tree, data, outboard, data_path, outboard_path }),
            Err(e) => {
                self.remove_partial(hash);
                Err(e)
            }
        }
    }

    /// Verified bytes of a blob: from the store, or from a partial download that holds them (a
    /// range fetched alone). An error names what is not there.
    pub fn read_range(&self, hash: &BlobHash, bytes: std::ops::Range<u64>) -> Result<Vec<u8>> {
        let (file, size, source) = if self.contains(hash) {
            let (file, size) = self.open_blob(hash)?;
            (file, size, self.path(hash))
        } else {
            let Some(partial) = self.existing_partial(hash)? else {
                return Err(DatasetError::Missing(hash.to_hex()));
            };
            let wanted = chunks_of(&(bytes.start.min(partial.size())..bytes.end.min(partial.size())));
            if !(partial.missing()? & wanted).is_empty() {
                return Err(DatasetError::Incomplete {
                    expected: hash.to_hex(),
                    received: partial.size() - bytes_in(&partial.missing()?, partial.size()),
                    size: partial.size(),
                });
            }
            let size = partial.size();
            let path = partial.data_path.clone();
            (partial.data, size, path)
        };
        let end = bytes.end.min(size);
        let start = bytes.start.min(end);
        let mut out = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut out, start).map_err(io(format!("cannot read {}", source.display())))?;
        Ok(out)
    }

    pub fn remove_partial(&self, hash: &BlobHash) {
        let (data, outboard) = self.partial_paths(hash);
        let _ = std::fs::remove_file(data);
        let _ = std::fs::remove_file(outboard);
    }
}

/// Reserves `len` bytes for a file (no sparse holes left to fill later on a full disk).
fn allocate(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: the descriptor is open for writing for the duration of the call.
    let code = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
    match code {
        0 => Ok(()),
        // File systems without fallocate (some network and overlay file systems): a sized sparse
        // file, so a full disk shows at the first write that does not fit.
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(len),
        code => Err(std::io::Error::from_raw_os_error(code)),
    }
}

/// Free bytes on the file system that holds `path`, if it can be asked.
fn available_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = path.parent()?;
    let name = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is a valid C string and `stat` a writable statvfs.
    (unsafe { libc::statvfs(name.as_ptr(), &mut stat) } == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Verified bytes waiting to be written in one call.
struct Batch {
    offset: u64,
    bytes: Vec<u8>,
}

const WRITE_BATCH_BYTES: usize = 1 << 20;

/// A blob being downloaded: its data file at full size and its outboard, both in the store's
/// `tmp/`. Several decoders may fill disjoint ranges of it at once (each writes with `pwrite`;
/// hash pairs above two ranges are the same bytes, whoever writes them).
#[derive(Debug)]
pub struct Partial {
    hash: BlobHash,
    tree: BaoTree,
    data: File,
    outboard: File,
    data_path: PathBuf,
    outboard_path: PathBuf,
}

/// How far one decoded answer got: what was verified and written before it ended.
#[derive(Debug, Default, Clone)]
pub struct Decoded {
    /// Data bytes verified and written.
    pub verified_bytes: u64,
    /// The groups verified and written (their chunk ranges).
    pub verified: ChunkRanges,
}

impl Partial {
    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    pub fn hash(&self) -> BlobHash {
        self.hash
    }

    /// The chunk ranges not yet verified. Hashes what the partial holds (a resumed download pays
    /// this once; unwritten regions fail at their first hash pair and cost nothing).
    pub fn missing(&self) -> Result<ChunkRanges> {
        if self.size() == 0 {
            // Nothing to fetch; only the empty blob's hash fits an empty partial.
            return Ok(if self.root() == blake3::hash(b"") {
                ChunkRanges::empty()
            } else {
                ChunkRanges::from(..ChunkNum(1))
            });
        }
        let outboard = PreOrderOutboard { root: self.root(), tree: self.tree, data: &self.outboard };
        let mut valid = ChunkRanges::empty();
        for range in bao_tree::io::sync::valid_ranges(outboard, &self.data, &ChunkRanges::all()) {
            let range = range.map_err(io(format!("cannot read {}", self.data_path.display())))?;
            valid |= ChunkRanges::from(range);
        }
        let all = ChunkRanges::from(..ChunkNum(self.size().div_ceil(CHUNK_BYTES).max(1)));
        Ok(all - valid)
    }

    /// Whether the last group is verified, which proves the size.
    pub fn size_proved(&self) -> Result<bool> {
        Ok(self.proved_by(&self.missing()?))
    }

    /// Whether, with `missing` what is not verified yet, the size is proved.
    pub fn proved_by(&self, missing: &ChunkRanges) -> bool {
        !missing.contains(&ChunkNum(self.size().div_ceil(CHUNK_BYTES).saturating_sub(1)))
    }

    fn root(&self) -> blake3::Hash {
        blake3::Hash::from_bytes(self.hash.0)
    }

    /// Reads the encoding of `ranges` from `encoded`, verifying each hash pair and group against
    /// the root before writing it. On an error, what came before it is kept (and reported in the
    /// error's [`Decoded`]); nothing unverified is ever written.
    pub fn decode(
        &self,
        encoded: impl Read,
        ranges: &ChunkRanges,
        mut progress: impl FnMut(u64),
    ) -> std::result::Result<Decoded, (Decoded, DatasetError)> {
        let mut decoded = Decoded::default();
        // Verified groups that follow each other are written together: one `pwrite` per MiB, not
        // per 16 KiB group (each takes the file's lock, which several decoders share).
        let mut batch = Batch { offset: 0, bytes: Vec::with_capacity(WRITE_BATCH_BYTES) };
        let ranges = resolve(ranges, self.size());
        let iter = DecodeResponseIter::new(self.root(), self.tree, encoded, &ranges);
        let mut failure = None;
        for item in iter {
            match item {
                Ok(BaoContentItem::Parent(parent)) => {
                    let Some(offset) = self.tree.pre_order_offset(parent.node) else { continue };
                    let mut pair = [0u8; 64];
                    pair[..32].copy_from_slice(parent.pair.0.as_bytes());
                    pair[32..].copy_from_slice(parent.pair.1.as_bytes());
                    if let Err(e) = self.outboard.write_all_at(&pair, offset * 64) {
                        failure = Some(self.write_error(&self.outboard_path, e));
                        break;
                    }
                }
                Ok(BaoContentItem::Leaf(leaf)) => {
                    let follows = batch.offset + batch.bytes.len() as u64 == leaf.offset;
                    if !batch.bytes.is_empty()
                        && (!follows || batch.bytes.len() >= WRITE_BATCH_BYTES)
                        && let Err(e) = self.flush(&mut batch, &mut decoded, &mut progress)
                    {
                        failure = Some(e);
                        break;
                    }
                    if batch.bytes.is_empty() {
                        batch.offset = leaf.offset;
                    }
                    batch.bytes.extend_from_slice(&leaf.data);
                }
                Err(bao_tree::io::DecodeError::Io(e)) => {
                    let message = format!("the answer broke off: {e}");
                    failure = Some(DatasetError::Transfer { hash: self.hash.short(), message });
                    break;
                }
                Err(
                    e @ (bao_tree::io::DecodeError::LeafNotFound(_) | bao_tree::io::DecodeError::ParentNotFound(_)),
                ) => {
                    let message = format!("the answer ended early ({e:?})");
                    failure = Some(DatasetError::Transfer { hash: self.hash.short(), message });
                    break;
                }
                Err(e) => {
                    failure = Some(DatasetError::CorruptSlice { hash: self.hash.short(), detail: format!("{e:?}") });
                    break;
                }
            }
        }
        // What was verified before a failure is written all the same.
        let flushed = self.flush(&mut batch, &mut decoded, &mut progress);
        match (failure, flushed) {
            (Some(failure), _) | (None, Err(failure)) => Err((decoded, failure)),
            (None, Ok(())) => Ok(decoded),
        }
    }

    /// Writes a batch of verified groups and counts them as verified.
    fn flush(&self, batch: &mut Batch, decoded: &mut Decoded, progress: &mut impl FnMut(u64)) -> Result<()> {
        if batch.bytes.is_empty() {
            return Ok(());
        }
        self.data.write_all_at(&batch.bytes, batch.offset).map_err(|e| self.write_error(&self.data_path, e))?;
        let end = batch.offset + batch.bytes.len() as u64;
        decoded.verified |=
            ChunkRanges::from(ChunkNum(batch.offset / CHUNK_BYTES)..ChunkNum(end.div_ceil(CHUNK_BYTES)));
        decoded.verified_bytes += batch.bytes.len() as u64;
        progress(batch.bytes.len() as u64);
        batch.bytes.clear();
        Ok(())
    }

    fn write_error(&self, path: &std::path::Path, cause: std::io::Error) -> DatasetError {
        match cause.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => DatasetError::DiskFull {
                path: path.display().to_string(),
                needed: self.size(),
                available: available_bytes(path),
            },
            _ => DatasetError::Io { context: format!("cannot write {}", path.display()), cause },
        }
    }

    /// Moves a wholly verified partial into the store as the blob. Refuses (and keeps the partial)
    /// while any range is missing.
    pub fn finish(&self, store: &BlobStore) -> Result<()> {
        let missing = self.missing()?;
        if !missing.is_empty() {
            return Err(DatasetError::Incomplete {
                expected: self.hash.to_hex(),
                received: self.size() - bytes_in(&missing, self.size()),
                size: self.size(),
            });
        }
        // The files at the partial's paths must be the ones verified here (another process sharing
        // this cache may have replaced them): only then are they renamed into place.
        use std::os::unix::fs::MetadataExt;
        let same = |file: &File, path: &PathBuf| matches!((file.metadata(), std::fs::metadata(path)), (Ok(a), Ok(b)) if a.ino() == b.ino() && a.dev() == b.dev());
        if !same(&self.data, &self.data_path) || !same(&self.outboard, &self.outboard_path) {
            return Err(DatasetError::Transfer {
                hash: self.hash.short(),
                message: "another download replaced this partial; fetch it again".into(),
            });
        }
        self.data.sync_all().map_err(io(format!("cannot sync {}", self.data_path.display())))?;
        self.outboard.sync_all().map_err(io(format!("cannot sync {}", self.outboard_path.display())))?;
        let target = store.path(&self.hash);
        let parent = target.parent().expect("blob paths have a parent");
        std::fs::create_dir_all(parent).map_err(io(format!("cannot create {}", parent.display())))?;
        // The outboard first: an outboard without its blob is harmless (the same bytes are made
        // again), a blob is served only with an outboard of the right size.
        std::fs::rename(&self.outboard_path, store.outboard_path(&self.hash))
            .map_err(io(format!("cannot move an outboard into {}", parent.display())))?;
        std::fs::rename(&self.data_path, &target)
            .map_err(io(format!("cannot move a blob into {}", target.display())))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|k| (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes()[7]).collect()
    }

    fn encoded(store: &BlobStore, hash: &BlobHash, ranges: &ChunkRanges) -> Vec<u8> {
        let mut out = Vec::new();
        store.encode(hash, ranges, &mut out).unwrap();
        out
    }

    #[test]
    fn wire_ranges_round_trip_and_hostile_ones_are_refused() {
        let ranges = ChunkRanges::from(ChunkNum(3)..ChunkNum(9)) | ChunkRanges::from(ChunkNum(20)..);
        assert_eq!(to_wire(&ranges), vec![(3, 9), (20, u64::MAX)]);
        assert_eq!(from_wire(&to_wire(&ranges)).unwrap(), ranges);
        assert!(from_wire(&[]).is_err());
        assert!(from_wire(&[(5, 5)]).unwrap_err().contains("range 0"));
        assert!(from_wire(&[(5, 9), (7, 12)]).unwrap_err().contains("overlaps"));
        assert!(from_wire(&vec![(1, 2); SLICE_RANGES_MAX + 1]).unwrap_err().contains("at most"));
    }

    #[test]
    fn a_blob_arrives_in_slices_and_resumes_from_what_was_verified() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (source, target) = (BlobStore::open(from.path()).unwrap(), BlobStore::open(to.path()).unwrap());
        let data = bytes(1_000_000);
        let hash = source.put(&data).unwrap();
        let size = data.len() as u64;

        // The last group first: it proves the size.
        let partial = target.partial(&hash, size).unwrap();
        let last = last_group();
        partial.decode(&encoded(&source, &hash, &last)[..], &last, |_| {}).unwrap();
        assert!(partial.size_proved().unwrap());

        // Half of the rest, then the transfer "dies"; a new partial finds what was verified.
        let pieces = split(&partial.missing().unwrap(), 64, size);
        for piece in &pieces[..pieces.len() / 2] {
            partial.decode(&encoded(&source, &hash, piece)[..], piece, |_| {}).unwrap();
        }
        drop(partial);
        let partial = target.existing_partial(&hash).unwrap().expect("kept");
        let missing = partial.missing().unwrap();
        let left = bytes_in(&missing, size);
        assert!(left < size / 2 + 64 * 1024 && left > size / 3, "{left} of {size} left");
        assert!(partial.finish(&target).is_err(), "an incomplete partial is not a blob");
        let partial = target.existing_partial(&hash).unwrap().expect("kept");
        partial.decode(&encoded(&source, &hash, &missing)[..], &missing, |_| {}).unwrap();
        partial.finish(&target).unwrap();
        assert_eq!(target.get(&hash).unwrap(), data);
        assert!(target.existing_partial(&hash).unwrap().is_none());
        // The outboard came along: the receiver can serve slices at once.
        assert_eq!(encoded(&target, &hash, &ChunkRanges::all()), encoded(&source, &hash, &ChunkRanges::all()));
    }

    #[test]
    fn a_corrupt_slice_is_refused_and_what_came_before_it_kept() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (source, target) = (BlobStore::open(from.path()).unwrap(), BlobStore::open(to.path()).unwrap());
        let data = bytes(300_000);
        let hash = source.put(&data).unwrap();
        let all = ChunkRanges::all();
        let mut answer = encoded(&source, &hash, &all);
        // Flip a byte two thirds of the way in.
        let at = answer.len() * 2 / 3;
        answer[at] ^= 1;
        let partial = target.partial(&hash, data.len() as u64).unwrap();
        let (decoded, error) = partial.decode(&answer[..], &all, |_| {}).unwrap_err();
        assert!(matches!(error, DatasetError::CorruptSlice { .. }), "{error}");
        assert!(decoded.verified_bytes > 100_000 && decoded.verified_bytes < 220_000, "{}", decoded.verified_bytes);
        let missing = partial.missing().unwrap();
        assert_eq!(bytes_in(&missing, data.len() as u64), data.len() as u64 - decoded.verified_bytes);
        // A truncated answer is a broken transfer, not corruption.
        let answer = encoded(&source, &hash, &missing);
        let error = partial.decode(&answer[..answer.len() / 2], &missing, |_| {}).unwrap_err().1;
        assert!(matches!(error, DatasetError::Transfer { .. }), "{error}");
        assert!(!target.contains(&hash));
    }

    #[test]
    fn a_lie_about_the_size_fails_at_the_last_group() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (source, target) = (BlobStore::open(from.path()).unwrap(), BlobStore::open(to.path()).unwrap());
        let data = bytes(200_000);
        let hash = source.put(&data).unwrap();
        let answer = encoded(&source, &hash, &last_group());
        let partial = target.partial(&hash, 300_000).unwrap();
        assert!(partial.decode(&answer[..], &last_group(), |_| {}).is_err());
        assert!(!partial.size_proved().unwrap());
    }

    #[test]
    fn an_empty_blob_arrives_and_a_false_empty_size_does_not() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (source, target) = (BlobStore::open(from.path()).unwrap(), BlobStore::open(to.path()).unwrap());
        let empty = source.put(b"").unwrap();
        let partial = target.partial(&empty, 0).unwrap();
        partial.decode(&encoded(&source, &empty, &last_group())[..], &last_group(), |_| {}).unwrap();
        assert!(partial.size_proved().unwrap());
        partial.finish(&target).unwrap();
        assert_eq!(target.get(&empty).unwrap(), b"");
        // A source claiming that a non-empty blob is empty cannot prove it.
        let full = source.put(b"not empty").unwrap();
        let partial = target.partial(&full, 0).unwrap();
        assert!(partial.decode(&encoded(&source, &empty, &last_group())[..], &last_group(), |_| {}).is_err());
        assert!(!partial.size_proved().unwrap());
    }

    #[test]
    fn a_full_disk_is_named_with_what_was_needed() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let partial = store.partial(&BlobHash::of(b"x"), 5000).unwrap();
        let error = partial.write_error(&partial.data_path, std::io::Error::from_raw_os_error(libc::ENOSPC));
        let message = error.to_string();
        assert!(message.starts_with("the disk is full: ") && message.contains(".part needs 5000 bytes"), "{message}");
        assert!(message.contains(" are free"), "{message}");
    }

    #[test]
    fn a_blob_corrupted_on_disk_has_no_outboard_and_leaves_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let hash = store.put(&bytes(100_000)).unwrap();
        let mut on_disk = std::fs::read(store.path(&hash)).unwrap();
        on_disk[5] ^= 0xff;
        std::fs::write(store.path(&hash), on_disk).unwrap();
        assert!(matches!(store.outboard(&hash), Err(DatasetError::Corrupt { .. })));
        assert!(!store.contains(&hash));
    }
}
