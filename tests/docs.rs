//! Drift check between the operator documents, the code, and their Chinese versions.
//!
//! Plain file reading (no broker):
//!
//! - the documents together name every configuration key, `docs/protocol.md` names every
//!   HTTP route and every error and close code (with each error's HTTP status), and
//!   `README.md`'s API table names the routes a newcomer calls;
//! - every configuration key, HTTP endpoint and error code that an English document names
//!   is also named by its Chinese version (`README.md` and `README.zh-CN.md`,
//!   `tuning/README.md` and `tuning/README.zh-CN.md`, `docs/<name>.md` and
//!   `docs/<name>.zh-CN.md`), and each links the other;
//! - no document links outside the repository, and every relative link resolves.
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
//! - An *error code* is a number that `Error::code()` in `src/error.rs` returns, or a
//!   constant of its `close` module; it is *documented* when it stands as a word in the
//!   document's text.

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

/// The English operator documents, each beside its Chinese version.
const PAIRS: [(&str, &str); 11] = [
    ("README.md", "README.zh-CN.md"),
    ("tuning/README.md", "tuning/README.zh-CN.md"),
    ("docs/protocol.md", "docs/protocol.zh-CN.md"),
    ("docs/configuration.md", "docs/configuration.zh-CN.md"),
    ("docs/operations.md", "docs/operations.zh-CN.md"),
    ("docs/durability.md", "docs/durability.zh-CN.md"),
    ("docs/tls.md", "docs/tls.zh-CN.md"),
    ("docs/cluster.md", "docs/cluster.zh-CN.md"),
    ("docs/benchmarks.md", "docs/benchmarks.zh-CN.md"),
    ("docs/testing.md", "docs/testing.zh-CN.md"),
    ("docs/architecture.md", "docs/architecture.zh-CN.md"),
];

/// Files that documents link to and that another change adds: none now (issue 24's
/// OpenAPI description, dashboard and example are in).
const ADDED_ELSEWHERE: [&str; 0] = [];

/// The body of the first `fn <name>` or `mod <name>` item of `src`: from its opening
/// brace to the matching closing one.
fn item_body<'a>(src: &'a str, head: &str) -> &'a str {
    let start = src
        .find(head)
        .unwrap_or_else(|| panic!("src/error.rs no longer has `{head}`: update tests/docs.rs"));
    let open = start + src[start..].find('{').expect("item without a body");
    let mut depth = 0usize;
    for (i, c) in src[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &src[open..open + i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced braces after `{head}`")
}

/// For each variant name of `Error`, what one `match self` of `src/error.rs` maps it to
/// (the number at the end of its arm).
fn arms(body: &str) -> Vec<(Vec<String>, u16)> {
    let mut out = Vec::new();
    // Split at `=>`: each piece ends with an arm's patterns and the next starts with its
    // value (`1001,` or `{ 400 }`).
    for arm in body.split("=>").collect::<Vec<_>>().windows(2) {
        let variants: Vec<String> = arm[0]
            .split("Error::")
            .skip(1)
            .map(|v| {
                v.chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .collect::<String>()
            })
            .collect();
        let value: String = arm[1]
            .trim_start_matches(|c: char| c == '{' || c.is_whitespace())
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(value) = value.parse() {
            out.push((variants, value));
        }
    }
    out
}

/// The protocol's error codes, each with the HTTP statuses it is answered with, and the
/// WebSocket close codes, as `src/error.rs` defines them.
fn error_codes() -> (Vec<(u16, BTreeSet<u16>)>, BTreeSet<u16>) {
    let src = read("src/error.rs");
    let codes = arms(item_body(&src, "pub fn code("));
    let statuses = arms(item_body(&src, "pub fn http_status("));
    let mut table: Vec<(u16, BTreeSet<u16>)> = Vec::new();
    for (variants, code) in &codes {
        for variant in variants {
            let status = statuses
                .iter()
                .find(|(vs, _)| vs.contains(variant))
                .map(|(_, s)| *s)
                .unwrap_or_else(|| panic!("Error::{variant} has a code but no HTTP status"));
            match table.iter_mut().find(|(c, _)| c == code) {
                Some((_, set)) => {
                    set.insert(status);
                }
                None => table.push((*code, BTreeSet::from([status]))),
            }
        }
    }
    let close: BTreeSet<u16> = item_body(&src, "pub mod close")
        .lines()
        .filter_map(|l| l.split('=').nth(1))
        .filter_map(|v| v.trim().trim_end_matches(';').parse().ok())
        .collect();
    assert!(
        table.len() >= 16 && close.len() >= 8 && table.iter().any(|(c, _)| *c == 1010),
        "src/error.rs parsed into something that is not its codes: {table:?} {close:?}"
    );
    (table, close)
}

/// The whole words of a text that are numbers.
fn numbers(text: &str) -> BTreeSet<u16> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .filter_map(|w| w.parse().ok())
        .collect()
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
    let (errors, close) = error_codes();
    let all: BTreeSet<u16> = errors.iter().map(|(c, _)| *c).chain(close).collect();
    let (en_numbers, zh_numbers) = (numbers(&read(english)), numbers(&read(chinese)));
    for code in all.intersection(&en_numbers) {
        if !zh_numbers.contains(code) {
            missing.push(format!("code {code}: named in {english}, not in {chinese}"));
        }
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
    // The documents name most of them, so the comparisons below cannot pass vacuously.
    let configuration = code_of(&read("docs/configuration.md"));
    let documented = documented_keys(&configuration, &keys);
    assert!(
        documented.len() >= 40,
        "docs/configuration.md documents only {} keys: {documented:?}",
        documented.len()
    );
    let readme = code_of(&read("README.md"));
    let endpoints = documented_endpoints(&readme, &routes);
    assert!(
        endpoints.len() >= 9,
        "README.md's API table documents only {} endpoints: {endpoints:?}",
        endpoints.len()
    );
    let tuning = code_of(&read("tuning/README.md"));
    assert!(documented_keys(&tuning, &keys).len() >= 10);
    assert!(documented_endpoints(&tuning, &routes).contains("/metrics"));
    let (errors, close) = error_codes();
    for (code, status) in [(1001, 411), (1009, 429), (1009, 503), (2001, 400)] {
        assert!(
            errors
                .iter()
                .any(|(c, s)| *c == code && s.contains(&status)),
            "error {code} / HTTP {status} not extracted: {errors:?}"
        );
    }
    assert!(close.contains(&1013) && close.contains(&4000), "{close:?}");
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
fn every_config_key_is_documented() {
    let keys = config_keys();
    let mut documented = BTreeSet::new();
    for (english, _) in PAIRS {
        documented.extend(documented_keys(&code_of(&read(english)), &keys));
    }
    let missing: Vec<_> = keys.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "config keys no English document names (docs/configuration.md is their place): {missing:?}"
    );
}

#[test]
fn protocol_documents_every_route_and_code() {
    let text = read("docs/protocol.md");
    let code = code_of(&text);
    let routes = routes();
    let documented = documented_endpoints(&code, &routes);
    let missing: Vec<_> = routes.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes of src/net/api/mod.rs that docs/protocol.md does not name: {missing:?}"
    );
    let (errors, close) = error_codes();
    let words = numbers(&text);
    let mut wrong = Vec::new();
    for code in errors.iter().map(|(c, _)| *c).chain(close) {
        if !words.contains(&code) {
            wrong.push(format!("code {code} is not named"));
        }
    }
    // The HTTP error table: a row `| code | statuses | … |` for each code below 2000 that
    // names every status src/error.rs answers it with.
    for (code, statuses) in errors.iter().filter(|(c, _)| *c < 2000) {
        let row = text.lines().find_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells.len() > 3 && cells[1] == code.to_string()).then(|| numbers(cells[2]))
        });
        match row {
            None => wrong.push(format!("no table row for error {code}")),
            Some(row) if !statuses.is_subset(&row) => wrong.push(format!(
                "error {code}: the table says HTTP {row:?}, src/error.rs answers {statuses:?}"
            )),
            Some(_) => {}
        }
    }
    assert!(wrong.is_empty(), "docs/protocol.md:\n{}", wrong.join("\n"));
}

#[test]
fn every_chinese_document_has_the_keys_endpoints_and_codes_of_its_english_one() {
    let mut missing = Vec::new();
    for (english, chinese) in PAIRS {
        missing.extend(drift(english, chinese));
    }
    assert!(
        missing.is_empty(),
        "Chinese documents drifted:\n{}",
        missing.join("\n")
    );
}

#[test]
fn english_and_chinese_documents_link_each_other() {
    let name = |p: &str| {
        Path::new(p)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    for (english, chinese) in PAIRS {
        assert!(
            read(english).contains(&format!("]({})", name(chinese))),
            "{english} does not link {chinese}"
        );
        assert!(
            read(chinese).contains(&format!("]({})", name(english))),
            "{chinese} does not link {english}"
        );
    }
}

/// The relative link targets of a Markdown text (`[text](target)`, `src="target"`),
/// without their `#anchor`.
fn relative_links(markdown: &str) -> Vec<String> {
    let mut links = Vec::new();
    for (open, close) in [("](", ')'), ("src=\"", '"')] {
        for piece in markdown.split(open).skip(1) {
            let Some(end) = piece.find(close) else {
                continue;
            };
            let target = piece[..end].split('#').next().unwrap_or("");
            if !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:") {
                links.push(target.to_string());
            }
        }
    }
    links
}

/// `target` as seen from the repository directory `dir`, resolved lexically; `None` when
/// it leaves the repository.
fn resolve(dir: &Path, target: &str) -> Option<String> {
    let mut parts: Vec<String> = dir
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p.to_string()),
        }
    }
    Some(parts.join("/"))
}

#[test]
fn documents_link_only_inside_the_repository_and_every_link_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut wrong = Vec::new();
    for doc in PAIRS.iter().flat_map(|(en, zh)| [*en, *zh]) {
        let text = read(doc);
        for stale in ["shared/spec", "PROTOCOL.md", "DESIGN.md"] {
            if text.contains(stale) {
                wrong.push(format!(
                    "{doc} names {stale}: link docs/protocol.md or docs/architecture.md"
                ));
            }
        }
        let dir = Path::new(doc).parent().unwrap_or(Path::new(""));
        for target in relative_links(&text) {
            match resolve(dir, &target) {
                None => wrong.push(format!("{doc}: link to {target}, outside the repository")),
                Some(path) if ADDED_ELSEWHERE.contains(&path.as_str()) => {}
                Some(path) if !root.join(&path).exists() => {
                    wrong.push(format!("{doc}: link to {target}, which does not exist"))
                }
                Some(_) => {}
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
