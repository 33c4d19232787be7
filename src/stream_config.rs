//! The stream config: which streams exist and which schema title each takes.
//! Knows nothing of HTTP or Kafka.
//!
//! # Shapes
//! - EventGate's static file: `{<stream name or /regex/>: {schema_title, topic_prefixes?, ...}}`;
//! - MediaWiki's `api.php?action=streamconfigs` answer: `{"streams": {...}}`
//!   with the same inside. A top level whose only key is `streams` and whose
//!   value does not itself carry a string `schema_title` is read this way (so
//!   a stream literally named `streams` still works in the first shape).
//!
//! YAML or JSON: a path ending in `.json` is read with serde_json, anything
//! else as YAML. Keys keep their file order (parsed without building a
//! sorted map), which is the order the regexes are tried in.
//!
//! # Per stream
//! - `schema_title` (required, a string): must equal the `title` of the schema an event names.
//! - `topic_prefixes` (optional list of strings): kept, not used for routing
//!   (the topic is `events.topic_prefix` + stream, as eventgate-wikimedia does).
//! - `partition_key` (optional, beacond's own): a list of dotted event field
//!   paths, e.g. `["meta.domain"]`. The Kafka key is the compact JSON array of
//!   those fields' values in that order (`["en.wikipedia.org"]`), a missing
//!   field being `null`; without `partition_key` there is no key (random
//!   partitioning). A path segment cannot contain a `.`.
//! - anything else is ignored (MediaWiki adds many settings).
//!
//! # Lookup
//! Exact name first, then the `/regex/` keys in file order. A regex is used
//! as written, unanchored, as EventGate does (`/^product_metrics\.web_base/`
//! anchors itself; `/web_base/` matches any name containing it). Regexes are
//! compiled once, with the `regex` crate's syntax (no look-around or
//! backreferences, unlike JavaScript) and a size limit.
//!
//! Each entry carries `key`, the config key as written: a bounded metric
//! label, unlike the client-supplied stream name.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::schema_repository::SchemaRepository;

/// Compiled regex size limit per key.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// One stream config entry.
#[derive(Clone, Debug)]
pub struct StreamEntry {
    /// The config key as written (`eventlogging_Test`, `/^product_metrics\..+$/`).
    pub key: Arc<str>,
    pub schema_title: String,
    pub topic_prefixes: Option<Vec<String>>,
    /// Dotted event field paths, split (`[["meta", "domain"]]`); empty: no key.
    pub partition_key: Vec<Vec<String>>,
}

impl StreamEntry {
    /// The Kafka key for `event` (see the module docs), or `None` without `partition_key`.
    pub fn partition_key_of(&self, event: &Value) -> Option<Vec<u8>> {
        if self.partition_key.is_empty() {
            return None;
        }
        let values: Vec<&Value> = self
            .partition_key
            .iter()
            .map(|path| {
                path.iter()
                    .try_fold(event, |v, seg| v.as_object()?.get(seg))
                    .unwrap_or(&Value::Null)
            })
            .collect();
        serde_json::to_vec(&values).ok()
    }
}

/// Why a stream config could not be read. Each names the key (or file).
#[derive(Debug, thiserror::Error)]
pub enum StreamConfigError {
    #[error("stream config {origin}: {source}")]
    Io {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stream config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("stream config {origin}: the top level is not a map of streams")]
    TopLevelNotAMap { origin: String },
    #[error("stream config {origin}: stream {key:?}: settings are not a map")]
    NotAMap { origin: String, key: String },
    #[error("stream config {origin}: stream {key:?}: no schema_title")]
    MissingSchemaTitle { origin: String, key: String },
    #[error("stream config {origin}: stream {key:?}: schema_title is not a string")]
    SchemaTitleNotString { origin: String, key: String },
    #[error("stream config {origin}: stream {key:?}: bad regex: {source}")]
    BadRegex {
        origin: String,
        key: String,
        #[source]
        source: Box<regex::Error>,
    },
    #[error("stream config {origin}: stream {key:?}: {setting}: {message}")]
    BadSetting {
        origin: String,
        key: String,
        setting: &'static str,
        message: &'static str,
    },
}

/// Stream keys whose `schema_title` has no schema in the repositories.
#[derive(Debug, thiserror::Error)]
#[error("stream config names schema titles no schema repository has: {}", .missing.iter().map(|(k, t)| format!("{k:?} -> {t:?}")).collect::<Vec<_>>().join(", "))]
pub struct MissingSchemas {
    /// `(stream key, schema_title)`, in file order.
    pub missing: Vec<(Arc<str>, String)>,
}

/// The parsed, compiled stream config.
#[derive(Debug, Default)]
pub struct StreamConfig {
    exact: HashMap<String, Arc<StreamEntry>>,
    patterns: Vec<(regex::Regex, Arc<StreamEntry>)>,
    /// Every entry in file order.
    entries: Vec<Arc<StreamEntry>>,
}

impl StreamConfig {
    /// Read `path` (`.json`: JSON, else YAML).
    pub fn load(path: &Path) -> Result<Self, StreamConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| StreamConfigError::Io {
            origin: origin.clone(),
            source,
        })?;
        Self::parse(&text, &origin)
    }

    /// Parse `text`; `origin` names it in errors and picks the format
    /// (ending in `.json`: JSON, else YAML).
    pub fn parse(text: &str, origin: &str) -> Result<Self, StreamConfigError> {
        Self::parse_as(text, origin, origin.ends_with(".json"))
    }

    /// Parse `text` as JSON whatever `origin` is (an answer from a URL).
    pub fn parse_json(text: &str, origin: &str) -> Result<Self, StreamConfigError> {
        Self::parse_as(text, origin, true)
    }

    fn parse_as(text: &str, origin: &str, json: bool) -> Result<Self, StreamConfigError> {
        let parse_err = |message: String| StreamConfigError::Parse {
            origin: origin.to_owned(),
            message,
        };
        let top: Top = if json {
            serde_json::from_str(text).map_err(|e| parse_err(e.to_string()))?
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| parse_err(e.to_string()))?
        };
        let Top::Map(mut entries) = top else {
            return Err(StreamConfigError::TopLevelNotAMap {
                origin: origin.to_owned(),
            });
        };
        if let [(name, Node::Map(inner))] = entries.as_slice() {
            let is_stream = inner
                .iter()
                .any(|(k, v)| k == "schema_title" && v.is_string());
            if name == "streams" && !is_stream {
                let Some((_, Node::Map(inner))) = entries.pop() else {
                    unreachable!("matched above")
                };
                entries = inner
                    .into_iter()
                    .map(|(k, v)| (k, Node::Value(v)))
                    .collect();
            }
        }
        let streams = entries
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    Node::Map(m) => Value::Object(m.into_iter().collect()),
                    Node::Value(v) => v,
                    Node::Other => Value::Null,
                };
                (k, v)
            })
            .collect();
        Self::from_entries(streams, origin)
    }

    /// From an already parsed tree (tests, a later live reload). With
    /// serde_json's default sorted maps, the regexes are tried in key order.
    pub fn from_value(value: Value, origin: &str) -> Result<Self, StreamConfigError> {
        let Value::Object(mut map) = value else {
            return Err(StreamConfigError::TopLevelNotAMap {
                origin: origin.to_owned(),
            });
        };
        if map.len() == 1 {
            if let Some(Value::Object(inner)) = map.get("streams") {
                if !inner.get("schema_title").is_some_and(Value::is_string) {
                    if let Some(Value::Object(inner)) = map.remove("streams") {
                        map = inner;
                    }
                }
            }
        }
        Self::from_entries(map.into_iter().collect(), origin)
    }

    fn from_entries(
        entries: Vec<(String, Value)>,
        origin: &str,
    ) -> Result<Self, StreamConfigError> {
        let mut config = StreamConfig::default();
        for (key, settings) in entries {
            let entry = Arc::new(entry(&key, settings, origin)?);
            if let Some(pattern) = key
                .strip_prefix('/')
                .and_then(|k| k.strip_suffix('/'))
                .filter(|_| key.len() >= 2)
            {
                let re = regex::RegexBuilder::new(pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| StreamConfigError::BadRegex {
                        origin: origin.to_owned(),
                        key: key.clone(),
                        source: Box::new(e),
                    })?;
                config.patterns.push((re, entry.clone()));
            } else {
                config.exact.insert(key, entry.clone());
            }
            config.entries.push(entry);
        }
        Ok(config)
    }

    /// The entry for a stream name: exact first, then regexes in file order.
    pub fn lookup(&self, stream: &str) -> Option<&Arc<StreamEntry>> {
        self.exact.get(stream).or_else(|| {
            self.patterns
                .iter()
                .find(|(re, _)| re.is_match(stream))
                .map(|(_, e)| e)
        })
    }

    /// Every entry, in file order.
    pub fn entries(&self) -> &[Arc<StreamEntry>] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every stream key whose `schema_title` no schema in `repo` has.
    pub fn check_schemas(&self, repo: &SchemaRepository) -> Result<(), MissingSchemas> {
        let missing: Vec<_> = self
            .entries
            .iter()
            .filter(|e| !repo.has_title(&e.schema_title))
            .map(|e| (e.key.clone(), e.schema_title.clone()))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(MissingSchemas { missing })
        }
    }
}

fn entry(key: &str, settings: Value, origin: &str) -> Result<StreamEntry, StreamConfigError> {
    let bad = |setting, message| StreamConfigError::BadSetting {
        origin: origin.to_owned(),
        key: key.to_owned(),
        setting,
        message,
    };
    let Value::Object(mut settings) = settings else {
        return Err(StreamConfigError::NotAMap {
            origin: origin.to_owned(),
            key: key.to_owned(),
        });
    };
    let schema_title = match settings.remove("schema_title") {
        Some(Value::String(t)) => t,
        None | Some(Value::Null) => {
            return Err(StreamConfigError::MissingSchemaTitle {
                origin: origin.to_owned(),
                key: key.to_owned(),
            })
        }
        Some(_) => {
            return Err(StreamConfigError::SchemaTitleNotString {
                origin: origin.to_owned(),
                key: key.to_owned(),
            })
        }
    };
    let string_list = |v: Value, setting| -> Result<Vec<String>, StreamConfigError> {
        let Value::Array(items) = v else {
            return Err(bad(setting, "not a list"));
        };
        items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => Ok(s),
                _ => Err(bad(setting, "not a list of strings")),
            })
            .collect()
    };
    let topic_prefixes = match settings.remove("topic_prefixes") {
        None | Some(Value::Null) => None,
        Some(v) => Some(string_list(v, "topic_prefixes")?),
    };
    let partition_key = match settings.remove("partition_key") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => {
            let paths = string_list(v, "partition_key")?;
            if paths.is_empty() {
                return Err(bad(
                    "partition_key",
                    "an empty list (leave it out for no key)",
                ));
            }
            paths
                .iter()
                .map(|p| {
                    let segs: Vec<String> = p.split('.').map(str::to_owned).collect();
                    if segs.iter().any(String::is_empty) {
                        Err(bad("partition_key", "a field path with an empty segment"))
                    } else {
                        Ok(segs)
                    }
                })
                .collect::<Result<_, _>>()?
        }
    };
    Ok(StreamEntry {
        key: Arc::from(key),
        schema_title,
        topic_prefixes,
        partition_key,
    })
}

/// The top level, keys in file order.
enum Top {
    Map(Vec<(String, Node)>),
    Other,
}

/// A top-level value: a map kept in order (for `{"streams": {...}}`), or anything else.
enum Node {
    Map(Vec<(String, Value)>),
    Value(Value),
    Other,
}

impl<'de> serde::Deserialize<'de> for Top {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Top;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of streams")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Top, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Node>()? {
                    out.push((k, v));
                }
                Ok(Top::Map(out))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<Top, A::Error> {
                while s.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Top::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Top, E> {
                Ok(Top::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Top, E> {
                Ok(Top::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Top, E> {
                Ok(Top::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Top, E> {
                Ok(Top::Other)
            }
            fn visit_str<E>(self, _: &str) -> Result<Top, E> {
                Ok(Top::Other)
            }
            fn visit_unit<E>(self) -> Result<Top, E> {
                Ok(Top::Other)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> serde::Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Maps keep their order; anything else becomes a `Value` (or `Other`
        // when it is not representable, e.g. a 128-bit integer).
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("stream settings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Node, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Node::Map(out))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<Node, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = s.next_element::<Value>()? {
                    out.push(v);
                }
                Ok(Node::Value(Value::Array(out)))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Value(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Value(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
                Ok(Node::Value(v.into()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Other)
            }
            fn visit_i128<E>(self, _: i128) -> Result<Node, E> {
                Ok(Node::Other)
            }
            fn visit_u128<E>(self, _: u128) -> Result<Node, E> {
                Ok(Node::Other)
            }
            fn visit_str<E>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Value(Value::String(v.to_owned())))
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Value(Value::Null))
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Value(Value::Null))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dev() -> StreamConfig {
        StreamConfig::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/dev-streams.yaml"))
            .unwrap()
    }

    #[test]
    fn dev_config_lookup() {
        let c = dev();
        let cases = [
            (
                "eventlogging_NavigationTiming",
                Some("eventlogging_NavigationTiming"),
            ),
            ("test.event", Some("test.event")),
            (
                "product_metrics.web_base",
                Some(r"/^product_metrics\.web_base(\..+)?$/"),
            ),
            (
                "product_metrics.web_base.some_experiment",
                Some(r"/^product_metrics\.web_base(\..+)?$/"),
            ),
            ("product_metrics.web_basement", None),
            (
                "product_metrics.app_base",
                Some(r"/^product_metrics\.app_base(\..+)?$/"),
            ),
            ("eventlogging_navigationtiming", None),
            ("", None),
        ];
        for (stream, key) in cases {
            assert_eq!(c.lookup(stream).map(|e| &*e.key), key, "{stream:?}");
        }
        assert_eq!(c.lookup("test.event").unwrap().schema_title, "test/event");
    }

    #[test]
    fn regexes_are_unanchored_and_tried_in_file_order_after_exact_names() {
        let yaml = "/b/:\n  schema_title: second\n/a/:\n  schema_title: first\nab:\n  schema_title: exact\n";
        let c = StreamConfig::parse(yaml, "inline.yaml").unwrap();
        // File order: /b/ before /a/, though "a" sorts first.
        assert_eq!(c.lookup("xaby").unwrap().schema_title, "second");
        assert_eq!(c.lookup("xa").unwrap().schema_title, "first");
        assert_eq!(c.lookup("ab").unwrap().schema_title, "exact");
        let keys: Vec<&str> = c.entries().iter().map(|e| &*e.key).collect();
        assert_eq!(keys, ["/b/", "/a/", "ab"]);
    }

    #[test]
    fn mediawiki_streamconfigs_shape_and_json() {
        let text = r#"{"streams": {"eventlogging_Test": {"schema_title": "analytics/legacy/test",
            "destination_event_service": "eventgate-analytics-external", "topic_prefixes": ["eqiad.", "codfw."],
            "canary_events_enabled": true, "producers": {"metrics_platform_client": {}}}}}"#;
        let c = StreamConfig::parse(text, "streamconfigs.json").unwrap();
        let e = c.lookup("eventlogging_Test").unwrap();
        assert_eq!(e.schema_title, "analytics/legacy/test");
        assert_eq!(
            e.topic_prefixes.as_deref(),
            Some(&["eqiad.".to_owned(), "codfw.".to_owned()][..])
        );
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(StreamConfig::from_value(v, "value").unwrap().len(), 1);
        // A stream named "streams" is a stream.
        let c = StreamConfig::parse("streams:\n  schema_title: x\n", "s.yaml").unwrap();
        assert_eq!(c.lookup("streams").unwrap().schema_title, "x");
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("/([/:\n  schema_title: x\n", "bad regex"),
            ("s1:\n  topic_prefixes: []\n", "no schema_title"),
            ("s1:\n  schema_title: 3\n", "not a string"),
            ("s1: just a string\n", "not a map"),
            (
                "s1:\n  schema_title: x\n  partition_key: meta.domain\n",
                "not a list",
            ),
            (
                "s1:\n  schema_title: x\n  partition_key: [\"meta..domain\"]\n",
                "empty segment",
            ),
            ("- a\n- b\n", "top level"),
        ];
        for (yaml, want) in cases {
            let err = StreamConfig::parse(yaml, "t.yaml").unwrap_err().to_string();
            assert!(err.contains(want), "{yaml:?}: {err}");
            if !want.contains("top level") {
                let key = yaml.split(':').next().unwrap();
                assert!(err.contains(key), "{yaml:?}: {err}");
            }
        }
    }

    #[test]
    fn check_schemas_reports_every_missing_title() {
        let repo = SchemaRepository::load(&[
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/event-schemas/primary/jsonschema"),
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/event-schemas/secondary/jsonschema"),
        ])
        .unwrap();
        dev().check_schemas(&repo).unwrap();
        let c = StreamConfig::from_value(
            json!({"a": {"schema_title": "test/event"}, "b": {"schema_title": "no/such"}, "/c/": {"schema_title": "nor/this"}}),
            "v",
        )
        .unwrap();
        let err = c.check_schemas(&repo).unwrap_err();
        let keys: Vec<&str> = err.missing.iter().map(|(k, _)| &**k).collect();
        assert_eq!(keys, ["/c/", "b"]);
        assert!(err.to_string().contains("no/such"));
    }

    #[test]
    fn partition_key_is_a_json_array_of_the_fields() {
        let c = StreamConfig::parse(
            "s:\n  schema_title: x\n  partition_key: [meta.domain, performer.id]\nt:\n  schema_title: x\n",
            "p.yaml",
        )
        .unwrap();
        let s = c.lookup("s").unwrap();
        let ev = json!({"meta": {"domain": "en.wikipedia.org"}, "performer": {"id": 7}});
        assert_eq!(
            s.partition_key_of(&ev).unwrap(),
            br#"["en.wikipedia.org",7]"#
        );
        let ev = json!({"meta": "not an object"});
        assert_eq!(s.partition_key_of(&ev).unwrap(), br#"[null,null]"#);
        assert_eq!(c.lookup("t").unwrap().partition_key_of(&ev), None);
    }
}
