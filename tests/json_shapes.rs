//! keylife's response types, serialized, checked against Exoscale's KMS API spec.
//!
//! The spec (`tests/spec/exoscale-kms-openapi.json`, ISC-licensed, see `tests/spec/NOTICE`)
//! is read when the tests run. The schema of each response comes from it: `paths` →
//! operation (found by `operationId`) → `responses` → `200` → `application/json` schema.
//! A small validator in this file checks a JSON value against such a schema: required
//! properties present, no property the schema does not list, JSON types, string formats
//! (`date-time`, `uuid`, `byte`), `enum` and integer `minimum`/`maximum`, following `$ref`s
//! to `#/components/schemas/...` and recursing into objects and array items. It fails on any
//! schema keyword, type or format it does not know, so that it never passes by ignoring
//! part of the spec.
//!
//! On top of the spec, keylife's contract (`lifecycle.md`) says timestamps are UTC: every
//! `date-time` value must end in `Z`. And `delete-at` is shown only while a key is pending
//! deletion.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use jiff::{SignedDuration, Timestamp};
use keylife::{Clock as _, CreateKey, DataKeySpec, KeyId, Kms, KmsOptions, ManualClock, RootKey};
use serde::Serialize;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};

// ----- the spec ----------------------------------------------------------------------------

const SPEC_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/spec/exoscale-kms-openapi.json"
);

/// The HTTP methods an OpenAPI 3.0 path item may hold operations under.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let text = std::fs::read_to_string(SPEC_PATH)
            .unwrap_or_else(|e| panic!("cannot read {SPEC_PATH}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{SPEC_PATH} is not JSON: {e}"))
    })
}

/// Every operation of the spec: (operationId, operation object).
fn operations() -> Vec<(&'static str, &'static Value)> {
    let paths = spec()["paths"].as_object().expect("spec has `paths`");
    let mut found = Vec::new();
    for item in paths.values() {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                let id = operation["operationId"]
                    .as_str()
                    .expect("every operation has an operationId");
                found.push((id, operation));
            }
        }
    }
    found
}

/// The schema of the 200 response of operation `operation_id`.
fn response_schema(operation_id: &str) -> &'static Value {
    let matching: Vec<&Value> = operations()
        .into_iter()
        .filter(|(id, _)| *id == operation_id)
        .map(|(_, operation)| operation)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "operationId {operation_id:?} must name exactly one operation of the spec"
    );
    matching[0]
        .pointer("/responses/200/content/application~1json/schema")
        .unwrap_or_else(|| panic!("{operation_id} has no application/json 200 response schema"))
}

// ----- the validator -----------------------------------------------------------------------

/// Schema keywords the validator understands (or may safely ignore: `description`,
/// `default`). Any other keyword is reported as an error.
const KNOWN_KEYWORDS: [&str; 11] = [
    "type",
    "properties",
    "required",
    "items",
    "enum",
    "format",
    "minimum",
    "maximum",
    "nullable",
    "description",
    "default",
];

const SCHEMAS_PREFIX: &str = "#/components/schemas/";

/// Deeper than this, a schema is taken to be a `$ref` cycle.
const MAX_DEPTH: usize = 64;

/// What validating one value found.
#[derive(Debug, Default)]
struct Report {
    /// Each way the value departs from the schema, prefixed with its JSON path.
    errors: Vec<String>,
    /// Every value checked as a `date-time`: (path, text).
    date_times: Vec<(String, String)>,
}

impl Report {
    fn has_error(&self, path: &str, fragment: &str) -> bool {
        let prefix = format!("{path}: ");
        self.errors
            .iter()
            .any(|e| e.starts_with(&prefix) && e.contains(fragment))
    }
}

/// Checks `value` against `schema`, resolving `$ref`s in the loaded spec.
fn validate(schema: &Value, value: &Value) -> Report {
    let mut validator = Validator {
        components: &spec()["components"]["schemas"],
        report: Report::default(),
    };
    validator.check(schema, value, "$", 0);
    validator.report
}

struct Validator<'a> {
    components: &'a Value,
    report: Report,
}

impl Validator<'_> {
    fn error(&mut self, path: &str, message: impl fmt::Display) {
        self.report.errors.push(format!("{path}: {message}"));
    }

    fn check(&mut self, schema: &Value, value: &Value, path: &str, depth: usize) {
        if depth > MAX_DEPTH {
            self.error(path, "schema nesting too deep ($ref cycle?)");
            return;
        }
        let Some(schema) = schema.as_object() else {
            self.error(path, format!("schema is not an object: {schema}"));
            return;
        };
        if let Some(reference) = schema.get("$ref") {
            // OpenAPI 3.0: a `$ref` object's siblings are ignored; expect none that matter.
            for keyword in schema.keys() {
                if keyword != "$ref" && keyword != "description" {
                    self.error(path, format!("unsupported sibling {keyword:?} of $ref"));
                }
            }
            let target = reference
                .as_str()
                .and_then(|r| r.strip_prefix(SCHEMAS_PREFIX))
                .and_then(|name| self.components.get(name));
            match target {
                Some(target) => self.check(target, value, path, depth + 1),
                None => self.error(path, format!("unresolvable $ref {reference}")),
            }
            return;
        }
        for keyword in schema.keys() {
            if !KNOWN_KEYWORDS.contains(&keyword.as_str()) {
                self.error(
                    path,
                    format!("validator does not support schema keyword {keyword:?}"),
                );
            }
        }
        if value.is_null() && schema.get("nullable") == Some(&Value::Bool(true)) {
            return;
        }
        if let Some(allowed) = schema.get("enum") {
            match allowed.as_array() {
                Some(allowed) if allowed.contains(value) => {}
                Some(allowed) => self.error(
                    path,
                    format!("{value} is not in enum {}", Value::from(allowed.clone())),
                ),
                None => self.error(path, "schema `enum` is not an array"),
            }
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("object") => self.check_object(schema, value, path, depth),
            Some("array") => self.check_array(schema, value, path, depth),
            Some("string") => self.check_string(schema, value, path),
            Some("integer") => self.check_integer(schema, value, path),
            Some("boolean") => {
                if !value.is_boolean() {
                    self.error(path, format!("expected a boolean, got {value}"));
                }
            }
            Some(other) => self.error(path, format!("validator does not support type {other:?}")),
            None => self.error(path, "schema has no `type`"),
        }
    }

    fn check_object(
        &mut self,
        schema: &Map<String, Value>,
        value: &Value,
        path: &str,
        depth: usize,
    ) {
        let Some(object) = value.as_object() else {
            self.error(path, format!("expected an object, got {value}"));
            return;
        };
        let empty = Map::new();
        let properties = match schema.get("properties") {
            None => &empty,
            Some(Value::Object(properties)) => properties,
            Some(_) => {
                self.error(path, "schema `properties` is not an object");
                return;
            }
        };
        match schema.get("required") {
            None => {}
            Some(Value::Array(required)) => {
                for name in required {
                    match name.as_str() {
                        Some(name) if object.contains_key(name) => {}
                        Some(name) => {
                            self.error(path, format!("required property {name:?} is missing"));
                        }
                        None => self.error(path, "schema `required` holds a non-string"),
                    }
                }
            }
            Some(_) => self.error(path, "schema `required` is not an array"),
        }
        for (name, property) in object {
            let property_path = format!("{path}.{name}");
            match properties.get(name) {
                Some(property_schema) => {
                    self.check(property_schema, property, &property_path, depth + 1);
                }
                None => self.error(
                    path,
                    format!("property {name:?} is not in the schema's properties"),
                ),
            }
        }
    }

    fn check_array(
        &mut self,
        schema: &Map<String, Value>,
        value: &Value,
        path: &str,
        depth: usize,
    ) {
        let Some(array) = value.as_array() else {
            self.error(path, format!("expected an array, got {value}"));
            return;
        };
        let Some(items) = schema.get("items") else {
            self.error(path, "array schema has no `items`");
            return;
        };
        for (i, item) in array.iter().enumerate() {
            self.check(items, item, &format!("{path}[{i}]"), depth + 1);
        }
    }

    fn check_string(&mut self, schema: &Map<String, Value>, value: &Value, path: &str) {
        let Some(text) = value.as_str() else {
            self.error(path, format!("expected a string, got {value}"));
            return;
        };
        let Some(format) = schema.get("format") else {
            return;
        };
        match format.as_str() {
            Some("date-time") => {
                self.report
                    .date_times
                    .push((path.to_owned(), text.to_owned()));
                if let Err(why) = check_date_time(text) {
                    self.error(
                        path,
                        format!("{text:?} is not an RFC 3339 date-time: {why}"),
                    );
                }
            }
            Some("uuid") => {
                if let Err(why) = check_uuid(text) {
                    self.error(path, format!("{text:?} is not a UUID: {why}"));
                }
            }
            Some("byte") => {
                if let Err(why) = BASE64.decode(text) {
                    self.error(path, format!("{text:?} is not standard base64: {why}"));
                }
            }
            _ => self.error(path, format!("validator does not support format {format}")),
        }
    }

    fn check_integer(&mut self, schema: &Map<String, Value>, value: &Value, path: &str) {
        let integer = value
            .as_i64()
            .map(i128::from)
            .or_else(|| value.as_u64().map(i128::from));
        let Some(integer) = integer else {
            self.error(path, format!("expected an integer, got {value}"));
            return;
        };
        for (keyword, too_far) in [
            (
                "minimum",
                (|v: i128, bound: i128| v < bound) as fn(i128, i128) -> bool,
            ),
            ("maximum", |v, bound| v > bound),
        ] {
            let Some(bound) = schema.get(keyword) else {
                continue;
            };
            let bound = bound
                .as_i64()
                .map(i128::from)
                .or_else(|| bound.as_u64().map(i128::from));
            match bound {
                Some(bound) if too_far(integer, bound) => {
                    self.error(path, format!("{integer} breaks {keyword} {bound}"));
                }
                Some(_) => {}
                None => self.error(path, format!("schema `{keyword}` is not an integer")),
            }
        }
    }
}

/// RFC 3339 `date-time`: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, checked for shape, then for
/// meaning (real date and time) by jiff.
fn check_date_time(text: &str) -> Result<(), String> {
    fn digits(bytes: &[u8]) -> bool {
        !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit)
    }
    let b = text.as_bytes();
    let shape = b.len() >= 20
        && digits(&b[0..4])
        && b[4] == b'-'
        && digits(&b[5..7])
        && b[7] == b'-'
        && digits(&b[8..10])
        && matches!(b[10], b'T' | b't')
        && digits(&b[11..13])
        && b[13] == b':'
        && digits(&b[14..16])
        && b[16] == b':'
        && digits(&b[17..19]);
    if !shape {
        return Err("not YYYY-MM-DDTHH:MM:SS".to_owned());
    }
    let mut rest = &b[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let n = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return Err("empty fraction of a second".to_owned());
        }
        rest = &fraction[n..];
    }
    let offset_ok = matches!(rest, [b'Z' | b'z'])
        || matches!(rest, [b'+' | b'-', h1, h2, b':', m1, m2]
            if [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()));
    if !offset_ok {
        return Err("offset is not Z or ±HH:MM".to_owned());
    }
    text.parse::<Timestamp>()
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A UUID in its canonical 8-4-4-4-12 hex form.
fn check_uuid(text: &str) -> Result<(), String> {
    KeyId::parse(text).map_err(|e| e.to_string())?;
    let hyphens: Vec<usize> = text.match_indices('-').map(|(i, _)| i).collect();
    if text.len() != 36 || hyphens != [8, 13, 18, 23] {
        return Err("not in the 8-4-4-4-12 form".to_owned());
    }
    Ok(())
}

// ----- JSON text, strictly -----------------------------------------------------------------

/// A JSON value parsed without letting a repeated object key through (a `serde_json::Value`
/// would silently keep the last one, hiding e.g. a flattened field serialized twice).
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Strict, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Strict(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let Strict(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Strict(Value::Object(object)))
    }
}

fn parse_strict(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str::<Strict>(text).map(|Strict(value)| value)
}

/// The JSON text a response serializes to, parsed back strictly.
fn to_json<T: Serialize>(response: &T) -> Value {
    let text = serde_json::to_string(response).expect("response serializes");
    parse_strict(&text).unwrap_or_else(|e| panic!("{text} is not clean JSON: {e}"))
}

/// Serializes `response`, checks it against the 200 schema of `operation_id` and that every
/// timestamp in it is UTC, and returns the JSON.
#[track_caller]
fn conforms<T: Serialize>(operation_id: &str, response: &T) -> Value {
    let json = to_json(response);
    let report = validate(response_schema(operation_id), &json);
    assert!(
        report.errors.is_empty(),
        "{operation_id}: keylife's response does not match the spec:\n  {}\nJSON: {json:#}",
        report.errors.join("\n  ")
    );
    for (path, text) in &report.date_times {
        assert!(
            text.ends_with('Z'),
            "{operation_id}: {path} = {text:?} is not UTC (no trailing Z)"
        );
    }
    json
}

// ----- driving a Kms -----------------------------------------------------------------------

const START: &str = "2026-01-01T00:00:00Z";

fn kms_at(start: &str) -> (Kms, ManualClock) {
    let clock = ManualClock::new(start.parse().expect("start time"));
    let kms = Kms::open_in_memory(
        RootKey::generate().expect("root key"),
        KmsOptions::new("ch-gva-2").clock(clock.clone()),
    )
    .expect("in-memory Kms");
    (kms, clock)
}

fn kms() -> (Kms, ManualClock) {
    kms_at(START)
}

fn ts(value: &Value) -> Timestamp {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{value} is not a string"))
        .parse()
        .unwrap_or_else(|e| panic!("{value} is not a timestamp: {e}"))
}

fn b64(value: &Value) -> Vec<u8> {
    BASE64
        .decode(value.as_str().expect("a base64 string"))
        .expect("valid base64")
}

fn id_of(json: &Value) -> KeyId {
    KeyId::parse(json["id"].as_str().expect("id is a string")).expect("id is a UUID")
}

// ----- the spec itself ---------------------------------------------------------------------

/// The operations this file checks. `replicate-kms-key` is left out: `Kms` has no replicate
/// method (and so never answers `target-registered`).
const CHECKED_OPERATIONS: [&str; 15] = [
    "create-kms-key",
    "get-kms-key",
    "list-kms-keys",
    "enable-kms-key",
    "disable-kms-key",
    "schedule-kms-key-deletion",
    "cancel-kms-key-deletion",
    "rotate-kms-key",
    "enable-kms-key-rotation",
    "disable-kms-key-rotation",
    "list-kms-key-rotations",
    "encrypt",
    "decrypt",
    "re-encrypt",
    "generate-data-key",
];

#[test]
fn every_operation_of_the_spec_is_checked_and_its_schema_is_understood() {
    let in_spec: BTreeSet<&str> = operations().into_iter().map(|(id, _)| id).collect();
    let checked: BTreeSet<&str> = CHECKED_OPERATIONS.into_iter().collect();
    let expected: BTreeSet<&str> = in_spec
        .iter()
        .copied()
        .filter(|id| *id != "replicate-kms-key")
        .collect();
    assert_eq!(
        checked, expected,
        "operations of the spec vs. operations checked here"
    );

    // Every schema a response can reach uses only what the validator understands: validating
    // `null` against it (which fails on type) must report no unsupported keyword, type, format
    // or unresolvable $ref.
    for operation_id in in_spec {
        let mut pending = vec![response_schema(operation_id).clone()];
        let mut seen = BTreeSet::new();
        while let Some(schema) = pending.pop() {
            let report = validate(&schema, &Value::Null);
            for error in &report.errors {
                assert!(
                    !error.contains("does not support")
                        && !error.contains("unresolvable")
                        && !error.contains("unsupported")
                        && !error.contains("has no `type`"),
                    "{operation_id}: {error}"
                );
            }
            collect_subschemas(&schema, &mut pending, &mut seen);
        }
    }
}

/// Pushes onto `pending` the schemas `schema` refers to or contains, once each.
fn collect_subschemas(schema: &Value, pending: &mut Vec<Value>, seen: &mut BTreeSet<String>) {
    if let Some(name) = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix(SCHEMAS_PREFIX))
    {
        if seen.insert(name.to_owned()) {
            pending.push(spec()["components"]["schemas"][name].clone());
        }
        return;
    }
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        pending.extend(properties.values().cloned());
    }
    if let Some(items) = schema.get("items") {
        pending.push(items.clone());
    }
}

// ----- the validator can fail --------------------------------------------------------------

/// A get-kms-key response written by hand from the spec, independent of keylife.
fn valid_key_details() -> Value {
    json!({
        "id": "0190b6a4-2a3c-7d4e-8f00-112233445566",
        "name": "payments",
        "description": "card tokens",
        "usage": "encrypt-decrypt",
        "source": "exoscale-kms",
        "status": "pending-deletion",
        "status-since": "2026-01-02T03:04:05Z",
        "material": {"version": 2, "created-at": "2026-01-01T00:00:00.5Z", "automatic": false},
        "rotation": {
            "manual-count": 1,
            "automatic": true,
            "rotation-period": 365,
            "next-at": "2027-01-01T00:00:00Z"
        },
        "multi-zone": false,
        "origin-zone": "ch-gva-2",
        "created-at": "2026-01-01T00:00:00Z",
        "revision": {"seq": 3, "at": "2026-01-02T03:04:05Z"},
        "delete-at": "2026-02-01T03:04:05Z",
        "replicas": ["de-fra-1"],
        "replicas-status": [{
            "zone": "de-fra-1",
            "last-applied-watermark": 2,
            "last-failure": {
                "attempted-watermark": 3,
                "error": "timeout",
                "failed-at": "2026-01-02T03:04:06Z"
            }
        }]
    })
}

/// Validates `value` as a get-kms-key response and asserts that exactly one error is
/// reported, at `path`, containing `fragment`.
#[track_caller]
fn rejected(value: &Value, path: &str, fragment: &str) {
    let report = validate(response_schema("get-kms-key"), value);
    assert!(
        report.has_error(path, fragment) && report.errors.len() == 1,
        "expected one error at {path} about {fragment:?}, got {:#?}",
        report.errors
    );
}

#[test]
fn validator_accepts_a_hand_written_valid_response() {
    let report = validate(response_schema("get-kms-key"), &valid_key_details());
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    assert_eq!(report.date_times.len(), 7, "{:?}", report.date_times);
}

#[test]
fn validator_rejects_a_missing_required_property() {
    let mut value = valid_key_details();
    value.as_object_mut().unwrap().remove("name");
    rejected(&value, "$", "required property \"name\" is missing");

    let mut value = valid_key_details();
    value["rotation"].as_object_mut().unwrap().remove("next-at");
    rejected(
        &value,
        "$.rotation",
        "required property \"next-at\" is missing",
    );

    let mut value = valid_key_details();
    value["replicas-status"][0]["last-failure"]
        .as_object_mut()
        .unwrap()
        .remove("failed-at");
    rejected(
        &value,
        "$.replicas-status[0].last-failure",
        "\"failed-at\" is missing",
    );
}

#[test]
fn validator_rejects_an_extra_property() {
    let mut value = valid_key_details();
    value["extra"] = json!(1);
    rejected(&value, "$", "\"extra\" is not in the schema's properties");

    let mut value = valid_key_details();
    value["revision"]["by"] = json!("me");
    rejected(
        &value,
        "$.revision",
        "\"by\" is not in the schema's properties",
    );

    // A response whose schema lists no `material` (create-kms-key) must not carry one.
    let mut created = valid_key_details();
    for field in [
        "material",
        "rotation",
        "delete-at",
        "replicas",
        "replicas-status",
    ] {
        created.as_object_mut().unwrap().remove(field);
    }
    assert!(
        validate(response_schema("create-kms-key"), &created)
            .errors
            .is_empty()
    );
    created["material"] = valid_key_details()["material"].clone();
    let report = validate(response_schema("create-kms-key"), &created);
    assert!(
        report.has_error("$", "\"material\" is not in"),
        "{report:?}"
    );
}

#[test]
fn validator_rejects_a_bad_date_time() {
    for bad in [
        "yesterday",
        "2026-01-01",
        "2026-01-01T00:00:00",
        "2026-01-01 00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-01-01T24:00:00Z",
        "2026-01-01T00:00:00.Z",
        "2026-01-01T00:00:00+0100",
        "2026-01-01T00:00:00Z[UTC]",
    ] {
        let mut value = valid_key_details();
        value["status-since"] = json!(bad);
        rejected(&value, "$.status-since", "not an RFC 3339 date-time");
        let mut value = valid_key_details();
        value["revision"]["at"] = json!(bad);
        rejected(&value, "$.revision.at", "not an RFC 3339 date-time");
    }
    let mut value = valid_key_details();
    value["delete-at"] = json!(1_767_225_600);
    rejected(&value, "$.delete-at", "expected a string");
}

#[test]
fn validator_records_non_utc_date_times() {
    let mut value = valid_key_details();
    value["created-at"] = json!("2026-01-01T01:00:00+01:00");
    let report = validate(response_schema("get-kms-key"), &value);
    assert!(report.errors.is_empty(), "an offset is valid RFC 3339");
    assert!(
        report
            .date_times
            .iter()
            .any(|(path, text)| path == "$.created-at" && !text.ends_with('Z')),
        "the UTC check of `conforms` sees it"
    );
}

#[test]
fn validator_rejects_wrong_types_formats_enums_and_bounds() {
    let cases: [(&str, Value, &str, &str); 12] = [
        ("/id", json!("not-a-uuid"), "$.id", "not a UUID"),
        (
            "/id",
            json!("0190b6a42a3c7d4e8f00112233445566"),
            "$.id",
            "8-4-4-4-12",
        ),
        ("/status", json!("archived"), "$.status", "not in enum"),
        ("/source", json!("aws-kms"), "$.source", "not in enum"),
        (
            "/multi-zone",
            json!("false"),
            "$.multi-zone",
            "expected a boolean",
        ),
        ("/name", json!(7), "$.name", "expected a string"),
        (
            "/revision/seq",
            json!(-1),
            "$.revision.seq",
            "breaks minimum 0",
        ),
        (
            "/revision/seq",
            json!(1.5),
            "$.revision.seq",
            "expected an integer",
        ),
        (
            "/material/version",
            json!("2"),
            "$.material.version",
            "expected an integer",
        ),
        (
            "/replicas",
            json!("de-fra-1"),
            "$.replicas",
            "expected an array",
        ),
        (
            "/replicas/0",
            json!(1),
            "$.replicas[0]",
            "expected a string",
        ),
        ("/rotation", json!([]), "$.rotation", "expected an object"),
    ];
    for (pointer, bad, path, fragment) in cases {
        let mut value = valid_key_details();
        *value.pointer_mut(pointer).unwrap() = bad;
        rejected(&value, path, fragment);
    }

    // `byte`: standard base64 with padding, nothing else.
    let schema = response_schema("encrypt");
    assert!(
        validate(schema, &json!({"ciphertext": "AAECAw=="}))
            .errors
            .is_empty()
    );
    assert!(
        validate(schema, &json!({"ciphertext": ""}))
            .errors
            .is_empty()
    );
    for bad in ["AAECAw", "AAECAw=", "AA-_", "AA EC", "!!!!", "AAECAw==="] {
        let report = validate(schema, &json!({ "ciphertext": bad }));
        assert!(
            report.has_error("$.ciphertext", "not standard base64"),
            "{bad:?}: {report:?}"
        );
    }

    // `maximum`, on a schema of the spec that has one (a request body's).
    let bytes_count =
        &spec()["components"]["schemas"]["generate-data-key-request"]["properties"]["bytes-count"];
    assert!(validate(bytes_count, &json!(1024)).errors.is_empty());
    assert!(validate(bytes_count, &json!(1025)).has_error("$", "breaks maximum 1024"));
    assert!(validate(bytes_count, &json!(0)).has_error("$", "breaks minimum 1"));
}

#[test]
fn validator_fails_closed_on_what_it_does_not_understand() {
    let report = validate(&json!({"type": "object", "oneOf": []}), &json!({}));
    assert!(report.has_error("$", "does not support schema keyword \"oneOf\""));
    let report = validate(&json!({"$ref": "#/components/schemas/nope"}), &json!({}));
    assert!(report.has_error("$", "unresolvable $ref"));
    let report = validate(&json!({"type": "string", "format": "email"}), &json!("a@b"));
    assert!(report.has_error("$", "does not support format"));
    let report = validate(&json!({"type": "number"}), &json!(1));
    assert!(report.has_error("$", "does not support type"));
}

#[test]
fn validator_tells_keylife_responses_apart() {
    // Real keylife output checked against the wrong operation's schema must fail: the
    // validator discriminates on what keylife actually produces.
    let (kms, _) = kms();
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    let details = to_json(&kms.get_key(key.id).unwrap());
    let report = validate(response_schema("create-kms-key"), &details);
    for extra in ["material", "rotation", "replicas", "replicas-status"] {
        assert!(
            report.has_error("$", &format!("{extra:?} is not in")),
            "{report:?}"
        );
    }
    let created = to_json(&key);
    let report = validate(response_schema("get-kms-key"), &created);
    for missing in ["material", "rotation"] {
        assert!(
            report.has_error("$", &format!("required property {missing:?} is missing")),
            "{report:?}"
        );
    }
    let sealed = to_json(&kms.encrypt(key.id, b"x", None).unwrap());
    assert!(
        validate(response_schema("decrypt"), &sealed).has_error("$", "\"plaintext\" is missing")
    );
}

#[test]
fn strict_parsing_rejects_duplicate_keys() {
    assert!(parse_strict(r#"{"a": 1, "b": {"c": [true, null, "x", 1.5, -2]}}"#).is_ok());
    let error = parse_strict(r#"{"a": 1, "a": 2}"#).unwrap_err();
    assert!(error.to_string().contains("duplicate key \"a\""), "{error}");
    assert!(parse_strict(r#"[{"b": {"c": 1, "c": 1}}]"#).is_err());
}

// ----- keylife's responses -----------------------------------------------------------------

#[test]
fn create_kms_key_response_matches_the_spec() {
    let (kms, _) = kms();
    let plain = kms.create_key(&CreateKey::new("plain")).unwrap();
    let json = conforms("create-kms-key", &plain);
    assert!(json.get("description").is_none(), "{json:#}");
    assert_eq!(id_of(&json), plain.id);
    assert_eq!(json["status"], "enabled");
    assert_eq!(json["origin-zone"], "ch-gva-2");
    assert_eq!(ts(&json["created-at"]), START.parse().unwrap());

    let described = kms
        .create_key(&CreateKey::new("described").description("for the tests"))
        .unwrap();
    let json = conforms("create-kms-key", &described);
    assert_eq!(json["description"], "for the tests");

    let multi = kms
        .create_key(&CreateKey::new("multi").multi_zone(true))
        .unwrap();
    let json = conforms("create-kms-key", &multi);
    assert_eq!(json["multi-zone"], true);
}

#[test]
fn get_kms_key_response_matches_the_spec_in_every_status() {
    let (kms, clock) = kms();
    let plain = kms.create_key(&CreateKey::new("plain")).unwrap();
    let described = kms
        .create_key(&CreateKey::new("described").description("card tokens"))
        .unwrap();

    // Fresh and enabled, without and with a description.
    let json = conforms("get-kms-key", &kms.get_key(plain.id).unwrap());
    assert_eq!(json["status"], "enabled");
    assert!(json.get("delete-at").is_none(), "{json:#}");
    assert!(json.get("description").is_none(), "{json:#}");
    assert_eq!(json["material"]["version"], 1);
    assert_eq!(id_of(&json), plain.id);
    let json = conforms("get-kms-key", &kms.get_key(described.id).unwrap());
    assert_eq!(json["description"], "card tokens");
    assert!(json.get("delete-at").is_none(), "{json:#}");

    // Disabled.
    clock.advance_days(1);
    kms.disable_key(plain.id, None).unwrap();
    let json = conforms("get-kms-key", &kms.get_key(plain.id).unwrap());
    assert_eq!(json["status"], "disabled");
    assert!(json.get("delete-at").is_none(), "{json:#}");
    assert_eq!(ts(&json["status-since"]), clock.now());

    // Pending deletion: `delete-at` is there, and is what schedule-kms-key-deletion said.
    clock.advance_days(1);
    let scheduled = kms.schedule_key_deletion(plain.id, Some(7), None).unwrap();
    let scheduled = conforms("schedule-kms-key-deletion", &scheduled);
    let json = conforms("get-kms-key", &kms.get_key(plain.id).unwrap());
    assert_eq!(json["status"], "pending-deletion");
    assert_eq!(json["delete-at"], scheduled["delete-at"], "{json:#}");

    // Cancelled: disabled again, and `delete-at` gone.
    kms.cancel_key_deletion(plain.id, None).unwrap();
    let json = conforms("get-kms-key", &kms.get_key(plain.id).unwrap());
    assert_eq!(json["status"], "disabled");
    assert!(json.get("delete-at").is_none(), "{json:#}");

    // Enabled again after rotations, with rotation off.
    kms.enable_key(plain.id, None).unwrap();
    kms.rotate_key(plain.id, None).unwrap();
    kms.disable_key_rotation(plain.id, None).unwrap();
    let json = conforms("get-kms-key", &kms.get_key(plain.id).unwrap());
    assert_eq!(json["status"], "enabled");
    assert_eq!(json["material"]["version"], 2);
    assert_eq!(json["rotation"]["automatic"], false);
    assert!(json.get("delete-at").is_none(), "{json:#}");
}

#[test]
fn an_imported_key_matches_the_spec_but_for_its_one_keylife_field() {
    // keylife's one field outside the spec, `keylife-imported-versions`, is present only for
    // an imported key; everything else of its answer is the spec's, `source` included.
    let (kms, _) = kms();
    let id = KeyId::parse("019b5a2e-7c00-7000-8000-00000000f00a").unwrap();
    let seed = keylife::Seed::from_json(
        serde_json::to_string(
            &json!({"keys": [{"id": id, "name": "imported", "versions": [
                {"derive": "shape"}, {"material": BASE64.encode([7u8; 32])}
            ]}]}),
        )
        .unwrap()
        .as_bytes(),
    )
    .unwrap();
    seed.apply(std::slice::from_ref(&kms)).unwrap();
    let mut json = to_json(&kms.get_key(id).unwrap());
    let report = validate(response_schema("get-kms-key"), &json);
    assert_eq!(
        report.errors.len(),
        1,
        "only the keylife field is outside the spec: {:?}",
        report.errors
    );
    assert!(report.has_error("$", "\"keylife-imported-versions\" is not in"));
    assert_eq!(
        json.as_object_mut()
            .unwrap()
            .remove("keylife-imported-versions"),
        Some(json!(2))
    );
    let report = validate(response_schema("get-kms-key"), &json);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(json["source"], "exoscale-kms");
    // The list and the key's other answers carry nothing of it.
    conforms("list-kms-keys", &kms.list_keys().unwrap());
    conforms(
        "list-kms-key-rotations",
        &kms.list_key_rotations(id).unwrap(),
    );
}

#[test]
fn list_kms_keys_response_matches_the_spec() {
    let (kms, clock) = kms();
    let empty = conforms("list-kms-keys", &kms.list_keys().unwrap());
    assert_eq!(empty, json!({"kms-keys": []}));

    let a = kms.create_key(&CreateKey::new("a")).unwrap();
    clock.advance(SignedDuration::from_secs(1));
    let b = kms
        .create_key(&CreateKey::new("b").description("second"))
        .unwrap();
    clock.advance(SignedDuration::from_secs(1));
    let c = kms.create_key(&CreateKey::new("c")).unwrap();
    kms.disable_key(b.id, None).unwrap();
    kms.schedule_key_deletion(c.id, None, None).unwrap();

    let json = conforms("list-kms-keys", &kms.list_keys().unwrap());
    let keys = json["kms-keys"].as_array().unwrap();
    assert_eq!(
        keys.iter().map(id_of).collect::<Vec<_>>(),
        [a.id, b.id, c.id]
    );
    let statuses: Vec<&Value> = keys.iter().map(|k| &k["status"]).collect();
    assert_eq!(
        statuses,
        [
            &json!("enabled"),
            &json!("disabled"),
            &json!("pending-deletion")
        ]
    );
    assert!(keys[0].get("delete-at").is_none(), "{json:#}");
    assert!(keys[1].get("delete-at").is_none(), "{json:#}");
    assert!(keys[2].get("delete-at").is_some(), "{json:#}");
    assert!(keys[0].get("description").is_none(), "{json:#}");
    assert_eq!(keys[1]["description"], "second");
}

#[test]
fn success_responses_match_the_spec() {
    let (kms, _) = kms();
    let key = kms.create_key(&CreateKey::new("k")).unwrap();

    let json = conforms("enable-kms-key", &kms.enable_key(key.id, None).unwrap());
    assert_eq!(json, json!({"status": "already-applied"}));
    let json = conforms("disable-kms-key", &kms.disable_key(key.id, None).unwrap());
    assert_eq!(json, json!({"status": "success"}));
    let json = conforms("disable-kms-key", &kms.disable_key(key.id, None).unwrap());
    assert_eq!(json, json!({"status": "already-applied"}));
    let json = conforms("enable-kms-key", &kms.enable_key(key.id, None).unwrap());
    assert_eq!(json, json!({"status": "success"}));

    kms.schedule_key_deletion(key.id, None, None).unwrap();
    let json = conforms(
        "cancel-kms-key-deletion",
        &kms.cancel_key_deletion(key.id, None).unwrap(),
    );
    assert_eq!(json, json!({"status": "success"}));
    // Cancelling again is not `already-applied` but an error (lifecycle.md: cancel-deletion
    // on a key not pending deletion is "not pending deletion").
    let error = kms.cancel_key_deletion(key.id, None).unwrap_err();
    assert_eq!(error.code(), "not-pending-deletion", "{error}");
}

#[test]
fn rotation_responses_match_the_spec() {
    let (kms, clock) = kms();
    let key = kms.create_key(&CreateKey::new("k")).unwrap();

    let json = conforms("rotate-kms-key", &kms.rotate_key(key.id, None).unwrap());
    assert_eq!(json["rotation"]["manual-count"], 1);
    assert_eq!(json["rotation"]["automatic"], true);
    assert_eq!(json["rotation"]["rotation-period"], 365);

    let json = conforms(
        "disable-kms-key-rotation",
        &kms.disable_key_rotation(key.id, None).unwrap(),
    );
    assert_eq!(json["rotation"]["automatic"], false);

    clock.advance_days(3);
    let json = conforms(
        "enable-kms-key-rotation",
        &kms.enable_key_rotation(key.id, Some(90), None).unwrap(),
    );
    assert_eq!(json["rotation"]["automatic"], true);
    assert_eq!(json["rotation"]["rotation-period"], 90);
    assert_eq!(
        ts(&json["rotation"]["next-at"]),
        clock
            .now()
            .checked_add(SignedDuration::from_hours(90 * 24))
            .unwrap()
    );

    kms.disable_key_rotation(key.id, None).unwrap();
    let json = conforms(
        "enable-kms-key-rotation",
        &kms.enable_key_rotation(key.id, None, None).unwrap(),
    );
    assert_eq!(json["rotation"]["rotation-period"], 365);
}

#[test]
fn schedule_kms_key_deletion_response_matches_the_spec() {
    let (kms, clock) = kms();
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    clock.advance_days(2);
    let json = conforms(
        "schedule-kms-key-deletion",
        &kms.schedule_key_deletion(key.id, Some(7), None).unwrap(),
    );
    assert_eq!(json.as_object().unwrap().len(), 1, "{json:#}");
    assert_eq!(
        ts(&json["delete-at"]),
        clock
            .now()
            .checked_add(SignedDuration::from_hours(7 * 24))
            .unwrap()
    );

    let other = kms.create_key(&CreateKey::new("other")).unwrap();
    kms.disable_key(other.id, None).unwrap();
    let json = conforms(
        "schedule-kms-key-deletion",
        &kms.schedule_key_deletion(other.id, None, None).unwrap(),
    );
    assert_eq!(
        ts(&json["delete-at"]),
        clock
            .now()
            .checked_add(SignedDuration::from_hours(30 * 24))
            .unwrap()
    );
}

#[test]
fn list_kms_key_rotations_response_matches_the_spec() {
    let (kms, clock) = kms();
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    let json = conforms(
        "list-kms-key-rotations",
        &kms.list_key_rotations(key.id).unwrap(),
    );
    assert_eq!(json, json!({"rotations": []}));

    clock.advance_days(1);
    kms.rotate_key(key.id, None).unwrap();
    clock.advance_days(1);
    kms.rotate_key(key.id, None).unwrap();
    let json = conforms(
        "list-kms-key-rotations",
        &kms.list_key_rotations(key.id).unwrap(),
    );
    let rotations = json["rotations"].as_array().unwrap();
    let versions: Vec<&Value> = rotations.iter().map(|r| &r["version"]).collect();
    assert_eq!(versions, [&json!(2), &json!(3)], "{json:#}");
    assert!(ts(&rotations[0]["rotated-at"]) < ts(&rotations[1]["rotated-at"]));
    assert!(rotations.iter().all(|r| r["automatic"] == false));

    // An automatic rotation, listed last; the list works while pending deletion too.
    clock.advance_days(365);
    assert_eq!(kms.run_due().unwrap().rotated, [key.id]);
    kms.schedule_key_deletion(key.id, None, None).unwrap();
    let json = conforms(
        "list-kms-key-rotations",
        &kms.list_key_rotations(key.id).unwrap(),
    );
    let rotations = json["rotations"].as_array().unwrap();
    assert_eq!(rotations.len(), 3);
    assert_eq!(rotations[2]["version"], 4);
    assert_eq!(rotations[2]["automatic"], true);
}

#[test]
fn crypto_responses_match_the_spec() {
    let (kms, _) = kms();
    let source = kms.create_key(&CreateKey::new("source")).unwrap();
    let destination = kms.create_key(&CreateKey::new("destination")).unwrap();
    let context: &[u8] = b"order=17";

    let sealed = kms.encrypt(source.id, b"card 4242", Some(context)).unwrap();
    let json = conforms("encrypt", &sealed);
    assert_eq!(b64(&json["ciphertext"]), sealed.ciphertext);

    let opened = kms
        .decrypt(source.id, &sealed.ciphertext, Some(context))
        .unwrap();
    let json = conforms("decrypt", &opened);
    assert_eq!(b64(&json["plaintext"]), b"card 4242");

    let moved = kms
        .re_encrypt(
            source.id,
            &sealed.ciphertext,
            Some(context),
            destination.id,
            None,
        )
        .unwrap();
    let json = conforms("re-encrypt", &moved);
    let moved_bytes = b64(&json["ciphertext"]);
    assert_eq!(moved_bytes, moved.ciphertext);
    let json = conforms(
        "decrypt",
        &kms.decrypt(destination.id, &moved_bytes, None).unwrap(),
    );
    assert_eq!(b64(&json["plaintext"]), b"card 4242");

    // The empty plaintext is the empty base64 string.
    let empty = kms.encrypt(source.id, b"", None).unwrap();
    conforms("encrypt", &empty);
    let json = conforms(
        "decrypt",
        &kms.decrypt(source.id, &empty.ciphertext, None).unwrap(),
    );
    assert_eq!(json, json!({"plaintext": ""}));
}

#[test]
fn generate_data_key_response_matches_the_spec() {
    let (kms, _) = kms();
    let key = kms.create_key(&CreateKey::new("k")).unwrap();

    let data_key = kms
        .generate_data_key(key.id, DataKeySpec::default(), Some(b"ctx"))
        .unwrap();
    let json = conforms("generate-data-key", &data_key);
    let plaintext = b64(&json["plaintext"]);
    assert_eq!(plaintext.len(), 32, "AES-256 is the default spec");
    assert_eq!(plaintext, data_key.plaintext.as_bytes());
    let ciphertext = b64(&json["ciphertext"]);
    let json = conforms(
        "decrypt",
        &kms.decrypt(key.id, &ciphertext, Some(b"ctx")).unwrap(),
    );
    assert_eq!(b64(&json["plaintext"]), plaintext);

    for n in [1, 2, 3, 1024] {
        let data_key = kms
            .generate_data_key(key.id, DataKeySpec::Bytes(n), None)
            .unwrap();
        let json = conforms("generate-data-key", &data_key);
        assert_eq!(b64(&json["plaintext"]).len(), n as usize);
    }
}

#[test]
fn sub_second_timestamps_are_rfc3339_utc() {
    let start = "2026-03-04T05:06:07.123456789Z";
    let (kms, clock) = kms_at(start);
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    let json = conforms("create-kms-key", &key);
    assert_eq!(ts(&json["created-at"]), start.parse().unwrap());

    clock.advance(SignedDuration::from_millis(250));
    kms.rotate_key(key.id, None).unwrap();
    let json = conforms("get-kms-key", &kms.get_key(key.id).unwrap());
    assert_eq!(ts(&json["material"]["created-at"]), clock.now());
    assert_eq!(ts(&json["revision"]["at"]), clock.now());
    conforms("list-kms-keys", &kms.list_keys().unwrap());
    conforms(
        "list-kms-key-rotations",
        &kms.list_key_rotations(key.id).unwrap(),
    );
    conforms(
        "schedule-kms-key-deletion",
        &kms.schedule_key_deletion(key.id, None, None).unwrap(),
    );
    conforms("get-kms-key", &kms.get_key(key.id).unwrap());
}
