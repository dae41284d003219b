//! `pull` and `push` against a registry speaking the OCI distribution API, with the
//! `oci-client` crate. HTTPS everywhere except registries the daemon was started with
//! `--insecure-registry HOST:PORT` for, as docker.
use anyhow::{Context as _, Result, anyhow};
use oci_client::{
    Client, Reference, RegistryOperation,
    client::{ClientConfig, ClientProtocol},
    secrets::RegistryAuth,
};
use oci_spec::image::{ImageIndex, ImageManifest};

use super::{
    ImageRecord,
    archive::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, pick_platform},
    digest::{Digest, verify},
    reference::ImageRef,
    store::{ImageStore, stage_stream},
};

/// How the daemon reaches registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    /// `HOST:PORT` of registries spoken to in plain HTTP.
    pub insecure: Vec<String>,
}

impl RegistryConfig {
    fn client(&self) -> Client {
        // reqwest is built without a default TLS provider; ring is the one the project links
        let _ = rustls::crypto::ring::default_provider().install_default();
        Client::new(ClientConfig { protocol: ClientProtocol::HttpsExcept(self.insecure.clone()), ..Default::default() })
    }
}

fn oci_ref(r: &ImageRef) -> Reference {
    match (&r.digest, &r.tag) {
        (Some(d), None) => Reference::with_digest(r.registry.clone(), r.repository.clone(), d.to_string()),
        _ => Reference::with_tag(r.registry.clone(), r.repository.clone(), r.tag_or_latest().to_string()),
    }
}

const ACCEPTED: [&str; 4] = [OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST];

/// A registry error in docker's words where it has some (a missing tag is "not found").
fn registry_error(what: &str, e: oci_client::errors::OciDistributionError) -> anyhow::Error {
    let msg = e.to_string();
    if msg.contains("MANIFEST_UNKNOWN") || msg.to_lowercase().contains("manifest unknown") || msg.contains("404") {
        anyhow!("{what} not found: manifest unknown")
    } else {
        anyhow!("{what}: {msg}")
    }
}

impl ImageStore {
    /// `pull REF`: fetches the manifest (this node's platform from an index), the config and
    /// the layers into a staging directory, verifies each against its digest, and stores the
    /// image tagged `REF` with the repo digest it was pulled as.
    pub async fn pull(&self, reference: &str) -> Result<ImageRecord> {
        let r = ImageRef::parse(reference).map_err(|e| anyhow!(e))?;
        let shown = r.display();
        let oref = oci_ref(&r);
        let client = self.registry().client();
        let auth = RegistryAuth::Anonymous;
        let (bytes, digest) = client
            .pull_manifest_raw(&oref, &auth, &ACCEPTED)
            .await
            .map_err(|e| registry_error(&format!("manifest for {shown}"), e))?;
        let top = Digest::of(&bytes);
        if let Some(want) = &r.digest {
            verify(|| format!("manifest of {shown}"), want, &top)?;
        } else if let Ok(said) = Digest::parse(&digest) {
            verify(|| format!("manifest of {shown}"), &said, &top)?;
        }
        let media = media_type(&bytes);
        let manifest = if media.as_deref() == Some(OCI_INDEX) || media.as_deref() == Some(DOCKER_LIST) {
            let index = ImageIndex::from_reader(&bytes[..]).with_context(|| format!("reading the index of {shown}"))?;
            let (d, _) =
                pick_platform(&index).ok_or_else(|| anyhow!("{shown}: no manifest for linux/{}", super::go_arch()))?;
            let d = Digest::parse(&d).map_err(|e| anyhow!("{shown}: {e}"))?;
            let pref = Reference::with_digest(r.registry.clone(), r.repository.clone(), d.to_string());
            let (m, _) = client
                .pull_manifest_raw(&pref, &auth, &ACCEPTED)
                .await
                .map_err(|e| registry_error(&format!("manifest {d} of {shown}"), e))?;
            verify(|| format!("manifest of {shown}"), &d, &Digest::of(&m))?;
            m.to_vec()
        } else {
            bytes.to_vec()
        };
        let m =
            ImageManifest::from_reader(&manifest[..]).with_context(|| format!("reading the manifest of {shown}"))?;
        let tmp = self.temp_dir()?;
        // every blob downloaded first (async), then verified and unpacked off the runtime
        let mut files = Vec::new();
        for (i, desc) in std::iter::once(m.config()).chain(m.layers().iter()).enumerate() {
            let d = Digest::parse(desc.digest().as_ref()).map_err(|e| anyhow!("{shown}: {e}"))?;
            let mut buf = Vec::new();
            client
                .pull_blob(&oref, d.as_str(), &mut buf)
                .await
                .map_err(|e| registry_error(&format!("blob {d} of {shown}"), e))?;
            let (got, _, path) = stage_stream(&tmp, &format!("pulled-{i}"), &buf[..])?;
            verify(|| format!("blob {d} of {shown}"), &d, &got)?;
            files.push((d, path));
        }
        let store = self.clone();
        let name = r.name_tag();
        let repo_digest = format!("{}@{top}", r.name());
        let with_tag = r.tag.is_some() || r.digest.is_none();
        tokio::task::spawn_blocking(move || {
            let staged = store.stage_manifest(&tmp, &name, manifest, |d, what| {
                files
                    .iter()
                    .find(|(fd, _)| fd == d)
                    .map(|(_, p)| p.clone())
                    .ok_or_else(|| anyhow!("{what}: not fetched"))
            })?;
            let staged = super::store::Staged {
                tags: if with_tag { vec![name.clone()] } else { vec![] },
                repo_digests: vec![repo_digest],
                ..staged
            };
            store.commit(&tmp, staged)
        })
        .await?
    }

    /// `push REF`: uploads the layers, the config and the manifest the image is stored with,
    /// then records `name@digest` as its repo digest. Returns the manifest digest.
    pub async fn push(&self, reference: &str) -> Result<(ImageRecord, Digest)> {
        let r = ImageRef::parse(reference).map_err(|e| anyhow!(e))?;
        let img = self.find(&r.name_tag())?;
        let shown = r.name_tag();
        let oref = oci_ref(&r);
        let (m, mbytes) = self.manifest(&img)?;
        let client = self.registry().client();
        client
            .auth(&oref, &RegistryAuth::Anonymous, RegistryOperation::Push)
            .await
            .map_err(|e| registry_error(&format!("pushing {shown}"), e))?;
        for desc in m.layers().iter().chain(std::iter::once(m.config())) {
            let d = Digest::parse(desc.digest().as_ref()).map_err(|e| anyhow!("{shown}: {e}"))?;
            if client.blob_exists(&oref, d.as_str()).await.unwrap_or(false) {
                continue;
            }
            let data = self.read_blob(&d)?;
            client
                .push_blob(&oref, data, d.as_str())
                .await
                .map_err(|e| registry_error(&format!("pushing blob {d} of {shown}"), e))?;
        }
        let ct = media_type(&mbytes).unwrap_or_else(|| OCI_MANIFEST.to_string());
        let md = Digest::of(&mbytes);
        client
            .push_manifest_raw(&oref, mbytes, ct.parse().context("manifest media type")?)
            .await
            .map_err(|e| registry_error(&format!("pushing the manifest of {shown}"), e))?;
        self.add_repo_digest(&img.id, format!("{}@{md}", r.name()))?;
        Ok((img, md))
    }
}

fn media_type(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if let Some(m) = v.get("mediaType").and_then(|m| m.as_str()) {
        return Some(m.to_string());
    }
    // OCI allows leaving it out: an index has `manifests`, a manifest `config`
    Some(if v.get("manifests").is_some() { OCI_INDEX } else { OCI_MANIFEST }.to_string())
}
