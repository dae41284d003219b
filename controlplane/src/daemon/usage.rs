//! `docker top` and `docker system df`: the processes of a container and the disk the images and
//! containers use, as docker's daemon reports them.
use std::{collections::HashMap, os::unix::fs::MetadataExt as _, path::Path};

use super::Daemon;
use crate::{
    api::{ApiError, ApiResult, ContainerTopResponse, DiskUsage, DiskUsageContainer, DiskUsageImage, parse_ps},
    model::{ContainerRecord, Status},
};

/// The pid namespace of a process (its inode), None when it is gone.
fn pid_ns(pid: i32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/pid")).ok().map(|m| m.ino())
}

/// Every process, as the host numbers it, in the pid namespace of `init`.
fn pids_beside(init: i32) -> Vec<i32> {
    let Some(ns) = pid_ns(init) else { return Vec::new() };
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| pid_ns(*p) == Some(ns))
        .collect()
}

/// Bytes of the regular files under `dir` (hard links counted once per name, as `du --apparent`).
fn dir_size(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

impl Daemon {
    /// `GET /containers/{id}/top`: the node's `ps ARGS` (docker's default `-ef`), keeping the
    /// rows of the container's processes (those in its pid namespace).
    pub async fn container_top(&self, c: &ContainerRecord, ps_args: &str) -> ApiResult<ContainerTopResponse> {
        if c.state.status != Status::Running || c.state.pid <= 0 {
            return Err(ApiError::conflict(format!("Container {} is not running", c.id)));
        }
        let out = tokio::process::Command::new("ps")
            .args(ps_args.split_whitespace())
            .output()
            .await
            .map_err(|e| ApiError::internal(format!("running ps: {e}")))?;
        if !out.status.success() {
            return Err(ApiError::bad_request(format!(
                "Error running top: ps {ps_args}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let pids = pids_beside(c.state.pid);
        parse_ps(&String::from_utf8_lossy(&out.stdout), &pids).map_err(ApiError::bad_request)
    }

    /// `GET /system/df`: each image's size and the bytes of its layers other images share, the
    /// layers counted once, and each container's own writable layer.
    pub fn system_df(&self) -> ApiResult<DiskUsage> {
        let images = self.images.list()?;
        let users = self.image_users()?;
        let mut layer_users: HashMap<&str, (usize, u64)> = HashMap::new();
        for r in &images {
            for (i, l) in r.layers.iter().enumerate() {
                let e = layer_users.entry(l.as_str()).or_insert((0, r.layer_sizes.get(i).copied().unwrap_or(0)));
                e.0 += 1;
            }
        }
        let layers_size = layer_users.values().map(|(_, s)| *s as i64).sum();
        let images_out = images
            .iter()
            .map(|r| DiskUsageImage {
                id: r.id.clone(),
                repo_tags: r.repo_tags.clone(),
                repo_digests: r.repo_digests.clone(),
                created: r.created.timestamp(),
                size: r.size as i64,
                shared_size: r
                    .layers
                    .iter()
                    .filter_map(|l| layer_users.get(l.as_str()))
                    .filter(|(n, _)| *n > 1)
                    .map(|(_, s)| *s as i64)
                    .sum(),
                containers: users.iter().filter(|(_, i)| *i == r.id).count() as i64,
            })
            .collect();
        let nets = self.networks()?;
        let containers = self
            .containers()?
            .iter()
            .map(|c| {
                let s = self.container_summary(c, &nets);
                let rw = dir_size(&self.container_dir(&c.id).join("rootfs/upper")) as i64;
                let image = images.iter().find(|r| users.iter().any(|(cid, i)| *cid == c.id && *i == r.id));
                DiskUsageContainer {
                    id: s.id,
                    names: s.names,
                    image: s.image,
                    command: s.command,
                    created: s.created,
                    state: s.state,
                    status: s.status,
                    size_rw: rw,
                    size_root_fs: rw + image.map(|r| r.size as i64).unwrap_or(0),
                }
            })
            .collect();
        Ok(DiskUsage { layers_size, images: images_out, containers, volumes: Vec::new(), build_cache: Vec::new() })
    }
}
