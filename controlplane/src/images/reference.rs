//! Image references as docker reads them: `busybox` is `docker.io/library/busybox:latest`,
//! `10.0.0.1:5000/app:1.1` names the registry `10.0.0.1:5000`, `repo@sha256:...` a manifest.
use super::digest::Digest;

pub const DEFAULT_REGISTRY: &str = "docker.io";
pub const DEFAULT_TAG: &str = "latest";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// `docker.io`, `10.0.0.1:5000`, `localhost:5000`, `registry.example.com`
    pub registry: String,
    /// The path on the registry: `library/busybox`, `myorg/web`, `app`
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, String> {
        let bad = |why: &str| format!("invalid reference format: {s:?} ({why})");
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d).map_err(|e| bad(&e))?)),
            None => (s, None),
        };
        // a tag is after the last `:` that comes after the last `/` (a registry's port is not)
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(rest[last_slash + i + 1..].to_string())),
            None => (rest, None),
        };
        if let Some(t) = &tag
            && (t.is_empty()
                || t.len() > 128
                || t.starts_with(['.', '-'])
                || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)))
        {
            return Err(bad("bad tag"));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => (first.to_string(), path),
            _ => (DEFAULT_REGISTRY.to_string(), name),
        };
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
                && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
        };
        if !repository.split('/').all(component_ok) {
            return Err(bad("repository names are lowercase letters, digits and separators"));
        }
        Ok(ImageRef { registry, repository, tag, digest })
    }

    /// The name docker shows: `busybox`, `myorg/web`, `10.0.0.1:5000/app`.
    pub fn name(&self) -> String {
        if self.registry == DEFAULT_REGISTRY {
            self.repository.strip_prefix("library/").unwrap_or(&self.repository).to_string()
        } else {
            format!("{}/{}", self.registry, self.repository)
        }
    }

    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or(DEFAULT_TAG)
    }

    /// `name:tag`, with `latest` when no tag was given: the key of an image's `repo_tags`.
    pub fn name_tag(&self) -> String {
        format!("{}:{}", self.name(), self.tag_or_latest())
    }

    /// How it was named for messages: `name:tag` or `name@sha256:...`.
    pub fn display(&self) -> String {
        match &self.digest {
            Some(d) if self.tag.is_none() => format!("{}@{d}", self.name()),
            _ => self.name_tag(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_as_docker() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag_or_latest()),
            ("docker.io", "library/busybox", "latest")
        );
        assert_eq!(r.name_tag(), "busybox:latest");
        let r = ImageRef::parse("10.0.0.1:5000/app:1.1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("10.0.0.1:5000", "app", Some("1.1"))
        );
        assert_eq!(r.name_tag(), "10.0.0.1:5000/app:1.1");
        let r = ImageRef::parse("localhost:5000/a/b").unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("localhost:5000", "a/b"));
        let r = ImageRef::parse("myorg/web:1.1").unwrap();
        assert_eq!((r.repository.as_str(), r.name_tag().as_str()), ("myorg/web", "myorg/web:1.1"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.digest.unwrap().as_str(), d);
        for bad in ["", "Busybox", "a:", "a@md5:x", "-a"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
