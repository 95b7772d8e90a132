//! Mapping: where an envelope keeps its event id, type, tenant and user, so the gateway can
//! bridge any system's events by configuration: JSON pointers into the body (defaults: the
//! FlatRender catalog's fields), AMQP headers as fallbacks, and an explicit single-tenant
//! mode for systems without tenants.
//!
//! The [`Mapping`] itself is configuration and lives in [`crate::config`]; this module
//! reads bodies with it.
//!
//! Extraction reads only the keys the pointers name and skips the rest without building a
//! tree, so a mapped envelope costs about what a fixed struct would.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::config::{Mapping, Pointer};

/// What the message carries besides its body.
pub struct Meta<'a> {
    /// The AMQP `message_id` property.
    pub message_id: Option<&'a str>,
    /// An AMQP header as text, if present and textual.
    pub header: &'a (dyn Fn(&str) -> Option<String> + Sync),
}

impl Meta<'_> {
    /// No properties and no headers.
    pub fn none() -> Meta<'static> {
        Meta {
            message_id: None,
            header: &|_| None,
        }
    }
}

/// A mapped field as found in the body.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// Not there (nor any object on the way to it).
    Absent,
    /// `null`.
    Null,
    /// A string.
    Str(String),
    /// Anything else, or a path through something that is not an object.
    Other,
}

/// The role fields of one body, located by a [`Mapping`].
pub struct Fields {
    /// Event id.
    pub event_id: Found,
    /// Event type.
    pub event_type: Found,
    /// Event time.
    pub event_time: Found,
    /// Tenant.
    pub tenant: Found,
    /// User.
    pub user: Found,
    /// Trace id.
    pub trace_id: Found,
}

/// Why a body could not be read as an object.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// Not JSON.
    NotJson,
    /// JSON but not an object.
    NotObject,
    /// A mapped key appears twice in one object.
    Duplicate,
}

// An inherent impl on the config type, so callers keep writing `mapping.read(text)`
// while config stays free of the envelope side.
impl Mapping {
    /// Finds the mapped fields in `text`.
    pub fn read(&self, text: &str) -> Result<Fields, ReadError> {
        let pointers = [
            &self.event_id,
            &self.event_type,
            &self.event_time,
            &self.tenant,
            &self.trace_id,
        ];
        let mut firsts: Vec<&str> = Vec::with_capacity(pointers.len() + self.users.len());
        for p in pointers.into_iter().chain(&self.users) {
            if !firsts.contains(&p.segments()[0].as_str()) {
                firsts.push(&p.segments()[0]);
            }
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let top = Capture { wanted: &firsts }
            .deserialize(&mut de)
            .and_then(|v| de.end().map(|()| v))
            .map_err(|e| classify(&e, text))?;
        let resolve = |p: &Pointer| -> Result<Found, ReadError> {
            let i = firsts
                .iter()
                .position(|f| *f == p.segments()[0])
                .unwrap_or(0);
            let mut raw = match top.get(i).copied().flatten() {
                Some(r) => r,
                None => return Ok(Found::Absent),
            };
            for seg in &p.segments()[1..] {
                if !raw.get().starts_with('{') {
                    return Ok(Found::Other);
                }
                let mut de = serde_json::Deserializer::from_str(raw.get());
                let inner = Capture {
                    wanted: &[seg.as_str()],
                }
                .deserialize(&mut de)
                .map_err(|_| ReadError::Duplicate)?;
                raw = match inner[0] {
                    Some(r) => r,
                    None => return Ok(Found::Absent),
                };
            }
            Ok(found(raw))
        };
        // The first user pointer that finds something decides; `null` only when nothing
        // more specific follows, so a later pointer can still name the user.
        let mut user = Found::Absent;
        for p in &self.users {
            match resolve(p)? {
                Found::Absent => {}
                Found::Null => user = Found::Null,
                other => {
                    user = other;
                    break;
                }
            }
        }
        Ok(Fields {
            event_id: resolve(&self.event_id)?,
            event_type: resolve(&self.event_type)?,
            event_time: resolve(&self.event_time)?,
            tenant: resolve(&self.tenant)?,
            user,
            trace_id: resolve(&self.trace_id)?,
        })
    }
}

fn found(raw: &RawValue) -> Found {
    match raw.get().as_bytes().first() {
        Some(b'n') => Found::Null,
        Some(b'"') => serde_json::from_str::<String>(raw.get())
            .map(Found::Str)
            .unwrap_or(Found::Other),
        _ => Found::Other,
    }
}

fn classify(e: &serde_json::Error, text: &str) -> ReadError {
    match e.classify() {
        serde_json::error::Category::Data if e.to_string().starts_with(DUPLICATE) => {
            ReadError::Duplicate
        }
        serde_json::error::Category::Data if !text.trim_start().starts_with('{') => {
            ReadError::NotObject
        }
        serde_json::error::Category::Data => ReadError::Duplicate,
        _ => ReadError::NotJson,
    }
}

const DUPLICATE: &str = "duplicate mapped key";

/// A key, borrowed from the input when it has no escapes.
#[derive(Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

/// Captures the raw values of the `wanted` keys of one object, skipping the rest.
struct Capture<'w> {
    wanted: &'w [&'w str],
}

impl<'de> DeserializeSeed<'de> for Capture<'_> {
    type Value = Vec<Option<&'de RawValue>>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Capture<'_> {
    type Value = Vec<Option<&'de RawValue>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = vec![None; self.wanted.len()];
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match self.wanted.iter().position(|w| *w == key) {
                // Browsers' JSON.parse keeps the last of two equal keys; routing on one
                // and showing the other would be wrong, so refuse.
                Some(i) if out[i].is_some() => return Err(de::Error::custom(DUPLICATE)),
                Some(i) => out[i] = Some(map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// The value at `pointer` in `text` as a key: a string's contents, a number as written;
/// `None` when absent, null, another shape, or not a JSON object. Reads only what the
/// pointer walks through, like [`Mapping::read`].
pub fn key_at(text: &str, pointer: &Pointer) -> Option<String> {
    // `text` was validated when the event was read: each level is only captured, which
    // skips the values beside the path instead of checking the whole body again.
    let mut raw: &str = text.trim_start();
    for seg in pointer.segments() {
        if !raw.starts_with('{') {
            return None;
        }
        let mut de = serde_json::Deserializer::from_str(raw);
        let found = Capture {
            wanted: &[seg.as_str()],
        }
        .deserialize(&mut de)
        .ok()?;
        raw = found.into_iter().next().flatten()?.get();
    }
    match raw.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(raw).ok(),
        Some(b'-' | b'0'..=b'9') => Some(raw.to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_strings_or_numbers_found_by_pointer() {
        let p = Pointer::parse("/data/job_id").unwrap();
        assert_eq!(
            key_at(r#"{"data":{"job_id":"j-1"}}"#, &p).as_deref(),
            Some("j-1")
        );
        assert_eq!(
            key_at(r#"{"data":{"job_id":42}}"#, &p).as_deref(),
            Some("42")
        );
        for none in [
            r#"{"data":{}}"#,
            r#"{"data":{"job_id":null}}"#,
            r#"{"data":"x"}"#,
            "[]",
            "{",
        ] {
            assert_eq!(key_at(none, &p), None, "{none}");
        }
    }

    #[test]
    fn nested_fields_and_wrong_shapes() {
        let m = Mapping {
            event_id: Pointer::parse("/id").unwrap(),
            tenant: Pointer::parse("/metadata/tenant_id").unwrap(),
            users: vec![Pointer::parse("/payload/userId").unwrap()],
            ..Mapping::default()
        };
        let f = m
            .read(r#"{"id":"e","payload":{"userId":"u","x":[1,{"y":2}]},"metadata":{"tenant_id":"t"},"event_type":"x"}"#)
            .unwrap();
        assert_eq!(f.event_id, Found::Str("e".into()));
        assert_eq!(f.tenant, Found::Str("t".into()));
        assert_eq!(f.user, Found::Str("u".into()));
        let f = m
            .read(r#"{"id":"e","payload":"flat","metadata":{}}"#)
            .unwrap();
        assert_eq!(
            f.user,
            Found::Other,
            "a path through a string is the wrong type"
        );
        assert_eq!(f.tenant, Found::Absent);
        assert_eq!(
            m.read(r#"{"metadata":{"tenant_id":"a","tenant_id":"b"}}"#)
                .err(),
            Some(ReadError::Duplicate)
        );
        assert_eq!(m.read("[1]").err(), Some(ReadError::NotObject));
        let m = Mapping {
            users: ["/data/owner", "/data/assignee", "/user_id"]
                .map(|p| Pointer::parse(p).unwrap())
                .to_vec(),
            ..Mapping::default()
        };
        let user = |body: &str| m.read(body).unwrap().user;
        assert_eq!(user(r#"{"data":{"assignee":"a"}}"#), Found::Str("a".into()));
        assert_eq!(
            user(r#"{"data":{"owner":null,"assignee":"a"},"user_id":"u"}"#),
            Found::Str("a".into()),
            "null does not stop the search"
        );
        assert_eq!(user(r#"{"data":{"owner":7},"user_id":"u"}"#), Found::Other);
        assert_eq!(user(r#"{"data":{"owner":null}}"#), Found::Null);
        assert_eq!(user(r#"{"data":{}}"#), Found::Absent);
        assert_eq!(m.read("{").err(), Some(ReadError::NotJson));
        assert_eq!(m.read(r#"{"a":1} x"#).err(), Some(ReadError::NotJson));
    }
}
