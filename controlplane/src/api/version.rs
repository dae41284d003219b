//! Engine API version negotiation as docker's daemon does it: every route also answers under a
//! `/v1.NN/` prefix for the versions the daemon supports, and a version outside them is docker's
//! 400. The docker CLI prefixes every request but `/_ping` with the version it negotiated; netbee's
//! own CLI calls the unprefixed paths, which mean the newest version.
use super::{API_VERSION, ApiError, MIN_API_VERSION};

/// `(major, minor)` of a version string `1.NN`; None when it is not one.
fn parse(v: &str) -> Option<(u32, u32)> {
    let (major, minor) = v.split_once('.')?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(major) || !all_digits(minor) {
        return None;
    }
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The path without its version prefix: `Ok(None)` when it has none (it is routed as it is),
/// `Ok(Some(rest))` for a supported version, docker's 400 for one outside
/// [`MIN_API_VERSION`]..=[`API_VERSION`]. A first segment `v...` that is not a version (no route
/// starts so) is left to the router's 404.
pub fn strip_version_prefix(path: &str) -> Result<Option<&str>, ApiError> {
    let Some(after) = path.strip_prefix("/v") else { return Ok(None) };
    let (version, rest) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    let Some(v) = parse(version) else { return Ok(None) };
    let min = parse(MIN_API_VERSION).expect("a valid constant");
    let max = parse(API_VERSION).expect("a valid constant");
    if v < min {
        return Err(ApiError::bad_request(format!(
            "client version {version} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
        )));
    }
    if v > max {
        return Err(ApiError::bad_request(format!(
            "client version {version} is too new. Maximum supported API version is {API_VERSION}"
        )));
    }
    Ok(Some(rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorKind;

    #[test]
    fn supported_prefixes_are_stripped() {
        assert_eq!(strip_version_prefix("/v1.50/networks").unwrap(), Some("/networks"));
        assert_eq!(strip_version_prefix("/v1.41/containers/web/json").unwrap(), Some("/containers/web/json"));
        // docker-py and older clients may pin an old version: docker 28 serves down to 1.24
        assert_eq!(strip_version_prefix("/v1.24/containers/json").unwrap(), Some("/containers/json"));
        assert_eq!(strip_version_prefix("/v1.45/_ping").unwrap(), Some("/_ping"));
        assert_eq!(strip_version_prefix("/v1.50").unwrap(), Some("/"));
    }

    #[test]
    fn unprefixed_paths_are_left_alone() {
        for p in ["/networks", "/version", "/_ping", "/volumes", "/v", "/v1", "/vx.1/a", "/v1./a", "/v.5/a", "/"] {
            assert_eq!(strip_version_prefix(p).unwrap(), None, "{p}");
        }
    }

    #[test]
    fn versions_outside_the_range_are_dockers_400() {
        let old = strip_version_prefix("/v1.23/networks").unwrap_err();
        assert_eq!(old.kind, ErrorKind::InvalidParameter);
        assert_eq!(
            old.message,
            "client version 1.23 is too old. Minimum supported API version is 1.24, please upgrade your client to a newer version"
        );
        let new = strip_version_prefix("/v1.51/networks").unwrap_err();
        assert_eq!(new.message, "client version 1.51 is too new. Maximum supported API version is 1.50");
        assert!(strip_version_prefix("/v2.0/networks").is_err());
        assert!(strip_version_prefix("/v0.99/networks").is_err());
        // numerically, not as text: 1.5 is older than 1.24
        assert!(strip_version_prefix("/v1.5/networks").is_err());
    }
}
