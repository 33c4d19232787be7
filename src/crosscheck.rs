//! Test oracle: an independent JSONSchema validator (`boon`, a dev-dependency)
//! compiled from the same schema files, to check that beacond's verdict on an
//! event agrees with it.
//!
//! Self-contained (std, serde_json, serde_yaml_ng, boon; nothing of beacond)
//! so that the end-to-end tests can compile this same file with
//! `#[path = "../src/crosscheck.rs"] mod crosscheck;`; inside the crate it is
//! `#[cfg(test)] crate::crosscheck`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Every `<title>/<N.N.N>.yaml|.yml|.json` under the directories, compiled by
/// boon (draft-07, format assertions on), by `$id`.
pub struct BoonOracle {
    schemas: boon::Schemas,
    by_id: HashMap<String, boon::SchemaIndex>,
}

impl BoonOracle {
    /// Compile every versioned schema file below `dirs` (first directory wins per `$id`).
    pub fn load(dirs: &[PathBuf]) -> Self {
        let mut files = Vec::new();
        for dir in dirs {
            collect(dir, &mut files);
        }
        let mut compiler = boon::Compiler::new();
        compiler.set_default_draft(boon::Draft::V7);
        compiler.enable_format_assertions();
        let mut schemas = boon::Schemas::new();
        let mut by_id = HashMap::new();
        for path in &files {
            let text = std::fs::read_to_string(path).expect("read schema");
            let value: Value = if path.extension().is_some_and(|e| e == "json") {
                serde_json::from_str(&text).expect("parse schema")
            } else {
                serde_yaml_ng::from_str(&text).expect("parse schema")
            };
            let Some(id) = value.get("$id").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            if by_id.contains_key(&id) {
                continue;
            }
            // The `$id`s are relative: place each file where its `$id` resolves.
            let loc = format!("https://beacond.invalid{id}");
            compiler.add_resource(&loc, value).expect("add schema");
            let idx = compiler
                .compile(&loc, &mut schemas)
                .unwrap_or_else(|e| panic!("boon cannot compile {}: {e}", path.display()));
            by_id.insert(id, idx);
        }
        BoonOracle { schemas, by_id }
    }

    /// The fixture repositories of this repository.
    pub fn fixtures() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/event-schemas");
        Self::load(&[
            root.join("primary/jsonschema"),
            root.join("secondary/jsonschema"),
        ])
    }

    /// Whether `event` is valid against the schema with this `$id`; `None`
    /// when the oracle has no such schema.
    pub fn is_valid(&self, schema_id: &str, event: &Value) -> Option<bool> {
        let idx = *self.by_id.get(schema_id)?;
        Some(self.schemas.validate(event, idx).is_ok())
    }

    /// boon's error text, for assertion messages.
    pub fn explain(&self, schema_id: &str, event: &Value) -> String {
        match self.by_id.get(schema_id) {
            None => format!("no schema {schema_id}"),
            Some(idx) => match self.schemas.validate(event, *idx) {
                Ok(()) => "valid".into(),
                Err(e) => format!("{e:#}"),
            },
        }
    }

    /// Panic unless boon's verdict on `event` against `schema_id` is `expect_valid`.
    pub fn assert_agrees(&self, schema_id: &str, event: &Value, expect_valid: bool, what: &str) {
        match self.is_valid(schema_id, event) {
            Some(v) if v == expect_valid => {}
            Some(v) => panic!(
                "{what}: beacond says valid={expect_valid}, boon says valid={v} against {schema_id}: {}\nevent: {event}",
                self.explain(schema_id, event)
            ),
            None => panic!("{what}: boon has no schema {schema_id}"),
        }
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, out);
        } else if let Some(stem) = ["yaml", "yml", "json"].iter().find_map(|ext| {
            path.file_name()?
                .to_str()?
                .strip_suffix(ext)?
                .strip_suffix('.')
                .map(str::to_owned)
        }) {
            let parts: Vec<&str> = stem.split('.').collect();
            if parts.len() == 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            {
                out.push(path);
            }
        }
    }
}
