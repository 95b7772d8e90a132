//! Envelope: turns one broker message body into an [`Event`], parsed once, validated, with
//! its outgoing frames built once and shared by every recipient. Two steps: an
//! [`Envelope`] (the fields, validated), then the [`Event`] with its key, complete and
//! never changed after.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use crate::config::Mapping;
use crate::mapping::{Found, Meta, ReadError};
use bytes::{BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, FlushCompress};
use tungstenite::Utf8Bytes;

crate::label_set! {
    /// Why a message from the broker is dropped instead of delivered; the names are the
    /// `reason` label of `gateway_events_dropped_total`.
    #[derive(thiserror::Error)]
    pub enum DropReason as "reason" {
        /// Body larger than `GATEWAY_MAX_EVENT_BYTES`.
        #[error("body exceeds the size limit")]
        Oversized = "oversized",
        /// Body is not UTF-8.
        #[error("body is not UTF-8")]
        NotUtf8 = "not_utf8",
        /// Body is not JSON.
        #[error("body is not JSON")]
        NotJson = "not_json",
        /// JSON, but not an object.
        #[error("body is not a JSON object")]
        NotObject = "not_object",
        /// A field is missing, of the wrong type, duplicated, or unsafe to frame.
        #[error("envelope field missing or of the wrong type")]
        InvalidField = "invalid_field",
        /// No usable `tenant_id` (absent, not a string, empty): goes to nobody.
        #[error("no usable tenant_id")]
        NoTenant = "no_tenant",
        /// No user, and tenant-wide events are switched off (for its route).
        #[error("no user_id and tenant-wide events are off")]
        NoUser = "no_user",
        /// Its event type is one its route excludes.
        #[error("event type excluded by its route")]
        ExcludedType = "excluded_type",
        /// Its exchange and routing key match no route (a binding left on a named queue by
        /// an earlier configuration).
        #[error("no route for this exchange and routing key")]
        NoRoute = "no_route",
        /// Two routes that read events differently both match it: delivering under either
        /// could widen who sees it, so it goes to nobody.
        #[error("matched by routes that disagree")]
        RouteConflict = "route_conflict",
    }
}

/// A message read and validated: an [`Event`] but for its key. The pipeline checks it (its
/// route's exclusions, duplicates) before it pays for the key, then makes it the event with
/// [`Envelope::into_event`]. The event inside is never seen before it is complete.
#[derive(Debug)]
pub struct Envelope(Event);

/// Which state an event is the latest of: the rule that found its key (so two rules' keys
/// never collide) and the key's value (a job id).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateKey {
    /// Index of the rule in the configuration (`GATEWAY_STATE`).
    pub rule: u16,
    /// The value at the rule's pointer.
    pub value: Arc<str>,
}

/// A resume position a client can hold without having received the event it names: the
/// event's tenant and id hashed, so that a quiet page learns where its tenant's stream is
/// without learning other users' event ids. Every instance computes the same one (FNV-1a,
/// 64 bits), so a position resumes on any of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Position(pub u64);

impl Position {
    /// The position of event `id` of `tenant`.
    pub fn of(tenant: &str, id: &str) -> Position {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0100_0000_01b3;
        let bytes = tenant.bytes().chain([0]).chain(id.bytes());
        Position(bytes.fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME)))
    }

    /// What a client sends back as its last event id: `p:` and 16 hex digits.
    pub fn token(self) -> String {
        format!("p:{:016x}", self.0)
    }

    /// The position a last event id names, if it is one.
    pub fn parse(last_event_id: &str) -> Option<Position> {
        let hex = last_event_id.strip_prefix("p:")?;
        (hex.len() == 16)
            .then(|| u64::from_str_radix(hex, 16).ok())
            .flatten()
            .map(Position)
    }
}

/// An event's keys, worked out once when it is made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventKeys {
    /// Events with the same conflation key supersede each other in a connection's queue.
    pub conflation: Option<Box<str>>,
    /// The event is the latest state of this key.
    pub state: Option<StateKey>,
}

/// A validated event, complete when it is made and never changed after: shared (`Arc`)
/// by the history and every connection it goes to.
#[derive(Debug)]
pub struct Event {
    /// `event_id`: SSE `id:` and the key for duplicate suppression.
    pub id: Arc<str>,
    /// `event_type`, for logs.
    pub event_type: Box<str>,
    /// `tenant_id`: never empty.
    pub tenant: Arc<str>,
    /// `user_id`; `None` means every connection of the tenant.
    pub user: Option<Arc<str>>,
    /// `trace_id`, when the producer set one, for logs.
    pub trace_id: Option<Box<str>>,
    /// `event_time` as microseconds since the epoch, when present and RFC 3339; only used
    /// for the latency histogram, so an odd timestamp never rejects an event.
    pub event_time_us: Option<i64>,
    /// See [`Event::conflation_key`].
    conflation_key: Option<Box<str>>,
    /// See [`Event::state_key`].
    state_key: Option<StateKey>,
    /// See [`Event::position`].
    position: Position,
    /// The envelope on one line, as published: the WebSocket text frame.
    json: Utf8Bytes,
    /// The SSE frame, built on first use so WS-only traffic never pays for it.
    sse: OnceLock<Bytes>,
    /// The WebSocket frame's payload compressed for `permessage-deflate` (`None`: not
    /// smaller), built on first use so only an instance with such clients pays for it.
    deflated: OnceLock<Option<Bytes>>,
}

thread_local! {
    /// One raw-deflate compressor per thread, reset between messages: its tables take some
    /// hundreds of KiB, too much to allocate for every event.
    static COMPRESSOR: RefCell<Compress> =
        RefCell::new(Compress::new(Compression::new(DEFLATE_LEVEL), false));
}

/// The compression level of WebSocket frames (zlib's scale, 1 to 9); see Performance,
/// bytes on the wire, for what each costs on the studio's events.
const DEFLATE_LEVEL: u32 = 6;

/// The tail every compressed message ends with after a sync flush, which
/// `permessage-deflate` removes (RFC 7692 7.2.1).
const DEFLATE_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// `payload` compressed as one `permessage-deflate` message with no context from other
/// messages: raw deflate, sync-flushed, without its tail. `None` when that is not shorter.
pub fn deflate(payload: &[u8]) -> Option<Bytes> {
    COMPRESSOR.with_borrow_mut(|c| {
        c.reset();
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        loop {
            let done = c.total_in() as usize;
            c.compress_vec(&payload[done..], &mut out, FlushCompress::Sync)
                .ok()?;
            // All taken and room left: the flush is complete.
            if c.total_in() as usize == payload.len() && out.len() < out.capacity() {
                break;
            }
            if out.len() > payload.len() + DEFLATE_TAIL.len() {
                return None;
            }
            out.reserve(out.capacity());
        }
        if !out.ends_with(&DEFLATE_TAIL) {
            return None;
        }
        out.truncate(out.len() - DEFLATE_TAIL.len());
        (out.len() < payload.len()).then(|| Bytes::from(out))
    })
}

/// Longest event type accepted, as long as an AMQP routing key may be. Every client's
/// `types=` selection is matched against it, so its length bounds that work.
pub const MAX_EVENT_TYPE_BYTES: usize = 255;

/// A non-empty string without CR/LF/NUL: such ids end up in SSE `id:` lines, where a
/// newline would let a producer inject fields into every client's stream, and EventSource
/// ignores an id with NUL (so its Last-Event-ID would silently stay behind).
fn safe_text(s: String) -> Result<Box<str>, DropReason> {
    if !s.is_empty() && !s.contains(['\r', '\n', '\0']) {
        Ok(s.into())
    } else {
        Err(DropReason::InvalidField)
    }
}

/// A body field, or when it is absent, the fallback. An explicit `null` is the body's
/// answer ("no user": tenant-wide) and is not overridden by a header.
fn or_fallback(found: Found, fallback: impl FnOnce() -> Option<String>) -> Found {
    match found {
        Found::Absent => fallback().map(Found::Str).unwrap_or(found),
        other => other,
    }
}

/// The default (FlatRender catalog) mapping, for callers without configuration.
static CATALOG: std::sync::LazyLock<Mapping> = std::sync::LazyLock::new(Mapping::default);

impl Envelope {
    /// Reads and validates one message with `mapping`; `meta` supplies the fallbacks.
    pub fn read(
        body: Vec<u8>,
        max_bytes: usize,
        mapping: &Mapping,
        meta: &Meta<'_>,
    ) -> Result<Envelope, DropReason> {
        if body.len() > max_bytes {
            return Err(DropReason::Oversized);
        }
        let text = std::str::from_utf8(&body).map_err(|_| DropReason::NotUtf8)?;
        let fields = mapping.read(text).map_err(|e| match e {
            ReadError::NotJson => DropReason::NotJson,
            ReadError::NotObject => DropReason::NotObject,
            ReadError::Duplicate => DropReason::InvalidField,
        })?;
        let header = |name: &Option<String>| name.as_deref().and_then(|h| (meta.header)(h));

        let id: Arc<str> = match or_fallback(fields.event_id, || meta.message_id.map(str::to_owned))
        {
            Found::Str(s) => safe_text(s)?.into(),
            _ => return Err(DropReason::InvalidField),
        };
        let event_type = match or_fallback(fields.event_type, || header(&mapping.event_type_header))
        {
            // Bounded like a routing key: selections are matched against it per delivery.
            Found::Str(s) if s.len() <= MAX_EVENT_TYPE_BYTES => safe_text(s)?,
            _ => return Err(DropReason::InvalidField),
        };
        let user = match or_fallback(fields.user, || header(&mapping.user_header)) {
            Found::Absent | Found::Null => None,
            // An empty user must not turn into "everyone in the tenant".
            Found::Str(s) if !s.is_empty() => Some(s.into()),
            _ => return Err(DropReason::InvalidField),
        };
        let trace_id = match fields.trace_id {
            Found::Str(s) => Some(s.into_boxed_str()),
            _ => None,
        };
        let event_time_us = match fields.event_time {
            Found::Str(s) => rfc3339_micros(&s),
            _ => None,
        };
        let tenant = match &mapping.single_tenant {
            Some(t) => t.as_str().into(),
            None => match or_fallback(fields.tenant, || header(&mapping.tenant_header)) {
                Found::Str(s) if !s.is_empty() => s.into(),
                _ => return Err(DropReason::NoTenant),
            },
        };
        if user.is_none() && !mapping.tenant_wide_events {
            return Err(DropReason::NoUser);
        }

        Ok(Envelope(Event {
            id,
            event_type,
            tenant,
            user,
            trace_id,
            event_time_us,
            conflation_key: None,
            state_key: None,
            position: Position::default(),
            json: one_line(body),
            sse: OnceLock::new(),
            deflated: OnceLock::new(),
        }))
    }

    /// `event_id`: the key for duplicate suppression, with the tenant.
    pub fn id(&self) -> &Arc<str> {
        &self.0.id
    }

    /// `tenant_id`.
    pub fn tenant(&self) -> &Arc<str> {
        &self.0.tenant
    }

    /// `event_type`.
    pub fn event_type(&self) -> &str {
        &self.0.event_type
    }

    /// `trace_id`, when the producer set one, for logs.
    pub fn trace_id(&self) -> Option<&str> {
        self.0.trace_id.as_deref()
    }

    /// The envelope on one line, as published: where its key is read from.
    pub fn json(&self) -> &str {
        self.0.json()
    }

    /// The event, complete: with its conflation key (from `keys::KeyRules::key`, the one
    /// place an event's key is worked out).
    pub fn into_event(self, keys: EventKeys) -> Event {
        let Envelope(mut event) = self;
        event.conflation_key = keys.conflation;
        event.state_key = keys.state;
        // Only for events kept: dropped messages never pay for it.
        event.position = Position::of(&event.tenant, &event.id);
        event
    }
}

impl Event {
    /// Parses and validates one body with the FlatRender catalog mapping, without keys.
    pub fn parse(body: Vec<u8>, max_bytes: usize) -> Result<Event, DropReason> {
        Envelope::read(body, max_bytes, &CATALOG, &Meta::none())
            .map(|e| e.into_event(EventKeys::default()))
    }

    /// Events with the same key supersede each other in a connection's queue when it
    /// falls behind, and in a replay (`None`: never).
    pub fn conflation_key(&self) -> Option<&str> {
        self.conflation_key.as_deref()
    }

    /// The same event with `keys`, for tests that need keyed events without a pipeline.
    #[cfg(test)]
    pub(crate) fn with_keys(mut self, keys: EventKeys) -> Event {
        self.conflation_key = keys.conflation;
        self.state_key = keys.state;
        self
    }

    /// This event as a resume position (see [`Position`]).
    pub fn position(&self) -> Position {
        self.position
    }

    /// The state this event is the latest of, if a state rule names its type (`None`:
    /// it is no state).
    pub fn state_key(&self) -> Option<&StateKey> {
        self.state_key.as_ref()
    }

    /// The envelope on one line, as published.
    pub fn json(&self) -> &str {
        self.json.as_str()
    }

    /// The WebSocket text frame: the published envelope, byte for byte but on one line.
    pub fn ws_frame(&self) -> Utf8Bytes {
        self.json.clone()
    }

    /// The WebSocket frame's payload compressed alone (no context from other messages),
    /// so the one compression is shared by every connection that negotiated
    /// `permessage-deflate`; `None` when compressing does not make it smaller.
    pub fn ws_deflated(&self) -> Option<Bytes> {
        self.deflated
            .get_or_init(|| deflate(self.json.as_bytes()))
            .clone()
    }

    /// The SSE frame: `id:` and one `data:` line.
    pub fn sse_frame(&self) -> Bytes {
        self.sse
            .get_or_init(|| {
                let json = self.json.as_str();
                let mut buf = BytesMut::with_capacity(json.len() + self.id.len() + 16);
                buf.put_slice(b"id: ");
                buf.put_slice(self.id.as_bytes());
                buf.put_slice(b"\ndata: ");
                buf.put_slice(json.as_bytes());
                buf.put_slice(b"\n\n");
                buf.freeze()
            })
            .clone()
    }

    /// Length of the envelope, for accounting.
    pub fn len(&self) -> usize {
        self.json.len()
    }

    /// Never true for a parsed event; present because `len` is.
    pub fn is_empty(&self) -> bool {
        self.json.is_empty()
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` into microseconds since the epoch.
pub fn rfc3339_micros(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 6 {
                micros = micros * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..6 {
            micros *= 10;
        }
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let o = oh * 3600 + om * 60;
            if *sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    // Days from civil (proleptic Gregorian), after Howard Hinnant's algorithm.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    Some(secs * 1_000_000 + micros)
}

/// JSON strings cannot hold raw CR or LF, so any found in a valid document are whitespace
/// between tokens: replacing them with spaces keeps the document identical in meaning and
/// lets it travel as one SSE `data:` line without re-encoding.
fn one_line(mut body: Vec<u8>) -> Utf8Bytes {
    for b in body.iter_mut() {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
    Utf8Bytes::try_from(body).expect("validated as UTF-8 above; only ASCII bytes were replaced")
}

/// Events for the unit tests of other modules.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use super::{CATALOG, Envelope, Event, EventKeys, Meta};

    /// A catalog event of `event_type` for (`tenant`, `user`), `None` meaning tenant-wide.
    pub(crate) fn event(id: &str, event_type: &str, tenant: &str, user: Option<&str>) -> Event {
        let body = serde_json::json!({
            "event_id": id, "event_type": event_type,
            "tenant_id": tenant, "user_id": user, "data": {}
        });
        Event::parse(serde_json::to_vec(&body).unwrap(), 4096).unwrap()
    }

    /// A progress event for user `u` of tenant `t`, shared.
    pub(crate) fn progress(id: &str) -> Arc<Event> {
        Arc::new(event(id, "render.job.progress.v1", "t", Some("u")))
    }

    /// An event of `event_type` for user `u` of tenant `t` with conflation key `key`.
    pub(crate) fn keyed(id: &str, event_type: &str, key: Option<&str>) -> Event {
        let body = serde_json::json!({
            "event_id": id, "event_type": event_type, "tenant_id": "t", "user_id": "u"
        });
        Envelope::read(
            serde_json::to_vec(&body).unwrap(),
            4096,
            &CATALOG,
            &Meta::none(),
        )
        .unwrap()
        .into_event(EventKeys {
            conflation: key.map(Into::into),
            state: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Event, DropReason> {
        Event::parse(s.as_bytes().to_vec(), 1024)
    }

    const FULL: &str = r#"{"event_id":"e1","event_type":"render.job.progress.v1","event_time":"2026-05-27T10:15:00Z","tenant_id":"t1","user_id":"u1","trace_id":"tr","correlation_id":"c","producer":"render-orchestrator","data":{"progress":42}}"#;

    #[test]
    fn catalog_envelope_is_accepted_unchanged() {
        let e = parse(FULL).unwrap();
        assert_eq!(&*e.id, "e1");
        assert_eq!(&*e.tenant, "t1");
        assert_eq!(e.user.as_deref(), Some("u1"));
        assert_eq!(e.trace_id.as_deref(), Some("tr"));
        assert_eq!(e.ws_frame().as_str(), FULL);
        let sse = e.sse_frame();
        assert_eq!(sse, Bytes::from(format!("id: e1\ndata: {FULL}\n\n")));
    }

    #[test]
    fn null_or_absent_user_means_tenant_wide() {
        assert!(
            parse(r#"{"event_id":"e","event_type":"t","tenant_id":"t","user_id":null}"#)
                .unwrap()
                .user
                .is_none()
        );
        assert!(
            parse(r#"{"event_id":"e","event_type":"t","tenant_id":"t"}"#)
                .unwrap()
                .user
                .is_none()
        );
    }

    #[test]
    fn pretty_printed_json_becomes_one_line() {
        let e = parse("{\r\n  \"event_id\": \"e\",\n  \"event_type\": \"t\",\n  \"tenant_id\": \"t\",\n  \"data\": {\"s\": \"a\\nb\"}\n}").unwrap();
        let frame = e.sse_frame();
        let text = std::str::from_utf8(&frame).unwrap();
        assert_eq!(text.matches('\n').count(), 3, "{text}");
        let v: serde_json::Value = serde_json::from_str(e.ws_frame().as_str()).unwrap();
        assert_eq!(v["data"]["s"], "a\nb");
    }

    #[test]
    fn unusable_tenant_goes_to_nobody() {
        for body in [
            r#"{"event_id":"e","event_type":"t"}"#,
            r#"{"event_id":"e","event_type":"t","tenant_id":null}"#,
            r#"{"event_id":"e","event_type":"t","tenant_id":""}"#,
            r#"{"event_id":"e","event_type":"t","tenant_id":7}"#,
            r#"{"event_id":"e","event_type":"t","tenant_id":["t"]}"#,
        ] {
            assert_eq!(parse(body).unwrap_err(), DropReason::NoTenant, "{body}");
        }
    }

    #[test]
    fn malformed_bodies_are_classified() {
        let cases: &[(&[u8], DropReason)] = &[
            (b"\xff\xfe{}", DropReason::NotUtf8),
            (b"not json", DropReason::NotJson),
            (b"{\"event_id\":", DropReason::NotJson),
            (b"", DropReason::NotJson),
            (b"[1,2]", DropReason::NotObject),
            (b"42", DropReason::NotObject),
            (b"\"str\"", DropReason::NotObject),
            (b"null", DropReason::NotObject),
            (
                br#"{"event_type":"t","tenant_id":"t"}"#,
                DropReason::InvalidField,
            ),
            (
                br#"{"event_id":5,"event_type":"t","tenant_id":"t"}"#,
                DropReason::InvalidField,
            ),
            (
                br#"{"event_id":"","event_type":"t","tenant_id":"t"}"#,
                DropReason::InvalidField,
            ),
            (
                br#"{"event_id":"a\nid: x","event_type":"t","tenant_id":"t"}"#,
                DropReason::InvalidField,
            ),
            (
                br#"{"event_id":"a\u0000b","event_type":"t","tenant_id":"t"}"#,
                DropReason::InvalidField,
            ),
            (
                br#"{"event_id":"e","tenant_id":"t"}"#,
                DropReason::InvalidField,
            ),
            (
                br#"{"event_id":"e","event_type":"t","tenant_id":"t","user_id":42}"#,
                DropReason::InvalidField,
            ),
            (
                br#"{"event_id":"e","event_type":"t","tenant_id":"t","user_id":""}"#,
                DropReason::InvalidField,
            ),
            (
                br#"{"event_id":"e","event_type":"t","tenant_id":"t","user_id":{"id":"u"}}"#,
                DropReason::InvalidField,
            ),
            // Two tenant_ids: browsers' JSON.parse keeps the last, so refuse rather than guess.
            (
                br#"{"event_id":"e","event_type":"t","tenant_id":"a","tenant_id":"b"}"#,
                DropReason::InvalidField,
            ),
        ];
        for (body, want) in cases {
            let got = Event::parse(body.to_vec(), 1024).unwrap_err();
            assert_eq!(got, *want, "{}", String::from_utf8_lossy(body));
        }
        // An event type longer than a routing key may be.
        let long = |n: usize| {
            format!(
                r#"{{"event_id":"e","event_type":"{}","tenant_id":"t"}}"#,
                "a".repeat(n)
            )
        };
        assert!(parse(&long(MAX_EVENT_TYPE_BYTES)).is_ok());
        assert_eq!(
            parse(&long(MAX_EVENT_TYPE_BYTES + 1)).unwrap_err(),
            DropReason::InvalidField
        );
    }

    #[test]
    fn event_time_parses_rfc3339() {
        assert_eq!(rfc3339_micros("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_micros("2026-05-27T10:15:00Z"),
            Some(1_779_876_900_000_000)
        );
        assert_eq!(
            rfc3339_micros("2026-05-27T12:15:00.5+02:00"),
            Some(1_779_876_900_500_000)
        );
        assert_eq!(
            rfc3339_micros("2000-02-29T00:00:00.123456789Z"),
            Some(951_782_400_123_456)
        );
        for bad in [
            "",
            "2026-05-27",
            "2026-13-01T00:00:00Z",
            "2026-05-27T10:15:00",
            "2026-05-27T10:15:00.Z",
            "yesterday at noon!!",
        ] {
            assert_eq!(rfc3339_micros(bad), None, "{bad}");
        }
        let e = parse(FULL).unwrap();
        assert_eq!(e.event_time_us, Some(1_779_876_900_000_000));
    }

    #[test]
    fn oversized_is_checked_before_parsing() {
        let body = format!(
            r#"{{"event_id":"e","event_type":"t","tenant_id":"t","data":"{}"}}"#,
            "x".repeat(2000)
        );
        assert_eq!(
            Event::parse(body.into_bytes(), 1024).unwrap_err(),
            DropReason::Oversized
        );
    }
}
