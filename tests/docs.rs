//! The documentation's links: every page under `docs/` is one click from the README, and
//! every relative link of the README and the pages reaches a file that exists and, with an
//! anchor, a heading of that file.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    pages
}

/// The targets of the markdown links in `text` (`[label](target)`).
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].to_owned());
        }
    }
    out
}

/// The anchor GitHub gives a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.push(slug(line.trim_start_matches('#')));
        }
    }
    out
}

fn check(file: &Path, problems: &mut Vec<String>) {
    let text = std::fs::read_to_string(file).unwrap();
    let dir = file.parent().unwrap();
    for link in links(&text) {
        if link.contains("://") || link.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = link.split_once('#').unwrap_or((&link, ""));
        let target = if path.is_empty() {
            file.to_path_buf()
        } else {
            dir.join(path)
        };
        if !target.exists() {
            problems.push(format!("{}: {link}: no such file", file.display()));
            continue;
        }
        if !anchor.is_empty() {
            let target_text = std::fs::read_to_string(&target).unwrap_or_default();
            if !anchors(&target_text).iter().any(|a| a == anchor) {
                problems.push(format!("{}: {link}: no such heading", file.display()));
            }
        }
    }
}

#[test]
fn every_page_is_one_click_from_the_readme() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let linked = links(&readme);
    for page in pages() {
        let name = format!("docs/{}", page.file_name().unwrap().to_string_lossy());
        assert!(
            linked
                .iter()
                .any(|l| l.split('#').next() == Some(name.as_str())),
            "{name} is not linked from the README"
        );
    }
}

#[test]
fn every_relative_link_reaches_its_file_and_heading() {
    let mut problems = Vec::new();
    check(&root().join("README.md"), &mut problems);
    for page in pages() {
        check(&page, &mut problems);
    }
    for other in [
        "clients/js/README.md",
        "deploy/README.md",
        "loadtest/README.md",
    ] {
        check(&root().join(other), &mut problems);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn slugs_are_githubs() {
    assert_eq!(slug(" WebSocket: `GET /ws`"), "websocket-get-ws");
    assert_eq!(
        slug(" nginx: `max_fails=0`, and why"),
        "nginx-max_fails0-and-why"
    );
}
