//! Drift check between the English operator documents and their Chinese versions.
//!
//! Plain file reading (no broker): every configuration key and every HTTP endpoint that
//! `README.md` documents must also appear in `README.zh-CN.md`, and likewise for
//! `tuning/README.md` and `tuning/README.zh-CN.md`.
//!
//! - A *configuration key* is any key of `tuning/default.toml` or `tuning/cluster.toml`,
//!   top level or inside a table, commented-out example keys included (`# node = 0`), plus
//!   the table names themselves (`[cluster]`, `[domains]`).
//! - A key is *documented* in a Markdown file when an inline code span is exactly the key
//!   (`` `max_inbox` ``), assigns it (`` `shards = 0` ``), or names the table
//!   (`` `[domains.<name>]` ``), or when a ```` ```toml ```` block sets it.
//! - An *endpoint* is a path of `ROUTES` in `src/net/api/mod.rs` (the route table the
//!   router checks); it is *documented* when an inline code span holds it as a word that
//!   starts with `/` (`` `GET /message-log?domain=` `` documents `/message-log`, not
//!   `/message`).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// The configuration files that define which keys exist.
const CONFIG_SOURCES: [&str; 2] = ["tuning/default.toml", "tuning/cluster.toml"];

/// Keys (and `[table]` names) set by a TOML text, commented-out examples included.
fn toml_keys(text: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim_start().trim_start_matches('#').trim();
        if let Some(rest) = line.strip_prefix('[') {
            // A table header: `[cluster]`, `[domains.shop]` → `[cluster]`, `[domains]`.
            let Some(end) = rest.find(']') else { continue };
            let name = rest[..end].split('.').next().unwrap_or("").trim();
            let after = rest[end + 1..].trim();
            if is_key(name) && (after.is_empty() || after.starts_with('#')) {
                keys.insert(format!("[{name}]"));
            }
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            let key = key.trim();
            if is_key(key) && !value.trim().is_empty() {
                keys.insert(key.to_string());
            }
        }
    }
    keys
}

fn is_key(s: &str) -> bool {
    !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn config_keys() -> BTreeSet<String> {
    CONFIG_SOURCES
        .iter()
        .flat_map(|f| toml_keys(&read(f)))
        .collect()
}

/// The HTTP routes: the path of each `route(...)` line of `ROUTES` in
/// `src/net/api/mod.rs`.
fn routes() -> BTreeSet<String> {
    let src = read("src/net/api/mod.rs");
    let start = src
        .find("const ROUTES")
        .expect("src/net/api/mod.rs no longer declares ROUTES: update tests/docs.rs");
    let list = &src[start..];
    let close = list.find("];").expect("ROUTES: no '];'");
    let routes: BTreeSet<String> = list[..close]
        .split("route(")
        .skip(1)
        .filter_map(|entry| entry.split('"').nth(1))
        .map(str::to_string)
        .collect();
    assert!(
        routes.len() >= 12 && routes.iter().all(|r| r.starts_with('/')),
        "ROUTES parsed into something that is not its paths: {routes:?}"
    );
    routes
}

/// What a Markdown text shows as code: its inline code spans and the lines of its
/// ```` ```toml ```` blocks.
struct Code {
    spans: Vec<String>,
    toml: String,
}

fn code_of(markdown: &str) -> Code {
    let mut spans = Vec::new();
    let mut toml = String::new();
    let mut prose = String::new();
    let mut fence: Option<bool> = None; // Some(is_toml) inside a fenced block
    for line in markdown.lines() {
        let t = line.trim_start();
        if let Some(info) = t.strip_prefix("```") {
            fence = match fence {
                Some(_) => None,
                None => Some(info.trim().eq_ignore_ascii_case("toml")),
            };
            continue;
        }
        match fence {
            Some(true) => {
                toml.push_str(line);
                toml.push('\n');
            }
            Some(false) => {}
            None => {
                prose.push_str(line);
                prose.push('\n');
            }
        }
    }
    // Inline spans may wrap over a line break; a run of backticks opens a span that the
    // same run closes.
    let mut rest = prose.as_str();
    while let Some(open) = rest.find('`') {
        let after = &rest[open..];
        let ticks = after.len() - after.trim_start_matches('`').len();
        let fence = &after[..ticks];
        let inner = &after[ticks..];
        let Some(close) = inner.find(fence) else {
            break;
        };
        spans.push(inner[..close].trim().to_string());
        rest = &inner[close + ticks..];
    }
    Code { spans, toml }
}

fn documented_keys(code: &Code, keys: &BTreeSet<String>) -> BTreeSet<String> {
    let in_toml = toml_keys(&code.toml);
    keys.iter()
        .filter(|key| {
            in_toml.contains(*key) || code.spans.iter().any(|span| span_names_key(span, key))
        })
        .cloned()
        .collect()
}

fn span_names_key(span: &str, key: &str) -> bool {
    if let Some(table) = key.strip_prefix('[').and_then(|k| k.strip_suffix(']')) {
        return span
            .strip_prefix('[')
            .and_then(|s| s.strip_prefix(table))
            .is_some_and(|s| s.starts_with([']', '.']));
    }
    span == key
        || span
            .strip_prefix(key)
            .is_some_and(|s| s.trim_start().starts_with('='))
}

fn documented_endpoints(code: &Code, routes: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for span in &code.spans {
        for word in span.split_whitespace() {
            if !word.starts_with('/') {
                continue;
            }
            let path = word
                .split(['?', '#'])
                .next()
                .unwrap_or("")
                .trim_end_matches([',', ')', ';', '.', ':']);
            if routes.contains(path) {
                found.insert(path.to_string());
            }
        }
    }
    found
}

/// What `english` documents and `chinese` does not, as lines for a failure message.
fn drift(english: &str, chinese: &str) -> Vec<String> {
    let keys = config_keys();
    let routes = routes();
    let (en, zh) = (code_of(&read(english)), code_of(&read(chinese)));
    let mut missing = Vec::new();
    for key in documented_keys(&en, &keys).difference(&documented_keys(&zh, &keys)) {
        missing.push(format!(
            "config key `{key}`: documented in {english}, not in {chinese}"
        ));
    }
    let (en_routes, zh_routes) = (
        documented_endpoints(&en, &routes),
        documented_endpoints(&zh, &routes),
    );
    for route in en_routes.difference(&zh_routes) {
        missing.push(format!(
            "endpoint `{route}`: documented in {english}, not in {chinese}"
        ));
    }
    missing
}

#[test]
fn extraction_finds_the_known_keys_and_routes() {
    let keys = config_keys();
    assert!(
        keys.len() >= 40,
        "only {} config keys found: {keys:?}",
        keys.len()
    );
    for key in [
        "listen",
        "max_inbound_bytes_per_sec",
        "log_level",
        "secret",          // top level and in the commented `[domains.shop]` example
        "call_timeout_ms", // commented `[cluster]` example in default.toml
        "nats",
        "[cluster]",
        "[domains]",
    ] {
        assert!(
            keys.contains(key),
            "config key {key} not extracted: {keys:?}"
        );
    }
    let routes = routes();
    assert!(
        routes.len() >= 8,
        "only {} routes found: {routes:?}",
        routes.len()
    );
    for route in [
        "/auth/websocket",
        "/push",
        "/message",
        "/message-log",
        "/metrics",
    ] {
        assert!(
            routes.contains(route),
            "route {route} not extracted: {routes:?}"
        );
    }
    // README.md documents most of them, so the comparison below cannot pass vacuously.
    let readme = code_of(&read("README.md"));
    let documented = documented_keys(&readme, &keys);
    assert!(
        documented.len() >= 40,
        "README.md documents only {} keys: {documented:?}",
        documented.len()
    );
    let endpoints = documented_endpoints(&readme, &routes);
    assert!(
        endpoints.len() >= 9,
        "README.md documents only {} endpoints: {endpoints:?}",
        endpoints.len()
    );
    let tuning = code_of(&read("tuning/README.md"));
    assert!(documented_keys(&tuning, &keys).len() >= 10);
    assert!(documented_endpoints(&tuning, &routes).contains("/metrics"));
}

#[test]
fn extraction_rules() {
    let keys: BTreeSet<String> = ["shards", "secret", "node", "[cluster]", "[domains]"]
        .map(String::from)
        .into();
    let routes: BTreeSet<String> = ["/message", "/message-log", "/push"]
        .map(String::from)
        .into();
    let code = code_of(
        "Set `shards = 2` and `[domains.<name>]`, not shards or `secrets`.\n\
         `GET /message-log?domain=`, `POST\n/push`, /message\n\
         ```toml\n[cluster]\nnode = 1\n```\n```sh\nsecret = x\n```\n",
    );
    let found = documented_keys(&code, &keys);
    let want: BTreeSet<String> = ["shards", "node", "[cluster]", "[domains]"]
        .map(String::from)
        .into();
    assert_eq!(found, want);
    let want: BTreeSet<String> = ["/message-log", "/push"].map(String::from).into();
    assert_eq!(documented_endpoints(&code, &routes), want);
}

#[test]
fn readme_zh_cn_has_every_key_and_endpoint_of_readme() {
    let missing = drift("README.md", "README.zh-CN.md");
    assert!(
        missing.is_empty(),
        "README.zh-CN.md drifted:\n{}",
        missing.join("\n")
    );
}

#[test]
fn tuning_readme_zh_cn_has_every_key_and_endpoint_of_tuning_readme() {
    let missing = drift("tuning/README.md", "tuning/README.zh-CN.md");
    assert!(
        missing.is_empty(),
        "tuning/README.zh-CN.md drifted:\n{}",
        missing.join("\n")
    );
}

#[test]
fn english_and_chinese_documents_link_each_other() {
    for (english, chinese) in [
        ("README.md", "README.zh-CN.md"),
        ("tuning/README.md", "tuning/README.zh-CN.md"),
    ] {
        assert!(
            read(english).contains("](README.zh-CN.md)"),
            "{english} does not link README.zh-CN.md"
        );
        assert!(
            read(chinese).contains("](README.md)"),
            "{chinese} does not link README.md"
        );
    }
}
