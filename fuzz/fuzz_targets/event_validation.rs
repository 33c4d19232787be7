//! An events request body, as `POST /v1/events` parses it (one JSON value:
//! an object or an array of them), through the per-event rules over the real
//! schema fixtures and the dev stream config. Must never panic; every event
//! gets a verdict; an accepted event's bytes are JSON that its schema accepts.
#![no_main]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

use beacond::schema_repository::SchemaRepository;
use beacond::stream_config::StreamConfig;
use beacond::validation::{EventContext, EventValidator, EventVerdict, ValidatorSettings};

fn validator() -> &'static EventValidator {
    static V: OnceLock<EventValidator> = OnceLock::new();
    V.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let fixtures = root.join("tests/fixtures/event-schemas");
        let repo = SchemaRepository::load(&[
            fixtures.join("primary/jsonschema"),
            fixtures.join("secondary/jsonschema"),
        ])
        .expect("fixture schemas load");
        let streams =
            StreamConfig::load(&root.join("config/dev-streams.yaml")).expect("dev streams load");
        EventValidator::new(
            Arc::new(streams),
            Arc::new(repo),
            ValidatorSettings::default(),
        )
        .expect("validator")
    })
}

fuzz_target!(|body: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let events = match value {
        Value::Array(events) => events,
        other => vec![other],
    };
    let v = validator();
    let ctx = EventContext {
        received: time::OffsetDateTime::UNIX_EPOCH,
        request_id: Some("fuzz"),
        user_agent: Some("fuzz"),
        client_ip: Some([192, 0, 2, 1].into()),
    };
    let mut out = Vec::new();
    for event in events.into_iter().take(64) {
        let schema = event
            .get("$schema")
            .and_then(Value::as_str)
            .map(str::to_owned);
        match v.check(event, &ctx, &mut out) {
            EventVerdict::Accepted(_) => {
                let produced: Value =
                    serde_json::from_slice(&out).expect("accepted bytes are JSON");
                let schema = v
                    .schema_repository()
                    .resolve(schema.as_deref().expect("accepted has $schema"), false)
                    .expect("accepted schema resolves");
                assert!(schema.validator.is_valid(&produced), "accepted but invalid");
            }
            EventVerdict::Invalid(_) => {
                let _: Value = serde_json::from_slice(&out).expect("error event bytes are JSON");
            }
            EventVerdict::Error(_) => {}
        }
    }
});
