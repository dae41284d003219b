//! `sha256:<hex>` digests: computing them while data streams through, and the mismatch error
//! every import reports in the same words.
use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

/// A content digest, `sha256:<64 hex>` (the only algorithm docker and OCI use in practice).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// Parses `sha256:<64 lowercase hex>`; anything else (other algorithms, a path-like value)
    /// is refused, because the hex part becomes a file name in the store.
    pub fn parse(s: &str) -> Result<Digest, String> {
        let hex = s.strip_prefix("sha256:").ok_or_else(|| format!("unsupported digest {s:?} (want sha256:<hex>)"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(format!("invalid digest {s:?}"));
        }
        Ok(Digest(s.to_string()))
    }

    pub fn from_hex(hex: &str) -> Result<Digest, String> {
        Digest::parse(&format!("sha256:{hex}"))
    }

    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Content that is not what its name says: `what` (e.g. `layer sha256:ab… of busybox:1`) was
/// expected to hash to `expected` and hashes to `actual`.
#[derive(Debug, thiserror::Error)]
#[error("{what}: digest mismatch (archive says {expected}, content is {actual})")]
pub struct DigestMismatch {
    pub what: String,
    pub expected: Digest,
    pub actual: Digest,
}

/// Fails with [`DigestMismatch`] unless `actual == expected`.
pub fn verify(what: impl FnOnce() -> String, expected: &Digest, actual: &Digest) -> Result<(), DigestMismatch> {
    if expected == actual {
        Ok(())
    } else {
        Err(DigestMismatch { what: what(), expected: expected.clone(), actual: actual.clone() })
    }
}

/// A reader that hashes and counts what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Sha256::new(), count: 0 }
    }

    /// Reads the rest of the stream (tar archives end with padding past their last entry, and
    /// the digest covers it) and returns the digest and the byte count.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((Digest(format!("sha256:{}", hex::encode(self.hasher.finalize()))), self.count))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A writer that hashes what passes through it on its way to `inner`.
pub struct HashingWriter<W> {
    pub inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), count: 0 }
    }

    pub fn finish(self) -> (Digest, u64, W) {
        (Digest(format!("sha256:{}", hex::encode(self.hasher.finalize()))), self.count, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
