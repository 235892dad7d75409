//! The module layering stays one-way: in `netplane/src` no module imports
//! from a layer above its own, and in neither crate do two modules import
//! each other, directly or round a circle. Read from the sources, so that
//! a change that breaks it fails here, not in a review.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// `netplane/src`'s layers, lowest first.
const LAYERS: [&str; 7] = ["types", "logic", "kernel", "daemon", "api", "cli", "cni"];

/// Every module of the crate whose sources are in `src`, by path
/// (`daemon::store`), with its source minus comments and test modules.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut name: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if name.last().is_some_and(|n| n == "mod") {
                name.pop();
            }
            let name = name.join("::");
            if name == "lib" || name == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            found.insert(name, without_comments_and_tests(&text));
        }
    }
    found
}

fn without_comments_and_tests(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules among `known` that `source` names through `crate::`, in a
/// `use crate::{...}` tree or a path.
fn imports(source: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = source;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let tree = if rest.starts_with('{') {
            let mut depth = 0;
            let end = rest
                .char_indices()
                .find(|(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(rest.len(), |(i, _)| i);
            &rest[1..end]
        } else {
            rest.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .next()
                .unwrap_or_default()
        };
        paths(tree, "", &mut |path| {
            // The longest module the path starts with.
            let parts: Vec<&str> = path.split("::").collect();
            if let Some(module) = (1..=parts.len())
                .rev()
                .map(|n| parts[..n].join("::"))
                .find(|m| known.contains(m))
            {
                found.insert(module);
            }
        });
    }
    found
}

/// Calls `each` with every path a use tree names.
fn paths(tree: &str, prefix: &str, each: &mut impl FnMut(&str)) {
    let mut depth = 0;
    let mut start = 0;
    let mut items = Vec::new();
    for (i, c) in tree.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&tree[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&tree[start..]);
    for item in items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
        match item.find("::{") {
            Some(at) if item.ends_with('}') => {
                let head = format!("{prefix}{}::", &item[..at]);
                paths(&item[at + 3..item.len() - 1], &head, each);
            }
            _ => each(&format!("{prefix}{}", item.split(" as ").next().unwrap())),
        }
    }
}

/// The import graph of the crate at `src`: module to the modules it uses.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(src);
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(name, source)| {
            let mut uses = imports(source, &known);
            // A module may use its own submodules and items.
            uses.retain(|u| !u.starts_with(name.as_str()));
            (name.clone(), uses)
        })
        .collect()
}

/// A circle of imports, if the graph has one.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            return Some(path[at..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn netplane_imports_only_downwards_and_in_no_circle() {
    let graph = graph(&root().join("netplane/src"));
    assert!(graph.contains_key("daemon::store") && graph.contains_key("logic::ipam"));
    let layer = |m: &str| {
        let top = m.split("::").next().unwrap();
        LAYERS.iter().position(|l| *l == top).unwrap()
    };
    let upward: Vec<String> = graph
        .iter()
        .flat_map(|(m, uses)| {
            uses.iter()
                .filter(|u| layer(u) > layer(m))
                .map(move |u| format!("{m} -> {u}"))
        })
        .collect();
    assert!(upward.is_empty(), "imports from a layer above: {upward:?}");
    assert_eq!(circle(&graph), None);
}

#[test]
fn the_ebpf_programs_import_in_no_circle() {
    let graph = graph(&root().join("netplane-ebpf/src"));
    assert!(graph["paths"].contains("conntrack"), "{graph:?}");
    assert_eq!(circle(&graph), None);
}

#[test]
fn the_checks_see_what_they_look_for() {
    let known: BTreeSet<String> = ["a", "b", "b::c"].map(String::from).into();
    let uses = imports(
        "use crate::{a::{X, y}, b::c::Z};\nfn f() { crate::b::g(); }",
        &known,
    );
    assert_eq!(uses, ["a", "b", "b::c"].map(String::from).into());
    let looped: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), ["b".to_string()].into()),
        ("b".to_string(), ["a".to_string()].into()),
    ]
    .into();
    assert_eq!(circle(&looped), Some(vec!["a".into(), "b".into()]));
}
