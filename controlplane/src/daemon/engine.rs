//! What the docker CLI needs beyond netbee's own operations: `wait`'s conditions, `rename`,
//! `restart`, and the log stream in docker's framing (the hijacked streams are `attach.rs` and
//! `exec.rs`).
use std::time::Duration;

use super::Daemon;
use crate::{
    api::{ApiError, ApiResult},
    model::{ContainerRecord, Status},
    names,
};

/// docker's `wait` conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitCondition {
    /// Returns at once for a container that is not running (docker's default).
    NotRunning,
    /// Waits for the next exit, also of a container not started yet (`docker run` waits so).
    NextExit,
    /// Waits until the container is removed (`docker run --rm`).
    Removed,
}

impl WaitCondition {
    pub fn parse(s: Option<&str>) -> ApiResult<WaitCondition> {
        match s.unwrap_or("") {
            "" | "not-running" => Ok(WaitCondition::NotRunning),
            "next-exit" => Ok(WaitCondition::NextExit),
            "removed" => Ok(WaitCondition::Removed),
            other => Err(ApiError::bad_request(format!("invalid condition: \"{other}\""))),
        }
    }
}

/// How often `wait` and `logs --follow` look at the container again.
const POLL: Duration = Duration::from_millis(100);

impl Daemon {
    /// The container's exit code once `cond` holds. The container must exist when called.
    pub async fn container_wait_for(&self, key: &str, cond: WaitCondition) -> ApiResult<i32> {
        if cond == WaitCondition::NotRunning {
            return self.container_wait(key).await;
        }
        let first = self.find_container(key)?;
        let id = first.id.clone();
        let since = chrono::Utc::now();
        let mut last = first.state.exit_code;
        loop {
            let exited_since = |c: &ContainerRecord| {
                c.state.status == Status::Exited && c.state.finished_at.is_some_and(|t| t >= since)
            };
            match self.store.get::<ContainerRecord>(&id)? {
                Some(c) => {
                    last = c.state.exit_code;
                    if cond == WaitCondition::NextExit && exited_since(&c) {
                        return Ok(c.state.exit_code);
                    }
                }
                None => return Ok(self.removed_exits.lock().unwrap().get(&id).copied().unwrap_or(last)),
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `docker rename`: the new name must be free and valid; DNS follows.
    pub async fn container_rename(&self, key: &str, new: &str) -> ApiResult<()> {
        let _g = self.op.lock().await;
        let new = new.trim_start_matches('/');
        if new.is_empty() {
            return Err(ApiError::bad_request("Neither old nor new names may be empty"));
        }
        names::validate_name(new).map_err(ApiError::bad_request)?;
        let mut c = self.find_container(key)?;
        if c.name == new {
            return Err(ApiError::bad_request("Renaming a container with the same name as its current name"));
        }
        if let Some(o) = self.containers()?.iter().find(|o| o.name == new) {
            return Err(ApiError::conflict(format!(
                "Conflict. The container name \"/{new}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                o.id
            )));
        }
        let old = std::mem::replace(&mut c.name, new.to_string());
        self.put_container(&c)?;
        self.refresh_names().await;
        self.emit_container(&c, "rename", &[("oldName", format!("/{old}"))]);
        Ok(())
    }

    /// `docker restart`: stop (with the timeout) then start, also for a container not running.
    pub async fn container_restart(self: &std::sync::Arc<Self>, key: &str, timeout: u64) -> ApiResult<()> {
        self.container_stop(key, timeout).await?;
        self.container_start(key).await
    }

    /// The bytes of the container's `stdout.log` or `stderr.log` from `offset`, and the new end.
    pub fn log_bytes(&self, id: &str, stream: &str, offset: u64) -> (Vec<u8>, u64) {
        let bytes = std::fs::read(self.container_dir(id).join(stream)).unwrap_or_default();
        let start = (offset as usize).min(bytes.len());
        (bytes[start..].to_vec(), bytes.len() as u64)
    }

    /// When the log file was last written (for `--timestamps` of lines netbee did not stamp).
    pub fn log_mtime(&self, id: &str, stream: &str) -> Option<chrono::DateTime<chrono::Utc>> {
        let m = std::fs::metadata(self.container_dir(id).join(stream)).ok()?.modified().ok()?;
        Some(m.into())
    }

    pub fn container_running(&self, id: &str) -> bool {
        matches!(self.store.get::<ContainerRecord>(id), Ok(Some(c)) if c.state.status == Status::Running)
    }
}

/// One frame of docker's multiplexed stream: `[stream, 0, 0, 0, len (u32 BE)]` and the payload
/// (1 stdout, 2 stderr); the shim's attach point speaks the same frames.
pub use crate::runtime::attach::frame;

/// The complete lines of `bytes` (each with its newline), the last `tail` of them if given, and
/// the number of bytes they take: an unfinished last line waits for its newline.
pub fn lines(bytes: &[u8], tail: Option<usize>) -> (Vec<&[u8]>, usize) {
    let mut out: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            out.push(&bytes[start..=i]);
            start = i + 1;
        }
    }
    if let Some(n) = tail {
        let skip = out.len().saturating_sub(n);
        out.drain(..skip);
    }
    (out, start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_dockers() {
        assert_eq!(frame(1, b"hi\n"), [1, 0, 0, 0, 0, 0, 0, 3, b'h', b'i', b'\n']);
        assert_eq!(frame(2, b"")[..8], [2, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn lines_and_tail() {
        let (l, used) = lines(b"a\nb\nc", None);
        assert_eq!((l, used), (vec![&b"a\n"[..], &b"b\n"[..]], 4));
        let (l, used) = lines(b"a\nb\nc\n", Some(2));
        assert_eq!((l, used), (vec![&b"b\n"[..], &b"c\n"[..]], 6));
        assert_eq!(lines(b"a\n", Some(0)).0.len(), 0);
    }

    #[test]
    fn wait_conditions() {
        assert_eq!(WaitCondition::parse(None).unwrap(), WaitCondition::NotRunning);
        assert_eq!(WaitCondition::parse(Some("next-exit")).unwrap(), WaitCondition::NextExit);
        assert_eq!(WaitCondition::parse(Some("removed")).unwrap(), WaitCondition::Removed);
        assert_eq!(WaitCondition::parse(Some("soon")).unwrap_err().status().as_u16(), 400);
    }
}
