//! The dependency rules of docs/ARCHITECTURE.md, checked: every top-level module of `src/` is
//! in the layer table there, imports only modules of its own layer or lower ones, and no two
//! top-level modules depend on each other, directly or through others. The table is read from
//! the document itself, so the rules and the check cannot drift apart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Module name → layer number, from the table between the `layers` markers.
fn layers() -> BTreeMap<String, usize> {
    let path = Path::new(ROOT).join("docs/ARCHITECTURE.md");
    let text = std::fs::read_to_string(&path).expect("docs/ARCHITECTURE.md");
    let start = text
        .find("<!-- layers:")
        .expect("docs/ARCHITECTURE.md has no `<!-- layers:` marker");
    let end = text
        .find("<!-- end layers -->")
        .expect("docs/ARCHITECTURE.md has no `<!-- end layers -->` marker");
    let mut layers = BTreeMap::new();
    for line in text[start..end].lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(Ok(layer)) = cells
            .get(1)
            .and_then(|c| c.split(' ').next())
            .map(str::parse)
        else {
            continue; // the header and the separator
        };
        for module in cells[2].split(',').map(str::trim).filter(|m| !m.is_empty()) {
            let before = layers.insert(module.to_owned(), layer);
            assert!(before.is_none(), "{module} is in two layers");
        }
    }
    assert!(
        layers.len() > 10,
        "the layer table was not read: {layers:?}"
    );
    layers
}

/// The top-level modules of `src/` with their files.
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let src = Path::new(ROOT).join("src");
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        let files = if path.is_dir() {
            rust_files(&path)
        } else if path.extension().is_some_and(|e| e == "rs") {
            vec![path]
        } else {
            continue;
        };
        modules.insert(name, files);
    }
    modules
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The source without comments and without `#[cfg(test)]` items (test code may reach
/// anywhere).
fn product_code(text: &str) -> String {
    let without_comments: String = text
        .lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = String::new();
    let mut rest = without_comments.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let brace = item.find('{');
        let semicolon = item.find(';');
        match (brace, semicolon) {
            (_, Some(semi)) if brace.is_none_or(|b| semi < b) => rest = &item[semi + 1..],
            (Some(open), _) => {
                let mut depth = 0i64;
                let mut end = item.len();
                for (i, c) in item[open..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = open + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &item[end..];
            }
            _ => rest = "",
        }
    }
    out.push_str(rest);
    out
}

/// Which top-level modules `code` names through `crate::`.
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for item in inner.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

fn dependencies() -> BTreeMap<String, BTreeMap<String, String>> {
    let mut graph = BTreeMap::new();
    for (module, files) in modules() {
        let mut edges: BTreeMap<String, String> = BTreeMap::new();
        for file in files {
            let code = product_code(&std::fs::read_to_string(&file).unwrap());
            for target in imports(&code) {
                if target != module {
                    let rel = file
                        .strip_prefix(ROOT)
                        .unwrap_or(&file)
                        .display()
                        .to_string();
                    edges.entry(target).or_insert(rel);
                }
            }
        }
        graph.insert(module, edges);
    }
    graph
}

#[test]
fn every_module_has_a_layer_and_imports_only_downwards() {
    let layers = layers();
    let graph = dependencies();
    let mut problems = Vec::new();
    for module in graph.keys() {
        if !layers.contains_key(module) {
            problems.push(format!(
                "src/{module} is not in the layer table of docs/ARCHITECTURE.md"
            ));
        }
    }
    for listed in layers.keys() {
        if !graph.contains_key(listed) {
            problems.push(format!(
                "docs/ARCHITECTURE.md lists {listed}, which is not a module of src/"
            ));
        }
    }
    for (module, edges) in &graph {
        let Some(&own) = layers.get(module) else {
            continue;
        };
        for (target, file) in edges {
            let Some(&theirs) = layers.get(target) else {
                continue;
            };
            if theirs > own {
                problems.push(format!(
                    "{file}: {module} (layer {own}) imports {target} (layer {theirs}), a higher layer"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn no_two_top_level_modules_depend_on_each_other() {
    let graph = dependencies();
    // Depth-first search for a path back to where it started.
    fn find_cycle(
        graph: &BTreeMap<String, BTreeMap<String, String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        let current = path.last()?.clone();
        for next in graph.get(&current).into_iter().flat_map(|e| e.keys()) {
            if let Some(start) = path.iter().position(|m| m == next) {
                let mut cycle = path[start..].to_vec();
                cycle.push(next.clone());
                return Some(cycle);
            }
            if done.contains(next) || !graph.contains_key(next) {
                continue;
            }
            path.push(next.clone());
            if let Some(cycle) = find_cycle(graph, path, done) {
                return Some(cycle);
            }
            path.pop();
        }
        done.insert(current);
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(cycle) = find_cycle(&graph, &mut vec![module.clone()], &mut done) {
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|pair| format!("{} -> {} ({})", pair[0], pair[1], graph[&pair[0]][&pair[1]]))
                .collect();
            panic!("import cycle:\n{}", steps.join("\n"));
        }
    }
}

#[test]
fn the_scan_sees_imports_and_skips_comments_and_test_code() {
    let code = product_code(
        "use crate::{check, daemon};\n\
         // crate::commented\n\
         fn f() { crate::model::profile::Field::Email; }\n\
         #[cfg(test)]\nmod tests { fn g() { crate::run::x(); let s = \"{}\"; } }\n\
         #[cfg(test)]\nuse crate::state;\n\
         fn h() { crate::sources::legacy::connect(); }",
    );
    let found = imports(&code);
    let expected: BTreeSet<String> = ["check", "daemon", "model", "sources"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(found, expected);
}

#[test]
fn every_relative_link_in_the_documents_resolves() {
    let mut documents: Vec<PathBuf> = [
        "README.md",
        "SIMULATOR.md",
        "deploy/README.md",
        "fuzz/README.md",
    ]
    .iter()
    .map(|p| Path::new(ROOT).join(p))
    .filter(|p| p.exists())
    .collect();
    for entry in std::fs::read_dir(Path::new(ROOT).join("docs")).unwrap() {
        documents.push(entry.unwrap().path());
    }
    let mut broken = Vec::new();
    for document in &documents {
        let text = std::fs::read_to_string(document).unwrap();
        for (at, _) in text.match_indices("](") {
            let target = &text[at + 2..];
            let Some(end) = target.find(')') else {
                continue;
            };
            let target = target[..end].split('#').next().unwrap_or_default();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let resolved = document.parent().unwrap().join(target);
            if !resolved.exists() {
                broken.push(format!("{}: {target}", document.display()));
            }
        }
    }
    assert!(documents.len() >= 3, "{documents:?}");
    assert!(
        broken.is_empty(),
        "links to nothing:\n{}",
        broken.join("\n")
    );
}

/// The model is the pure domain core: no files, sockets, processes, threads or async runtime
/// (docs/ARCHITECTURE.md, layer 2), so that every rule in it can be read and tested alone.
#[test]
fn the_model_does_no_io_and_starts_no_threads() {
    const FORBIDDEN: [&str; 10] = [
        "std::fs",
        "std::net",
        "std::process",
        "std::thread::spawn",
        "std::thread::scope",
        "tokio",
        "reqwest",
        "rusqlite",
        "tokio_postgres",
        "std::io::stdout",
    ];
    let mut found = Vec::new();
    for path in rust_files(&Path::new(ROOT).join("src/model")) {
        let code = product_code(&std::fs::read_to_string(&path).unwrap());
        for forbidden in FORBIDDEN {
            if code.contains(forbidden) {
                found.push(format!("{}: {forbidden}", path.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "the model reaches outside itself:\n{}",
        found.join("\n")
    );
    assert!(
        rust_files(&Path::new(ROOT).join("src/model")).len() >= 6,
        "src/model was not read"
    );
}
