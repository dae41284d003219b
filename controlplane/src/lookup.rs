//! How commands name objects, as docker does: by full id, by name, or by a unique prefix of the
//! id. Written once for networks, containers, services and nodes.
use crate::{
    api::{ApiError, ApiResult},
    model::{ContainerRecord, NetworkRecord, NodeRecord, ServiceRecord},
};

/// An object commands can name.
pub trait Named {
    fn id(&self) -> &str;
    fn name(&self) -> &str;
    /// The error for a key that names nothing (docker's wording differs per kind).
    fn not_found(key: &str) -> ApiError;
    /// "network", "container", ... in the message for an ambiguous prefix.
    const KIND: &'static str;
}

/// The object `key` names among `all`: an exact id or name first, else the only id it prefixes.
pub fn find<'a, T: Named>(all: &'a [T], key: &str) -> ApiResult<&'a T> {
    if let Some(o) = all.iter().find(|o| o.id() == key || o.name() == key) {
        return Ok(o);
    }
    let mut matches = all.iter().filter(|o| !key.is_empty() && o.id().starts_with(key));
    match (matches.next(), matches.count()) {
        (Some(o), 0) => Ok(o),
        (None, _) => Err(T::not_found(key)),
        (Some(_), more) => {
            Err(ApiError::bad_request(format!("{} {key} is ambiguous ({} matches found)", T::KIND, more + 1)))
        }
    }
}

/// Borrowed records name the same (a shared table is searched without copying it).
impl<T: Named> Named for &T {
    const KIND: &'static str = T::KIND;
    fn id(&self) -> &str {
        (**self).id()
    }
    fn name(&self) -> &str {
        (**self).name()
    }
    fn not_found(key: &str) -> ApiError {
        T::not_found(key)
    }
}

impl Named for NetworkRecord {
    const KIND: &'static str = "network";
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn not_found(key: &str) -> ApiError {
        ApiError::not_found(format!("network {key} not found"))
    }
}

impl Named for ContainerRecord {
    const KIND: &'static str = "container";
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn not_found(key: &str) -> ApiError {
        ApiError::not_found(format!("No such container: {key}"))
    }
}

impl Named for ServiceRecord {
    const KIND: &'static str = "service";
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.spec.name
    }
    fn not_found(key: &str) -> ApiError {
        ApiError::not_found(format!("service {key} not found"))
    }
}

impl Named for NodeRecord {
    const KIND: &'static str = "node";
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.hostname
    }
    fn not_found(key: &str) -> ApiError {
        ApiError::not_found(format!("node {key} not found"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Obj(&'static str, &'static str);

    impl Named for Obj {
        const KIND: &'static str = "thing";
        fn id(&self) -> &str {
            self.0
        }
        fn name(&self) -> &str {
            self.1
        }
        fn not_found(key: &str) -> ApiError {
            ApiError::not_found(format!("thing {key} not found"))
        }
    }

    #[test]
    fn exact_id_or_name_then_unique_prefix() {
        let all = [Obj("abc123", "web"), Obj("abd456", "abc"), Obj("ff00", "db")];
        assert_eq!(find(&all, "abc123").unwrap().1, "web");
        // a name wins over an id it is a prefix of
        assert_eq!(find(&all, "abc").unwrap().0, "abd456");
        assert_eq!(find(&all, "ff").unwrap().1, "db");
        assert_eq!(find(&all, "abd").unwrap().1, "abc");
        let e = find(&all, "ab").unwrap_err();
        assert_eq!(e.to_string(), "thing ab is ambiguous (2 matches found)");
        assert_eq!(find(&all, "zz").unwrap_err().to_string(), "thing zz not found");
        assert!(find(&all, "").is_err(), "an empty key names nothing");
    }
}
