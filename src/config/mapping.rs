//! Mapping settings: which JSON pointers and AMQP headers name an envelope's event id,
//! type, tenant and user. Reading a body with them is the envelope side's job; this
//! module only says where to look.

use std::collections::HashMap;
use std::fmt;

use super::settings::{Key, Raw};
use super::validate::Validator;

/// An RFC 6901 JSON pointer into the body, e.g. `/metadata/tenant_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pointer(Vec<String>);

impl Pointer {
    /// Parses `/a/b` (with `~1` for `/` and `~0` for `~`).
    pub fn parse(s: &str) -> Result<Pointer, String> {
        let rest = s
            .strip_prefix('/')
            .ok_or_else(|| format!("`{s}` is not a JSON pointer like /tenant_id"))?;
        let segments: Vec<String> = rest
            .split('/')
            .map(|seg| seg.replace("~1", "/").replace("~0", "~"))
            .collect();
        if segments.iter().any(String::is_empty) {
            return Err(format!("`{s}` has an empty segment"));
        }
        Ok(Pointer(segments))
    }

    /// The keys walked from the top object, unescaped; never empty, and no key is empty.
    #[inline]
    pub fn segments(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for seg in &self.0 {
            write!(f, "/{}", seg.replace('~', "~0").replace('/', "~1"))?;
        }
        Ok(())
    }
}

/// How envelope fields are found. The default is the settings table's, which is the
/// FlatRender catalog. Routes compare mappings: two routes that would read the same
/// message differently disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Event id; falls back to the AMQP `message_id` property.
    pub event_id: Pointer,
    /// Event type; falls back to `event_type_header`.
    pub event_type: Pointer,
    /// Event time (RFC 3339), for the latency histogram only.
    pub event_time: Pointer,
    /// Tenant; falls back to `tenant_header` when that is set.
    pub tenant: Pointer,
    /// User, tried in order: the first pointer that finds a value (not absent, not
    /// `null`) decides; falls back to `user_header` when none finds anything. Never empty.
    pub users: Vec<Pointer>,
    /// Trace id, for logs.
    pub trace_id: Pointer,
    /// Header carrying the event type when the body has none.
    pub event_type_header: Option<String>,
    /// Header carrying the tenant when the body has none. Off by default: the contract
    /// sends an event without a body tenant to nobody.
    pub tenant_header: Option<String>,
    /// Header carrying the user when the body has none.
    pub user_header: Option<String>,
    /// Single-tenant mode: every event and every token belong to this tenant.
    pub single_tenant: Option<String>,
    /// Whether events without a user go to every connection of their tenant (the
    /// contract) or to nobody.
    pub tenant_wide_events: bool,
}

impl Default for Mapping {
    /// The mapping of a gateway given no settings, read from the table's defaults.
    fn default() -> Mapping {
        let no_env = |_: &str| None;
        let raw = Raw::new(HashMap::new(), &no_env);
        let mut v = Validator::new(&raw, Vec::new());
        let mapping = v.mapping();
        debug_assert!(v.problems.is_empty(), "{:?}", v.problems);
        mapping
    }
}

impl Validator<'_> {
    pub(super) fn mapping(&mut self) -> Mapping {
        let tenant_wide_events = self.tenant_wide();
        Mapping {
            event_id: self.pointer(Key::EventIdPointer),
            event_type: self.pointer(Key::EventTypePointer),
            event_time: self.pointer(Key::EventTimePointer),
            tenant: self.pointer(Key::TenantPointer),
            users: vec![self.pointer(Key::UserPointer)],
            trace_id: self.pointer(Key::TraceIdPointer),
            event_type_header: self.optional(Key::EventTypeHeader),
            tenant_header: self.optional(Key::TenantHeader),
            user_header: self.optional(Key::UserHeader),
            single_tenant: self.optional(Key::SingleTenant),
            tenant_wide_events,
        }
    }

    /// Reads the tenant-wide switch, `true` when a problem was recorded.
    fn tenant_wide(&mut self) -> bool {
        match self.string(Key::TenantWideEvents).as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            other => {
                self.problem(
                    Key::TenantWideEvents,
                    format_args!("`{other}` is not true or false"),
                );
                true
            }
        }
    }

    pub(super) fn pointer(&mut self, key: Key) -> Pointer {
        let raw = self.string(key);
        Pointer::parse(&raw).unwrap_or_else(|e| {
            self.problem(key, e);
            // Placeholder only: a problem has been recorded.
            Pointer(vec!["invalid".to_owned()])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_parse_and_print() {
        assert_eq!(
            Pointer::parse("/a/b~1c/d~0e").unwrap().segments(),
            ["a", "b/c", "d~e"]
        );
        assert_eq!(Pointer::parse("/a/b~1c").unwrap().to_string(), "/a/b~1c");
        for bad in ["", "a", "/", "/a//b"] {
            assert!(Pointer::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_is_the_flatrender_catalog() {
        let m = Mapping::default();
        let pointers = [
            &m.event_id,
            &m.event_type,
            &m.event_time,
            &m.tenant,
            &m.users[0],
            &m.trace_id,
        ]
        .map(ToString::to_string);
        assert_eq!(
            pointers,
            [
                "/event_id",
                "/event_type",
                "/event_time",
                "/tenant_id",
                "/user_id",
                "/trace_id"
            ]
        );
        assert_eq!(m.event_type_header.as_deref(), Some("x-event-type"));
        assert!(m.tenant_header.is_none() && m.user_header.is_none());
        assert!(m.single_tenant.is_none() && m.users.len() == 1);
        assert!(m.tenant_wide_events);
    }
}
