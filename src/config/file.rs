//! The configuration file (`GATEWAY_CONFIG`, TOML): settings named like their flags, below
//! flags and variables, and the `[[route]]` tables that [`super::routes`] reads.

use std::collections::HashMap;

use super::settings::Key;

/// What a configuration file holds, read but not yet validated.
#[derive(Default)]
pub(super) struct ConfigFile {
    /// Settings by key, as text, the way a variable would give them.
    pub(super) settings: HashMap<Key, String>,
    /// The `[[route]]` tables, `None` when the file lists none.
    pub(super) routes: Option<Vec<toml::Table>>,
}

impl ConfigFile {
    /// Reads and parses `path`; every problem is pushed to `problems`, and what could be
    /// read is kept, so the rest of the file is still checked.
    pub(super) fn load(path: &str, problems: &mut Vec<String>) -> ConfigFile {
        let mut file = ConfigFile::default();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                problems.push(format!(
                    "{}: cannot read `{path}`: {e}",
                    Key::Config.label()
                ));
                return file;
            }
        };
        let table: toml::Table = match toml::from_str(&text) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{path}: not valid TOML{}", toml_problem(&text, &e)));
                return file;
            }
        };
        for (name, value) in table {
            if name == "route" {
                file.routes = Some(route_tables(path, value, problems));
                continue;
            }
            let Some(key) = Key::from_flag(&name).filter(|k| *k != Key::Config) else {
                problems.push(format!(
                    "{path}: unknown key `{name}` (settings are named like their flags, without `--`; routes are `[[route]]` tables)"
                ));
                continue;
            };
            match setting_text(&value) {
                Some(text) => {
                    file.settings.insert(key, text);
                }
                None => problems.push(format!(
                    "{path}: `{name}` must be a string, a number, a boolean or a list of strings"
                )),
            }
        }
        file
    }
}

/// Where and what a TOML error is, without the line it is on: the `Display` of the
/// error quotes that line, which may hold a secret (`jwt-secret`, `amqp-url`). The
/// parser's message names only what it expected.
fn toml_problem(text: &str, e: &toml::de::Error) -> String {
    let what = e.message().lines().next().unwrap_or("").trim();
    let Some(at) = e.span().map(|s| s.start.min(text.len())) else {
        return format!(": {what}");
    };
    let before = text.get(..at).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    format!(" at line {line}, column {column}: {what}")
}

fn route_tables(path: &str, value: toml::Value, problems: &mut Vec<String>) -> Vec<toml::Table> {
    let toml::Value::Array(items) = value else {
        problems.push(format!("{path}: `route` must be `[[route]]` tables"));
        return Vec::new();
    };
    let mut tables = Vec::new();
    for item in items {
        match item {
            toml::Value::Table(t) => tables.push(t),
            _ => problems.push(format!("{path}: `route` must be `[[route]]` tables")),
        }
    }
    tables
}

/// A setting's value as a variable would spell it; lists become comma-separated.
fn setting_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        _ => None,
    }
}
