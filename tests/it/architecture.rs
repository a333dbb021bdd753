//! The shape of the code, checked from its source: no import circle between modules (the
//! relay's state sits below the servers that use it, the config's raw model below the
//! domains that compile it), and no source file over 600 lines outside its tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// `src/delivery/target.rs` → `delivery::target`; `src/config/mod.rs` → `config`.
fn module_name(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> = relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).filter(|p| p != "mod").collect();
    parts.join("::")
}

/// The code of a file without its test module and comments.
fn code(text: &str) -> String {
    let before_tests = text.split("#[cfg(test)]").next().unwrap_or_default();
    before_tests.lines().filter(|line| !line.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// Every `crate::a::b…` path a file names, including inside `use crate::{a, b::c}`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let path: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
        let path = path.trim_end_matches(':').to_string();
        if rest[path.len()..].trim_start_matches(':').starts_with('{') {
            let group = &rest[rest.find('{').unwrap() + 1..];
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                let item = item.split_whitespace().next().unwrap_or_default();
                let joined = if item == "self" { path.clone() } else { format!("{path}::{item}") };
                paths.push(joined.trim_start_matches("::").to_string());
            }
        } else if !path.is_empty() {
            paths.push(path);
        }
    }
    paths
}

/// Tarjan's walk: each module's (index, lowest reachable index), the stack and its members.
#[derive(Default)]
struct Walk {
    next: usize,
    marks: BTreeMap<String, (usize, usize)>,
    stack: Vec<String>,
    on_stack: BTreeSet<String>,
    circles: Vec<Vec<String>>,
}

impl Walk {
    fn visit(&mut self, v: &str, edges: &BTreeMap<String, BTreeSet<String>>) {
        self.marks.insert(v.to_string(), (self.next, self.next));
        self.next += 1;
        self.stack.push(v.to_string());
        self.on_stack.insert(v.to_string());
        for w in edges.get(v).into_iter().flatten() {
            if !self.marks.contains_key(w) {
                self.visit(w, edges);
                let low = self.marks[v].1.min(self.marks[w].1);
                self.marks.get_mut(v).unwrap().1 = low;
            } else if self.on_stack.contains(w) {
                let low = self.marks[v].1.min(self.marks[w].0);
                self.marks.get_mut(v).unwrap().1 = low;
            }
        }
        if self.marks[v].0 == self.marks[v].1 {
            let mut component = Vec::new();
            while let Some(w) = self.stack.pop() {
                self.on_stack.remove(&w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                self.circles.push(component);
            }
        }
    }
}

/// Strongly connected components with more than one module: the import circles.
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let mut walk = Walk::default();
    for v in edges.keys() {
        if !walk.marks.contains_key(v) {
            walk.visit(v, edges);
        }
    }
    walk.circles
}

#[test]
fn no_import_circle_and_no_file_over_600_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeMap<String, PathBuf> = files
        .iter()
        .filter(|f| !matches!(f.file_name().and_then(|n| n.to_str()), Some("lib.rs" | "main.rs")))
        .map(|f| (module_name(&src, f), f.clone()))
        .collect();
    let resolve = |path: &str| {
        let parts: Vec<&str> = path.split("::").collect();
        (1..=parts.len()).rev().map(|n| parts[..n].join("::")).find(|candidate| modules.contains_key(candidate))
    };
    let mut by_file: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut by_top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut too_long = Vec::new();
    for (name, file) in &modules {
        let text = std::fs::read_to_string(file).unwrap();
        let code = code(&text);
        let lines = text.split("#[cfg(test)]").next().unwrap_or_default().lines().count();
        if lines > 600 && !file.ends_with("tests.rs") {
            too_long.push(format!("{} ({lines} lines)", file.display()));
        }
        let top = name.split("::").next().unwrap().to_string();
        for target in crate_paths(&code).iter().filter_map(|path| resolve(path)) {
            if &target != name {
                by_file.entry(name.clone()).or_default().insert(target.clone());
            }
            let target_top = target.split("::").next().unwrap().to_string();
            if target_top != top {
                by_top.entry(top.clone()).or_default().insert(target_top);
            }
        }
    }
    assert!(by_top.get("relay").is_some_and(|uses| uses.contains("config")), "the scan sees imports: {by_top:?}");
    assert_eq!(circles(&by_top), Vec::<Vec<String>>::new(), "import circles between top-level modules");
    assert_eq!(circles(&by_file), Vec::<Vec<String>>::new(), "import circles between modules");
    assert!(too_long.is_empty(), "source files over 600 lines outside tests: {too_long:?}");
}
