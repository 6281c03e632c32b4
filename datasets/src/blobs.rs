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

    /// Copies a file into the store; returns its hash and size.
    pub fn put_file(&self, path: &Path) -> Result<(BlobHash, u64)> {
        let bytes = std::fs::read(path).map_err(io(format!("cannot read {}", path.display())))?;
        Ok((self.put(&bytes)?, bytes.len() as u64))
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
        })
    }
}

fn unique_suffix() -> String {
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
        if self.file.is_some() {
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
