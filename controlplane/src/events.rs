//! The daemon's event stream, pure side: docker's `--filter` and `--since` as `netbee events`
//! takes them, and its text line.
use std::collections::BTreeMap;

use anyhow::{Result, anyhow, bail};
use chrono::{DateTime, TimeZone as _, Utc};

use crate::api::EventMessage;

/// `--filter KEY=VALUE` (repeatable): values of one key are alternatives, keys all must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter(pub BTreeMap<String, Vec<String>>);

const FILTER_KEYS: [&str; 6] = ["type", "event", "container", "network", "service", "node"];

impl EventFilter {
    pub fn parse(args: &[String]) -> Result<EventFilter> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for a in args {
            let (k, v) = a.split_once('=').ok_or_else(|| anyhow!("invalid filter {a:?}: expected key=value"))?;
            if !FILTER_KEYS.contains(&k) {
                bail!("invalid filter {k:?}: use one of {}", FILTER_KEYS.join(", "));
            }
            m.entry(k.to_string()).or_default().push(v.to_string());
        }
        Ok(EventFilter(m))
    }

    /// The `filters` query parameter as docker's clients send it: `{"type":["container"]}` or
    /// `{"type":{"container":true}}`.
    pub fn from_json(s: &str) -> Result<EventFilter> {
        let v: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(s).map_err(|e| anyhow!("invalid filters {s:?}: {e}"))?;
        let mut args = Vec::new();
        for (k, vals) in v {
            let vals: Vec<String> = match vals {
                serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
                serde_json::Value::Object(o) => {
                    o.into_iter().filter(|(_, on)| on.as_bool() == Some(true)).map(|(x, _)| x).collect()
                }
                _ => bail!("invalid filters {s:?}: {k} takes a list of values"),
            };
            args.extend(vals.into_iter().map(|x| format!("{k}={x}")));
        }
        EventFilter::parse(&args)
    }

    /// The list form, for the query parameter.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).expect("a map of strings serializes")
    }

    pub fn matches(&self, e: &EventMessage) -> bool {
        let name = e.actor.attributes.get("name");
        // an object is named by its name or a prefix of its id, as the CLI names it
        let is = |v: &String| name == Some(v) || (!v.is_empty() && e.actor.id.starts_with(v.as_str()));
        self.0.iter().all(|(k, vs)| match k.as_str() {
            "type" => vs.contains(&e.typ),
            "event" => vs.contains(&e.action),
            "container" => {
                (e.typ == "container" && vs.iter().any(is))
                    // network connect/disconnect name their container
                    || e.actor.attributes.get("container").is_some_and(|c| vs.iter().any(|v| c.starts_with(v.as_str())))
                    || e.actor.attributes.get("containerName").is_some_and(|c| vs.contains(c))
            }
            "network" | "service" | "node" => e.typ == *k && vs.iter().any(is),
            _ => false,
        })
    }
}

/// `--since`/`--until`: Unix seconds (with a fraction), RFC 3339, or a duration before now
/// (`10s`, `5m`, `2h`).
pub fn parse_time(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    let bad = || anyhow!("invalid time {s:?}: use Unix seconds, RFC 3339 or a duration such as 10m");
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(secs) = s.parse::<f64>() {
        let nanos = (secs * 1e9) as i64;
        return Ok(Utc.timestamp_nanos(nanos));
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: i64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(bad()),
    };
    Ok(now - chrono::Duration::seconds(secs))
}

/// docker's text line: `TIME TYPE ACTION ID (key=value, ...)`.
pub fn text_line(e: &EventMessage) -> String {
    let t = Utc.timestamp_nanos(e.time_nano).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let attrs: Vec<String> = e.actor.attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{t} {} {} {} ({})", e.typ, e.action, e.actor.id, attrs.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::EventActor;

    fn msg(typ: &str, action: &str, id: &str, attrs: &[(&str, &str)]) -> EventMessage {
        EventMessage {
            typ: typ.into(),
            action: action.into(),
            actor: EventActor {
                id: id.into(),
                attributes: attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            },
            scope: "local".into(),
            time: 1_700_000_000,
            time_nano: 1_700_000_000_123_456_789,
        }
    }

    #[test]
    fn filters_match_by_type_event_and_name() {
        let start = msg("container", "start", "abc123", &[("name", "c1"), ("image", "host")]);
        let connect = msg("network", "connect", "net999", &[("name", "front"), ("container", "abc123")]);
        let f = |a: &[&str]| EventFilter::parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        assert!(f(&[]).matches(&start));
        assert!(f(&["type=container"]).matches(&start) && !f(&["type=container"]).matches(&connect));
        assert!(f(&["type=container", "type=network"]).matches(&connect));
        assert!(f(&["event=start"]).matches(&start) && !f(&["event=die"]).matches(&start));
        assert!(f(&["container=c1"]).matches(&start) && f(&["container=abc"]).matches(&start));
        assert!(f(&["container=abc123"]).matches(&connect));
        assert!(f(&["network=front"]).matches(&connect) && !f(&["network=front"]).matches(&start));
        assert!(!f(&["type=container", "event=die"]).matches(&start));
    }

    #[test]
    fn filters_travel_as_dockers_json() {
        let f = EventFilter::parse(&["type=container".into(), "event=die".into(), "type=network".into()]).unwrap();
        assert_eq!(EventFilter::from_json(&f.to_json()).unwrap(), f);
        let g = EventFilter::from_json(r#"{"type":{"container":true,"network":false}}"#).unwrap();
        assert_eq!(g, EventFilter::parse(&["type=container".into()]).unwrap());
        assert!(EventFilter::from_json("[1]").is_err());
    }

    #[test]
    fn bad_filters_are_refused_with_the_key() {
        let e = EventFilter::parse(&["colour=red".into()]).unwrap_err().to_string();
        assert!(e.contains("\"colour\""), "{e}");
        assert!(EventFilter::parse(&["type".into()]).is_err());
    }

    #[test]
    fn since_takes_seconds_rfc3339_and_durations() {
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        assert_eq!(parse_time("1699999990", now).unwrap().timestamp(), 1_699_999_990);
        assert_eq!(parse_time("1699999990.5", now).unwrap().timestamp_subsec_millis(), 500);
        assert_eq!(parse_time("10m", now).unwrap(), now - chrono::Duration::seconds(600));
        assert_eq!(parse_time("2023-11-14T22:13:20Z", now).unwrap(), now);
        assert!(parse_time("yesterday", now).is_err() && parse_time("10d", now).is_err());
    }

    #[test]
    fn text_line_is_dockers() {
        let e = msg("container", "die", "abc123", &[("name", "c1"), ("exitCode", "0")]);
        assert_eq!(text_line(&e), "2023-11-14T22:13:20.123456789Z container die abc123 (exitCode=0, name=c1)");
    }
}
