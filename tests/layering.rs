//! The house keeps its layers: no import circle among `src/` modules.
//!
//! Every `.rs` file under `src/` (the binaries aside) is a module; a reference from one to
//! another is an edge: a `use` of `crate::`, `super::`, `self::` or a name brought in by
//! such a `use`, and any such path written inline. A module's use of its own direct child
//! is not an edge (a directory's `mod.rs` composes its parts, as `lib.rs` composes the
//! crate), while the child's use of its parent is; `lib.rs`'s `pub use` re-exports are
//! followed to the module that defines the item. Code
//! under `#[cfg(test)]` is left out: a unit test may use what it tests from anywhere.
//! The test fails on any cycle and names its modules and the lines that close it;
//! `cargo test --test layering -- --nocapture` prints the whole graph, one module a line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path under the crate root: `[]` is `lib.rs`, `["shard", "inbox"]` is
/// `src/shard/inbox.rs`.
type Module = Vec<String>;

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// Source with comments, string and char literals blanked and `#[cfg(test)]` items
/// removed, so that only code is scanned; line breaks are kept for line numbers.
fn code_of(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, c: u8| out.push(if c == b'\n' { b'\n' } else { b' ' });
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if c == b'r'
            && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        {
            // A raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == b'"'
                    && b[j + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&h| h == b'#')
                        .count()
                        == hashes
                {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            for &x in &b[i..j.min(b.len())] {
                blank(&mut out, x);
            }
            i = j;
        } else if c == b'"' {
            out.push(b' ');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                if i < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            out.push(b' ');
            i += 1;
        } else if c == b'\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if b.get(i + 1) == Some(&b'\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != b'\'' {
                    j += 1;
                }
                out.extend(std::iter::repeat(b' ').take(j + 1 - i));
                i = j + 1;
            } else if b.get(i + 2) == Some(&b'\'') {
                out.extend_from_slice(b"   ");
                i += 3;
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    strip_test_items(&text)
}

/// Blanks each `#[cfg(test)]` item: up to its `;` or through its matching `}`.
fn strip_test_items(text: &str) -> String {
    let mut b = text.as_bytes().to_vec();
    let mut from = 0;
    while let Some(at) = find(&b, b"#[cfg(test)]", from) {
        let mut i = at;
        let mut depth = 0;
        while i < b.len() {
            match b[i] {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        i += 1;
                        break;
                    }
                }
                b';' if depth == 0 => {
                    i += 1;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        for x in &mut b[at..i.min(text.len())] {
            if *x != b'\n' {
                *x = b' ';
            }
        }
        from = i;
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

fn ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Expands a use tree (`a::{b, c::{self, d}}`) into paths; `as` renames are kept as the
/// last element `name as alias` → (path, alias).
fn expand(tree: &str) -> Vec<(Vec<String>, String)> {
    fn go(prefix: &[String], s: &str, out: &mut Vec<(Vec<String>, String)>) {
        let s = s.trim();
        if s.is_empty() {
            return;
        }
        if let Some(open) = s.find('{') {
            let head: Vec<String> = s[..open]
                .split("::")
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect();
            let mut base = prefix.to_vec();
            base.extend(head);
            let inner = &s[open + 1..s.rfind('}').unwrap_or(s.len())];
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        go(&base, &inner[start..i], out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            go(&base, &inner[start..], out);
            return;
        }
        let (path, alias) = match s.split_once(" as ") {
            Some((p, a)) => (p.trim(), Some(a.trim())),
            None => (s, None),
        };
        let mut full = prefix.to_vec();
        for p in path.split("::").map(str::trim) {
            if p == "self" && !full.is_empty() {
                continue;
            }
            full.push(p.to_string());
        }
        let alias = alias
            .map(String::from)
            .or_else(|| full.last().cloned())
            .unwrap_or_default();
        out.push((full, alias));
    }
    let mut out = Vec::new();
    go(&[], tree, &mut out);
    out
}

struct File {
    module: Module,
    path: PathBuf,
    code: String,
}

fn files(root: &Path) -> Vec<File> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                if path.file_name() != Some("bin".as_ref()) {
                    stack.push(path);
                }
                continue;
            }
            if path.extension() != Some("rs".as_ref()) {
                continue;
            }
            let rel = path.strip_prefix(root).expect("under src/");
            let mut module: Module = rel
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                module.pop();
            }
            if module.as_slice() == ["main"] {
                continue;
            }
            let src = std::fs::read_to_string(&path).expect("a readable source file");
            out.push(File {
                module,
                path: path.clone(),
                code: code_of(&src),
            });
        }
    }
    out.sort_by(|a, b| a.module.cmp(&b.module));
    out
}

/// The graph: module → (module it references → first place, `file:line`).
type Graph = BTreeMap<Module, BTreeMap<Module, String>>;

fn graph(root: &Path) -> Graph {
    let files = files(root);
    let modules: BTreeSet<Module> = files.iter().map(|f| f.module.clone()).collect();
    // lib.rs's `pub use a::B;` lines: `crate::B` is `a`'s.
    let mut reexports: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(lib) = files.iter().find(|f| f.module.is_empty()) {
        for (path, alias) in uses(&lib.code)
            .into_iter()
            .filter(|u| u.1)
            .flat_map(|u| expand(&u.0))
        {
            reexports.insert(alias, path);
        }
    }
    let resolve =
        |from: &Module, path: &[String], local: &BTreeMap<String, Vec<String>>| -> Option<Module> {
            let first = path.first()?;
            let child = [from.clone(), vec![first.clone()]].concat();
            let abs = if matches!(first.as_str(), "crate" | "self" | "super")
                || modules.contains(&child)
            {
                absolute(from, path, &modules)
            } else {
                [local.get(first)?.clone(), path[1..].to_vec()].concat()
            };
            longest(&modules, &abs, &reexports)
        };
    let mut g = Graph::new();
    for f in &files {
        let edges = g.entry(f.module.clone()).or_default();
        // Names brought in by `use`: alias → absolute path.
        let mut local: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let no_local = BTreeMap::new();
        let mut paths: Vec<(Vec<String>, usize)> = Vec::new();
        for (tree, _, line, _) in uses_at(&f.code) {
            for (path, alias) in expand(&tree) {
                if !matches!(
                    path.first().map(String::as_str),
                    Some("crate" | "super" | "self")
                ) && !modules.contains(&[f.module.clone(), vec![path[0].clone()]].concat())
                {
                    continue;
                }
                let mut abs = absolute(&f.module, &path, &modules);
                if let Some(last) = abs.last() {
                    if last == "*" {
                        abs.pop();
                    }
                }
                local.insert(alias, abs);
                paths.push((path, line));
            }
        }
        // Inline paths: `crate::a::b`, `super::x`, `alias::y`, outside the `use` lines
        // read above.
        let mut rest = f.code.clone().into_bytes();
        for (_, _, _, span) in uses_at(&f.code) {
            for x in &mut rest[span] {
                if *x != b'\n' {
                    *x = b' ';
                }
            }
        }
        let b = &rest[..];
        let mut line = 1;
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\n' {
                line += 1;
            }
            if ident_char(b[i]) && (i == 0 || !(ident_char(b[i - 1]) || b[i - 1] == b':')) {
                let mut j = i;
                let mut segs = Vec::new();
                loop {
                    let s = j;
                    while j < b.len() && ident_char(b[j]) {
                        j += 1;
                    }
                    segs.push(String::from_utf8_lossy(&b[s..j]).into_owned());
                    if b.get(j) == Some(&b':')
                        && b.get(j + 1) == Some(&b':')
                        && b.get(j + 2).is_some_and(|&c| ident_char(c))
                    {
                        j += 2;
                    } else {
                        break;
                    }
                }
                if segs.len() > 1 {
                    paths.push((segs, line));
                }
                i = j;
                continue;
            }
            i += 1;
        }
        for (path, line) in paths {
            let Some(to) =
                resolve(&f.module, &path, &local).or_else(|| resolve(&f.module, &path, &no_local))
            else {
                continue;
            };
            // A directory's `mod.rs` composes its own parts (as lib.rs composes the
            // crate): its use of a direct child is not an edge.
            let own_part = to.len() == f.module.len() + 1 && to.starts_with(&f.module);
            if to != f.module && !own_part {
                edges
                    .entry(to)
                    .or_insert_with(|| format!("{}:{line}", f.path.display()));
            }
        }
    }
    g
}

fn absolute(from: &Module, path: &[String], modules: &BTreeSet<Module>) -> Vec<String> {
    match path[0].as_str() {
        "crate" => path[1..].to_vec(),
        "self" => [from.clone(), path[1..].to_vec()].concat(),
        "super" => {
            let mut m = from.clone();
            let mut rest = path;
            while rest.first().map(String::as_str) == Some("super") {
                m.pop();
                rest = &rest[1..];
            }
            [m, rest.to_vec()].concat()
        }
        _ => {
            let child = [from.clone(), vec![path[0].clone()]].concat();
            debug_assert!(modules.contains(&child));
            [from.clone(), path.to_vec()].concat()
        }
    }
}

/// The module that defines what `abs` names: its longest prefix that is a file, following
/// lib.rs's re-exports for names at the root.
fn longest(
    modules: &BTreeSet<Module>,
    abs: &[String],
    reexports: &BTreeMap<String, Vec<String>>,
) -> Option<Module> {
    if let Some(target) = abs.first().and_then(|first| reexports.get(first)) {
        let through = [target.clone(), abs[1..].to_vec()].concat();
        return longest(modules, &through, &BTreeMap::new());
    }
    (0..=abs.len())
        .rev()
        .map(|n| abs[..n].to_vec())
        .find(|m| modules.contains(m))
}

/// `use` statements: (tree, is a `pub use`).
fn uses(code: &str) -> Vec<(String, bool)> {
    uses_at(code)
        .into_iter()
        .map(|(t, p, _, _)| (t, p))
        .collect()
}

/// `use` statements: (tree, is a `pub use`, line, span of the statement).
fn uses_at(code: &str) -> Vec<(String, bool, usize, std::ops::Range<usize>)> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = find(b, b"use ", from) {
        from = at + 4;
        if at > 0 && ident_char(b[at - 1]) {
            continue;
        }
        let Some(end) = find(b, b";", at) else { break };
        let tree = code[at + 4..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let before = code[..at].trim_end();
        let public = before.ends_with("pub") || before.ends_with(')') && before.contains("pub(");
        let line = code[..at].matches('\n').count() + 1;
        out.push((tree, public, line, at..end + 1));
        from = end;
    }
    out
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<Module>> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on: BTreeSet<&'a Module>,
        out: Vec<Vec<Module>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a Module) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flat_map(|e| e.keys()) {
            let Some((w, _)) = t.g.get_key_value(w) else {
                continue;
            };
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.clone());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&root);
    for (m, edges) in &g {
        let to: Vec<String> = edges.keys().map(name).collect();
        println!("{} -> {}", name(m), to.join(", "));
    }
    let found = cycles(&g);
    let mut report = String::new();
    for scc in &found {
        report.push_str(&format!(
            "\ncircle of {}: {}\n",
            scc.len(),
            scc.iter().map(name).collect::<Vec<_>>().join(", ")
        ));
        for m in scc {
            for (to, at) in &g[m] {
                if scc.contains(to) {
                    report.push_str(&format!("  {} -> {} ({at})\n", name(m), name(to)));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "import circles among src/ modules:{report}"
    );
}

#[test]
fn the_scanner_sees_every_kind_of_reference() {
    let code = code_of(
        "use crate::a::{self, b::C as D};\nuse super::x;\nfn f() { crate::e::f(); a::g(); \"crate::s::t\"; }\n// crate::comment::c\n#[cfg(test)]\nmod tests { use crate::t::u; }\n",
    );
    assert!(!code.contains("crate::s"), "strings are blanked");
    assert!(!code.contains("comment"), "comments are blanked");
    assert!(!code.contains("crate::t"), "test modules are left out");
    let trees: Vec<String> = uses(&code).into_iter().map(|u| u.0).collect();
    assert_eq!(trees, ["crate::a::{self, b::C as D}", "super::x"]);
    let expanded = expand(&trees[0]);
    assert_eq!(
        expanded,
        [
            (vec!["crate".into(), "a".into()], "a".into()),
            (
                vec!["crate".into(), "a".into(), "b".into(), "C".into()],
                "D".into()
            ),
        ]
    );
}

/// Handlers (`net/`) and dialects (`dialect/`) reach other nodes only through the owner
/// path (`owner.rs`): they may name the wire forms of cross-node messages
/// (`cluster::wire`), never the cluster handle or the shard's field that holds it.
#[test]
fn handlers_reach_other_nodes_only_through_the_owner_path() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for f in files(&root) {
        if !matches!(
            f.module.first().map(String::as_str),
            Some("net" | "dialect")
        ) {
            continue;
        }
        for (i, line) in f.code.lines().enumerate() {
            let handle = line.match_indices("cluster").any(|(at, _)| {
                let before = &line[..at];
                let after = &line[at + "cluster".len()..];
                let field = before.ends_with('.')
                    && !after.starts_with(|c: char| c.is_alphanumeric() || c == '_');
                let path = after.starts_with("::") && !after.starts_with("::wire");
                let whole = !before.ends_with(|c: char| c.is_alphanumeric() || c == '_');
                whole && (field || path)
            });
            if handle {
                found.push(format!("{}:{}: {}", f.path.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "the cluster handle outside the owner path:\n{}",
        found.join("\n")
    );
}

/// A value made on another thread reaches a shard's task through `reply` (the segfault of
/// issue 20: glommio 0.9's wakers are not safe to wake or drop from another thread). A
/// oneshot is made only where both ends stay on one thread (the commit loop's waiters)
/// or its receiver is not a shard's task (the NATS bridge's tokio side), and in `reply`;
/// an `AtomicWaker` only in `reply` and the inbox, whose woken tasks are never joined.
#[test]
fn results_from_other_threads_come_back_through_reply() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let oneshot_ok = ["reply.rs", "store/commit.rs", "cluster/bridge.rs"];
    let waker_ok = ["reply.rs", "shard/inbox.rs"];
    let mut found = Vec::new();
    for f in files(&root) {
        let rel = f.path.strip_prefix(&root).unwrap_or(&f.path);
        let ok = |list: &[&str]| list.iter().any(|a| rel == Path::new(a));
        for (i, line) in f.code.lines().enumerate() {
            if (line.contains("oneshot") && !ok(&oneshot_ok))
                || (line.contains("AtomicWaker") && !ok(&waker_ok))
            {
                found.push(format!("{}:{}: {}", f.path.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "a cross-thread wake-up outside crate::reply:\n{}",
        found.join("\n")
    );
}

/// The house, bottom up: a module may import modules of its own layer and of the layers
/// below, never above (and, by the test above, never in a circle). A module's layer is
/// that of the longest entry its path starts with.
const LAYERS: [&[&str]; 11] = [
    // Foundations: errors, names, ids, JSON, the configuration, routing, counters, tasks.
    &[
        "error", "fault", "text", "ids", "json", "config", "route", "metrics", "task", "reply",
    ],
    // Bytes: frames and a connection's queue, the two messages, the transport.
    &["ws::frame", "ws::outbound", "message", "transport"],
    // What is kept and who may: the store, credentials, the HTTP head parser.
    &["store", "auth", "net::http"],
    // The transport between nodes.
    &["cluster"],
    // A shard's state and the inboxes between shards.
    &["shard"],
    // The owner path.
    &["owner"],
    // The dialects.
    &["dialect"],
    // Connections: upgrade, the connection task, remote sessions.
    &["ws"],
    // The network edge: accept, hand-off, the HTTP API.
    &["net"],
    // A shard thread's loops and other nodes' calls.
    &["serve"],
    // lib.rs, which starts it all.
    &[""],
];

fn layer_of(m: &Module) -> Option<usize> {
    let path = name(m);
    LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, entries)| entries.iter().map(move |e| (i, *e)))
        .filter(|(_, e)| {
            let e = if e.is_empty() { "crate" } else { e };
            path == e || path.starts_with(&format!("{e}::"))
        })
        .max_by_key(|(_, e)| e.len())
        .map(|(i, _)| i)
}

#[test]
fn no_module_imports_one_of_a_layer_above() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&root);
    let mut wrong = Vec::new();
    for (m, edges) in &g {
        let Some(from) = layer_of(m) else {
            wrong.push(format!("{} is in no layer: add it to LAYERS", name(m)));
            continue;
        };
        for (to, at) in edges {
            match layer_of(to) {
                Some(l) if l <= from => {}
                _ => wrong.push(format!("{} -> {} goes up ({at})", name(m), name(to))),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}
