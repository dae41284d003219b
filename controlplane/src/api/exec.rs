//! `/containers/{id}/exec` and `/exec/...`: docker's exec instances.
use serde::{Deserialize, Serialize};

use super::{ApiError, null_default};

/// `POST /containers/{id}/exec`: docker's `ExecConfig` (every field may be null, as a Go client
/// sends its zero values). `Privileged` is accepted and ignored.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExecCreateRequest {
    #[serde(deserialize_with = "null_default")]
    pub cmd: Vec<String>,
    /// `KEY=VALUE`, over the container's.
    #[serde(deserialize_with = "null_default")]
    pub env: Vec<String>,
    /// Empty: the container's.
    #[serde(deserialize_with = "null_default")]
    pub working_dir: String,
    /// Empty: the container's.
    #[serde(deserialize_with = "null_default")]
    pub user: String,
    #[serde(deserialize_with = "null_default")]
    pub tty: bool,
    #[serde(deserialize_with = "null_default")]
    pub attach_stdin: bool,
    #[serde(deserialize_with = "null_default")]
    pub attach_stdout: bool,
    #[serde(deserialize_with = "null_default")]
    pub attach_stderr: bool,
    #[serde(deserialize_with = "null_default")]
    pub privileged: bool,
    /// The terminal's first size, `[rows, columns]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console_size: Option<Vec<u64>>,
    /// Empty: docker's ctrl-p,ctrl-q.
    #[serde(deserialize_with = "null_default")]
    pub detach_keys: String,
}

impl ExecCreateRequest {
    /// What the daemon refuses before it records the exec; the terminal's size if one was given.
    pub fn validate(&self) -> Result<Option<(u16, u16)>, ApiError> {
        if self.cmd.is_empty() || self.cmd[0].is_empty() {
            return Err(ApiError::bad_request("No exec command specified"));
        }
        for e in &self.env {
            if e.is_empty() || e.starts_with('=') {
                return Err(ApiError::bad_request(format!("invalid environment variable {e:?}: expected KEY=VALUE")));
            }
        }
        parse_detach_keys(&self.detach_keys).map_err(ApiError::bad_request)?;
        if !self.working_dir.is_empty() && !self.working_dir.starts_with('/') {
            return Err(ApiError::bad_request(format!(
                "the working directory '{}' is invalid, it needs to be an absolute path",
                self.working_dir
            )));
        }
        console_size(self.console_size.as_deref())
    }
}

/// docker's `ConsoleSize`: `[rows, columns]`, `[0, 0]` or none for no size.
pub fn console_size(v: Option<&[u64]>) -> Result<Option<(u16, u16)>, ApiError> {
    match v {
        None | Some([]) | Some([0, 0]) => Ok(None),
        Some([h, w]) => match (u16::try_from(*h), u16::try_from(*w)) {
            (Ok(h), Ok(w)) => Ok(Some((h, w))),
            _ => Err(ApiError::bad_request(format!("invalid console size {h}x{w}"))),
        },
        Some(v) => Err(ApiError::bad_request(format!("invalid console size {v:?}: expected [rows, columns]"))),
    }
}

/// docker's default detach keys, ctrl-p ctrl-q.
pub const DEFAULT_DETACH_KEYS: &[u8] = &[16, 17];

/// docker's `detachKeys`: comma-separated `ctrl-X` or single characters.
pub fn parse_detach_keys(s: &str) -> Result<Vec<u8>, String> {
    if s.is_empty() {
        return Ok(DEFAULT_DETACH_KEYS.to_vec());
    }
    let mut out = Vec::new();
    for k in s.split(',') {
        let b = k.as_bytes();
        match b {
            [c] => out.push(*c),
            [b'c', b't', b'r', b'l', b'-', c] => out.push(match c.to_ascii_lowercase() {
                c @ b'a'..=b'z' => c - b'a' + 1,
                b'@' => 0,
                b'[' => 27,
                b'\\' => 28,
                b']' => 29,
                b'^' => 30,
                b'_' => 31,
                _ => return Err(format!("Invalid detach keys ({s}) provided")),
            }),
            _ => return Err(format!("Invalid detach keys ({s}) provided")),
        }
    }
    Ok(out)
}

/// The answer to `POST /containers/{id}/exec`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExecCreateResponse {
    pub id: String,
}

/// `POST /exec/{id}/start`: hijacked unless `Detach`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExecStartRequest {
    #[serde(deserialize_with = "null_default")]
    pub detach: bool,
    #[serde(deserialize_with = "null_default")]
    pub tty: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console_size: Option<Vec<u64>>,
}

/// `GET /exec/{id}/json`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExecInspectResponse {
    #[serde(rename = "ID")]
    pub id: String,
    pub running: bool,
    /// Null until it exited.
    pub exit_code: Option<i32>,
    pub process_config: ExecProcessConfig,
    pub open_stdin: bool,
    pub open_stderr: bool,
    pub open_stdout: bool,
    pub can_remove: bool,
    #[serde(rename = "ContainerID")]
    pub container_id: String,
    pub detach_keys: String,
    /// The process's PID on the node; 0 when not running.
    pub pid: i32,
}

/// docker's `ProcessConfig` of an exec (its field names are lowercase).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecProcessConfig {
    pub tty: bool,
    pub entrypoint: String,
    pub arguments: Vec<String>,
    pub privileged: bool,
    pub user: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_parse_as_dockers() {
        assert_eq!(parse_detach_keys("").unwrap(), [16, 17]);
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q").unwrap(), [16, 17]);
        assert_eq!(parse_detach_keys("ctrl-a,x,ctrl-@,ctrl-_").unwrap(), [1, b'x', 0, 31]);
        assert!(parse_detach_keys("ctrl-1").is_err());
        assert!(parse_detach_keys("alt-a").is_err());
        assert!(parse_detach_keys("a,,b").is_err());
    }

    #[test]
    fn exec_configs_are_checked() {
        let ok: ExecCreateRequest = serde_json::from_str(
            r#"{"AttachStdout":true,"Tty":true,"ConsoleSize":[40,120],"Cmd":["sh"],"Env":null,"Privileged":false}"#,
        )
        .unwrap();
        assert_eq!(ok.validate().unwrap(), Some((40, 120)));
        for bad in [
            r#"{"Cmd":[]}"#,
            r#"{"Cmd":null}"#,
            r#"{"Cmd":["sh"],"Env":["=x"]}"#,
            r#"{"Cmd":["sh"],"WorkingDir":"tmp"}"#,
            r#"{"Cmd":["sh"],"ConsoleSize":[70000,1]}"#,
            r#"{"Cmd":["sh"],"ConsoleSize":[1]}"#,
            r#"{"Cmd":["sh"],"DetachKeys":"meta-x"}"#,
        ] {
            let r: ExecCreateRequest = serde_json::from_str(bad).unwrap();
            assert_eq!(r.validate().unwrap_err().status().as_u16(), 400, "{bad}");
        }
    }
}
