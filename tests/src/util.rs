//! Small process and file helpers shared by the lab modules.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

/// Runs a command to completion and turns a non-zero exit into an error that
/// carries everything needed to understand it from a test log alone.
pub(crate) fn check_output(mut cmd: Command) -> Result<String> {
    let what = describe(&cmd);
    let out = cmd.output().with_context(|| format!("spawning {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", format_output(&out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    format!("`{s}`")
}

pub(crate) fn format_output(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// `ip <args>` in the namespace this process runs in; every lab call scopes
/// itself with `-n <netns>` so nothing here touches the host's own links.
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    check_output(cmd)
}

/// The last `n` lines of a file, or a placeholder when it cannot be read, so
/// that error messages never fail for lack of a log.
pub(crate) fn tail_lines(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

pub(crate) fn cstring(path: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    // Lab paths are built from validated names, so an interior NUL is a bug.
    std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path contains NUL")
}
