//! Reading request bodies: JSON objects whose fields are checked one by one, so that every
//! refusal is a [`Error::BadRequest`] naming the field (`name`, `source.ciphertext`, ...) and
//! what it must be. An absent or empty body reads as `{}` (Exoscale's clients send no body
//! when no field is set); `null` is the same as an absent field; unknown fields are refused,
//! so that a misspelt option does not silently fall back to its default.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::core::limits::Bound;
use crate::{Error, KeyId};

/// A JSON object from a request body, with the fields it may have.
pub(crate) struct Fields {
    map: Map<String, Value>,
}

fn bad(field: &'static str, reason: impl Into<String>) -> Error {
    Error::BadRequest {
        field,
        reason: reason.into(),
    }
}

impl Fields {
    /// Parses `body` as a JSON object that may only have the fields in `allowed`.
    pub(crate) fn parse(body: &[u8], allowed: &[&'static str]) -> Result<Fields, Error> {
        let body = body.trim_ascii();
        let value: Value = if body.is_empty() {
            Value::Object(Map::new())
        } else {
            serde_json::from_slice(body)
                .map_err(|error| bad("body", format!("must be JSON: {error}")))?
        };
        Fields::object(value, "body", "", allowed)
    }

    fn object(
        value: Value,
        field: &'static str,
        path: &'static str,
        allowed: &[&'static str],
    ) -> Result<Fields, Error> {
        let Value::Object(map) = value else {
            return Err(bad(field, "must be a JSON object"));
        };
        if let Some(unknown) = map.keys().find(|name| !allowed.contains(&name.as_str())) {
            return Err(bad(
                field,
                format!(
                    "has an unknown field {}; the fields are {}",
                    Error::quote(&format!("{path}{unknown}")),
                    allowed
                        .iter()
                        .map(|name| format!("`{path}{name}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(Fields { map })
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.map.get(name).filter(|value| !value.is_null())
    }

    /// The nested object `name` (its message name `field`, e.g. `source`), which may only have
    /// the fields in `allowed`; required.
    pub(crate) fn required_object(
        &mut self,
        name: &str,
        field: &'static str,
        path: &'static str,
        allowed: &[&'static str],
    ) -> Result<Fields, Error> {
        match self.map.remove(name).filter(|value| !value.is_null()) {
            Some(value) => Fields::object(value, field, path, allowed),
            None => Err(bad(field, "is required")),
        }
    }

    /// An optional string field.
    pub(crate) fn string(&self, name: &str, field: &'static str) -> Result<Option<&str>, Error> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(bad(field, "must be a string")),
        }
    }

    /// A required string field.
    pub(crate) fn required_string(&self, name: &str, field: &'static str) -> Result<&str, Error> {
        self.string(name, field)?
            .ok_or_else(|| bad(field, "is required"))
    }

    /// An optional boolean field.
    pub(crate) fn boolean(&self, name: &str, field: &'static str) -> Result<Option<bool>, Error> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(value)) => Ok(Some(*value)),
            Some(_) => Err(bad(field, "must be true or false")),
        }
    }

    /// An optional whole-number field of the API, checked against its `bound` (the core's,
    /// which also names the field).
    pub(crate) fn integer(&self, bound: &Bound) -> Result<Option<u32>, Error> {
        let field = bound.field;
        match self.get(field) {
            None => Ok(None),
            Some(Value::Number(number)) => {
                let whole = number
                    .as_i64()
                    .map(i128::from)
                    .or_else(|| number.as_u64().map(i128::from));
                match whole {
                    Some(whole) => bound.check_u32(whole).map(Some),
                    None => Err(bad(
                        field,
                        format!("must be a whole number {bound}, got {number}"),
                    )),
                }
            }
            Some(_) => Err(bad(field, format!("must be a whole number {bound}"))),
        }
    }

    /// An optional base64 field (`format: byte`), decoded into a wiping buffer.
    pub(crate) fn bytes(
        &self,
        name: &str,
        field: &'static str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(text)) => BASE64
                .decode(text)
                .map(|bytes| Some(Zeroizing::new(bytes)))
                .map_err(|_| bad(field, "must be base64 (RFC 4648, with padding)")),
            Some(_) => Err(bad(field, "must be a base64 string")),
        }
    }

    /// A required base64 field.
    pub(crate) fn required_bytes(
        &self,
        name: &str,
        field: &'static str,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        self.bytes(name, field)?
            .ok_or_else(|| bad(field, "is required"))
    }

    /// A required key id field (a UUID).
    pub(crate) fn required_key(&self, name: &str, field: &'static str) -> Result<KeyId, Error> {
        let text = self.required_string(name, field)?;
        KeyId::parse(text)
            .map_err(|_| bad(field, format!("must be a UUID, got {}", Error::quote(text))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(error: Error) -> (&'static str, String) {
        match error {
            Error::BadRequest { field, reason } => (field, reason),
            other => panic!("not a bad request: {other:?}"),
        }
    }

    #[test]
    fn an_empty_body_is_an_empty_object() {
        for body in [&b""[..], b"  \n", b"{}", b"{ }"] {
            let fields = Fields::parse(body, &["name"]).unwrap();
            assert_eq!(fields.string("name", "name").unwrap(), None);
        }
    }

    #[test]
    fn malformed_bodies_name_the_body() {
        for body in [&b"{"[..], b"[]", b"\"x\"", b"nul", b"{\"a\":1}{"] {
            let (field, _) = field_of(Fields::parse(body, &["name"]).err().unwrap());
            assert_eq!(field, "body", "{:?}", String::from_utf8_lossy(body));
        }
        let (_, reason) = field_of(Fields::parse(br#"{"nmae":"x"}"#, &["name"]).err().unwrap());
        assert!(
            reason.contains("\"nmae\"") && reason.contains("`name`"),
            "{reason}"
        );
    }

    #[test]
    fn types_and_ranges_name_the_field() {
        let f = Fields::parse(
            br#"{"s":1,"b":"yes","n":6,"big":99999999999,"neg":-1,"frac":7.5,"t":"x","raw":"%%%","k":"nope","nul":null}"#,
            &["s", "b", "n", "big", "neg", "frac", "t", "raw", "k", "nul"],
        )
        .unwrap();
        assert_eq!(field_of(f.string("s", "s").unwrap_err()).0, "s");
        assert_eq!(field_of(f.boolean("b", "b").unwrap_err()).0, "b");
        let bound = |field| Bound {
            field,
            min: 7,
            max: 30,
            unit: " days",
        };
        let (field, reason) = field_of(f.integer(&bound("n")).unwrap_err());
        assert_eq!(field, "n");
        assert_eq!(reason, "must be between 7 and 30 days, got 6");
        assert_eq!(
            field_of(f.integer(&bound("big")).unwrap_err()).1,
            "must be between 7 and 30 days, got 99999999999"
        );
        assert_eq!(
            field_of(f.integer(&bound("neg")).unwrap_err()).1,
            "must be between 7 and 30 days, got -1"
        );
        assert_eq!(
            field_of(f.integer(&bound("frac")).unwrap_err()).1,
            "must be a whole number between 7 and 30 days, got 7.5"
        );
        assert_eq!(
            field_of(f.integer(&bound("t")).unwrap_err()),
            (
                "t",
                "must be a whole number between 7 and 30 days".to_owned()
            )
        );
        assert_eq!(f.integer(&bound("nul")).unwrap(), None);
        assert_eq!(
            field_of(f.bytes("raw", "plaintext").unwrap_err()).0,
            "plaintext"
        );
        assert_eq!(
            field_of(f.required_key("k", "source.key").unwrap_err()).0,
            "source.key"
        );
        assert_eq!(f.string("nul", "nul").unwrap(), None);
        assert_eq!(
            field_of(f.required_string("nul", "nul").unwrap_err()).1,
            "is required"
        );
    }

    #[test]
    fn nested_objects_check_their_own_fields() {
        let mut f = Fields::parse(br#"{"source":{"key":"x","extra":1}}"#, &["source"]).unwrap();
        let (field, reason) = field_of(
            f.required_object("source", "source", "source.", &["key"])
                .err()
                .unwrap(),
        );
        assert_eq!(field, "source");
        assert!(reason.contains("source.extra"), "{reason}");
        let mut f = Fields::parse(br#"{"source":[]}"#, &["source"]).unwrap();
        assert!(
            f.required_object("source", "source", "source.", &["key"])
                .is_err()
        );
        let mut f = Fields::parse(b"{}", &["source"]).unwrap();
        let (field, _) = field_of(
            f.required_object("source", "source", "source.", &["key"])
                .err()
                .unwrap(),
        );
        assert_eq!(field, "source");
    }

    #[test]
    fn base64_decodes() {
        let f = Fields::parse(br#"{"p":"aGVsbG8="}"#, &["p"]).unwrap();
        assert_eq!(f.required_bytes("p", "p").unwrap().as_slice(), b"hello");
    }
}
