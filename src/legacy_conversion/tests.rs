//! Table tests of the conversion over the real legacy schemas in
//! `tests/fixtures/event-schemas` and `config/dev-streams.yaml`: capsules as
//! browsers (JS `encodeURIComponent`) and PHP (`rawurlencode`, spaces as
//! `\u0020`) send them, decoded as the beacon path decodes them, converted,
//! then put through the same `EventValidator::check` as `POST /v1/events`;
//! every accepted event is cross-checked with boon.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use serde_json::{json, Value};

use super::*;
use crate::crosscheck::BoonOracle;
use crate::meta::ReceiveTime;
use crate::stream_config::StreamConfig;
use crate::testing::{encode_uri_component, rawurlencode};
use crate::validation::{EventContext, EventValidator, EventVerdict, ValidatorSettings};

struct Fixture {
    repo: Arc<SchemaRepository>,
    validator: EventValidator,
    oracle: BoonOracle,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dirs = [
            root.join("tests/fixtures/event-schemas/primary/jsonschema"),
            root.join("tests/fixtures/event-schemas/secondary/jsonschema"),
        ];
        let repo = Arc::new(SchemaRepository::load(&dirs).unwrap());
        let streams = Arc::new(StreamConfig::load(&root.join("config/dev-streams.yaml")).unwrap());
        Fixture {
            validator: EventValidator::new(streams, repo.clone(), ValidatorSettings::default())
                .unwrap(),
            repo,
            oracle: BoonOracle::fixtures(),
        }
    })
}

const UA: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const HOST: &str = "cp3050.esams.wmnet";

fn meta() -> BeaconMeta<'static> {
    BeaconMeta {
        // 2026-11-28T23:27:14.250Z
        received: ReceiveTime::from_unix_seconds(1_795_908_434).with_millis(250),
        seq: Some(12345),
        client_ip: "203.0.113.9".parse().unwrap(),
        user_agent: UA.as_bytes(),
        hostname: HOST,
    }
}

/// Computed by CPython 3.11: `'%032x' % uuid.uuid5(uuid.NAMESPACE_URL,
/// 'event://cp3050.esams.wmnet/?seqId=12345&dt=2026-11-28T23:27:14Z').int`.
const PYTHON_UUID: &str = "2fa91094e39f53e7822272dcc54a432d";

#[derive(Clone, Copy, Debug)]
enum Client {
    /// `ext.eventLogging`: `encodeURIComponent(JSON.stringify(capsule)) + ';'`.
    Js,
    /// Server-side PHP: `rawurlencode(json)`, spaces written as `\u0020`.
    Php,
}

fn encode(client: Client, capsule: &Value) -> String {
    let json = serde_json::to_string(capsule).unwrap();
    match client {
        Client::Js => format!("{};", encode_uri_component(&json)),
        Client::Php => rawurlencode(&json.replace(' ', "\\u0020")),
    }
}

/// The beacon path's decoding, then the capsule as a JSON object.
fn decoded(query: &str) -> Map<String, Value> {
    let mut buf = Vec::new();
    let capsule = crate::decode::decode_beacon(query, 8192, &mut buf).unwrap();
    serde_json::from_str(capsule.text).unwrap()
}

fn converter(versions: &[(&str, &str)]) -> LegacyConverter {
    let map: std::collections::BTreeMap<String, String> = versions
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    LegacyConverter::new(&map)
}

/// Converts and validates; returns the produced event and its topic.
fn accepted(event: Value) -> (Value, String) {
    let f = fixture();
    let ctx = EventContext {
        received: time::OffsetDateTime::from_unix_timestamp(1_795_908_434).unwrap(),
        request_id: None,
        user_agent: Some(UA),
        client_ip: Some("203.0.113.9".parse().unwrap()),
    };
    let mut out = Vec::new();
    match f.validator.check(event.clone(), &ctx, &mut out) {
        EventVerdict::Accepted(a) => {
            let produced: Value = serde_json::from_slice(&out).unwrap();
            let uri = produced["$schema"].as_str().unwrap().to_owned();
            f.oracle
                .assert_agrees(&uri, &produced, true, "converted event");
            (produced, a.topic)
        }
        other => panic!("not accepted: {other:?}\nevent: {event}"),
    }
}

fn pingback() -> Value {
    json!({
        "schema": "MediaWikiPingback",
        "revision": 15781718,
        "wiki": "d2a5b6c1e0f9",
        "webHost": "wiki.example.org",
        "event": {
            "database": "mysql",
            "MediaWiki": "1.42.1",
            "PHP": "8.2.7",
            "OS": "Linux 6.1.0",
            "arch": 64,
            "machine": "x86_64",
            "serverSoftware": "Apache/2.4.57 (Debian)",
            "memoryLimit": "128M"
        }
    })
}

fn navigation_timing() -> Value {
    json!({
        "schema": "NavigationTiming",
        "revision": -1,
        "wiki": "enwiki",
        "webHost": "en.wikipedia.org",
        "event": {"isAnon": true, "action": "view", "responseStart": 215, "mediaWikiVersion": "1.44.0-wmf.5"}
    })
}

fn edit_attempt_step() -> Value {
    json!({
        "schema": "EditAttemptStep",
        "revision": -1,
        "wiki": "dewiki",
        "webHost": "de.wikipedia.org",
        "event": {
            "version": 1,
            "action": "init",
            "editor_interface": "visualeditor",
            "mw_version": "1.44.0-wmf.5",
            "platform": "desktop",
            "integration": "page",
            "editing_session_id": "a1b2c3d4e5f6a7b8c9d0",
            "user_id": 0,
            "user_editcount": 0,
            "page_title": "Gruppe der Zwanzig"
        }
    })
}

#[test]
fn real_legacy_schemas_from_js_and_php_clients() {
    let conv = converter(&[("MediaWikiPingback", "1.0.0")]);
    // (capsule, client, expected $schema: from the map or the repository's latest)
    let table = [
        (
            pingback(),
            Client::Php,
            "/analytics/legacy/mediawikipingback/1.0.0",
        ),
        (
            pingback(),
            Client::Js,
            "/analytics/legacy/mediawikipingback/1.0.0",
        ),
        (
            navigation_timing(),
            Client::Js,
            "/analytics/legacy/navigationtiming/1.7.0",
        ),
        (
            navigation_timing(),
            Client::Php,
            "/analytics/legacy/navigationtiming/1.7.0",
        ),
        (
            edit_attempt_step(),
            Client::Js,
            "/analytics/legacy/editattemptstep/2.1.0",
        ),
        (
            edit_attempt_step(),
            Client::Php,
            "/analytics/legacy/editattemptstep/2.1.0",
        ),
    ];
    for (capsule, client, schema_uri) in table {
        let what = format!("{} via {client:?}", capsule["schema"]);
        let parsed = decoded(&encode(client, &capsule));
        assert_eq!(Value::Object(parsed.clone()), capsule, "{what}: decoding");
        let target = conv.target(&parsed, &fixture().repo).unwrap();
        assert_eq!(target.schema_uri, schema_uri, "{what}");
        let name = capsule["schema"].as_str().unwrap();
        assert_eq!(target.stream, format!("eventlogging_{name}"), "{what}");
        let event = convert(parsed, &target, &meta());
        assert_eq!(event["$schema"], schema_uri, "{what}");
        assert_eq!(event["meta"]["stream"], target.stream, "{what}");
        assert_eq!(event["dt"], "2026-11-28T23:27:14.250Z", "{what}");
        assert_eq!(event["client_dt"], "2026-11-28T23:27:14.250Z", "{what}");
        assert_eq!(event["recvFrom"], HOST, "{what}");
        assert_eq!(event["seqId"], 12345, "{what}");
        assert_eq!(event["uuid"], PYTHON_UUID, "{what}");
        assert_eq!(event["http"]["request_headers"]["user-agent"], UA, "{what}");
        // Only where the schema has the field (mediawikipingback has not).
        let want_ip = if name == "MediaWikiPingback" {
            Value::Null
        } else {
            json!("203.0.113.9")
        };
        assert_eq!(event["http"]["client_ip"], want_ip, "{what}");
        // The capsule's fields are kept.
        for key in ["schema", "revision", "wiki", "webHost", "event"] {
            assert_eq!(event[key], capsule[key], "{what}: {key}");
        }
        let (produced, topic) = accepted(event);
        assert_eq!(topic, format!("eventlogging_{name}"), "{what}");
        assert!(
            produced["meta"]["dt"].is_string(),
            "{what}: meta.dt filled in"
        );
    }
}

#[test]
fn version_from_the_map_wins_over_the_repository() {
    let parsed = decoded(&encode(Client::Js, &navigation_timing()));
    let latest = converter(&[]).target(&parsed, &fixture().repo).unwrap();
    assert_eq!(
        latest.schema_uri,
        "/analytics/legacy/navigationtiming/1.7.0"
    );
    let mapped = converter(&[("NavigationTiming", "1.2.0")])
        .target(&parsed, &fixture().repo)
        .unwrap();
    assert_eq!(
        mapped.schema_uri,
        "/analytics/legacy/navigationtiming/1.2.0"
    );
    // A version the repository lacks is still the map's: the validator then
    // errors on it (unknown schema), as for any event.
    let missing = converter(&[("NavigationTiming", "9.9.9")])
        .target(&parsed, &fixture().repo)
        .unwrap();
    assert_eq!(
        missing.schema_uri,
        "/analytics/legacy/navigationtiming/9.9.9"
    );
    assert!(!missing.client_ip_field);
}

#[test]
fn beacond_s_own_fields_win_over_the_capsule_s() {
    // Issue 12, fault 7: what the collector vouches for is not the client's.
    let mut capsule = pingback();
    capsule["recvFrom"] = json!("other.host");
    capsule["seqId"] = json!(7);
    capsule["dt"] = json!("1999-01-01T00:00:00Z");
    capsule["client_dt"] = json!("2026-11-28T23:00:00.000Z");
    capsule["$schema"] = json!("/analytics/legacy/other/1.0.0");
    capsule["ip"] = json!("6.6.6.6");
    capsule["userAgent"] = json!("forged");
    capsule["meta"] = json!({"domain": "wiki.example.org", "stream": "elsewhere"});
    capsule["http"] = json!({
        "client_ip": "6.6.6.6",
        "request_headers": {"user-agent": "MediaWiki/1.42.1", "referer": "kept"}
    });
    capsule["uuid"] = json!("forged");
    let parsed = decoded(&encode(Client::Php, &capsule));
    let conv = converter(&[]);
    let target = conv.target(&parsed, &fixture().repo).unwrap();
    assert_eq!(
        target.schema_uri,
        "/analytics/legacy/mediawikipingback/1.1.0"
    );
    let event = convert(parsed, &target, &meta());
    assert_eq!(
        event["$schema"],
        "/analytics/legacy/mediawikipingback/1.1.0"
    );
    assert_eq!(event["recvFrom"], HOST);
    assert_eq!(event["seqId"], 12345);
    assert_eq!(event["dt"], "2026-11-28T23:27:14.250Z");
    assert_eq!(event["client_dt"], "2026-11-28T23:27:14.250Z");
    assert_eq!(event["uuid"], PYTHON_UUID);
    assert!(event.get("ip").is_none() && event.get("userAgent").is_none());
    // meta and http are merged member by member, ours winning.
    assert_eq!(event["meta"]["domain"], "wiki.example.org");
    assert_eq!(event["meta"]["stream"], "eventlogging_MediaWikiPingback");
    assert_eq!(event["http"]["request_headers"]["user-agent"], UA);
    assert_eq!(event["http"]["request_headers"]["referer"], "kept");
    if target.client_ip_field {
        assert_eq!(event["http"]["client_ip"], "203.0.113.9");
    } else {
        assert!(event["http"].get("client_ip").is_none());
    }
    assert!(!event.to_string().contains("6.6.6.6"), "{event}");
    accepted(event);
}

#[test]
fn unknown_or_unusable_schema_names_are_refused() {
    let conv = converter(&[("MediaWikiPingback", "1.0.0")]);
    let repo = &fixture().repo;
    for (capsule, want) in [
        (
            json!({"schema": "NoSuchSchema", "revision": 1, "event": {}}),
            ConversionRefused::UnknownSchema,
        ),
        (
            json!({"revision": 1, "event": {}}),
            ConversionRefused::NoSchemaName,
        ),
        (
            json!({"schema": 42, "event": {}}),
            ConversionRefused::NoSchemaName,
        ),
        (
            json!({"schema": "", "event": {}}),
            ConversionRefused::NoSchemaName,
        ),
        (
            json!({"schema": "../../error/2.1.0", "event": {}}),
            ConversionRefused::NoSchemaName,
        ),
        (
            json!({"schema": "Navigation Timing", "event": {}}),
            ConversionRefused::NoSchemaName,
        ),
    ] {
        let parsed = decoded(&encode(Client::Js, &capsule));
        assert_eq!(conv.target(&parsed, repo), Err(want), "{capsule}");
    }
}

#[test]
fn an_invalid_legacy_event_is_invalid_with_an_error_event() {
    let mut capsule = pingback();
    capsule["event"]["arch"] = json!(16);
    let parsed = decoded(&encode(Client::Js, &capsule));
    let target = converter(&[]).target(&parsed, &fixture().repo).unwrap();
    let event = convert(parsed, &target, &meta());
    let ctx = EventContext {
        received: time::OffsetDateTime::from_unix_timestamp(1_795_908_434).unwrap(),
        request_id: None,
        user_agent: Some(UA),
        client_ip: None,
    };
    let mut out = Vec::new();
    match fixture().validator.check(event, &ctx, &mut out) {
        EventVerdict::Invalid(invalid) => {
            let error_event: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(error_event["meta"]["stream"], "beacond.error.validation");
            assert_eq!(
                error_event["errored_stream_name"],
                "eventlogging_MediaWikiPingback"
            );
            fixture()
                .oracle
                .assert_agrees("/error/2.1.0", &error_event, true, "error event");
            assert!(invalid.error_event.is_some());
        }
        other => panic!("not invalid: {other:?}"),
    }
}
