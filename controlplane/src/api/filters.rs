//! docker's `filters` query parameter: URL-encoded JSON, either a map of maps (the Go CLI,
//! `{"name":{"web":true}}`) or a map of lists (docker-py and compose v1, `{"name":["web"]}`).
//! Values of one key are alternatives; all keys must match.
use std::collections::BTreeMap;

use serde_json::Value;

use super::ApiError;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filters(BTreeMap<String, Vec<String>>);

impl Filters {
    /// The parameter as sent (None or empty: no filter), its keys checked against `allowed`
    /// with docker's 400 for another.
    pub fn parse(param: Option<&str>, allowed: &[&str]) -> Result<Filters, ApiError> {
        let Some(s) = param.filter(|s| !s.is_empty()) else { return Ok(Filters::default()) };
        let invalid = || ApiError::bad_request(format!("invalid filter: {s:?} is not a JSON map of filters"));
        let v: BTreeMap<String, Value> = serde_json::from_str(s).map_err(|_| invalid())?;
        let mut out = BTreeMap::new();
        for (k, vals) in v {
            if !allowed.contains(&k.as_str()) {
                return Err(ApiError::bad_request(format!("invalid filter '{k}'")));
            }
            let vals: Vec<String> = match vals {
                Value::Array(a) => a
                    .into_iter()
                    .map(|x| match x {
                        Value::String(s) => Ok(s),
                        _ => Err(invalid()),
                    })
                    .collect::<Result<_, _>>()?,
                // docker keeps the value only when it maps to true
                Value::Object(o) => {
                    o.into_iter().filter(|(_, on)| on.as_bool() == Some(true)).map(|(x, _)| x).collect()
                }
                _ => return Err(invalid()),
            };
            out.insert(k, vals);
        }
        Ok(Filters(out))
    }

    /// The values given for `key` (empty when it is not filtered on).
    pub fn get(&self, key: &str) -> &[String] {
        self.0.get(key).map(Vec::as_slice).unwrap_or_default()
    }

    /// True when `key` is not filtered on or one of its values satisfies `f`.
    pub fn any(&self, key: &str, f: impl Fn(&str) -> bool) -> bool {
        match self.0.get(key) {
            None => true,
            Some(vs) => vs.iter().any(|v| f(v)),
        }
    }

    /// `label=KEY` or `label=KEY=VALUE` against an object's labels; every label filter must
    /// match (docker's labels are conjunctive, unlike the other keys).
    pub fn labels_match(&self, labels: &BTreeMap<String, String>) -> bool {
        self.get("label").iter().all(|f| match f.split_once('=') {
            Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
            None => labels.contains_key(f.as_str()),
        })
    }
}

/// docker's `name` filter: a substring of the name. (docker matches a regular expression;
/// plain names, the common case, match the same.)
pub fn name_matches(name: &str, filter: &str) -> bool {
    name.trim_start_matches('/').contains(filter.trim_start_matches('/'))
}

/// docker's `id` filter: a prefix of the ID.
pub fn id_matches(id: &str, filter: &str) -> bool {
    id.starts_with(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_encodings_read_the_same() {
        let go = Filters::parse(Some(r#"{"name":{"web":true,"db":true}}"#), &["name"]).unwrap();
        let py = Filters::parse(Some(r#"{"name":["db","web"]}"#), &["name"]).unwrap();
        assert_eq!(go, py);
        assert_eq!(go.get("name"), ["db", "web"]);
        // a value mapped to false is not a filter value
        let off = Filters::parse(Some(r#"{"name":{"web":false}}"#), &["name"]).unwrap();
        assert!(off.get("name").is_empty());
    }

    #[test]
    fn absent_and_empty_filter_nothing() {
        for p in [None, Some("")] {
            let f = Filters::parse(p, &["name"]).unwrap();
            assert!(f.any("name", |_| false));
            assert!(f.labels_match(&BTreeMap::new()));
        }
    }

    #[test]
    fn values_of_a_key_are_alternatives_labels_all_must_match() {
        let f = Filters::parse(Some(r#"{"name":["a","b"],"label":["x=1","y"]}"#), &["name", "label"]).unwrap();
        assert!(f.any("name", |v| v == "b"));
        assert!(!f.any("name", |v| v == "c"));
        let l = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(f.labels_match(&l(&[("x", "1"), ("y", "")])));
        assert!(!f.labels_match(&l(&[("x", "1")])));
        assert!(!f.labels_match(&l(&[("x", "2"), ("y", "")])));
    }

    #[test]
    fn bad_filters_are_400_naming_the_key() {
        let e = Filters::parse(Some(r#"{"colour":["red"]}"#), &["name"]).unwrap_err();
        assert_eq!((e.status().as_u16(), e.message.as_str()), (400, "invalid filter 'colour'"));
        for bad in ["not json", r#"["name"]"#, r#"{"name":"web"}"#, r#"{"name":[1]}"#] {
            assert_eq!(Filters::parse(Some(bad), &["name"]).unwrap_err().status().as_u16(), 400, "{bad}");
        }
    }

    #[test]
    fn name_and_id_matching() {
        assert!(name_matches("/web-1", "web"));
        assert!(!name_matches("db", "web"));
        assert!(id_matches("abcdef", "abc"));
        assert!(!id_matches("abcdef", "bcd"));
    }
}
