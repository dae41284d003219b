//! `/images/...`: bodies named after docker's Engine API models (`ImageSummary`,
//! `ImageInspect`, `ImageDeleteResponseItem`, ...). Archives are passed as absolute paths the
//! daemon opens: the CLI and the daemon run on the same machine, as root.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::EmptyObject;

/// One row of `GET /images/json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageSummary {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Unix seconds.
    pub created: i64,
    pub size: u64,
    /// Containers using the image.
    pub containers: i64,
}

/// `GET /images/{name}/json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageInspect {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// RFC 3339.
    pub created: String,
    pub size: u64,
    pub architecture: String,
    pub os: String,
    pub config: ImageInspectConfig,
    #[serde(rename = "RootFS")]
    pub root_fs: ImageInspectRootFs,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageInspectConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub exposed_ports: BTreeMap<String, EmptyObject>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageInspectRootFs {
    #[serde(rename = "Type")]
    pub typ: String,
    pub layers: Vec<String>,
}

/// One line of what `DELETE /images/{name}` and prune did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ImageDeleteResponseItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untagged: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<String>,
}

/// `POST /images/load`: an archive (docker save or OCI layout, plain or gzip) or an OCI
/// layout directory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageLoadRequest {
    pub path: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageLoadResponse {
    /// `Loaded image: NAME:TAG` / `Loaded image ID: sha256:...` lines, as docker prints them.
    pub stream: Vec<String>,
}

/// `POST /images/import`: a root-filesystem tarball.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageImportRequest {
    pub path: String,
    /// `REPO[:TAG]`, or none for an untagged image.
    #[serde(default)]
    pub repo: Option<String>,
}

/// The image an import, pull or push produced.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageIdResponse {
    pub id: String,
    /// The manifest digest pulled or pushed, if any.
    #[serde(default)]
    pub digest: String,
}

/// `POST /images/save`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageSaveRequest {
    pub path: String,
    pub names: Vec<String>,
}

/// `POST /images/prune`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImagePruneResponse {
    pub images_deleted: Vec<ImageDeleteResponseItem>,
    pub space_reclaimed: u64,
}
