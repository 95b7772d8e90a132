//! The architecture page (`docs/architecture.md`) against the code: every file under `src/`
//! is in its map, and every `crate::` path follows its layers (a module uses only modules of
//! a lower layer). A new file, or an import against the layers, fails here until the page
//! says where it belongs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const PAGE: &str = include_str!("../docs/architecture.md");

/// Macros exported at the crate root, by the module that defines them.
const MACROS: &[(&str, &str)] = &[("label_set", "telemetry")];

/// The rows of the page's table whose header starts with `first_column`.
fn table(first_column: &str) -> Vec<Vec<String>> {
    let mut lines = PAGE
        .lines()
        .skip_while(|l| !l.starts_with(&format!("| {first_column} |")));
    lines.next().expect("table header");
    lines
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_owned())
                .collect()
        })
        .collect()
}

fn layers() -> BTreeMap<String, u32> {
    table("layer")
        .into_iter()
        .map(|row| (row[1].clone(), row[0].parse().expect("a layer number")))
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// The top-level module a file under `src/` belongs to (`None`: the crate root).
fn module_of(file: &str) -> Option<String> {
    let rest = file.strip_prefix("src/")?;
    let first = rest.split('/').next()?.trim_end_matches(".rs");
    (!matches!(first, "lib" | "main")).then(|| first.to_owned())
}

/// The top-level modules named by the `crate::` paths in `code`, groups included
/// (`crate::{a::B, c}`).
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Items of a group: split at depth 0, first word of each.
            let end = matching_brace(group);
            out.extend(split_top(&group[..end]).into_iter().filter_map(first_word));
        } else if let Some(word) = first_word(rest) {
            out.push(word);
        }
    }
    out.into_iter()
        .map(|w| {
            MACROS
                .iter()
                .find(|(m, _)| *m == w)
                .map_or(w.clone(), |(_, module)| (*module).to_owned())
        })
        .collect()
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

fn split_top(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn first_word(s: &str) -> Option<String> {
    let word: String = s
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!word.is_empty()).then_some(word)
}

#[test]
fn every_file_under_src_is_in_the_map() {
    let mapped: Vec<String> = table("file")
        .into_iter()
        .map(|row| row[0].clone())
        .collect();
    let files: Vec<String> = sources().into_iter().map(|(name, _)| name).collect();
    let missing: Vec<&String> = files.iter().filter(|f| !mapped.contains(f)).collect();
    assert!(
        missing.is_empty(),
        "not in docs/architecture.md: {missing:?}"
    );
    let stale: Vec<&String> = mapped.iter().filter(|m| !files.contains(m)).collect();
    assert!(
        stale.is_empty(),
        "in docs/architecture.md, not in src/: {stale:?}"
    );
}

#[test]
fn every_module_has_a_layer() {
    let layers = layers();
    for (file, _) in sources() {
        if let Some(module) = module_of(&file) {
            assert!(
                layers.contains_key(&module),
                "{module} ({file}) has no layer"
            );
        }
    }
}

#[test]
fn imports_follow_the_layers() {
    let layers = layers();
    let mut wrong = Vec::new();
    for (file, code) in sources() {
        let Some(module) = module_of(&file) else {
            continue;
        };
        let own = layers[&module];
        for used in crate_paths(&code) {
            if used == module {
                continue;
            }
            match layers.get(&used) {
                Some(&layer) if layer < own => {}
                Some(&layer) => wrong.push(format!(
                    "{file}: {module} (layer {own}) uses {used} (layer {layer})"
                )),
                None => wrong.push(format!("{file}: uses crate::{used}, which has no layer")),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "against docs/architecture.md:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checks_see_grouped_and_macro_paths() {
    let paths = crate_paths(
        "use crate::{hub::{Hub, Outgoing}, config::Config};\nuse crate::envelope::Event;\ncrate::label_set! {}",
    );
    assert_eq!(paths, ["hub", "config", "envelope", "telemetry"]);
    // A module that imports a higher layer is reported.
    let layers = layers();
    assert!(layers["config"] < layers["hub"] && layers["hub"] < layers["server"]);
}
