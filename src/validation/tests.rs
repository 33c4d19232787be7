//! Table-driven tests of the per-event rules against the real schemas in
//! `tests/fixtures/event-schemas` and `config/dev-streams.yaml`. Every verdict
//! is cross-checked with `boon` ([`crate::crosscheck::BoonOracle`]): the
//! produced bytes of an accepted event are valid for boon, the event of an
//! invalid item is invalid for boon, and every error event is valid against
//! `/error/2.1.0` for both validators.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde_json::{json, Value};
use time::macros::datetime;

use super::*;
use crate::crosscheck::BoonOracle;

fn fixture_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/event-schemas");
    vec![
        root.join("primary/jsonschema"),
        root.join("secondary/jsonschema"),
    ]
}

struct Fixture {
    repo: Arc<SchemaRepository>,
    streams: Arc<StreamConfig>,
    oracle: BoonOracle,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        repo: Arc::new(SchemaRepository::load(&fixture_dirs()).unwrap()),
        streams: Arc::new(
            StreamConfig::load(
                &Path::new(env!("CARGO_MANIFEST_DIR")).join("config/dev-streams.yaml"),
            )
            .unwrap(),
        ),
        oracle: BoonOracle::fixtures(),
    })
}

fn validator_with(settings: ValidatorSettings) -> EventValidator {
    let f = fixture();
    EventValidator::new(f.streams.clone(), f.repo.clone(), settings).unwrap()
}

fn validator() -> EventValidator {
    validator_with(ValidatorSettings {
        topic_prefix: "eqiad.".into(),
        ..ValidatorSettings::default()
    })
}

const UA: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";

fn ctx() -> EventContext<'static> {
    EventContext {
        received: datetime!(2026-12-01 21:41:46.123456 UTC),
        request_id: Some("9b3e0c4a-2f5d-4f0e-9a65-1f0e3c1d2b7a"),
        user_agent: Some(UA),
        client_ip: Some("198.51.100.7".parse::<IpAddr>().unwrap()),
    }
}

const NOW: &str = "2026-12-01T21:41:46.123Z";

/// Check `event`, cross-check every outcome with boon, return the verdict and the bytes.
fn run(v: &EventValidator, event: Value, ctx: &EventContext<'_>) -> (EventVerdict, Option<Value>) {
    let f = fixture();
    let schema_uri = event
        .get("$schema")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut out = Vec::new();
    let verdict = v.check(event, ctx, &mut out);
    let produced: Option<Value> = (!out.is_empty()).then(|| serde_json::from_slice(&out).unwrap());
    match &verdict {
        EventVerdict::Accepted(_) => {
            let p = produced.as_ref().unwrap();
            let uri = &v
                .schemas
                .resolve(schema_uri.as_deref().unwrap(), true)
                .unwrap()
                .uri;
            assert!(v.schemas.resolve(uri, false).unwrap().validator.is_valid(p));
            f.oracle.assert_agrees(uri, p, true, "accepted event");
        }
        EventVerdict::Invalid(inv) => {
            let e = produced.as_ref().expect("an error event");
            assert!(inv.error_event.is_some());
            assert!(
                v.error_schema.validator.is_valid(e),
                "beacond: error event invalid: {e}"
            );
            f.oracle
                .assert_agrees(ERROR_SCHEMA_URI, e, true, "error event");
            assert_eq!(inv.item["status"], "invalid");
            if inv.reason == InvalidReason::SchemaValidation {
                let uri = &v
                    .schemas
                    .resolve(schema_uri.as_deref().unwrap(), true)
                    .unwrap()
                    .uri;
                f.oracle
                    .assert_agrees(uri, &inv.item["event"], false, "invalid event");
            }
        }
        EventVerdict::Error(err) => {
            assert!(out.is_empty());
            assert_eq!(err.item["status"], "error");
            assert!(err.item["context"]["message"].is_string());
        }
    }
    (verdict, produced)
}

fn nav(extra: Value) -> Value {
    let mut e = json!({
        "$schema": "/analytics/legacy/navigationtiming/1.6.0",
        "meta": {"stream": "eventlogging_NavigationTiming", "domain": "en.wikipedia.org"},
        "client_dt": "2026-12-01T21:41:45.000Z",
        "webHost": "en.wikipedia.org",
        "wiki": "enwiki",
        "event": {
            "isAnon": true, "action": "view", "mediaWikiVersion": "1.44.0-wmf.5",
            "responseStart": 181, "domInteractive": 612, "loadEventEnd": 1403,
            "cumulativeLayoutShift": 0.012, "netinfoEffectiveConnectionType": "4g"
        }
    });
    merge(&mut e, extra);
    e
}

fn search() -> Value {
    json!({
        "$schema": "/analytics/legacy/searchsatisfaction/1.5.0",
        "meta": {"stream": "eventlogging_SearchSatisfaction", "domain": "de.wikipedia.org"},
        "client_dt": "2026-12-01T21:41:45.500Z",
        "event": {
            "action": "searchResultPage", "searchSessionId": "k1f2mq0ulfzz3uy1e9yv34xr4",
            "pageViewId": "a3b1c0d9e8f7a6b5", "scroll": false, "mwSessionId": "7f4c2a9b1e3d5f60",
            "source": "fulltext", "uniqueId": "a3b1c0d9e8f7a6b5-1", "hitsReturned": 20,
            "query": "Zürich", "msToDisplayResults": 240, "isAnon": true
        }
    })
}

fn web_base(stream: &str) -> Value {
    json!({
        "$schema": "/analytics/product_metrics/web/base/1.3.0",
        "meta": {"stream": stream, "domain": "en.wikipedia.org"},
        "dt": "2026-12-01T21:41:44.250Z",
        "action": "click",
        "action_source": "toc",
        "agent": {"client_platform": "mediawiki_js", "client_platform_family": "desktop_browser"},
        "page": {"id": 12345, "title": "Zürich", "namespace_id": 0, "revision_id": 1234567890},
        "mediawiki": {"database": "enwiki", "skin": "vector-2022"},
        "performer": {"is_logged_in": false, "session_id": "7f4c2a9b1e3d5f60aa1b", "pageview_id": "a3b1c0d9e8f7a6b5cc2d"}
    })
}

fn test_event() -> Value {
    json!({"$schema": "/test/event/1.0.0", "meta": {"stream": "test.event"}})
}

fn merge(base: &mut Value, extra: Value) {
    if let (Value::Object(b), Value::Object(e)) = (base, extra) {
        for (k, v) in e {
            match (b.get_mut(&k), v) {
                (Some(bv @ Value::Object(_)), v @ Value::Object(_)) => merge(bv, v),
                (_, Value::Null) => {
                    b.remove(&k);
                }
                (_, v) => {
                    b.insert(k, v);
                }
            }
        }
    }
}

fn with(mut e: Value, extra: Value) -> Value {
    merge(&mut e, extra);
    e
}

#[derive(Debug, PartialEq)]
enum Want {
    Accepted(&'static str),
    Invalid(InvalidReason),
    Error(ErrorReason),
}

fn outcome(v: &EventVerdict) -> String {
    match v {
        EventVerdict::Accepted(a) => format!("accepted {}", a.topic),
        EventVerdict::Invalid(i) => format!(
            "invalid {:?}: {}",
            i.reason, i.item["context"]["errorsText"]
        ),
        EventVerdict::Error(e) => format!("error {:?}: {}", e.reason, e.item["context"]["message"]),
    }
}

#[test]
fn per_event_rules() {
    let v = validator();
    let abs = "https://schema.wikimedia.org/repositories/primary/jsonschema/test/event/1.0.0";
    let cases: Vec<(&str, Value, Want)> = vec![
        (
            "navigation timing",
            nav(json!({})),
            Want::Accepted("eventlogging_NavigationTiming"),
        ),
        (
            "search satisfaction",
            search(),
            Want::Accepted("eventlogging_SearchSatisfaction"),
        ),
        (
            "web base, regex stream key",
            web_base("product_metrics.web_base"),
            Want::Accepted("eqiad.product_metrics.web_base"),
        ),
        (
            "web base, regex sub-stream",
            web_base("product_metrics.web_base.exp1"),
            Want::Accepted("eqiad.product_metrics.web_base.exp1"),
        ),
        (
            "test event",
            test_event(),
            Want::Accepted("eqiad.test.event"),
        ),
        (
            "latest",
            with(test_event(), json!({"$schema": "/test/event/latest"})),
            Want::Accepted("eqiad.test.event"),
        ),
        (
            "not an object",
            json!([1, 2]),
            Want::Invalid(InvalidReason::NotAnObject),
        ),
        (
            "a string",
            json!("event"),
            Want::Invalid(InvalidReason::NotAnObject),
        ),
        (
            "missing $schema",
            json!({"meta": {"stream": "test.event"}}),
            Want::Invalid(InvalidReason::MissingSchema),
        ),
        (
            "$schema not a string",
            json!({"$schema": 7, "meta": {"stream": "test.event"}}),
            Want::Invalid(InvalidReason::MissingSchema),
        ),
        (
            "missing meta",
            json!({"$schema": "/test/event/1.0.0"}),
            Want::Invalid(InvalidReason::MissingStream),
        ),
        (
            "missing meta.stream",
            json!({"$schema": "/test/event/1.0.0", "meta": {"domain": "x.org"}}),
            Want::Invalid(InvalidReason::MissingStream),
        ),
        (
            "meta.stream not a string",
            json!({"$schema": "/test/event/1.0.0", "meta": {"stream": ["x"]}}),
            Want::Invalid(InvalidReason::MissingStream),
        ),
        (
            "unknown stream",
            with(test_event(), json!({"meta": {"stream": "no.such.stream"}})),
            Want::Error(ErrorReason::UnknownStream),
        ),
        (
            "regex does not match",
            web_base("product_metrics.web_basement"),
            Want::Error(ErrorReason::UnknownStream),
        ),
        (
            "schema title mismatch",
            with(
                nav(json!({})),
                json!({"meta": {"stream": "eventlogging_SearchSatisfaction"}}),
            ),
            Want::Error(ErrorReason::SchemaTitleMismatch),
        ),
        (
            "unknown schema version",
            with(test_event(), json!({"$schema": "/test/event/9.9.9"})),
            Want::Error(ErrorReason::UnknownSchema),
        ),
        (
            "unknown schema",
            with(test_event(), json!({"$schema": "/no/such/schema/1.0.0"})),
            Want::Error(ErrorReason::UnknownSchema),
        ),
        (
            "malformed schema uri",
            with(test_event(), json!({"$schema": "/test/../event/1.0.0"})),
            Want::Error(ErrorReason::MalformedSchemaUri),
        ),
        (
            "absolute uri refused",
            with(test_event(), json!({"$schema": abs})),
            Want::Error(ErrorReason::AbsoluteSchemaUri),
        ),
        (
            "format date-time",
            nav(json!({"client_dt": "yesterday"})),
            Want::Invalid(InvalidReason::SchemaValidation),
        ),
        (
            "format date-time in meta.dt",
            with(
                test_event(),
                json!({"meta": {"dt": "2026-13-01T00:00:00Z"}}),
            ),
            Want::Invalid(InvalidReason::SchemaValidation),
        ),
        (
            "format uri-reference",
            with(
                test_event(),
                json!({"meta": {"uri": "http://exa mple.org/<>"}}),
            ),
            Want::Invalid(InvalidReason::SchemaValidation),
        ),
        (
            "additionalProperties false",
            nav(json!({"unexpected_field": 1})),
            Want::Invalid(InvalidReason::SchemaValidation),
        ),
        (
            "nested required",
            nav(json!({"event": {"isAnon": null}})),
            Want::Invalid(InvalidReason::SchemaValidation),
        ),
        (
            "enum",
            with(search(), json!({"event": {"source": "voice"}})),
            Want::Invalid(InvalidReason::SchemaValidation),
        ),
        (
            "type",
            with(search(), json!({"event": {"hitsReturned": "20"}})),
            Want::Invalid(InvalidReason::SchemaValidation),
        ),
        (
            "web base missing agent",
            with(web_base("product_metrics.web_base"), json!({"agent": null})),
            Want::Invalid(InvalidReason::SchemaValidation),
        ),
    ];
    for (name, event, want) in cases {
        let (got, _) = run(&v, event, &ctx());
        let ok = match (&got, &want) {
            (EventVerdict::Accepted(a), Want::Accepted(t)) => a.topic == *t,
            (EventVerdict::Invalid(i), Want::Invalid(r)) => i.reason == *r,
            (EventVerdict::Error(e), Want::Error(r)) => e.reason == *r,
            _ => false,
        };
        assert!(ok, "{name}: want {want:?}, got {}", outcome(&got));
    }
}

#[test]
fn absolute_uris_when_allowed_resolve_locally() {
    let v = validator_with(ValidatorSettings {
        allow_absolute_schema_uris: true,
        ..ValidatorSettings::default()
    });
    for uri in [
        "https://schema.wikimedia.org/repositories/primary/jsonschema/test/event/1.0.0",
        "https://schema.wikimedia.org/repositories/primary/jsonschema/test/event/latest",
    ] {
        let (got, _) = run(&v, with(test_event(), json!({"$schema": uri})), &ctx());
        assert!(
            matches!(got, EventVerdict::Accepted(_)),
            "{uri}: {}",
            outcome(&got)
        );
    }
    let (got, _) = run(
        &v,
        with(
            test_event(),
            json!({"$schema": "https://example.org/not/here/1.0.0"}),
        ),
        &ctx(),
    );
    assert!(matches!(
        got,
        EventVerdict::Error(Errored {
            reason: ErrorReason::UnknownSchema,
            ..
        })
    ));
}

/// What the produced event holds at `ptr` after each fill-in case.
#[test]
fn fill_ins() {
    let v = validator();
    let id_re =
        regex::Regex::new("^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
            .unwrap();
    // (case, event, pointer, expected: Some(value) or None = absent; "<uuid>" = a new v4)
    let cases: Vec<(&str, Value, &str, Option<Value>)> = vec![
        (
            "meta.id filled",
            test_event(),
            "/meta/id",
            Some(json!("<uuid>")),
        ),
        (
            "meta.id kept",
            with(test_event(), json!({"meta": {"id": "client-id"}})),
            "/meta/id",
            Some(json!("client-id")),
        ),
        ("meta.dt filled", test_event(), "/meta/dt", Some(json!(NOW))),
        (
            "meta.dt kept",
            with(
                test_event(),
                json!({"meta": {"dt": "2020-01-01T00:00:00Z"}}),
            ),
            "/meta/dt",
            Some(json!("2020-01-01T00:00:00Z")),
        ),
        ("dt filled, legacy", nav(json!({})), "/dt", Some(json!(NOW))),
        (
            "dt kept, legacy",
            nav(json!({"dt": "2026-12-01T21:00:00.000Z"})),
            "/dt",
            Some(json!("2026-12-01T21:00:00.000Z")),
        ),
        (
            "dt not filled, not legacy",
            with(web_base("product_metrics.web_base"), json!({"dt": null})),
            "/dt",
            None,
        ),
        (
            "meta.request_id filled",
            test_event(),
            "/meta/request_id",
            Some(json!(ctx().request_id.unwrap())),
        ),
        (
            "meta.request_id kept",
            with(test_event(), json!({"meta": {"request_id": "client"}})),
            "/meta/request_id",
            Some(json!("client")),
        ),
        (
            "user-agent filled",
            nav(json!({})),
            "/http/request_headers/user-agent",
            Some(json!(UA)),
        ),
        (
            "user-agent kept",
            nav(json!({"http": {"request_headers": {"user-agent": "client UA"}}})),
            "/http/request_headers/user-agent",
            Some(json!("client UA")),
        ),
        ("user-agent not in schema", test_event(), "/http", None),
        (
            "client_ip filled",
            nav(json!({})),
            "/http/client_ip",
            Some(json!("198.51.100.7")),
        ),
        (
            "client_ip kept",
            nav(json!({"http": {"client_ip": "203.0.113.9"}})),
            "/http/client_ip",
            Some(json!("203.0.113.9")),
        ),
        (
            "client_ip not in schema",
            web_base("product_metrics.web_base"),
            "/http/client_ip",
            None,
        ),
        (
            "user-agent filled, web base",
            web_base("product_metrics.web_base"),
            "/http/request_headers/user-agent",
            Some(json!(UA)),
        ),
        (
            "default filled",
            test_event(),
            "/test",
            Some(json!("default value")),
        ),
        (
            "default kept",
            with(test_event(), json!({"test": "mine"})),
            "/test",
            Some(json!("mine")),
        ),
    ];
    for (name, event, ptr, want) in cases {
        let (got, produced) = run(&v, event, &ctx());
        assert!(
            matches!(got, EventVerdict::Accepted(_)),
            "{name}: {}",
            outcome(&got)
        );
        let got = produced.unwrap().pointer(ptr).cloned();
        match (&got, &want) {
            (Some(Value::String(id)), Some(w)) if w == "<uuid>" => {
                assert!(id_re.is_match(id), "{name}: {id}")
            }
            _ => assert_eq!(got, want, "{name}"),
        }
    }
    // Nothing known from the request: nothing filled from it.
    let bare = EventContext {
        request_id: None,
        user_agent: None,
        client_ip: None,
        ..ctx()
    };
    let (_, p) = run(&v, nav(json!({})), &bare);
    let p = p.unwrap();
    assert_eq!(p.pointer("/http"), None);
    assert_eq!(p.pointer("/meta/request_id"), None);
}

/// No real schema lacks `meta.id`, `meta.dt` or `meta.request_id`, or has a
/// default below the top level: a tiny schema shows those rules.
#[test]
fn fill_ins_and_nested_defaults_with_a_tiny_schema() {
    let dir = std::env::temp_dir().join(format!("beacond-validation-test-{}", std::process::id()));
    let tiny = dir.join("tiny/thing");
    std::fs::create_dir_all(&tiny).unwrap();
    std::fs::create_dir_all(dir.join("error")).unwrap();
    std::fs::copy(
        fixture_dirs()[0].join("error/2.1.0.yaml"),
        dir.join("error/2.1.0.yaml"),
    )
    .unwrap();
    std::fs::write(
        tiny.join("1.0.0.yaml"),
        r#"
title: tiny/thing
$id: /tiny/thing/1.0.0
$schema: https://json-schema.org/draft-07/schema#
type: object
additionalProperties: false
properties:
  $schema: {type: string}
  meta:
    additionalProperties: false
    properties:
      stream: {type: string}
  outer:
    type: object
    default: {}
    properties:
      a: {type: string, default: "A"}
      inner:
        type: object
        properties:
          b: {type: integer, default: 2}
  present:
    type: object
    properties:
      c: {type: boolean, default: true}
"#,
    )
    .unwrap();
    let repo = Arc::new(SchemaRepository::load(std::slice::from_ref(&dir)).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    let streams = Arc::new(
        StreamConfig::parse(
            "tiny:\n  schema_title: tiny/thing\nbeacond.error.validation:\n  schema_title: error\n",
            "t.yaml",
        )
        .unwrap(),
    );
    let v = EventValidator::new(streams, repo, ValidatorSettings::default()).unwrap();
    let mut out = Vec::new();
    let event = json!({"$schema": "/tiny/thing/1.0.0", "meta": {"stream": "tiny"}, "present": {}});
    let got = v.check(event, &ctx(), &mut out);
    assert!(
        matches!(got, EventVerdict::Accepted(_)),
        "{}",
        outcome(&got)
    );
    let p: Value = serde_json::from_slice(&out).unwrap();
    // No meta.id/dt/request_id in the schema: none filled (meta would be
    // invalid). `meta` here does not say `type: object`: with it, EventGate's
    // rule for header-driven fields would fill `meta.request_id` anyway.
    assert_eq!(
        p,
        json!({"$schema": "/tiny/thing/1.0.0", "meta": {"stream": "tiny"},
               "outer": {"a": "A"}, "present": {"c": true}})
    );
    // inner present: its default applies; a null is kept.
    let event = json!({"$schema": "/tiny/thing/1.0.0", "meta": {"stream": "tiny"},
                       "outer": {"inner": {}, "a": null}});
    let got = v.check(event, &ctx(), &mut out);
    assert!(
        matches!(got, EventVerdict::Invalid(_)),
        "a: null is not a string: {}",
        outcome(&got)
    );
    let event =
        json!({"$schema": "/tiny/thing/1.0.0", "meta": {"stream": "tiny"}, "outer": {"inner": {}}});
    v.check(event, &ctx(), &mut out);
    let p: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(p["outer"], json!({"a": "A", "inner": {"b": 2}}));
}

#[test]
fn topic_prefix_rule() {
    let settings = ValidatorSettings {
        topic_prefix: "eqiad.".into(),
        unprefixed_stream_prefixes: vec!["eventlogging_".into(), "legacy.".into()],
        ..ValidatorSettings::default()
    };
    for (stream, topic) in [
        (
            "eventlogging_NavigationTiming",
            "eventlogging_NavigationTiming",
        ),
        ("legacy.thing", "legacy.thing"),
        ("test.event", "eqiad.test.event"),
        ("eventloggingX", "eqiad.eventloggingX"),
    ] {
        assert_eq!(topic_for(&settings, stream), topic);
    }
    for (topic, ok) in [
        ("a", true),
        ("eqiad.test-event_1", true),
        (".", false),
        ("..", false),
        ("", false),
        ("has space", false),
        ("ümlaut", false),
        (&"x".repeat(249), true),
        (&"x".repeat(250), false),
    ] {
        assert_eq!(is_valid_topic(topic), ok, "{topic:?}");
    }
    // A stream a regex admits but Kafka would refuse.
    let v = validator();
    let (got, _) = run(&v, web_base("product_metrics.web_base.bad name!"), &ctx());
    assert!(
        matches!(
            got,
            EventVerdict::Error(Errored {
                reason: ErrorReason::InvalidTopic,
                ..
            })
        ),
        "{}",
        outcome(&got)
    );
}

#[test]
fn partition_keys() {
    let f = fixture();
    let streams = Arc::new(
        StreamConfig::parse(
            "test.event:\n  schema_title: test/event\n  partition_key: [meta.domain]\nbeacond.error.validation:\n  schema_title: error\n",
            "k.yaml",
        )
        .unwrap(),
    );
    let v = EventValidator::new(streams, f.repo.clone(), ValidatorSettings::default()).unwrap();
    let (got, _) = run(
        &v,
        with(
            test_event(),
            json!({"meta": {"domain": "en.wikipedia.org"}}),
        ),
        &ctx(),
    );
    let EventVerdict::Accepted(a) = got else {
        panic!()
    };
    assert_eq!(a.key.as_deref(), Some(&br#"["en.wikipedia.org"]"#[..]));
    assert_eq!(&*a.stream_key, "test.event");
    let (got, _) = run(&validator(), test_event(), &ctx());
    let EventVerdict::Accepted(a) = got else {
        panic!()
    };
    assert_eq!(a.key, None);
}

#[test]
fn invalid_items_and_error_events() {
    let v = validator();
    let event = nav(
        json!({"client_dt": "yesterday", "unexpected": 1, "meta": {"request_id": "r-1", "uri": "/wiki/Z%C3%BCrich"}}),
    );
    let (got, produced) = run(&v, event, &ctx());
    let EventVerdict::Invalid(inv) = got else {
        panic!("{}", outcome(&got))
    };
    assert_eq!(inv.reason, InvalidReason::SchemaValidation);
    assert_eq!(
        inv.stream_key.as_deref(),
        Some("eventlogging_NavigationTiming")
    );
    let text = inv.item["context"]["errorsText"].as_str().unwrap();
    assert!(
        text.contains("'.client_dt' should match format \"date-time\""),
        "{text}"
    );
    assert!(
        text.contains("'' should NOT have additional properties"),
        "{text}"
    );
    let errors = inv.item["context"]["errors"].as_array().unwrap();
    let add = errors
        .iter()
        .find(|e| e["keyword"] == "additionalProperties")
        .unwrap();
    assert_eq!(add["params"]["additionalProperty"], "unexpected");
    assert_eq!(add["schemaPath"], "#/additionalProperties");
    // The item's event is the event as validated (fill-ins applied).
    assert_eq!(inv.item["event"]["http"]["client_ip"], "198.51.100.7");

    let e = produced.unwrap();
    let ee = inv.error_event.unwrap();
    assert_eq!(ee.topic, "eqiad.beacond.error.validation");
    assert_eq!(&*ee.stream_key, "beacond.error.validation");
    assert_eq!(e["$schema"], ERROR_SCHEMA_URI);
    assert_eq!(e["meta"]["stream"], "beacond.error.validation");
    assert_eq!(e["meta"]["dt"], NOW);
    assert_eq!(e["dt"], NOW);
    assert_eq!(e["meta"]["domain"], "en.wikipedia.org");
    assert_eq!(e["meta"]["request_id"], "r-1");
    assert_eq!(e["meta"]["uri"], "/wiki/Z%C3%BCrich");
    assert_eq!(e["emitter_id"], "beacond");
    assert_eq!(
        e["errored_schema_uri"],
        "/analytics/legacy/navigationtiming/1.6.0"
    );
    assert_eq!(e["errored_stream_name"], "eventlogging_NavigationTiming");
    assert_eq!(e["message"], text);
    assert_eq!(e["error_type"], "ValidationError");
    let raw: Value = serde_json::from_str(e["raw_event"].as_str().unwrap()).unwrap();
    assert_eq!(raw["client_dt"], "yesterday");

    // Structural invalids: AJV-style messages; values unusable for the error schema become "unknown".
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"meta": {"stream": "test.event", "domain": ""}}),
            "'' should have required property '.$schema'",
        ),
        (
            json!({"$schema": "/test/event/1.0.0", "meta": {"uri": "not a uri <>"}}),
            "'.meta' should have required property '.stream'",
        ),
        (
            json!({"$schema": "/test/event/1.0.0"}),
            "'' should have required property '.meta'",
        ),
        (json!(42), "'' should be object"),
    ];
    for (event, want) in cases {
        let (got, produced) = run(&v, event, &ctx());
        let EventVerdict::Invalid(inv) = got else {
            panic!("{}", outcome(&got))
        };
        assert_eq!(inv.item["context"]["errorsText"], want);
        let e = produced.unwrap();
        assert_eq!(e["meta"]["domain"], "unknown");
        assert_eq!(e["meta"]["uri"], "unknown");
        assert_eq!(e["meta"]["request_id"], ctx().request_id.unwrap());
    }

    // Error items: EventGate's message.
    let (got, _) = run(
        &v,
        with(
            test_event(),
            json!({"meta": {"stream": "nope", "id": "abc"}}),
        ),
        &ctx(),
    );
    let EventVerdict::Error(err) = got else {
        panic!()
    };
    assert_eq!(
        err.item["context"]["message"],
        "event abc of schema at /test/event/1.0.0 destined to stream nope is not allowed in stream; nope is not configured."
    );
    assert_eq!(err.stream_key, None);
    let (got, _) = run(
        &v,
        with(test_event(), json!({"$schema": "/x/1.0.0"})),
        &ctx(),
    );
    let EventVerdict::Error(err) = got else {
        panic!()
    };
    assert_eq!(
        err.item["context"]["message"],
        "Failed loading schema at /x/1.0.0"
    );
}

#[test]
fn raw_event_is_cut_at_a_char_boundary_and_marked() {
    let v = validator_with(ValidatorSettings {
        max_raw_event_bytes: 100,
        ..ValidatorSettings::default()
    });
    // Multi-byte characters straddle the bound.
    let event = nav(json!({"event": {"isAnon": "no", "action": "ü".repeat(200)}}));
    let (got, produced) = run(&v, event, &ctx());
    assert!(matches!(got, EventVerdict::Invalid(_)));
    let raw = produced.unwrap()["raw_event"].as_str().unwrap().to_owned();
    assert!(raw.ends_with(CUT_MARK), "{raw}");
    let body = raw.strip_suffix(CUT_MARK).unwrap();
    assert!(body.len() <= 100 && body.len() >= 99, "{}", body.len());
    assert!(body.starts_with("{\"$schema\""));
    // Short enough: whole, valid JSON.
    let (_, produced) = run(&validator(), json!({"meta": {"stream": "x"}}), &ctx());
    assert_eq!(produced.unwrap()["raw_event"], r#"{"meta":{"stream":"x"}}"#);
}

#[test]
fn errors_are_bounded() {
    let v = validator();
    let mut extra = serde_json::Map::new();
    for i in 0..100 {
        extra.insert(format!("{}{i}", "k".repeat(1000)), json!(i));
    }
    let (got, produced) = run(&v, nav(Value::Object(extra)), &ctx());
    let EventVerdict::Invalid(inv) = got else {
        panic!()
    };
    let errors = inv.item["context"]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), MAX_REPORTED_ERRORS);
    let text = inv.item["context"]["errorsText"].as_str().unwrap();
    assert!(
        text.ends_with("more errors"),
        "{}",
        &text[text.len() - 40..]
    );
    assert!(text.len() < 16 * 1024, "{}", text.len());
    assert!(produced.is_some());
}

#[test]
fn dt_format() {
    assert_eq!(
        format_dt(datetime!(2026-12-01 21:41:46.123999 UTC)),
        "2026-12-01T21:41:46.123Z"
    );
    assert_eq!(
        format_dt(datetime!(2026-01-02 03:04:05 +02:00)),
        "2026-01-02T01:04:05.000Z"
    );
}

#[test]
fn reasons_are_snake_case_and_complete() {
    let all: Vec<&str> = InvalidReason::ALL
        .iter()
        .map(|r| r.as_str())
        .chain(ErrorReason::ALL.iter().map(|r| r.as_str()))
        .collect();
    for s in &all {
        assert!(
            s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{s}"
        );
    }
    let mut dedup = all.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), all.len());
}

#[test]
fn setup_errors() {
    let f = fixture();
    let no_error_stream = Arc::new(
        StreamConfig::parse("test.event:\n  schema_title: test/event\n", "s.yaml").unwrap(),
    );
    assert!(matches!(
        EventValidator::new(
            no_error_stream,
            f.repo.clone(),
            ValidatorSettings::default()
        ),
        Err(ValidatorSetupError::ErrorStreamNotConfigured { .. })
    ));
    let wrong = Arc::new(
        StreamConfig::parse(
            "beacond.error.validation:\n  schema_title: test/event\n",
            "s.yaml",
        )
        .unwrap(),
    );
    assert!(matches!(
        EventValidator::new(wrong, f.repo.clone(), ValidatorSettings::default()),
        Err(ValidatorSetupError::ErrorStreamTitle { .. })
    ));
}

mod properties {
    //! Property tests: any JSON, alone or grafted into a realistic event,
    //! gets a verdict without a panic, and boon agrees with every verdict
    //! (the cross-checks of `run`).
    use proptest::prelude::*;

    use super::*;

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e12f64..1e12).prop_map(Value::from),
            "[a-z]{0,8}".prop_map(Value::String),
            "\\PC{0,12}".prop_map(Value::String),
            Just(json!("2026-12-01T21:41:45.000Z")),
            Just(json!("not a date")),
            Just(json!("/test/event/1.0.0")),
            Just(json!("test.event")),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(
                    (
                        prop_oneof![
                            Just("$schema".to_string()),
                            Just("meta".to_string()),
                            Just("stream".to_string()),
                            Just("id".to_string()),
                            Just("dt".to_string()),
                            Just("http".to_string()),
                            "[a-z_]{1,8}",
                        ],
                        inner
                    ),
                    0..5
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Dotted paths into the realistic events where a graft lands.
    const PATHS: &[&str] = &[
        "",
        "$schema",
        "meta",
        "meta.stream",
        "meta.id",
        "meta.dt",
        "meta.domain",
        "dt",
        "client_dt",
        "http",
        "http.client_ip",
        "http.request_headers",
        "event",
        "event.action",
        "event.responseStart",
        "test",
        "test_map",
        "action",
        "extra_field",
    ];

    fn graft(mut event: Value, path: &str, value: Value) -> Value {
        if path.is_empty() {
            return value;
        }
        let mut at = &mut event;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let Value::Object(map) = at else {
                return event;
            };
            if i + 1 == parts.len() {
                map.insert((*part).to_string(), value);
                return event;
            }
            at = map.entry((*part).to_string()).or_insert_with(|| json!({}));
        }
        event
    }

    fn bases() -> [Value; 4] {
        [
            nav(json!({})),
            search(),
            web_base("product_metrics.web_base"),
            test_event(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_json_gets_a_verdict(value in arb_json()) {
            run(&validator(), value, &ctx());
        }

        #[test]
        fn grafts_into_real_events_get_verdicts_boon_agrees_with(
            base in 0usize..4,
            path in prop::sample::select(PATHS),
            value in arb_json(),
        ) {
            let [a, b, c, d] = bases();
            let event = graft([a, b, c, d][base].clone(), path, value);
            run(&validator(), event, &ctx());
        }
    }
}
