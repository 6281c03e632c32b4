//! A content-addressed store: a blob lives at `ROOT/ab/cdef…` named by the BLAKE3 hash of its bytes.
//!
//! Writes go to a temporary file that is renamed into place only after the hash of what arrived equals
//! the hash that was promised, so a blob in the store is always whole and correct, and a crash in the
//! middle of a transfer leaves nothing behind but a temporary file.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use upglobe_protocol::BlobHash;

use crate::{DatasetError, Result};

/// The BLAKE3 hash and size of a file, read in a stream.
pub fn hash_file(path: &Path) -> Result<(BlobHash, u64)> {
    let file = File::open(path).map_err(io(format!("cannot open {}", path.display())))?;
    let mut hasher = blake3::Hasher::new();
    let size = hasher
        .update_reader(std::io::BufReader::with_capacity(1 << 20, file))
        .map_err(io(format!("cannot read {}", path.display())))?
        .count();
    Ok((BlobHash(*hasher.finalize().as_bytes()), size))
}

#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> DatasetError {
    move |source| DatasetError::Io { context, cause: source }
}

impl BlobStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<BlobStore> {
        let root = root.into();
        std::fs::create_dir_all(root.join("tmp")).map_err(io(format!("cannot create {}", root.display())))?;
        Ok(BlobStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, hash: &BlobHash) -> PathBuf {
        let text = hash.to_hex();
        self.root.join(&text[..2]).join(&text[2..])
    }

    pub fn contains(&self, hash: &BlobHash) -> bool {
        self.path(hash).exists()
    }

    pub fn size(&self, hash: &BlobHash) -> Option<u64> {
        std::fs::metadata(self.path(hash)).ok().map(|m| m.len())
    }

    /// Stores bytes held in memory; returns their hash.
    pub fn put(&self, bytes: &[u8]) -> Result<BlobHash> {
        let hash = BlobHash::of(bytes);
        if !self.contains(&hash) {
            let mut writer = self.writer(hash, bytes.len() as u64)?;
            writer.write(bytes)?;
            writer.finish()?;
        }
        Ok(hash)
    }

    /// Copies a file into the store, streaming (a file of any size); returns its hash and size.
    pub fn put_file(&self, path: &Path) -> Result<(BlobHash, u64)> {
        let (hash, size) = hash_file(path)?;
        if !self.contains(&hash) {
            let mut file = File::open(path).map_err(io(format!("cannot open {}", path.display())))?;
            let mut writer = self.writer(hash, size)?;
            let mut buffer = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buffer).map_err(io(format!("cannot read {}", path.display())))?;
                if n == 0 {
                    break;
                }
                writer.write(&buffer[..n])?;
            }
            // A file that changed between the two reads fails here, naming the hash it no
            // longer has.
            writer.finish()?;
        }
        Ok((hash, size))
    }

    /// The last `count` bytes of a blob (a checkpoint's trailing state hash), without reading it all.
    pub fn tail(&self, hash: &BlobHash, count: u64) -> Result<Vec<u8>> {
        use std::io::{Seek, SeekFrom};
        let (mut file, size) = self.open_blob(hash)?;
        let path = self.path(hash);
        let start = size.saturating_sub(count);
        file.seek(SeekFrom::Start(start)).map_err(io(format!("cannot seek in {}", path.display())))?;
        let mut bytes = Vec::with_capacity((size - start) as usize);
        file.read_to_end(&mut bytes).map_err(io(format!("cannot read {}", path.display())))?;
        Ok(bytes)
    }

    /// Removes a blob (one found corrupt, so that it can be fetched again).
    pub fn remove(&self, hash: &BlobHash) -> Result<()> {
        let _ = std::fs::remove_file(self.outboard_path(hash));
        let path = self.path(hash);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io(format!("cannot remove {}", path.display()))(e))
            }
            _ => Ok(()),
        }
    }

    /// Reads a whole blob, verifying its hash.
    pub fn get(&self, hash: &BlobHash) -> Result<Vec<u8>> {
        let path = self.path(hash);
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut file) => file.read_to_end(&mut bytes).map_err(io(format!("cannot read {}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DatasetError::Missing(hash.to_hex()));
            }
            Err(e) => return Err(io(format!("cannot open {}", path.display()))(e)),
        };
        let actual = BlobHash::of(&bytes);
        if actual != *hash {
            return Err(DatasetError::Corrupt { hash: hash.to_hex(), actual: actual.to_hex() });
        }
        Ok(bytes)
    }

    /// Opens a blob for streaming out.
    pub fn open_blob(&self, hash: &BlobHash) -> Result<(File, u64)> {
        let path = self.path(hash);
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DatasetError::Missing(hash.to_hex()),
            _ => DatasetError::Io { context: format!("cannot open {}", path.display()), cause: e },
        })?;
        let size = file.metadata().map_err(io(format!("cannot stat {}", path.display())))?.len();
        Ok((file, size))
    }

    /// A writer for a blob that is promised to hash to `expected` and be `size` bytes long.
    pub fn writer(&self, expected: BlobHash, size: u64) -> Result<BlobWriter> {
        let temporary = self.root.join("tmp").join(format!("{}.{}", expected.to_hex(), unique_suffix()));
        let file = File::create(&temporary).map_err(io(format!("cannot create {}", temporary.display())))?;
        Ok(BlobWriter {
            file: Some(file),
            temporary,
            target: self.path(&expected),
            expected,
            size,
            received: 0,
            hasher: blake3::Hasher::new(),
            resumable: None,
        })
    }

    /// A writer that keeps what it received if the transfer breaks, and takes up where an earlier
    /// one stopped: its temporary file is `tmp/HASH.upload`, and `received()` says how much of it
    /// is there (hashed again now, so the final check covers every byte). `None` while another
    /// transfer of the same blob is writing it.
    pub fn resumable_writer(&self, expected: BlobHash, size: u64) -> Result<Option<BlobWriter>> {
        let temporary = self.root.join("tmp").join(format!("{}.upload", expected.to_hex()));
        let Some(lock) = UploadLock::take(&temporary) else { return Ok(None) };
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&temporary)
            .map_err(io(format!("cannot open {}", temporary.display())))?;
        let mut received = file.metadata().map_err(io(format!("cannot stat {}", temporary.display())))?.len();
        if received > size {
            file.set_len(0).map_err(io(format!("cannot truncate {}", temporary.display())))?;
            received = 0;
        }
        let mut hasher = blake3::Hasher::new();
        if received > 0 {
            let mut prefix = std::io::BufReader::with_capacity(1 << 20, (&file).take(received));
            hasher.update_reader(&mut prefix).map_err(io(format!("cannot read {}", temporary.display())))?;
        }
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(received)).map_err(io(format!("cannot seek in {}", temporary.display())))?;
        Ok(Some(BlobWriter {
            file: Some(file),
            temporary,
            target: self.path(&expected),
            expected,
            size,
            received,
            hasher,
            resumable: Some(lock),
        }))
    }
}

/// Marks a resumable upload's file as being written, within this process.
#[derive(Debug)]
struct UploadLock(PathBuf);

static UPLOADS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

impl UploadLock {
    fn take(path: &Path) -> Option<UploadLock> {
        let mut uploads = UPLOADS.lock().expect("upload locks");
        if uploads.iter().any(|p| p == path) {
            return None;
        }
        uploads.push(path.to_path_buf());
        Some(UploadLock(path.to_path_buf()))
    }
}

impl Drop for UploadLock {
    fn drop(&mut self) {
        UPLOADS.lock().expect("upload locks").retain(|p| *p != self.0);
    }
}

/// What one garbage collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    pub blobs: u64,
    pub bytes: u64,
    /// Temporary files of transfers that never finished.
    pub temporary: u64,
}

impl BlobStore {
    /// Marks a blob as just used: garbage collection spares blobs modified within its grace period,
    /// so a blob that an upload found already stored survives until the result naming it is recorded.
    pub fn touch(&self, hash: &BlobHash) -> Result<()> {
        let path = self.path(hash);
        let file = File::options().write(true).open(&path).map_err(io(format!("cannot open {}", path.display())))?;
        file.set_modified(std::time::SystemTime::now()).map_err(io(format!("cannot touch {}", path.display())))
    }

    /// Every blob in the store with its size and when it was last stored or touched.
    pub fn list(&self) -> Result<Vec<(BlobHash, u64, std::time::SystemTime)>> {
        let mut found = Vec::new();
        let entries = std::fs::read_dir(&self.root).map_err(io(format!("cannot list {}", self.root.display())))?;
        for entry in entries {
            let entry = entry.map_err(io(format!("cannot list {}", self.root.display())))?;
            let prefix = entry.file_name().to_string_lossy().into_owned();
            if prefix.len() != 2 || !entry.path().is_dir() {
                continue;
            }
            let dir = entry.path();
            for blob in std::fs::read_dir(&dir).map_err(io(format!("cannot list {}", dir.display())))? {
                let blob = blob.map_err(io(format!("cannot list {}", dir.display())))?;
                let Some(hash) = BlobHash::from_hex(&format!("{prefix}{}", blob.file_name().to_string_lossy())) else {
                    continue;
                };
                let meta = blob.metadata().map_err(io(format!("cannot stat {}", blob.path().display())))?;
                let modified = meta.modified().map_err(io(format!("cannot stat {}", blob.path().display())))?;
                found.push((hash, meta.len(), modified));
            }
        }
        Ok(found)
    }

    /// Removes every blob that `keep` does not name and that has not been stored or touched since
    /// `spare_after`, and temporary files older than that (transfers that died).
    pub fn collect_garbage(
        &self,
        keep: impl Fn(&BlobHash) -> bool,
        spare_after: std::time::SystemTime,
    ) -> Result<Collected> {
        let mut collected = Collected::default();
        for (hash, size, modified) in self.list()? {
            if modified < spare_after && !keep(&hash) {
                self.remove(&hash)?;
                collected.blobs += 1;
                collected.bytes += size;
            }
        }
        collected.temporary = self.remove_stale_temporary(spare_after)?;
        Ok(collected)
    }

    /// Removes temporary files (transfers that died, partials nobody resumed) not written since
    /// `spare_after`; returns how many.
    pub fn remove_stale_temporary(&self, spare_after: std::time::SystemTime) -> Result<u64> {
        let temporary = self.root.join("tmp");
        let mut removed = 0;
        for entry in std::fs::read_dir(&temporary).map_err(io(format!("cannot list {}", temporary.display())))? {
            let entry = entry.map_err(io(format!("cannot list {}", temporary.display())))?;
            let stale = entry.metadata().and_then(|m| m.modified()).is_ok_and(|m| m < spare_after);
            if stale && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

impl BlobStore {
    /// Keeps a cache within `bytes_max`: removes the least recently stored or touched blobs that
    /// `pinned` does not name (what running tasks use) until the rest fit. Pinned blobs stay even
    /// if they alone exceed the limit.
    pub fn evict_to(&self, bytes_max: u64, pinned: impl Fn(&BlobHash) -> bool) -> Result<Collected> {
        let mut blobs = self.list()?;
        let mut total: u64 = blobs.iter().map(|(_, size, _)| size).sum();
        blobs.sort_by_key(|(hash, _, modified)| (*modified, *hash));
        let mut collected = Collected::default();
        for (hash, size, _) in blobs {
            if total <= bytes_max {
                break;
            }
            if !pinned(&hash) {
                self.remove(&hash)?;
                total -= size;
                collected.blobs += 1;
                collected.bytes += size;
            }
        }
        Ok(collected)
    }
}

pub(crate) fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A blob being received. Dropped without [`BlobWriter::finish`], it leaves nothing in the store.
pub struct BlobWriter {
    file: Option<File>,
    temporary: PathBuf,
    target: PathBuf,
    expected: BlobHash,
    size: u64,
    received: u64,
    hasher: blake3::Hasher,
    /// For a resumable writer: its lock, and that a broken transfer keeps what arrived.
    resumable: Option<UploadLock>,
}

impl BlobWriter {
    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if self.received + bytes.len() as u64 > self.size {
            return Err(DatasetError::Incomplete {
                expected: self.expected.to_hex(),
                received: self.received + bytes.len() as u64,
                size: self.size,
            });
        }
        self.hasher.update(bytes);
        let file = self.file.as_mut().expect("writer used after finish");
        file.write_all(bytes).map_err(io(format!("cannot write {}", self.temporary.display())))?;
        self.received += bytes.len() as u64;
        Ok(())
    }

    /// Verifies size and hash, then moves the blob into place.
    pub fn finish(mut self) -> Result<BlobHash> {
        if self.received != self.size {
            return Err(DatasetError::Incomplete {
                expected: self.expected.to_hex(),
                received: self.received,
                size: self.size,
            });
        }
        let actual = BlobHash(*self.hasher.finalize().as_bytes());
        if actual != self.expected {
            // Not the promised bytes: nothing of it is worth resuming.
            self.resumable = None;
            return Err(DatasetError::Corrupt { hash: self.expected.to_hex(), actual: actual.to_hex() });
        }
        // On any error below, dropping `self` still removes the temporary file: `file` stays set
        // until the rename has succeeded.
        let file = self.file.as_ref().expect("finish once");
        file.sync_all().map_err(io(format!("cannot sync {}", self.temporary.display())))?;
        let parent = self.target.parent().expect("blob paths have a parent");
        std::fs::create_dir_all(parent).map_err(io(format!("cannot create {}", parent.display())))?;
        std::fs::rename(&self.temporary, &self.target)
            .map_err(io(format!("cannot move a blob into {}", self.target.display())))?;
        self.file = None;
        Ok(actual)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.is_some() && self.resumable.is_none() {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let hash = store.put(b"hello").unwrap();
        assert_eq!(store.get(&hash).unwrap(), b"hello");
        assert_eq!(store.size(&hash), Some(5));
        std::fs::write(store.path(&hash), b"hellO").unwrap();
        assert!(matches!(store.get(&hash), Err(DatasetError::Corrupt { .. })));
        assert!(matches!(store.get(&BlobHash([0; 32])), Err(DatasetError::Missing(_))));
    }

    #[test]
    fn garbage_collection_keeps_what_is_named_or_recent() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let (kept, orphan, recent) =
            (store.put(b"kept").unwrap(), store.put(b"orphan").unwrap(), store.put(b"new").unwrap());
        let stale_writer = store.writer(BlobHash::of(b"never"), 5).unwrap();
        std::mem::forget(stale_writer);
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(1);
        store.touch(&recent).unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for hash in [kept, orphan] {
            File::options().write(true).open(store.path(&hash)).unwrap().set_modified(old).unwrap();
        }
        let collected = store.collect_garbage(|h| *h == kept, later - std::time::Duration::from_secs(60)).unwrap();
        assert_eq!((collected.blobs, collected.bytes), (1, 6));
        assert!(store.contains(&kept) && store.contains(&recent) && !store.contains(&orphan));
        assert_eq!(collected.temporary, 0, "a transfer in progress is spared");
        let collected = store.collect_garbage(|_| true, later).unwrap();
        assert_eq!((collected.blobs, collected.temporary), (0, 1));
        assert_eq!(store.list().unwrap().len(), 2);
    }

    #[test]
    fn eviction_removes_the_least_recently_used_and_never_what_is_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let now = std::time::SystemTime::now();
        let hashes: Vec<BlobHash> = (0..4u8).map(|k| store.put(&[k; 100]).unwrap()).collect();
        for (age, hash) in hashes.iter().enumerate() {
            let when = now - std::time::Duration::from_secs(100 - age as u64);
            File::options().write(true).open(store.path(hash)).unwrap().set_modified(when).unwrap();
        }
        // The oldest is pinned (a running task's input); the next oldest goes first.
        let collected = store.evict_to(250, |h| *h == hashes[0]).unwrap();
        assert_eq!((collected.blobs, collected.bytes), (2, 200));
        assert!(store.contains(&hashes[0]) && !store.contains(&hashes[1]) && !store.contains(&hashes[2]));
        assert!(store.contains(&hashes[3]));
        assert_eq!(store.evict_to(0, |_| true).unwrap().blobs, 0, "pinned blobs stay over the limit");
    }

    #[test]
    fn a_resumable_upload_keeps_what_arrived_and_checks_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|k| (k % 251) as u8).collect();
        let hash = BlobHash::of(&data);
        let mut writer = store.resumable_writer(hash, 100_000).unwrap().unwrap();
        assert!(store.resumable_writer(hash, 100_000).unwrap().is_none(), "one writer at a time");
        writer.write(&data[..40_000]).unwrap();
        drop(writer);
        let mut writer = store.resumable_writer(hash, 100_000).unwrap().unwrap();
        assert_eq!(writer.received(), 40_000);
        writer.write(&data[40_000..]).unwrap();
        writer.finish().unwrap();
        assert_eq!(store.get(&hash).unwrap(), data);

        // A partial that does not hash to the promise is dropped whole at the end.
        let other = BlobHash::of(b"something else entirely");
        let mut writer = store.resumable_writer(other, 23).unwrap().unwrap();
        writer.write(b"something else entirelX").unwrap();
        assert!(matches!(writer.finish(), Err(DatasetError::Corrupt { .. })));
        assert_eq!(store.resumable_writer(other, 23).unwrap().unwrap().received(), 0);
    }

    #[test]
    fn refuses_wrong_or_short_uploads_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let promised = BlobHash::of(b"abc");
        let mut writer = store.writer(promised, 3).unwrap();
        writer.write(b"abd").unwrap();
        assert!(matches!(writer.finish(), Err(DatasetError::Corrupt { .. })));
        let mut writer = store.writer(promised, 3).unwrap();
        writer.write(b"ab").unwrap();
        assert!(matches!(writer.finish(), Err(DatasetError::Incomplete { .. })));
        let mut writer = store.writer(promised, 3).unwrap();
        assert!(writer.write(b"abcd").is_err());
        drop(writer);
        assert!(!store.contains(&promised));
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
