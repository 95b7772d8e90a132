//! Routes: which exchange and binding key bring which events, and how each route's events
//! are read (their own JSON pointers, whether an event without a user is tenant-wide,
//! event types left out, which events are the latest state of what). Without `[[route]]` tables in the configuration file, the
//! bindings and mapping settings are the default route, as before routes existed.
//!
//! Safety rule: an event matched by two routes that read it differently goes to nobody
//! (`route_conflict`), because either reading could widen who sees it.

use std::fmt;

use super::amqp::Binding;
use super::mapping::{Mapping, Pointer};
use super::settings::Key;
use super::state::{MAX_RULES, NOT_A_RULE, StateRule};
use super::topic::{patterns_overlap, topic_matches};
use super::validate::Validator;

/// One route: a binding and how the events it brings are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Name, for logs and `config check`.
    pub name: String,
    /// Exchange and binding key.
    pub binding: Binding,
    /// Where this route's events keep their fields, and whether userless ones are
    /// tenant-wide.
    pub mapping: Mapping,
    /// Event types (topic patterns over the type's dotted words) never delivered.
    pub exclude_types: Vec<String>,
    /// Which of this route's events are the latest state of a key, when the route says
    /// (`state = [...]` in its table; an empty list: none); `None`: `GATEWAY_STATE`'s rules.
    /// A route's events keep their keys where the route's envelopes do, so the default
    /// pointer (`/data/job_id`) need not fit every route.
    pub state: Option<Vec<StateRule>>,
}

impl Route {
    /// Whether events of `event_type` are left out.
    pub fn excludes(&self, event_type: &str) -> bool {
        self.exclude_types
            .iter()
            .any(|p| topic_matches(p, event_type))
    }

    /// Whether the two routes would treat every event alike.
    fn agrees(&self, other: &Route) -> bool {
        // Not the state rules: they do not change who receives an event, so two routes
        // that differ only there deliver it; the first in the file gives its state.
        self.mapping == other.mapping && self.exclude_types == other.exclude_types
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.mapping;
        let users: Vec<String> = m.users.iter().map(ToString::to_string).collect();
        write!(
            f,
            "route {}: exchange {} key {} | id {} type {} time {} tenant {} user {} trace {} | events without a user: {}",
            self.name,
            self.binding.exchange,
            self.binding.key,
            m.event_id,
            m.event_type,
            m.event_time,
            match &m.single_tenant {
                Some(t) => format!("(single tenant {t})"),
                None => m.tenant.to_string(),
            },
            users.join(","),
            m.trace_id,
            if m.tenant_wide_events {
                "whole tenant"
            } else {
                "nobody"
            },
        )?;
        if !self.exclude_types.is_empty() {
            write!(f, " | excluded types {}", self.exclude_types.join(","))?;
        }
        match &self.state {
            None => {}
            Some(rules) if rules.is_empty() => write!(f, " | state: none")?,
            Some(rules) => {
                let rules: Vec<String> = rules
                    .iter()
                    .map(|r| format!("{}={}", r.types.as_str(), r.key))
                    .collect();
                write!(f, " | state {}", rules.join(","))?;
            }
        }
        Ok(())
    }
}

/// Every route of this gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    /// The routes, in file order (or one per binding for the default route).
    pub list: Vec<Route>,
    /// Pairs of routes that can match the same key and read it differently, described.
    /// Startup warns about them (their common events are dropped); `config check` fails.
    pub overlaps: Vec<String>,
    /// The routes are the settings' default route: one reading for every message on the
    /// queue, whatever its exchange, as before routes existed. (A message that came
    /// through an exchange-to-exchange binding reports the exchange it was published to,
    /// which need not be one the gateway bound.)
    pub default_route: bool,
}

/// The route a message takes.
#[derive(Debug, PartialEq, Eq)]
pub enum Selected<'a> {
    /// Exactly one reading applies: the route and its place in [`Routes::list`].
    Route(usize, &'a Route),
    /// No route matches its exchange and key.
    None,
    /// Routes that disagree match it.
    Conflict,
}

impl Routes {
    /// The route for a message published to `exchange` with `routing_key`. Routes that
    /// match and agree are one reading for delivery; the first one's state rules apply.
    pub fn select(&self, exchange: &str, routing_key: &str) -> Selected<'_> {
        if self.default_route {
            return self
                .list
                .first()
                .map_or(Selected::None, |r| Selected::Route(0, r));
        }
        let mut matching = self
            .list
            .iter()
            .enumerate()
            .filter(|(_, r)| r.binding.exchange == exchange && r.binding.matches(routing_key));
        let Some((index, first)) = matching.next() else {
            return Selected::None;
        };
        if matching.all(|(_, r)| r.agrees(first)) {
            Selected::Route(index, first)
        } else {
            Selected::Conflict
        }
    }

    /// The queue bindings the routes need, each once.
    pub fn bindings(&self) -> Vec<Binding> {
        let mut out: Vec<Binding> = Vec::new();
        for r in &self.list {
            if !out.contains(&r.binding) {
                out.push(r.binding.clone());
            }
        }
        out
    }

    fn find_overlaps(list: &[Route]) -> Vec<String> {
        let mut overlaps = Vec::new();
        for (i, a) in list.iter().enumerate() {
            for b in &list[i + 1..] {
                if a.binding.exchange == b.binding.exchange
                    && patterns_overlap(&a.binding.key, &b.binding.key)
                    && !a.agrees(b)
                {
                    overlaps.push(format!(
                        "routes `{}` ({}) and `{}` ({}) on exchange {} can match the same routing key and read its events differently; such events are dropped (route_conflict)",
                        a.name, a.binding.key, b.name, b.binding.key, a.binding.exchange
                    ));
                }
            }
        }
        overlaps
    }
}

/// Keys a `[[route]]` table may have.
const ROUTE_KEYS: &[&str] = &[
    "name",
    "exchange",
    "binding",
    "event-id",
    "event-type",
    "event-time",
    "tenant",
    "user",
    "trace-id",
    "tenant-wide",
    "exclude-types",
    "state",
];

impl Validator<'_> {
    /// The routes: the file's `[[route]]` tables when it has any, else one default route
    /// per binding, read with the mapping settings.
    pub(super) fn routes(
        &mut self,
        tables: Option<&[toml::Table]>,
        bindings: &[Binding],
        default_exchange: &str,
        mapping: &Mapping,
    ) -> Routes {
        let Some(tables) = tables else {
            let list = bindings
                .iter()
                .map(|b| Route {
                    name: "default".to_owned(),
                    binding: b.clone(),
                    mapping: mapping.clone(),
                    exclude_types: Vec::new(),
                    state: None,
                })
                .collect();
            return Routes {
                list,
                overlaps: Vec::new(),
                default_route: true,
            };
        };
        if self.is_given(Key::AmqpBindings) {
            self.problem(
                Key::AmqpBindings,
                "not used when the configuration file lists routes: give each binding its own [[route]]",
            );
        }
        if tables.is_empty() {
            self.problems
                .push("[[route]]: at least one route is needed".to_owned());
        }
        let mut list: Vec<Route> = Vec::new();
        for (i, table) in tables.iter().enumerate() {
            let route = self.route(i, table, default_exchange, mapping);
            if list.iter().any(|r| r.name == route.name) {
                self.problems
                    .push(format!("route `{}`: the name is used twice", route.name));
            }
            list.push(route);
        }
        let overlaps = Routes::find_overlaps(&list);
        Routes {
            list,
            overlaps,
            default_route: false,
        }
    }

    fn route(
        &mut self,
        index: usize,
        table: &toml::Table,
        default_exchange: &str,
        defaults: &Mapping,
    ) -> Route {
        let mut r = RouteReader {
            table,
            name: format!("route {}", index + 1),
            problems: Vec::new(),
        };
        if let Some(name) = r.string("name") {
            r.name = name;
        }
        for key in table.keys().filter(|k| !ROUTE_KEYS.contains(&k.as_str())) {
            r.problem(format_args!(
                "unknown key `{key}` (known: {})",
                ROUTE_KEYS.join(", ")
            ));
        }
        let exchange = r
            .string("exchange")
            .unwrap_or_else(|| default_exchange.to_owned());
        let key = r.string("binding").unwrap_or_default();
        let bad = |s: &str| s.is_empty() || s.len() > 255 || s.contains(char::is_whitespace);
        if bad(&exchange) || bad(&key) {
            r.problem(
                "needs `binding` (a topic key) and an `exchange` of 1 to 255 bytes without spaces",
            );
        }
        let users = r.users(&defaults.users);
        let mapping = Mapping {
            event_id: r.pointer("event-id", &defaults.event_id),
            event_type: r.pointer("event-type", &defaults.event_type),
            event_time: r.pointer("event-time", &defaults.event_time),
            tenant: r.pointer("tenant", &defaults.tenant),
            users,
            trace_id: r.pointer("trace-id", &defaults.trace_id),
            // A route written down says what its userless events do; until it does, they
            // go to nobody.
            tenant_wide_events: r.boolean("tenant-wide").unwrap_or(false),
            ..defaults.clone()
        };
        let exclude_types = r.exclude_types();
        let state = r.state();
        self.problems.append(&mut r.problems);
        Route {
            name: r.name,
            binding: Binding { exchange, key },
            mapping,
            exclude_types,
            state,
        }
    }
}

/// Reads one `[[route]]` table, recording problems under the route's name.
struct RouteReader<'t> {
    table: &'t toml::Table,
    name: String,
    problems: Vec<String>,
}

impl RouteReader<'_> {
    fn problem(&mut self, what: impl fmt::Display) {
        self.problems.push(format!("route `{}`: {what}", self.name));
    }

    fn string(&mut self, key: &str) -> Option<String> {
        match self.table.get(key)? {
            toml::Value::String(s) => Some(s.clone()),
            _ => {
                self.problem(format_args!("`{key}` must be a string"));
                None
            }
        }
    }

    fn boolean(&mut self, key: &str) -> Option<bool> {
        match self.table.get(key)? {
            toml::Value::Boolean(b) => Some(*b),
            _ => {
                self.problem(format_args!("`{key}` must be true or false"));
                None
            }
        }
    }

    /// `user`: one pointer or a non-empty list, tried in order.
    fn users(&mut self, default: &[Pointer]) -> Vec<Pointer> {
        let texts: Option<Vec<String>> = match self.table.get("user") {
            None => return default.to_vec(),
            Some(toml::Value::String(s)) => Some(vec![s.clone()]),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .filter(|t| !t.is_empty()),
            Some(_) => None,
        };
        match texts {
            Some(t) => self.pointers("user", &t),
            None => {
                self.problem("`user` must be a pointer or a non-empty list of pointers");
                default.to_vec()
            }
        }
    }

    fn exclude_types(&mut self) -> Vec<String> {
        let Some(value) = self.table.get("exclude-types") else {
            return Vec::new();
        };
        let types = value.as_array().and_then(|items| {
            items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
        });
        types.unwrap_or_else(|| {
            self.problem("`exclude-types` must be a list of event types");
            Vec::new()
        })
    }

    /// `state`: a list of `event.type.pattern=/json/pointer` rules, as in `GATEWAY_STATE`;
    /// `[]` keeps no state of this route's events.
    fn state(&mut self) -> Option<Vec<StateRule>> {
        let value = self.table.get("state")?;
        let Some(items) = value.as_array().filter(|items| items.len() <= MAX_RULES) else {
            self.problem(format_args!(
                "`state` must be a list of at most {MAX_RULES} rules (`\"event.type.pattern=/json/pointer\"`)"
            ));
            return None;
        };
        let mut rules = Vec::new();
        for item in items {
            let Some(text) = item.as_str() else {
                self.problem(format_args!(
                    "`state`: every rule must be a string, not {}",
                    item.type_str()
                ));
                continue;
            };
            match StateRule::parse(text) {
                Some(rule) => rules.push(rule),
                None => self.problem(format_args!("`state`: `{text}` {NOT_A_RULE}")),
            }
        }
        Some(rules)
    }

    fn pointer(&mut self, key: &str, default: &Pointer) -> Pointer {
        match self.string(key) {
            Some(s) => self.pointers(key, &[s]).remove(0),
            None => default.clone(),
        }
    }

    fn pointers(&mut self, key: &str, texts: &[String]) -> Vec<Pointer> {
        texts
            .iter()
            .map(|s| {
                Pointer::parse(s).unwrap_or_else(|e| {
                    self.problem(format_args!("`{key}`: {e}"));
                    // Placeholder only: a problem has been recorded.
                    Pointer::parse("/invalid").expect("a valid pointer")
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_exact_for_topic_patterns() {
        for (a, b, want) in [
            ("order.*", "order.created", true),
            ("order.*", "order.#", true),
            ("order.*", "payment.*", false),
            ("*.created", "ticket.*", true),
            ("ai.*.*.v1", "ai.#", true),
            ("ai.*.*.v1", "ai.*.v1", false),
            ("#", "a.b.c", true),
            ("a.#.z", "a.b.#", true),
            ("a.#.z", "b.#", false),
            ("render.job.#", "notification.#", false),
            ("a.*", "a", false),
            ("a.#", "a", true),
        ] {
            assert_eq!(patterns_overlap(a, b), want, "{a} vs {b}");
            assert_eq!(patterns_overlap(b, a), want, "{b} vs {a}");
        }
    }

    fn route(name: &str, key: &str, user: &str) -> Route {
        Route {
            name: name.to_owned(),
            binding: Binding {
                exchange: "x".to_owned(),
                key: key.to_owned(),
            },
            mapping: Mapping {
                users: vec![Pointer::parse(user).unwrap()],
                ..Mapping::default()
            },
            exclude_types: Vec::new(),
            state: None,
        }
    }

    #[test]
    fn disagreeing_routes_select_nothing() {
        let routes = Routes {
            list: vec![
                route("owner", "ticket.*", "/payload/ownerId"),
                route("any", "*.created", "/payload/userId"),
                route("same", "ticket.created", "/payload/ownerId"),
            ],
            overlaps: Vec::new(),
            default_route: false,
        };
        assert_eq!(Routes::find_overlaps(&routes.list).len(), 2);
        assert_eq!(
            routes.select("x", "ticket.closed"),
            Selected::Route(0, &routes.list[0])
        );
        assert_eq!(
            routes.select("x", "post.created"),
            Selected::Route(1, &routes.list[1])
        );
        assert_eq!(routes.select("x", "ticket.created"), Selected::Conflict);
        assert_eq!(routes.select("y", "ticket.closed"), Selected::None);
        assert_eq!(routes.select("x", "ticket.closed.dlq"), Selected::None);
    }
}
