//! Images to and from files: `import` of a root-filesystem tarball, `load` of `docker save`
//! archives and OCI image layouts, and `save` of an archive that is both at once (as docker 25+
//! writes), so docker, skopeo (`docker-archive:` and `oci-archive:`) and umoci read it.
use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io::{self, BufWriter, Read, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use oci_spec::image::{ImageIndex, ImageManifest};
use serde::Deserialize;
use serde_json::json;

use super::{
    ImageRecord,
    digest::{Digest, HashingReader, verify},
    extract::{maybe_gunzip, unpack_layer},
    reference::ImageRef,
    store::{ImageStore, Staged, StagedLayer, TempDir, layer_media_type, parse_config, stage_stream},
};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// One entry of a `docker save` archive's manifest.json.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The unpacked outer archive (or an OCI layout directory): its files by name, and the
/// symlinks older `docker save` writes for layers two images share.
struct Bundle {
    root: PathBuf,
    aliases: HashMap<String, String>,
}

impl Bundle {
    /// The file an archive member name refers to, following the archive's own symlinks.
    fn file(&self, name: &str) -> Result<PathBuf> {
        let mut n = normalize(name).ok_or_else(|| anyhow!("archive member {name:?} leaves the archive"))?;
        for _ in 0..16 {
            match self.aliases.get(&n) {
                Some(t) => n = t.clone(),
                None => {
                    let p = self.root.join(&n);
                    let meta = std::fs::symlink_metadata(&p)
                        .map_err(|_| anyhow!("the archive has no {name:?} (truncated or incomplete?)"))?;
                    if !meta.is_file() {
                        bail!("archive member {name:?} is not a regular file");
                    }
                    return Ok(p);
                }
            }
        }
        bail!("archive member {name:?}: too many levels of symlinks")
    }

    fn read(&self, name: &str) -> Result<Vec<u8>> {
        let p = self.file(name)?;
        std::fs::read(&p).with_context(|| format!("reading {name}"))
    }

    fn has(&self, name: &str) -> bool {
        self.file(name).is_ok()
    }

    /// A blob of an OCI layout by digest, its content verified.
    fn blob(&self, d: &Digest, what: &str) -> Result<Vec<u8>> {
        let bytes = self.read(&format!("blobs/sha256/{}", d.hex())).with_context(|| what.to_string())?;
        verify(|| what.to_string(), d, &Digest::of(&bytes))?;
        Ok(bytes)
    }
}

/// A relative archive path without `.` and `..` (None when `..` would leave the archive).
fn normalize(name: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

fn short(d: &str) -> String {
    let hex = d.trim_start_matches("sha256:");
    format!("sha256:{}…", &hex[..hex.len().min(12)])
}

impl ImageStore {
    /// `import`: a root-filesystem tarball (plain or gzip) becomes a one-layer image with an
    /// empty config, as `docker import`.
    pub fn import(&self, r: impl Read, tag: Option<&str>) -> Result<ImageRecord> {
        let tag = tag.map(|t| ImageRef::parse(t).map(|r| r.name_tag()).map_err(|e| anyhow!(e))).transpose()?;
        let tmp = self.temp_dir()?;
        let (blob, blob_size, blob_path) = stage_stream(&tmp, "import-blob", r).context("reading the tarball")?;
        let dir = tmp.path().join("layer");
        std::fs::create_dir(&dir)?;
        let u = unpack_layer(File::open(&blob_path)?, &dir).map_err(|e| anyhow!("importing the tarball: {e}"))?;
        let config = serde_json::to_vec(&json!({
            "architecture": go_arch(),
            "os": "linux",
            "created": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [u.diff_id.as_str()]},
            "history": [{"created_by": "netbee import", "comment": "Imported from tarball"}],
        }))?;
        let manifest = oci_manifest(&config, &[(blob.clone(), blob_size, layer_media_type(&blob_path)?.to_string())])?;
        let staged = Staged {
            config,
            manifest,
            blobs: vec![(blob, blob_path)],
            layers: vec![StagedLayer { diff_id: u.diff_id, dir: Some(dir), size: u.size }],
            tags: tag.into_iter().collect(),
            repo_digests: vec![],
        };
        self.commit(&tmp, staged)
    }

    /// `load -i PATH`: a `docker save` archive or an OCI layout (as a tar, plain or gzip, or a
    /// directory). Every image in it is verified before any is stored.
    pub fn load(&self, path: &Path) -> Result<Vec<ImageRecord>> {
        let tmp = self.temp_dir()?;
        let bundle = if path.is_dir() {
            Bundle { root: path.to_path_buf(), aliases: HashMap::new() }
        } else {
            let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            unpack_outer(f, &tmp).with_context(|| format!("reading the archive {}", path.display()))?
        };
        let staged = if bundle.has("manifest.json") {
            self.stage_docker(&bundle, &tmp)?
        } else if bundle.has("index.json") {
            self.stage_oci(&bundle, &tmp)?
        } else {
            bail!(
                "{} is neither a docker save archive (no manifest.json) nor an OCI layout (no index.json)",
                path.display()
            )
        };
        staged.into_iter().map(|s| self.commit(&tmp, s)).collect()
    }

    fn stage_docker(&self, b: &Bundle, tmp: &TempDir) -> Result<Vec<Staged>> {
        let entries: Vec<DockerManifestEntry> =
            serde_json::from_slice(&b.read("manifest.json")?).context("reading manifest.json")?;
        let mut out = Vec::new();
        for e in entries {
            let tags: Vec<String> = e
                .repo_tags
                .unwrap_or_default()
                .iter()
                .map(|t| ImageRef::parse(t).map(|r| r.name_tag()).map_err(|err| anyhow!(err)))
                .collect::<Result<_>>()?;
            let config = b.read(&e.config)?;
            let id = Digest::of(&config);
            // the config's name carries its digest (`<hex>.json` or `blobs/sha256/<hex>`)
            let base = e.config.rsplit('/').next().unwrap_or(&e.config).trim_end_matches(".json");
            if let Ok(named) = Digest::from_hex(base) {
                verify(|| format!("config of {}", tags.first().cloned().unwrap_or(short(id.as_str()))), &named, &id)?;
            }
            let name = tags.first().cloned().unwrap_or_else(|| short(id.as_str()));
            let parsed = parse_config(&config).with_context(|| format!("reading the config of {name}"))?;
            let diff_ids = parsed.rootfs().diff_ids();
            if diff_ids.len() != e.layers.len() {
                bail!("{name}: manifest.json lists {} layers, its config {}", e.layers.len(), diff_ids.len());
            }
            let mut blobs = Vec::new();
            let mut layers = Vec::new();
            let mut descs = Vec::new();
            for (l, want) in e.layers.iter().zip(diff_ids) {
                let want = Digest::parse(want).map_err(|err| anyhow!("{name}: {err}"))?;
                let what = format!("layer {} of {name}", short(want.as_str()));
                let path = b.file(l).with_context(|| what.clone())?;
                let (d, size) = HashingReader::new(File::open(&path)?).finish()?;
                layers.push(self.stage_layer(tmp, &path, &want, &what)?);
                descs.push((d.clone(), size, layer_media_type(&path)?.to_string()));
                blobs.push((d, path));
            }
            let manifest = oci_manifest(&config, &descs)?;
            out.push(Staged { config, manifest, blobs, layers, tags, repo_digests: vec![] });
        }
        Ok(out)
    }

    fn stage_oci(&self, b: &Bundle, tmp: &TempDir) -> Result<Vec<Staged>> {
        let index = ImageIndex::from_reader(&b.read("index.json")?[..]).context("reading index.json")?;
        let mut out = Vec::new();
        for desc in index.manifests() {
            let annotations = desc.annotations().clone().unwrap_or_default();
            let tag = annotations
                .get(CONTAINERD_NAME)
                .or_else(|| annotations.get(REF_NAME))
                .filter(|n| n.contains([':', '/']))
                .map(|n| ImageRef::parse(n).map(|r| r.name_tag()).map_err(|e| anyhow!(e)))
                .transpose()?;
            let mut d = Digest::parse(desc.digest().as_ref()).map_err(|e| anyhow!("index.json: {e}"))?;
            let mut media = desc.media_type().to_string();
            let name = tag.clone().unwrap_or_else(|| short(d.as_str()));
            let mut bytes = b.blob(&d, &format!("manifest {} of {name}", short(d.as_str())))?;
            if media == OCI_INDEX || media == DOCKER_LIST {
                let inner = ImageIndex::from_reader(&bytes[..])?;
                let m = pick_platform(&inner).ok_or_else(|| anyhow!("{name}: no linux/{} image", go_arch()))?;
                d = Digest::parse(m.0.as_str()).map_err(|e| anyhow!("{name}: {e}"))?;
                media = m.1;
                bytes = b.blob(&d, &format!("manifest {} of {name}", short(d.as_str())))?;
            }
            if media != OCI_MANIFEST && media != DOCKER_MANIFEST {
                bail!("{name}: unsupported manifest type {media}");
            }
            let staged = self.stage_manifest(tmp, &name, bytes, |digest, what| {
                let p = b.file(&format!("blobs/sha256/{}", digest.hex())).with_context(|| what.to_string())?;
                Ok(p)
            })?;
            out.push(Staged { tags: tag.into_iter().collect(), ..staged });
        }
        Ok(out)
    }

    /// Stages the image a manifest describes, its blobs found by `blob_file` (which may fetch
    /// them): every blob's digest and every layer's diff_id verified.
    pub(crate) fn stage_manifest(
        &self,
        tmp: &TempDir,
        name: &str,
        manifest: Vec<u8>,
        mut blob_file: impl FnMut(&Digest, &str) -> Result<PathBuf>,
    ) -> Result<Staged> {
        let m = ImageManifest::from_reader(&manifest[..]).with_context(|| format!("reading the manifest of {name}"))?;
        let cd = Digest::parse(m.config().digest().as_ref()).map_err(|e| anyhow!("{name}: {e}"))?;
        let what = format!("config {} of {name}", short(cd.as_str()));
        let config = std::fs::read(blob_file(&cd, &what)?)?;
        verify(|| what.clone(), &cd, &Digest::of(&config))?;
        let parsed = parse_config(&config).with_context(|| what.clone())?;
        let diff_ids = parsed.rootfs().diff_ids();
        if diff_ids.len() != m.layers().len() {
            bail!("{name}: the manifest lists {} layers, the config {}", m.layers().len(), diff_ids.len());
        }
        let mut blobs = Vec::new();
        let mut layers = Vec::new();
        for (l, want) in m.layers().iter().zip(diff_ids) {
            let bd = Digest::parse(l.digest().as_ref()).map_err(|e| anyhow!("{name}: {e}"))?;
            let want = Digest::parse(want).map_err(|e| anyhow!("{name}: {e}"))?;
            let what = format!("layer {} of {name}", short(bd.as_str()));
            let path = blob_file(&bd, &what)?;
            let (actual, _) = HashingReader::new(File::open(&path)?).finish()?;
            verify(|| what.clone(), &bd, &actual)?;
            layers.push(self.stage_layer(tmp, &path, &want, &format!("layer {} of {name}", short(want.as_str())))?);
            blobs.push((bd, path));
        }
        Ok(Staged { config, manifest, blobs, layers, tags: vec![], repo_digests: vec![] })
    }

    /// `save -o PATH IMAGE...`: one archive that is both a `docker save` archive (manifest.json,
    /// repositories) and an OCI image layout (oci-layout, index.json, blobs/sha256), written to a
    /// temporary name beside `path` and renamed when complete.
    pub fn save(&self, refs: &[String], path: &Path) -> Result<()> {
        let mut images: Vec<(ImageRecord, Vec<String>)> = Vec::new();
        for r in refs {
            let img = self.find(r)?;
            let tag = ImageRef::parse(r).ok().map(|p| p.name_tag()).filter(|t| img.repo_tags.contains(t));
            match images.iter_mut().find(|(i, _)| i.id == img.id) {
                Some((_, tags)) => tags.extend(tag),
                None => images.push((img, tag.into_iter().collect())),
            }
        }
        let part = path.with_extension(format!("part-{}", &crate::names::new_id()[..8]));
        let result = (|| -> Result<()> {
            let mut b = tar::Builder::new(BufWriter::new(File::create(&part)?));
            b.mode(tar::HeaderMode::Deterministic);
            add_bytes(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            let mut written = std::collections::HashSet::new();
            let mut index = Vec::new();
            let mut docker = Vec::new();
            let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
            for (img, tags) in &images {
                let (m, mbytes) = self.manifest(img)?;
                let md = Digest::of(&mbytes);
                let cd = Digest::parse(m.config().digest().as_ref()).map_err(|e| anyhow!(e))?;
                let mut layer_names = Vec::new();
                for d in std::iter::once(&cd).chain([&md]).cloned().chain(
                    m.layers()
                        .iter()
                        .map(|l| Digest::parse(l.digest().as_ref()).map_err(|e| anyhow!(e)))
                        .collect::<Result<Vec<_>>>()?,
                ) {
                    let name = format!("blobs/sha256/{}", d.hex());
                    if d != cd && d != md {
                        layer_names.push(name.clone());
                    }
                    if written.insert(d.clone()) {
                        let mut f =
                            File::open(self.blob_path(&d)).with_context(|| format!("blob {d} of {}", img.id))?;
                        let len = f.metadata()?.len();
                        let mut h = file_header(len);
                        b.append_data(&mut h, &name, &mut f)?;
                    }
                }
                let media = serde_json::from_slice::<serde_json::Value>(&mbytes)?
                    .get("mediaType")
                    .and_then(|v| v.as_str())
                    .unwrap_or(OCI_MANIFEST)
                    .to_string();
                let desc = |ann: Option<serde_json::Value>| {
                    let mut d = json!({"mediaType": media, "digest": md.as_str(), "size": mbytes.len()});
                    if let Some(a) = ann {
                        d["annotations"] = a;
                    }
                    d
                };
                if tags.is_empty() {
                    index.push(desc(None));
                }
                for t in tags {
                    let r = ImageRef::parse(t).map_err(|e| anyhow!(e))?;
                    let full = format!("{}/{}:{}", r.registry, r.repository, r.tag_or_latest());
                    index.push(desc(Some(json!({ CONTAINERD_NAME: full, REF_NAME: r.tag_or_latest() }))));
                    repositories.entry(r.name()).or_default().insert(r.tag_or_latest().into(), cd.hex().into());
                }
                docker.push(json!({
                    "Config": format!("blobs/sha256/{}", cd.hex()),
                    "RepoTags": tags,
                    "Layers": layer_names,
                }));
            }
            add_bytes(
                &mut b,
                "index.json",
                &serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index}))?,
            )?;
            add_bytes(&mut b, "manifest.json", &serde_json::to_vec(&docker)?)?;
            if !repositories.is_empty() {
                add_bytes(&mut b, "repositories", &serde_json::to_vec(&repositories)?)?;
            }
            let mut w = b.into_inner()?;
            w.flush()?;
            w.get_ref().sync_all()?;
            Ok(())
        })();
        match result {
            Ok(()) => std::fs::rename(&part, path).with_context(|| format!("writing {}", path.display())),
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                Err(e.context(format!("writing {}", path.display())))
            }
        }
    }
}

fn file_header(len: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(len);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

fn add_bytes<W: Write>(b: &mut tar::Builder<W>, name: &str, data: &[u8]) -> Result<()> {
    let mut h = file_header(data.len() as u64);
    b.append_data(&mut h, name, data)?;
    Ok(())
}

/// The OCI manifest this node writes for an image it did not receive one for.
fn oci_manifest(config: &[u8], layers: &[(Digest, u64, String)]) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": Digest::of(config).as_str(), "size": config.len()},
        "layers": layers.iter().map(|(d, s, m)| json!({"mediaType": m, "digest": d.as_str(), "size": s})).collect::<Vec<_>>(),
    }))?)
}

/// The architecture name docker and OCI use for this machine.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

/// The manifest for this node's platform in an index: (digest, media type).
pub(crate) fn pick_platform(index: &ImageIndex) -> Option<(String, String)> {
    let ms = index.manifests();
    let fits = |d: &&oci_spec::image::Descriptor| {
        d.platform().as_ref().is_none_or(|p| p.os().to_string() == "linux" && p.architecture().to_string() == go_arch())
    };
    ms.iter().find(fits).map(|d| (d.digest().to_string(), d.media_type().to_string()))
}

/// Unpacks the outer archive (plain or gzip) into `tmp/archive`: regular files and
/// directories, with `..` and absolute names refused; symlinks (older `docker save` links
/// shared layers) are recorded as aliases, never created.
fn unpack_outer(r: impl Read, tmp: &TempDir) -> Result<Bundle> {
    let root = tmp.path().join("archive");
    std::fs::create_dir(&root)?;
    let mut aliases = HashMap::new();
    let mut ar = tar::Archive::new(maybe_gunzip(r)?);
    for e in ar.entries()? {
        let mut e = e?;
        let raw = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        if raw.starts_with('/') || raw.split('/').any(|c| c == "..") {
            bail!("archive member {raw:?}: path leaves the archive");
        }
        let Some(name) = normalize(&raw) else { bail!("archive member {raw:?}: path leaves the archive") };
        if name.is_empty() {
            continue;
        }
        match e.header().entry_type() {
            tar::EntryType::Directory => std::fs::create_dir_all(root.join(&name))?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let p = root.join(&name);
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let mut f = File::create(&p)?;
                io::copy(&mut e, &mut f).with_context(|| format!("archive member {name:?}"))?;
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = String::from_utf8_lossy(&e.link_name_bytes().unwrap_or_default()).into_owned();
                let base = if e.header().entry_type() == tar::EntryType::Symlink {
                    Path::new(&name).parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
                } else {
                    String::new()
                };
                let t = normalize(&format!("{base}/{target}"))
                    .filter(|_| !target.starts_with('/'))
                    .ok_or_else(|| anyhow!("archive member {name:?}: link to {target:?} leaves the archive"))?;
                aliases.insert(name, t);
            }
            _ => {}
        }
    }
    Ok(Bundle { root, aliases })
}
