//! Image operations of the API: the store does the work (off the async runtime where it reads
//! or writes archives); this file turns records into docker's shapes and passes the node's
//! containers in as the users an `rmi` must respect.
use std::{path::PathBuf, sync::Arc};

use super::Daemon;
use crate::{
    api::{
        ApiError, ApiResult, EmptyObject, ImageDeleteResponseItem, ImageIdResponse, ImageInspect, ImageInspectConfig,
        ImageInspectRootFs, ImageLoadResponse, ImagePruneResponse, ImageSummary,
    },
    images::{ImageRecord, RemoveOutcome},
};

impl Daemon {
    /// (container ID, image ID) of every container on the node that records the image it runs
    /// (`image_id` in its config; containers of the host image have none).
    pub fn image_users(&self) -> ApiResult<Vec<(String, String)>> {
        Ok(self
            .containers()?
            .into_iter()
            .filter_map(|c| {
                let cfg = serde_json::to_value(&c.config).ok()?;
                let id = cfg.get("image_id")?.as_str()?.to_string();
                (!id.is_empty()).then_some((c.id, id))
            })
            .collect())
    }

    pub fn image_list(&self) -> ApiResult<Vec<ImageSummary>> {
        let users = self.image_users()?;
        Ok(self
            .images
            .list()?
            .into_iter()
            .map(|r| ImageSummary {
                containers: users.iter().filter(|(_, i)| *i == r.id).count() as i64,
                id: r.id,
                repo_tags: r.repo_tags,
                repo_digests: r.repo_digests,
                created: r.created.timestamp(),
                size: r.size,
            })
            .collect())
    }

    pub fn image_inspect(&self, name: &str) -> ApiResult<ImageInspect> {
        Ok(inspect(self.images.find(name)?))
    }

    pub fn image_remove(&self, name: &str, force: bool) -> ApiResult<Vec<ImageDeleteResponseItem>> {
        let users = self.image_users()?;
        Ok(self.images.remove(name, force, &users)?.into_iter().map(item).collect())
    }

    pub fn image_prune(&self) -> ApiResult<ImagePruneResponse> {
        let users = self.image_users()?;
        let (out, freed) = self.images.prune(&users)?;
        Ok(ImagePruneResponse { images_deleted: out.into_iter().map(item).collect(), space_reclaimed: freed })
    }

    pub async fn image_load(self: &Arc<Self>, path: String) -> ApiResult<ImageLoadResponse> {
        let path = absolute(&path)?;
        let store = self.images.clone();
        let loaded = tokio::task::spawn_blocking(move || store.load(&path))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(bad)?;
        let mut stream = Vec::new();
        for r in loaded {
            if r.repo_tags.is_empty() {
                stream.push(format!("Loaded image ID: {}", r.id));
            }
            stream.extend(r.repo_tags.iter().map(|t| format!("Loaded image: {t}")));
        }
        Ok(ImageLoadResponse { stream })
    }

    pub async fn image_import(&self, path: String, repo: Option<String>) -> ApiResult<ImageIdResponse> {
        let path = absolute(&path)?;
        let store = self.images.clone();
        let r = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&path).map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
            store.import(f, repo.as_deref())
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(bad)?;
        Ok(ImageIdResponse { id: r.id, digest: String::new() })
    }

    pub async fn image_save(&self, path: String, names: Vec<String>) -> ApiResult<()> {
        let path = absolute(&path)?;
        if names.is_empty() {
            return Err(ApiError::bad_request("save needs at least one image"));
        }
        for n in &names {
            self.images.find(n)?;
        }
        let store = self.images.clone();
        tokio::task::spawn_blocking(move || store.save(&names, &path))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
        Ok(())
    }

    pub async fn image_pull(&self, reference: &str) -> ApiResult<ImageIdResponse> {
        let r = self.images.pull(reference).await.map_err(bad)?;
        let digest =
            r.repo_digests.last().and_then(|d| d.split_once('@')).map(|(_, d)| d.to_string()).unwrap_or_default();
        Ok(ImageIdResponse { id: r.id, digest })
    }

    pub async fn image_push(&self, reference: &str) -> ApiResult<ImageIdResponse> {
        self.images.find(&crate::images::ImageRef::parse(reference).map_err(ApiError::bad_request)?.name_tag())?;
        let (r, d) = self.images.push(reference).await.map_err(ApiError::from)?;
        Ok(ImageIdResponse { id: r.id, digest: d.to_string() })
    }

    pub fn image_tag(&self, source: &str, target: &str) -> ApiResult<()> {
        self.images.tag(source, target)
    }
}

/// An archive or registry that does not hold what it should is the request's fault (400), with
/// the store's message naming the object.
fn bad(e: anyhow::Error) -> ApiError {
    match e.downcast::<ApiError>() {
        Ok(a) => a,
        Err(e) => ApiError::bad_request(format!("{e:#}")),
    }
}

fn absolute(p: &str) -> ApiResult<PathBuf> {
    let p = PathBuf::from(p);
    if !p.is_absolute() {
        return Err(ApiError::bad_request(format!("{} is not an absolute path", p.display())));
    }
    Ok(p)
}

fn item(o: RemoveOutcome) -> ImageDeleteResponseItem {
    match o {
        RemoveOutcome::Untagged(t) => ImageDeleteResponseItem { untagged: Some(t), deleted: None },
        RemoveOutcome::Deleted(d) => ImageDeleteResponseItem { untagged: None, deleted: Some(d) },
    }
}

fn inspect(r: ImageRecord) -> ImageInspect {
    let c = r.config;
    ImageInspect {
        id: r.id,
        repo_tags: r.repo_tags,
        repo_digests: r.repo_digests,
        created: r.created.to_rfc3339(),
        size: r.size,
        architecture: r.architecture,
        os: r.os,
        config: ImageInspectConfig {
            entrypoint: (!c.entrypoint.is_empty()).then_some(c.entrypoint),
            cmd: (!c.cmd.is_empty()).then_some(c.cmd),
            env: c.env,
            working_dir: c.working_dir,
            user: c.user,
            exposed_ports: c.exposed_ports.iter().map(|(p, proto)| (format!("{p}/{proto}"), EmptyObject {})).collect(),
            labels: c.labels,
        },
        root_fs: ImageInspectRootFs { typ: "layers".into(), layers: r.layers },
    }
}
