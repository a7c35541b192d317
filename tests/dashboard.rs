//! The Grafana dashboard (`tuning/grafana/shardcast.json`) queries only what the broker
//! exposes: every metric name in its PromQL (panel `expr`s and the template variables'
//! queries) is a series of a live node's `GET /metrics`, with a name its `# TYPE` allows
//! (a histogram only as `_bucket`, `_sum`, `_count`; a counter or gauge only by its own
//! name), and every label its selectors match on is one that metric carries. The node is
//! one of a two-node cluster on a real `nats-server`, so the per-peer
//! `shardcast_cluster_*{node}` series are there too.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{cluster_node, metric_sum, Nats, Server};
use serde_json::Value;

/// Labels that Prometheus adds to every scraped series; the broker never writes them.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// PromQL words that are not metrics: aggregations (which may be followed by `by (…)`
/// before their parenthesis), grouping modifiers, operators.
const KEYWORDS: [&str; 23] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
];

/// A metric selector found in an expression: its name and the label names it matches on.
#[derive(Debug)]
struct Selector {
    name: String,
    labels: Vec<String>,
}

/// The metric selectors of one PromQL expression. Skips strings, durations in `[…]`,
/// numbers, function and aggregation names (a word followed by `(`), the label lists of
/// `by (…)`/`without (…)`/`on (…)`/`ignoring (…)`, and keywords; what is left is a
/// metric name, with the label names of the `{…}` that follows it.
fn selectors(expr: &str) -> Vec<Selector> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == b'[' {
            while i < b.len() && b[i] != b']' {
                i += 1;
            }
            i += 1;
        } else if c == b'{' {
            // A selector without a name (`{__name__=…}`) is not used by the dashboard.
            panic!("a label matcher without a metric name in {expr:?}");
        } else if c.is_ascii_digit() || c == b'.' {
            while i < b.len() && (word(b[i]) || b[i] == b'.') {
                i += 1;
            }
        } else if c == b'$' {
            // A Grafana variable ($__rate_interval outside brackets would be a mistake).
            i += 1;
            while i < b.len() && word(b[i]) {
                i += 1;
            }
        } else if word(c) {
            let start = i;
            while i < b.len() && word(b[i]) {
                i += 1;
            }
            let name = &expr[start..i];
            let mut j = i;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            let next = b.get(j).copied();
            if ["by", "without", "on", "ignoring"].contains(&name) && next == Some(b'(') {
                // A list of label names, not metrics.
                while i < b.len() && b[i] != b')' {
                    i += 1;
                }
                i += 1;
            } else if next == Some(b'(') || KEYWORDS.contains(&name) {
                // A function, an aggregation, or a keyword.
            } else if next == Some(b'{') {
                let close = closing_brace(expr, j);
                let labels = label_names(&expr[j + 1..close]);
                out.push(Selector {
                    name: name.to_string(),
                    labels,
                });
                i = close + 1;
            } else {
                out.push(Selector {
                    name: name.to_string(),
                    labels: Vec::new(),
                });
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The index of the `}` closing the `{` at `open`, skipping quoted values.
fn closing_brace(text: &str, open: usize) -> usize {
    let b = text.as_bytes();
    let mut k = open + 1;
    let mut quoted = false;
    while k < b.len() {
        match b[k] {
            b'\\' if quoted => k += 1,
            b'"' => quoted = !quoted,
            b'}' if !quoted => return k,
            _ => {}
        }
        k += 1;
    }
    panic!("unclosed {{ in {text:?}");
}

/// The label names of a matcher list such as `code="1013",instance=~"$instance"`.
fn label_names(matchers: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = matchers;
    while let Some(op) = rest.find(['=', '!']) {
        let name = rest[..op].trim().trim_start_matches(',').trim();
        names.push(name.to_string());
        // Skip the operator and the quoted value.
        let open = rest[op..].find('"').expect("quoted label value") + op;
        let mut k = open + 1;
        let v = rest.as_bytes();
        while k < v.len() && v[k] != b'"' {
            k += if v[k] == b'\\' { 2 } else { 1 };
        }
        rest = &rest[(k + 1).min(rest.len())..];
    }
    names
}

/// `label_values(metric, label)` and `label_values(label)` of a template variable: the
/// metric as a selector (its label must exist on it).
fn variable_selectors(query: &str) -> Vec<Selector> {
    let q = query.trim();
    if let Some(args) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let mut parts = args.rsplitn(2, ',');
        let label = parts.next().expect("label").trim().to_string();
        return match parts.next() {
            Some(metric) => {
                let mut s = selectors(metric);
                assert_eq!(s.len(), 1, "one metric in {query:?}");
                if !TARGET_LABELS.contains(&label.as_str()) {
                    s[0].labels.push(label);
                }
                s
            }
            None => Vec::new(),
        };
    }
    selectors(q)
}

/// Every PromQL string of the dashboard: each `expr`, and each query variable's query.
fn queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    ("templating", t) => {
                        for var in t["list"].as_array().expect("templating.list") {
                            if var["type"] != "query" {
                                continue;
                            }
                            let q = var["query"]
                                .get("query")
                                .or(Some(&var["query"]))
                                .and_then(Value::as_str)
                                .expect("a query variable's query");
                            out.push(format!("label_values:{q}"));
                        }
                    }
                    _ => queries(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| queries(x, out)),
        _ => {}
    }
}

/// What one scrape says: `# TYPE` of each family, and each series name with its labels.
struct Scrape {
    types: BTreeMap<String, String>,
    series: BTreeMap<String, BTreeSet<String>>,
}

fn parse_scrape(text: &str) -> Scrape {
    let mut types = BTreeMap::new();
    let mut series: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let mut w = t.split_whitespace();
            let (name, kind) = (w.next().expect("name"), w.next().expect("kind"));
            types.insert(name.to_string(), kind.to_string());
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).expect("a sample line");
            let labels = series.entry(line[..end].to_string()).or_default();
            if line.as_bytes()[end] == b'{' {
                let close = closing_brace(line, end);
                labels.extend(label_names(&line[end + 1..close]));
            }
        }
    }
    Scrape { types, series }
}

/// Why `name` may not be queried, or `None` when it is a series the `# TYPE` lines allow.
fn problem(scrape: &Scrape, s: &Selector) -> Option<String> {
    let name = s.name.as_str();
    let family = match scrape.types.get(name).map(String::as_str) {
        Some("histogram") => {
            return Some(format!(
                "{name} is a histogram: query {name}_bucket, _sum or _count"
            ))
        }
        Some(_) => name,
        None => {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| scrape.types.get(*base).map(String::as_str) == Some("histogram"));
            match base {
                Some(b) => b,
                None => return Some(format!("{name} is not in /metrics")),
            }
        }
    };
    let Some(labels) = scrape.series.get(name) else {
        return Some(format!(
            "{name} (family {family}) is declared but has no series in /metrics"
        ));
    };
    s.labels
        .iter()
        .filter(|l| !TARGET_LABELS.contains(&l.as_str()) && *l != "__name__")
        .find(|l| !labels.contains(*l))
        .map(|l| format!("{name} has no label {l:?} (it has {labels:?})"))
}

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/grafana/shardcast.json");
    let text = std::fs::read_to_string(&path).expect("tuning/grafana/shardcast.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every problem of the dashboard `dash` against the scrape `text`.
fn problems(dash: &Value, text: &str) -> Vec<String> {
    let scrape = parse_scrape(text);
    let mut exprs = Vec::new();
    queries(dash, &mut exprs);
    let mut found = Vec::new();
    let mut names = BTreeSet::new();
    for e in &exprs {
        let sels = match e.strip_prefix("label_values:") {
            Some(q) => variable_selectors(q),
            None => selectors(e),
        };
        assert!(!sels.is_empty(), "no metric found in {e:?}");
        for s in sels {
            names.insert(s.name.clone());
            if let Some(p) = problem(&scrape, &s) {
                found.push(format!("{p} (in {e:?})"));
            }
        }
    }
    assert!(
        names.len() >= 20,
        "only {} metrics found: {names:?}",
        names.len()
    );
    found
}

#[test]
fn every_metric_the_dashboard_queries_is_in_metrics() {
    let dash = dashboard();
    assert_eq!(dash["templating"]["list"][0]["type"], "datasource");
    assert_eq!(dash["templating"]["list"][0]["query"], "prometheus");
    let nats = Nats::start();
    let nodes: Vec<_> = (0..2).map(|i| cluster_node(&nats, i, 2)).collect();
    let text = nodes[0].metrics();
    let found = problems(&dash, &text);
    assert!(
        found.is_empty(),
        "the dashboard queries what /metrics does not have:\n{}",
        found.join("\n")
    );

    // The check itself: a bogus metric, a histogram's bare name, a counter with a
    // histogram suffix and a label the metric lacks are each caught.
    for (bogus, why) in [
        ("rate(shardcast_bogus_total[5m])", "not in /metrics"),
        ("rate(shardcast_store_write_seconds[5m])", "is a histogram"),
        ("rate(shardcast_pushes_total_count[5m])", "not in /metrics"),
        ("rate(shardcast_pushes_total{reason=\"x\"}[5m])", "no label"),
        (
            "sum by (le) (rate(shardcast_cluster_call_secs_bucket[5m]))",
            "not in /metrics",
        ),
    ] {
        let mut d = dash.clone();
        d["panels"][1]["targets"][0]["expr"] = Value::String(bogus.into());
        let p = problems(&d, &text);
        assert!(
            p.len() == 1 && p[0].contains(why),
            "{bogus}: expected one problem saying {why:?}, got {p:?}"
        );
    }
}

/// The group-size panel divides these two: each acknowledged push is one write released
/// by a group commit, and a commit releases at least one.
#[test]
fn group_commits_and_the_writes_they_acknowledge_are_counted() {
    let server = Server::start(&[("durability", "\"group\"")]);
    for i in 0..5 {
        server.push(&["alice", "bob"], "t", &format!("c{i}"));
    }
    let text = server.metrics();
    let commits = metric_sum(&text, "group_commits_total", "");
    let writes = metric_sum(&text, "group_commit_writes_total", "");
    // Each push is one durable write per owner shard of its recipients (1 or 2 here).
    assert!((5..=10).contains(&writes), "writes {writes}\n{text}");
    assert!(
        commits >= 1 && commits <= writes,
        "commits {commits}, writes {writes}"
    );

    let server = Server::start(&[("durability", "\"async\"")]);
    server.push(&["alice"], "t", "c");
    let text = server.metrics();
    assert_eq!(metric_sum(&text, "group_commits_total", ""), 0, "{text}");
}

#[test]
fn selectors_are_parsed_out_of_promql() {
    let names = |e: &str| -> Vec<(String, Vec<String>)> {
        selectors(e)
            .into_iter()
            .map(|s| (s.name, s.labels))
            .collect()
    };
    assert_eq!(
        names(
            "histogram_quantile(0.99, sum by (node, le) (rate(a_bucket{x=\"a,b}\", y!~\"$v\"}[$__rate_interval])))"
        ),
        vec![("a_bucket".into(), vec!["x".into(), "y".into()])]
    );
    assert_eq!(
        names("sum(rate(a_total[5m])) / on (shard) group_left sum without (code) (b)"),
        vec![("a_total".into(), vec![]), ("b".into(), vec![])]
    );
    assert_eq!(names("1e3 * c offset 5m"), vec![("c".into(), vec![])]);
}
