//! The image store under `<daemon root>/images/`:
//! - `blobs/sha256/<hex>`: configs, manifests and layers as received (compressed or not);
//! - `layers/<diff_id hex>/`: each layer unpacked once, shared by every image that has it;
//! - `tmp/`: where imports stage everything before renaming it into place.
//!
//! Records (`ImageRecord`) live in the daemon's database. An import stages its blobs and layers
//! under `tmp/`, verifies every digest, and only then renames them into place and writes the
//! record, so a failed import leaves the store as it was. A crash between the renames and the
//! record leaves unreferenced blobs and layers, which the garbage collection at start-up removes
//! (as it removes `tmp/`).
use std::{
    collections::{BTreeSet, HashSet},
    fs::File,
    io::{self, Write as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use anyhow::{Context as _, Result, anyhow, bail};
use oci_spec::image::{ImageConfiguration, ImageManifest, MediaType};

use super::{
    ImageConfig, ImageRecord,
    digest::{Digest, HashingReader, verify},
    extract::{maybe_gunzip, unpack_layer},
    reference::ImageRef,
    registry::RegistryConfig,
};
use crate::{
    api::{ApiError, ApiResult},
    portspec::Proto,
    store::Store,
};

#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    db: Arc<Store>,
    /// Serializes changes of records, layers and blobs: an import's commit against a removal's
    /// garbage collection (which must not delete a layer an import is about to reference).
    lock: Mutex<()>,
    registry: RegistryConfig,
}

/// One line of what `rmi` did, as docker prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoveOutcome {
    Untagged(String),
    Deleted(String),
}

/// An image ready to be committed: everything in it verified, its files under a staging dir.
pub(crate) struct Staged {
    /// The config blob exactly as received: the image ID is its digest.
    pub config: Vec<u8>,
    /// The manifest as received, or written for an import.
    pub manifest: Vec<u8>,
    /// Layer blobs as received, staged as files under `tmp` (digest, path).
    pub blobs: Vec<(Digest, PathBuf)>,
    pub layers: Vec<StagedLayer>,
    pub tags: Vec<String>,
    pub repo_digests: Vec<String>,
}

pub(crate) struct StagedLayer {
    pub diff_id: Digest,
    /// The unpacked tree under `tmp`; None when the store already has the layer.
    pub dir: Option<PathBuf>,
    pub size: u64,
}

/// A directory under `images/tmp/`, removed when dropped (so every error path cleans up).
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.0.display(), "removing an import's staging directory: {e}");
        }
    }
}

impl ImageStore {
    /// Opens (creating) `<daemon_root>/images`, removes what interrupted imports left, and
    /// collects layers and blobs no image references.
    pub fn open(daemon_root: &Path, db: Arc<Store>, registry: RegistryConfig) -> Result<ImageStore> {
        let dir = daemon_root.join("images");
        for d in [dir.join("blobs/sha256"), dir.join("layers"), dir.join("tmp")] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let s = ImageStore { inner: Arc::new(Inner { dir, db, lock: Mutex::new(()), registry }) };
        for e in std::fs::read_dir(s.inner.dir.join("tmp"))? {
            let p = e?.path();
            std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        }
        {
            let guard = s.lock();
            s.collect_garbage(&guard)?;
        }
        Ok(s)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn registry(&self) -> &RegistryConfig {
        &self.inner.registry
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.inner.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.inner.dir.join("blobs/sha256").join(d.hex())
    }

    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.inner.dir.join("layers").join(diff_id.hex())
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let mut v: Vec<ImageRecord> = self.inner.db.list()?;
        v.sort_by_key(|r| std::cmp::Reverse(r.created));
        Ok(v)
    }

    /// A fresh staging directory under `images/tmp/`.
    pub(crate) fn temp_dir(&self) -> Result<TempDir> {
        let p = self.inner.dir.join("tmp").join(crate::names::new_id());
        std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }

    /// Finds an image as the API does, with docker's errors.
    pub fn find(&self, reference: &str) -> ApiResult<ImageRecord> {
        let all = self.list()?;
        find_in(&all, reference).cloned()
    }

    /// Reads a stored blob.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        std::fs::read(self.blob_path(d)).with_context(|| format!("reading blob {d}"))
    }

    /// Writes a small blob (config, manifest) into `tmp` and returns its staged path.
    pub(crate) fn stage_bytes(tmp: &TempDir, bytes: &[u8]) -> Result<(Digest, PathBuf)> {
        let d = Digest::of(bytes);
        let p = tmp.path().join(format!("blob-{}", d.hex()));
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
        Ok((d, p))
    }

    /// Verifies and unpacks one layer blob (a staged file, compressed or not) whose config says
    /// its uncompressed digest is `diff_id`. A layer the store already has is only hashed.
    /// `what` names it for errors (`layer sha256:… of busybox:1`).
    pub(crate) fn stage_layer(&self, tmp: &TempDir, blob: &Path, diff_id: &Digest, what: &str) -> Result<StagedLayer> {
        let f = File::open(blob).with_context(|| format!("{what}: opening {}", blob.display()))?;
        if self.layer_dir(diff_id).is_dir()
            && let Some(size) = self.known_layer_size(diff_id)?
        {
            let r = HashingReader::new(maybe_gunzip(f).with_context(|| format!("{what}: reading"))?);
            let (actual, _) = r.finish().with_context(|| format!("{what}: reading"))?;
            verify(|| what.to_string(), diff_id, &actual)?;
            return Ok(StagedLayer { diff_id: diff_id.clone(), dir: None, size });
        }
        let dir = tmp.path().join(format!("layer-{}", diff_id.hex()));
        if dir.exists() {
            // the same layer twice in one image: unpacked once
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir(&dir)?;
        let u = unpack_layer(f, &dir).map_err(|e| anyhow!("{what}: {e}"))?;
        verify(|| what.to_string(), diff_id, &u.diff_id)?;
        Ok(StagedLayer { diff_id: diff_id.clone(), dir: Some(dir), size: u.size })
    }

    fn known_layer_size(&self, diff_id: &Digest) -> Result<Option<u64>> {
        for r in self.list()? {
            if let Some(i) = r.layers.iter().position(|l| l == diff_id.as_str())
                && let Some(s) = r.layer_sizes.get(i)
            {
                return Ok(Some(*s));
            }
        }
        Ok(None)
    }

    /// Renames a verified image into place and records it. Tags it takes are taken from other
    /// images (which stay, untagged, as docker's dangling images do).
    pub(crate) fn commit(&self, tmp: &TempDir, s: Staged) -> Result<ImageRecord> {
        let parsed = parse_config(&s.config).context("reading the image config")?;
        let diff_ids: Vec<String> = parsed.rootfs().diff_ids().clone();
        let staged_ids: Vec<String> = s.layers.iter().map(|l| l.diff_id.to_string()).collect();
        if diff_ids != staged_ids {
            bail!("the image's layers do not match its config's rootfs.diff_ids");
        }
        let (config_digest, config_path) = Self::stage_bytes(tmp, &s.config)?;
        let (manifest_digest, manifest_path) = Self::stage_bytes(tmp, &s.manifest)?;
        let guard = self.lock();
        let mut blobs = vec![config_digest.to_string(), manifest_digest.to_string()];
        for (d, p) in [(config_digest.clone(), config_path), (manifest_digest.clone(), manifest_path)]
            .into_iter()
            .chain(s.blobs.iter().cloned())
        {
            let dest = self.blob_path(&d);
            if !dest.exists() {
                std::fs::rename(&p, &dest).with_context(|| format!("storing blob {d}"))?;
            }
            if !blobs.contains(&d.to_string()) {
                blobs.push(d.to_string());
            }
        }
        for l in &s.layers {
            let dest = self.layer_dir(&l.diff_id);
            if let Some(dir) = &l.dir
                && !dest.exists()
            {
                std::fs::rename(dir, &dest).with_context(|| format!("storing layer {}", l.diff_id))?;
            }
            if !dest.is_dir() {
                bail!("layer {} vanished from the store during the import", l.diff_id);
            }
        }
        let id = config_digest.to_string();
        let all: Vec<ImageRecord> = self.inner.db.list()?;
        let mut rec = match all.iter().find(|r| r.id == id) {
            Some(r) => r.clone(),
            None => ImageRecord {
                id: id.clone(),
                repo_tags: vec![],
                repo_digests: vec![],
                created: parsed
                    .created()
                    .as_deref()
                    .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
                    .map(|c| c.with_timezone(&chrono::Utc))
                    .unwrap_or_else(chrono::Utc::now),
                size: s.layers.iter().map(|l| l.size).sum(),
                config: image_config(&parsed),
                layers: diff_ids,
                layer_sizes: s.layers.iter().map(|l| l.size).collect(),
                manifest: manifest_digest.to_string(),
                blobs: blobs.clone(),
                architecture: parsed.architecture().to_string(),
                os: parsed.os().to_string(),
            },
        };
        for b in blobs {
            if !rec.blobs.contains(&b) {
                rec.blobs.push(b);
            }
        }
        for t in &s.tags {
            for mut other in all.iter().filter(|r| r.id != id && r.repo_tags.contains(t)).cloned() {
                other.repo_tags.retain(|x| x != t);
                self.inner.db.put(&other)?;
            }
            if !rec.repo_tags.contains(t) {
                rec.repo_tags.push(t.clone());
            }
        }
        for d in &s.repo_digests {
            if !rec.repo_digests.contains(d) {
                rec.repo_digests.push(d.clone());
            }
        }
        self.inner.db.put(&rec)?;
        drop(guard);
        Ok(rec)
    }

    /// `tag SRC DST`.
    pub fn tag(&self, src: &str, dst: &str) -> ApiResult<()> {
        let target = ImageRef::parse(dst).map_err(ApiError::bad_request)?;
        if target.digest.is_some() {
            return Err(ApiError::bad_request(format!("refusing to create a tag with a digest reference: {dst}")));
        }
        let t = target.name_tag();
        let _guard = self.lock();
        let all: Vec<ImageRecord> = self.inner.db.list()?;
        let mut img = find_in(&all, src)?.clone();
        for mut other in all.iter().filter(|r| r.id != img.id && r.repo_tags.contains(&t)).cloned() {
            other.repo_tags.retain(|x| *x != t);
            self.inner.db.put(&other)?;
        }
        if !img.repo_tags.contains(&t) {
            img.repo_tags.push(t);
            self.inner.db.put(&img)?;
        }
        Ok(())
    }

    /// Records that the image was pushed as or pulled from `repo@digest`.
    pub fn add_repo_digest(&self, id: &str, repo_digest: String) -> Result<()> {
        let _guard = self.lock();
        if let Some(mut r) = self.inner.db.get::<ImageRecord>(id)?
            && !r.repo_digests.contains(&repo_digest)
        {
            r.repo_digests.push(repo_digest);
            self.inner.db.put(&r)?;
        }
        Ok(())
    }

    /// `rmi [-f] REF`, as docker: a tag of an image with other tags is only untagged; the last
    /// reference (or the image ID) deletes the image, its unshared layers and blobs. `users` are
    /// the (container ID, image ID) pairs of the node's containers: an image one of them uses is
    /// refused unless forced, and even forced it is only untagged (the container keeps its
    /// layers).
    pub fn remove(&self, reference: &str, force: bool, users: &[(String, String)]) -> ApiResult<Vec<RemoveOutcome>> {
        let guard = self.lock();
        let all: Vec<ImageRecord> = self.inner.db.list()?;
        let mut img = find_in(&all, reference)?.clone();
        let by_tag = ImageRef::parse(reference)
            .ok()
            .filter(|r| r.digest.is_none())
            .map(|r| r.name_tag())
            .filter(|t| img.repo_tags.contains(t));
        let user = users.iter().find(|(_, i)| *i == img.id).map(|(c, _)| c.clone());
        let mut out = Vec::new();
        if let Some(t) = &by_tag
            && img.repo_tags.len() > 1
        {
            img.repo_tags.retain(|x| x != t);
            self.inner.db.put(&img)?;
            return Ok(vec![RemoveOutcome::Untagged(t.clone())]);
        }
        if !force {
            if let Some(c) = &user {
                let what = if by_tag.is_some() { "repository reference" } else { "image" };
                return Err(ApiError::conflict(format!(
                    "conflict: unable to remove {what} {reference:?} (must force) - container {} is using its \
                     referenced image {}",
                    short(c),
                    short(img.id.trim_start_matches("sha256:"))
                )));
            }
            if by_tag.is_none() && img.repo_tags.len() > 1 {
                return Err(ApiError::conflict(format!(
                    "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                    short(img.id.trim_start_matches("sha256:"))
                )));
            }
        }
        for t in std::mem::take(&mut img.repo_tags) {
            out.push(RemoveOutcome::Untagged(t));
        }
        if user.is_some() {
            // forced while a container uses it: untagged only, its layers stay for the container
            self.inner.db.put(&img)?;
            return Ok(out);
        }
        for d in std::mem::take(&mut img.repo_digests) {
            out.push(RemoveOutcome::Untagged(d));
        }
        self.inner.db.delete::<ImageRecord>(&img.id)?;
        out.push(RemoveOutcome::Deleted(img.id.clone()));
        self.collect_garbage(&guard)?;
        Ok(out)
    }

    /// `image prune`: removes dangling images (no tag) no container uses.
    pub fn prune(&self, users: &[(String, String)]) -> Result<(Vec<RemoveOutcome>, u64)> {
        let guard = self.lock();
        let mut out = Vec::new();
        let mut freed = 0;
        for r in self.inner.db.list::<ImageRecord>()? {
            if r.repo_tags.is_empty() && !users.iter().any(|(_, i)| *i == r.id) {
                self.inner.db.delete::<ImageRecord>(&r.id)?;
                freed += r.size;
                out.push(RemoveOutcome::Deleted(r.id));
            }
        }
        if !out.is_empty() {
            self.collect_garbage(&guard)?;
        }
        Ok((out, freed))
    }

    /// Removes every layer directory and blob no image record references. A layer is first
    /// renamed into `tmp/` so a crash halfway never leaves a partial tree under its real name.
    fn collect_garbage(&self, _guard: &MutexGuard<'_, ()>) -> Result<()> {
        let all: Vec<ImageRecord> = self.inner.db.list()?;
        let layers: HashSet<&str> =
            all.iter().flat_map(|r| r.layers.iter()).filter_map(|l| l.strip_prefix("sha256:")).collect();
        let blobs: HashSet<&str> =
            all.iter().flat_map(|r| r.blobs.iter()).filter_map(|b| b.strip_prefix("sha256:")).collect();
        for e in std::fs::read_dir(self.inner.dir.join("layers"))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !layers.contains(name.as_str()) {
                let doomed = self.inner.dir.join("tmp").join(format!("gc-{name}"));
                std::fs::rename(e.path(), &doomed).with_context(|| format!("removing layer sha256:{name}"))?;
                std::fs::remove_dir_all(&doomed).with_context(|| format!("removing layer sha256:{name}"))?;
            }
        }
        for e in std::fs::read_dir(self.inner.dir.join("blobs/sha256"))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !blobs.contains(name.as_str()) {
                std::fs::remove_file(e.path()).with_context(|| format!("removing blob sha256:{name}"))?;
            }
        }
        Ok(())
    }

    /// The image's manifest as stored, parsed (OCI and docker schema2 read alike).
    pub fn manifest(&self, img: &ImageRecord) -> Result<(ImageManifest, Vec<u8>)> {
        let d = Digest::parse(&img.manifest).map_err(|e| anyhow!("image {}: {e}", img.id))?;
        let bytes = self.read_blob(&d)?;
        let m = ImageManifest::from_reader(&bytes[..]).with_context(|| format!("reading manifest {d}"))?;
        Ok((m, bytes))
    }
}

/// What the runtime asks of the store.
impl ImageStore {
    /// The image a reference names: `repo[:tag]`, `repo@sha256:...`, a full or unique prefix of
    /// an image ID. Not found → "No such image: X", as docker's.
    pub fn resolve(&self, reference: &str) -> Result<ImageRecord> {
        Ok(self.find(reference)?)
    }

    /// The directories of the image's unpacked layers, topmost first (overlayfs `lowerdir` order).
    pub fn layer_dirs(&self, image: &ImageRecord) -> Result<Vec<PathBuf>> {
        image
            .layers
            .iter()
            .rev()
            .map(|l| {
                let d = Digest::parse(l).map_err(|e| anyhow!("image {}: {e}", image.id))?;
                let dir = self.layer_dir(&d);
                if !dir.is_dir() {
                    bail!("layer {l} of image {} is missing from the store", image.id);
                }
                Ok(dir)
            })
            .collect()
    }
}

/// The image `reference` names: a `name[:tag]`, `name@sha256:...`, a full ID with or without
/// `sha256:`, or a unique prefix of an ID.
fn find_in<'a>(all: &'a [ImageRecord], reference: &str) -> ApiResult<&'a ImageRecord> {
    let not_found = || ApiError::not_found(format!("No such image: {reference}"));
    if let Some(r) = all.iter().find(|r| r.id == reference) {
        return Ok(r);
    }
    if let Ok(parsed) = ImageRef::parse(reference) {
        if let Some(d) = &parsed.digest {
            let want = format!("{}@{d}", parsed.name());
            return all.iter().find(|r| r.repo_digests.contains(&want)).ok_or_else(not_found);
        }
        let t = parsed.name_tag();
        if let Some(r) = all.iter().find(|r| r.repo_tags.contains(&t)) {
            return Ok(r);
        }
    }
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_found());
    }
    let mut m = all.iter().filter(|r| r.id.trim_start_matches("sha256:").starts_with(hex));
    match (m.next(), m.next()) {
        (Some(r), None) => Ok(r),
        (None, _) => Err(not_found()),
        (Some(_), Some(_)) => Err(ApiError::bad_request(format!("image {reference} is ambiguous"))),
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

pub(crate) fn parse_config(bytes: &[u8]) -> Result<ImageConfiguration> {
    Ok(ImageConfiguration::from_reader(bytes)?)
}

/// What a container runs with, from the OCI config.
pub(crate) fn image_config(c: &ImageConfiguration) -> ImageConfig {
    let Some(cfg) = c.config() else { return ImageConfig::default() };
    let exposed_ports = cfg
        .exposed_ports()
        .iter()
        .flatten()
        .filter_map(|p| {
            let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
            Some((port.parse().ok()?, proto.parse::<Proto>().ok()?))
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    ImageConfig {
        entrypoint: cfg.entrypoint().clone().unwrap_or_default(),
        cmd: cfg.cmd().clone().unwrap_or_default(),
        env: cfg.env().clone().unwrap_or_default(),
        working_dir: cfg.working_dir().clone().unwrap_or_default(),
        user: cfg.user().clone().unwrap_or_default(),
        exposed_ports,
        labels: cfg.labels().clone().unwrap_or_default().into_iter().collect(),
    }
}

/// The media type a layer blob gets in a manifest this node writes: tar or tar+gzip, by its
/// magic bytes.
pub(crate) fn layer_media_type(blob: &Path) -> Result<MediaType> {
    let mut magic = [0u8; 2];
    let n = io::Read::read(&mut File::open(blob)?, &mut magic)?;
    Ok(if n == 2 && magic == [0x1f, 0x8b] { MediaType::ImageLayerGzip } else { MediaType::ImageLayer })
}

/// Copies `r` into a new staged file, returning its digest and size.
pub(crate) fn stage_stream(tmp: &TempDir, name: &str, mut r: impl io::Read) -> Result<(Digest, u64, PathBuf)> {
    let p = tmp.path().join(name);
    let mut w = super::digest::HashingWriter::new(io::BufWriter::new(File::create(&p)?));
    io::copy(&mut r, &mut w).with_context(|| format!("writing {}", p.display()))?;
    let (d, n, mut inner) = w.finish();
    inner.flush()?;
    Ok((d, n, p))
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
