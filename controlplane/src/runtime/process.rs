//! The process a container runs, computed from its image's config and the `run` flags with
//! docker's rules, and the user it runs as, resolved from the container root's account files.
//! Pure functions: the daemon computes the process at create, the shim resolves the user after
//! it entered the container's root.
use std::path::{Path, PathBuf};

use crate::images::ImageConfig;

/// What `run`/`create` asked for, before the image's config fills the gaps.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--entrypoint`: replaces the image's entrypoint (an empty one clears it) and drops the
    /// image's Cmd.
    pub entrypoint: Option<Vec<String>>,
    /// The arguments after the image: replace the image's Cmd.
    pub cmd: Vec<String>,
    /// `-e KEY=VALUE`: override the image's variable of the same key.
    pub env: Vec<String>,
    /// `-w`: replaces the image's WorkingDir.
    pub workdir: Option<String>,
    /// `-u`: replaces the image's User.
    pub user: Option<String>,
}

/// The process as the container record keeps it (docker's merged `Config`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Process {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// `uid[:gid]` or `name[:group]`; empty runs as root.
    pub user: String,
}

/// docker's merge of the `run` flags over the image's config.
pub fn compute(image: &ImageConfig, o: &Overrides) -> Result<Process, String> {
    let (entrypoint, image_cmd) = match &o.entrypoint {
        // docker drops the image's Cmd with its Entrypoint: the old arguments would be
        // meaningless to the new program
        Some(e) => (e.clone(), Vec::new()),
        None => (image.entrypoint.clone(), image.cmd.clone()),
    };
    let cmd = if o.cmd.is_empty() { image_cmd } else { o.cmd.clone() };
    if entrypoint.is_empty() && cmd.is_empty() {
        return Err("no command specified".into());
    }
    let workdir = o.workdir.clone().filter(|w| !w.is_empty()).or_else(|| Some(image.working_dir.clone()));
    let workdir = workdir.filter(|w| !w.is_empty());
    if let Some(w) = &workdir
        && !w.starts_with('/')
    {
        return Err(format!("the working directory '{w}' is invalid, it needs to be an absolute path"));
    }
    let user = o.user.clone().filter(|u| !u.is_empty()).unwrap_or_else(|| image.user.clone());
    Ok(Process { entrypoint, cmd, env: merge_env(&image.env, &o.env), workdir, user })
}

/// `base` with each `KEY=VALUE` of `over` replacing the same key (or appended), order kept.
pub fn merge_env(base: &[String], over: &[String]) -> Vec<String> {
    let key = |e: &str| e.split_once('=').map(|(k, _)| k).unwrap_or(e).to_string();
    let mut out: Vec<String> = Vec::with_capacity(base.len() + over.len());
    for e in base.iter().chain(over) {
        match out.iter_mut().find(|o| key(o) == key(e)) {
            Some(slot) => *slot = e.clone(),
            None => out.push(e.clone()),
        }
    }
    out
}

/// The value of `name` in a `KEY=VALUE` list.
pub fn env_value<'a>(env: &'a [String], name: &str) -> Option<&'a str> {
    env.iter().find_map(|e| e.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
}

/// Finds a program as `execvp` would, but in the container's PATH and root rather than the
/// shim's (the daemon's PATH means nothing inside an image).
pub fn lookup_program(program: &str, path: &str, is_executable: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    path.split(':').map(|d| Path::new(if d.is_empty() { "." } else { d }).join(program)).find(|p| is_executable(p))
}

/// Who the process runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: those of `/etc/group` that list the user (when no group was named).
    pub groups: Vec<u32>,
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter(|l| !l.trim_start().starts_with('#')).filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        Some(PasswdEntry {
            name: f.first()?,
            uid: f.get(2)?.parse().ok()?,
            gid: f.get(3)?.parse().ok()?,
            home: f.get(5)?,
        })
    })
}

/// (name, gid, members) of each `/etc/group` line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter(|l| !l.trim_start().starts_with('#')).filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let members = f.get(3).map(|m| m.split(',').filter(|m| !m.is_empty()).collect()).unwrap_or_default();
        Some((*f.first()?, f.get(2)?.parse().ok()?, members))
    })
}

/// Resolves `-u` (`user`, `uid`, `user:group`, `uid:gid`, empty for root) against the container
/// root's `/etc/passwd` and `/etc/group` contents, as docker does: names must exist there,
/// numeric ids need not (then the group is 0 and HOME `/`).
pub fn resolve_user(spec: &str, passwd: &str, group: &str) -> Result<ExecUser, String> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let entry = match user.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|e| e.name == user)
                .ok_or_else(|| format!("unable to find user {user}: no matching entries in passwd file"))?,
        ),
    };
    let uid = entry.as_ref().map(|e| e.uid).unwrap_or_else(|| user.parse().unwrap_or(0));
    let mut gid = entry.as_ref().map(|e| e.gid).unwrap_or(0);
    let home = entry.as_ref().map(|e| e.home).filter(|h| !h.is_empty()).unwrap_or("/").to_string();
    let mut groups = Vec::new();
    match grp.filter(|g| !g.is_empty()) {
        Some(g) => {
            gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => group_entries(group)
                    .find(|(name, _, _)| *name == g)
                    .map(|(_, id, _)| id)
                    .ok_or_else(|| format!("unable to find group {g}: no matching entries in group file"))?,
            };
        }
        None => {
            if let Some(e) = &entry {
                groups = group_entries(group).filter(|(_, _, m)| m.contains(&e.name)).map(|(_, id, _)| id).collect();
            }
        }
    }
    Ok(ExecUser { uid, gid, groups, home })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    impl Process {
        fn argv(&self) -> Vec<String> {
            self.entrypoint.iter().chain(&self.cmd).cloned().collect()
        }
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: s(&["/bin/httpd", "-f"]),
            cmd: s(&["-p", "80"]),
            env: s(&["PATH=/bin", "MODE=image"]),
            working_dir: "/srv".into(),
            user: "www".into(),
            ..Default::default()
        }
    }

    #[test]
    fn entrypoint_and_cmd_from_the_image() {
        let p = compute(&image(), &Overrides::default()).unwrap();
        assert_eq!(p.argv(), s(&["/bin/httpd", "-f", "-p", "80"]));
    }

    #[test]
    fn command_args_replace_the_image_cmd_only() {
        let o = Overrides { cmd: s(&["-p", "8080"]), ..Default::default() };
        assert_eq!(compute(&image(), &o).unwrap().argv(), s(&["/bin/httpd", "-f", "-p", "8080"]));
    }

    #[test]
    fn entrypoint_flag_replaces_the_entrypoint_and_drops_the_image_cmd() {
        let o = Overrides { entrypoint: Some(s(&["/bin/sh"])), ..Default::default() };
        assert_eq!(compute(&image(), &o).unwrap().argv(), s(&["/bin/sh"]));
        let o = Overrides { entrypoint: Some(s(&["/bin/sh"])), cmd: s(&["-c", "true"]), ..Default::default() };
        assert_eq!(compute(&image(), &o).unwrap().argv(), s(&["/bin/sh", "-c", "true"]));
        // an empty --entrypoint clears it: the arguments are the whole command
        let o = Overrides { entrypoint: Some(vec![]), cmd: s(&["ls"]), ..Default::default() };
        assert_eq!(compute(&image(), &o).unwrap().argv(), s(&["ls"]));
    }

    #[test]
    fn nothing_to_run_is_refused() {
        let o = Overrides { entrypoint: Some(vec![]), ..Default::default() };
        assert_eq!(compute(&image(), &o).unwrap_err(), "no command specified");
        assert_eq!(compute(&ImageConfig::default(), &Overrides::default()).unwrap_err(), "no command specified");
    }

    #[test]
    fn env_flags_override_the_image_env_by_key() {
        let o = Overrides { cmd: s(&["x"]), env: s(&["MODE=flag", "EXTRA=1"]), ..Default::default() };
        assert_eq!(compute(&image(), &o).unwrap().env, s(&["PATH=/bin", "MODE=flag", "EXTRA=1"]));
        assert_eq!(merge_env(&s(&["A=1", "B=2"]), &s(&["A=3"])), s(&["A=3", "B=2"]));
        assert_eq!(env_value(&s(&["A=1", "PATH=/x"]), "PATH"), Some("/x"));
    }

    #[test]
    fn workdir_flag_else_the_images_and_absolute_only() {
        assert_eq!(compute(&image(), &Overrides::default()).unwrap().workdir.as_deref(), Some("/srv"));
        let o = Overrides { workdir: Some("/tmp".into()), ..Default::default() };
        assert_eq!(compute(&image(), &o).unwrap().workdir.as_deref(), Some("/tmp"));
        let none = ImageConfig { cmd: s(&["x"]), ..Default::default() };
        assert_eq!(compute(&none, &Overrides::default()).unwrap().workdir, None);
        let o = Overrides { workdir: Some("rel".into()), ..Default::default() };
        assert!(compute(&image(), &o).unwrap_err().contains("absolute path"));
    }

    #[test]
    fn user_flag_else_the_images() {
        assert_eq!(compute(&image(), &Overrides::default()).unwrap().user, "www");
        let o = Overrides { user: Some("1000:1000".into()), ..Default::default() };
        assert_eq!(compute(&image(), &o).unwrap().user, "1000:1000");
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:\nstaff:x:50:www,other\n";

    #[test]
    fn users_resolve_from_the_container_root() {
        let root = resolve_user("", PASSWD, GROUP).unwrap();
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
        let www = resolve_user("www", PASSWD, GROUP).unwrap();
        assert_eq!(www, ExecUser { uid: 33, gid: 33, groups: vec![50], home: "/var/www".into() });
        let n = resolve_user("4242", PASSWD, GROUP).unwrap();
        assert_eq!(n, ExecUser { uid: 4242, gid: 0, groups: vec![], home: "/".into() });
        let g = resolve_user("www:staff", PASSWD, GROUP).unwrap();
        assert_eq!((g.uid, g.gid, g.groups.len()), (33, 50, 0));
        assert_eq!(resolve_user("33:7", PASSWD, GROUP).unwrap().gid, 7);
        assert!(resolve_user("nobody", PASSWD, GROUP).unwrap_err().contains("unable to find user nobody"));
        assert!(resolve_user("www:nogroup", PASSWD, GROUP).unwrap_err().contains("unable to find group nogroup"));
    }

    #[test]
    fn programs_are_found_in_the_containers_path() {
        let have = |p: &Path| p == Path::new("/usr/bin/httpd");
        assert_eq!(lookup_program("httpd", "/bin:/usr/bin", have), Some(PathBuf::from("/usr/bin/httpd")));
        assert_eq!(lookup_program("nope", "/bin:/usr/bin", have), None);
        assert_eq!(lookup_program("./x", "/bin", have), Some(PathBuf::from("./x")));
    }
}
