//! Images: content-addressed layers and configs under `<root>/images`, and what a container needs
//! from one (its layers, ready to stack as an overlayfs root, and its config).
//!
//! One file per concern: `store` (records, blobs, unpacked layers, garbage collection; what the
//! runtime asks: `resolve`, `layer_dirs`), `extract` (layer tars applied without ever writing
//! outside the layer), `archive` (`docker save` archives and OCI layouts), `registry` (pull and
//! push over the OCI distribution API), `reference` and `digest` (names and content addresses).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::portspec::Proto;

/// The reserved image name that runs a host binary in fresh namespaces on the host's root
/// (`run -d host /usr/bin/sleep 60`): for benchmarks and tests.
pub const HOST_IMAGE: &str = "host";

/// An image on this node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:<hex>` of the image's config blob (docker's image ID).
    pub id: String,
    /// `repo:tag` names pointing at it, normalised (`busybox` → `busybox:latest`).
    pub repo_tags: Vec<String>,
    /// `repo@sha256:...` of the manifest it was pulled or pushed as, if any.
    #[serde(default)]
    pub repo_digests: Vec<String>,
    pub created: chrono::DateTime<chrono::Utc>,
    /// Sum of the unpacked layers' sizes in bytes.
    pub size: u64,
    pub config: ImageConfig,
    /// Uncompressed layer digests (`sha256:<hex>`, the config's rootfs.diff_ids), lowest first.
    pub layers: Vec<String>,
    /// Unpacked size of each layer, in `layers` order.
    #[serde(default)]
    pub layer_sizes: Vec<u64>,
    /// `sha256:...` of the manifest stored with the image (as pulled, or written at import).
    #[serde(default)]
    pub manifest: String,
    /// Every blob the image keeps in the store: its config, its manifest and its layers as
    /// received (compressed or not). Garbage collection keeps exactly these.
    #[serde(default)]
    pub blobs: Vec<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

/// The part of an image's config a container runs with (OCI image-spec `config`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value`
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub exposed_ports: Vec<(u16, Proto)>,
    pub labels: BTreeMap<String, String>,
}

mod archive;
mod digest;
mod extract;
mod reference;
mod registry;
mod store;

pub use archive::go_arch;
pub use digest::{Digest, DigestMismatch};
pub use extract::{ExtractError, unpack_layer};
pub use reference::ImageRef;
pub use registry::RegistryConfig;
pub use store::{ImageStore, RemoveOutcome};

impl crate::store::Record for ImageRecord {
    const TABLE: crate::store::Table = crate::store::IMAGES;
    fn key(&self) -> &str {
        &self.id
    }
}
