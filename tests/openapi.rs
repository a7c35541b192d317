//! `docs/openapi.yaml` and the broker agree: the broker serves the file unchanged at
//! `GET /openapi.yaml`, and its paths and methods are exactly the calls of the route table
//! (`ROUTES`). What the broker answers is checked against it by `tests/openapi/run.sh`
//! (schemathesis, in CI).

mod common;

use std::collections::BTreeSet;

use common::{header, Server};

const SPEC: &str = include_str!("../docs/openapi.yaml");

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The `(path, METHOD)` pairs of the spec's `paths:` section, read from its layout: a
/// path is a key indented by two spaces, a method a key indented by four below it.
fn spec_calls(spec: &str) -> BTreeSet<(String, String)> {
    let mut calls = BTreeSet::new();
    let mut in_paths = false;
    let mut path: Option<String> = None;
    for line in spec.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() {
            in_paths = line.trim_end() == "paths:";
            path = None;
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(key) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':')) {
            if !key.starts_with(' ') {
                assert!(
                    key.starts_with('/'),
                    "a key under paths: that is not a path: {key}"
                );
                path = Some(key.to_string());
                continue;
            }
        }
        if let Some(key) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')) {
            if METHODS.contains(&key) {
                let path = path.clone().expect("a method under a path");
                calls.insert((path, key.to_uppercase()));
            }
        }
    }
    calls
}

#[test]
fn the_spec_lists_exactly_the_routes() {
    let spec = spec_calls(SPEC);
    let routes: BTreeSet<(String, String)> = shardcast::net::api::routes()
        .map(|(p, m)| (p.to_string(), m.to_string()))
        .collect();
    assert!(routes.len() >= 13, "{routes:?}");
    let missing: Vec<_> = routes.difference(&spec).collect();
    let extra: Vec<_> = spec.difference(&routes).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/openapi.yaml and ROUTES differ:\n  in ROUTES, not in the spec: {missing:?}\n  in the spec, not in ROUTES: {extra:?}"
    );
    assert!(spec.contains(&("/openapi.yaml".to_string(), "GET".to_string())));
}

#[test]
fn the_broker_serves_the_spec_unchanged() {
    let server = Server::start(&[]);
    let r = server.response("GET", "/openapi.yaml", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let content_type = header(&r, "Content-Type").expect("a Content-Type");
    assert!(
        content_type.starts_with("application/yaml"),
        "{content_type}"
    );
    let file = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml"))
        .expect("docs/openapi.yaml");
    assert!(
        r.body() == file,
        "the served spec differs from docs/openapi.yaml"
    );
    // It is an API path: other methods get 405 with the methods it answers.
    let r = server.response("POST", "/openapi.yaml", None);
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(header(&r, "Allow").as_deref(), Some("GET"));
}
