//! The import direction `src/lib.rs` draws: its "Layers" list orders the
//! crate's modules bottom to top, and a module may use modules of its own
//! layer or below, never one above. Also: no import cycles between modules.
//!
//! Test code (`#[cfg(test)]` modules, `tests.rs` and `test_*.rs` files) is
//! not checked: a test may reach up to build what it needs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// One `crate::x` reference found in a source file.
struct Import {
    file: PathBuf,
    line: usize,
    from: String,
    to: String,
    text: String,
}

/// The layer of every module, from the numbered list under `# Layers` in
/// lib.rs's doc comment: `//! N. [`a`], [`b`]: what they do`.
fn layers(lib: &str) -> BTreeMap<String, usize> {
    let mut layers = BTreeMap::new();
    let mut in_section = false;
    for line in lib.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            continue;
        };
        let doc = doc.trim();
        if let Some(heading) = doc.strip_prefix('#') {
            in_section = heading.trim_start_matches('#').trim() == "Layers";
            continue;
        }
        if !in_section {
            continue;
        }
        let Some((number, rest)) = doc.split_once(". ") else {
            continue;
        };
        let Ok(number) = number.parse::<usize>() else {
            continue;
        };
        let names = rest.split(':').next().unwrap_or_default();
        for name in names.split('`').skip(1).step_by(2) {
            let previous = layers.insert(name.to_string(), number);
            assert!(previous.is_none(), "lib.rs lists `{name}` twice");
        }
    }
    assert!(!layers.is_empty(), "lib.rs has no `# Layers` list");
    layers
}

/// The modules lib.rs declares (`pub mod x;`).
fn declared(lib: &str) -> BTreeSet<String> {
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module `path` (relative to src/) belongs to; `None` for the
/// crate root and the binaries.
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    if relative.components().count() == 1 {
        let stem = first.strip_suffix(".rs")?;
        return (!matches!(stem, "lib" | "main")).then(|| stem.to_string());
    }
    (first != "bin").then(|| first.to_string())
}

fn is_test_file(path: &Path) -> bool {
    let name = path.file_name().unwrap().to_str().unwrap();
    name == "tests.rs" || name.starts_with("test_")
}

/// Every `crate::x` in `source`'s non-test code, as (line number, x, line).
fn references(source: &str) -> Vec<(usize, String, String)> {
    let mut found = Vec::new();
    let mut lines = source.lines().enumerate().peekable();
    while let Some((number, line)) = lines.next() {
        let code = line.trim();
        if code == "#[cfg(test)]" {
            // Skip the item it guards: a `mod x { … }` block or one line.
            let Some((_, item)) = lines.next() else { break };
            let mut depth = braces(item);
            while depth > 0 {
                let Some((_, inner)) = lines.next() else {
                    break;
                };
                depth += braces(inner);
            }
            continue;
        }
        let code = code.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let preceded = rest[..at].chars().last();
            rest = &rest[at + "crate::".len()..];
            if preceded.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // e.g. `lazyimg_crate::`
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            // `crate::Error`, `crate::Result`: lib.rs's re-exports of `error`.
            let module = match name.as_str() {
                "Error" | "Result" => "error".to_string(),
                _ => name,
            };
            found.push((number + 1, module, line.trim().to_string()));
        }
    }
    found
}

fn braces(line: &str) -> i64 {
    let code = line.split("//").next().unwrap_or_default();
    code.matches('{').count() as i64 - code.matches('}').count() as i64
}

fn imports(src: &Path) -> Vec<Import> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut imports = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let Some(from) = module_of(relative) else {
            continue;
        };
        if is_test_file(&file) {
            continue;
        }
        let source = fs::read_to_string(&file).unwrap();
        for (line, to, text) in references(&source) {
            if to != from {
                imports.push(Import {
                    file: relative.to_path_buf(),
                    line,
                    from: from.clone(),
                    to,
                    text,
                });
            }
        }
    }
    imports
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_module_has_a_layer() {
    let lib = fs::read_to_string(src_dir().join("lib.rs")).unwrap();
    let layers = layers(&lib);
    let listed: BTreeSet<String> = layers.keys().cloned().collect();
    assert_eq!(
        listed,
        declared(&lib),
        "lib.rs's `# Layers` list must name exactly the modules it declares"
    );
}

#[test]
fn no_module_imports_one_above_it() {
    let src = src_dir();
    let layers = layers(&fs::read_to_string(src.join("lib.rs")).unwrap());
    let mut wrong = Vec::new();
    for import in imports(&src) {
        let (Some(from), Some(to)) = (layers.get(&import.from), layers.get(&import.to)) else {
            wrong.push(format!(
                "src/{}:{}: `{}` or `{}` is not in lib.rs's layers: {}",
                import.file.display(),
                import.line,
                import.from,
                import.to,
                import.text
            ));
            continue;
        };
        if to > from {
            wrong.push(format!(
                "src/{}:{}: `{}` (layer {from}) uses `{}` (layer {to}): {}",
                import.file.display(),
                import.line,
                import.from,
                import.to,
                import.text
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering in src/lib.rs:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_import_cycles_between_modules() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for import in imports(&src_dir()) {
        graph.entry(import.from).or_default().insert(import.to);
    }
    // Depth-first search; a module met again while still on the path closes a cycle.
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        cycles: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|m| m == module) {
            let mut cycle = path[at..].to_vec();
            cycle.push(module.to_string());
            cycles.push(cycle.join(" → "));
            return;
        }
        if !done.insert(module.to_string()) {
            return;
        }
        path.push(module.to_string());
        for next in graph.get(module).into_iter().flatten() {
            visit(next, graph, path, done, cycles);
        }
        path.pop();
    }
    let (mut done, mut cycles) = (BTreeSet::new(), Vec::new());
    for module in graph.keys() {
        visit(module, &graph, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}
