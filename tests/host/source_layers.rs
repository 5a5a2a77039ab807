//! The layers of `src/` import only downwards, and no two files import each other
//! round a cycle. Read from the source text: every `crate::…` path and every
//! `super::…` or child-module path of a `use`, outside comments.
//!
//! Layers, bottom up: `error`; `rng`, `shape` (the operator vocabulary),
//! `atomic_file`; `gpu`;
//! `kernels` (the GPU kernels) and `reference` (the CPU ground truth, which never
//! sees a kernel); `graph`; `model`; `distributed` (feature `mpi`: trainers on the
//! ranks of an MPI job). `data` and `metrics` stand beside them; `model`
//! reads `data`'s categorical encoders, which checkpoints carry.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What each layer may import (besides itself).
const ALLOWED: &[(&str, &[&str])] = &[
    ("error", &[]),
    ("atomic_file", &["error"]),
    ("rng", &["error"]),
    ("shape", &["error"]),
    ("metrics", &["error"]),
    ("gpu", &["error", "atomic_file"]),
    ("data", &["error", "rng"]),
    ("kernels", &["error", "gpu", "shape"]),
    ("reference", &["error", "shape"]),
    ("graph", &["error", "gpu", "kernels", "reference", "shape"]),
    (
        "model",
        &[
            "atomic_file",
            "data",
            "error",
            "gpu",
            "graph",
            "kernels",
            "reference",
            "rng",
            "shape",
        ],
    ),
    // Data-parallel training (feature `mpi`) drives trainers: the top layer.
    (
        "distributed",
        &[
            "atomic_file",
            "data",
            "error",
            "gpu",
            "graph",
            "model",
            "rng",
        ],
    ),
];

/// Files that must not import a layer their own layer may: the model's config is
/// vocabulary only.
const FORBIDDEN: &[(&str, &str)] = &[("model/config.rs", "kernels")];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file: `kernels/gate_mix/tiling.rs` is `kernels::gate_mix::tiling`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap().with_extension("");
    let mut path: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into()).collect();
    if matches!(path.last().map(String::as_str), Some("mod" | "lib")) {
        path.pop();
    }
    path
}

/// The unit a module path belongs to: a top-level module, or a file (with its own
/// submodules) directly inside a top-level directory. `kernels` alone is that
/// directory's `mod.rs`.
fn unit_of(path: &[String]) -> Option<String> {
    let layer = path.first()?;
    let dir = src().join(layer);
    match path.get(1) {
        Some(next) if dir.join(format!("{next}.rs")).exists() || dir.join(next).is_dir() => {
            Some(format!("{layer}/{next}"))
        }
        _ => Some(layer.clone()),
    }
}

/// The text without comments (`//` to the end of the line) and string literals.
fn code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut in_string = false;
        let mut prev = ' ';
        for (i, c) in line.char_indices() {
            if !in_string && c == '/' && line[i..].starts_with("//") {
                break;
            }
            if c == '"' && prev != '\\' {
                in_string = !in_string;
            } else if !in_string {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// Every path of a use tree starting at `text` (after `use` or after `crate::`),
/// expanded over braces: `a::{b, c::d}` gives `a::b` and `a::c::d`.
fn use_paths(text: &str) -> Vec<Vec<String>> {
    fn parse(chars: &[char], at: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        let mut path = prefix;
        loop {
            while *at < chars.len() && chars[*at].is_whitespace() {
                *at += 1;
            }
            if *at < chars.len() && chars[*at] == '{' {
                *at += 1;
                loop {
                    parse(chars, at, path.clone(), out);
                    while *at < chars.len() && chars[*at].is_whitespace() {
                        *at += 1;
                    }
                    match chars.get(*at) {
                        Some(',') => *at += 1,
                        Some('}') => {
                            *at += 1;
                            return;
                        }
                        _ => return,
                    }
                    while *at < chars.len() && chars[*at].is_whitespace() {
                        *at += 1;
                    }
                    if chars.get(*at) == Some(&'}') {
                        *at += 1;
                        return;
                    }
                }
            }
            let start = *at;
            while *at < chars.len() && (chars[*at].is_alphanumeric() || chars[*at] == '_') {
                *at += 1;
            }
            if start == *at {
                out.push(path);
                return;
            }
            path.push(chars[start..*at].iter().collect());
            if chars[*at..].starts_with(&[':', ':']) {
                *at += 2;
            } else {
                out.push(path);
                return;
            }
        }
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    parse(&chars, &mut 0, Vec::new(), &mut out);
    out
}

/// The units each unit imports, with the file and path that make each edge.
fn imports() -> BTreeMap<String, BTreeMap<String, String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in files {
        let module = module_of(&file);
        let Some(from) = unit_of(&module) else {
            continue; // lib.rs, the crate root, may name everything.
        };
        let text = code(&std::fs::read_to_string(&file).unwrap());
        let children: BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.trim().split("mod ").nth(1))
            .filter_map(|rest| rest.strip_suffix(';'))
            .map(str::to_string)
            .collect();
        let mut found: Vec<Vec<String>> = Vec::new();
        for (i, _) in text.match_indices("crate::") {
            if !text[..i].ends_with('$') {
                for mut path in use_paths(&text[i + "crate::".len()..]) {
                    path.truncate(2);
                    found.push(path);
                }
            }
        }
        let statements = text.lines().enumerate().filter_map(|(i, line)| {
            let line = line.trim_start();
            let tree = ["use ", "pub use ", "pub(crate) use ", "pub(super) use "]
                .iter()
                .find_map(|head| line.strip_prefix(head))?;
            let start = text.lines().take(i).map(|l| l.len() + 1).sum::<usize>();
            let offset = text[start..].find(tree).unwrap_or(0);
            Some(&text[start + offset..])
        });
        for tree in statements {
            for path in use_paths(tree) {
                let mut absolute = module.clone();
                let mut rest = path.as_slice();
                let is_child = rest.first().is_some_and(|p| children.contains(p));
                let is_self = rest.first().is_some_and(|p| p == "self");
                if !(is_child || is_self || rest.first().is_some_and(|p| p == "super")) {
                    continue;
                }
                if is_self {
                    rest = &rest[1..];
                }
                while rest.first().is_some_and(|p| p == "super") {
                    absolute.pop();
                    rest = &rest[1..];
                }
                absolute.extend(rest.iter().cloned());
                found.push(absolute);
            }
        }
        for path in found {
            if let Some(to) = target_unit(&path)
                && to != from
            {
                let file = file.strip_prefix(src()).unwrap().display();
                let made_by = format!("src/{file} imports {}", path.join("::"));
                edges.entry(from.clone()).or_default().insert(to, made_by);
            }
        }
    }
    edges
}

/// The unit a path names: a module's, or for a name the crate root re-exports
/// (`crate::Error`), the module it comes from; `None` for other crates.
fn target_unit(path: &[String]) -> Option<String> {
    let first = path.first()?;
    if src().join(format!("{first}.rs")).exists() || src().join(first).is_dir() {
        return unit_of(path);
    }
    let from = match first.as_str() {
        "Error" | "Result" => "error",
        "Gpu" | "GpuOptions" | "AdapterReport" | "Capabilities" => "gpu",
        "Precision" => "kernels",
        "Activation" | "GemmShape" | "InputLayout" | "StandardShape" => "shape",
        "half" | "wgpu" => return None,
        other => panic!("`crate::{other}` is not a module or a known re-export"),
    };
    Some(from.to_string())
}

fn layer(unit: &str) -> &str {
    unit.split('/').next().unwrap()
}

#[test]
fn layers_import_only_downwards() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    for (from, targets) in imports() {
        let may = allowed
            .get(layer(&from))
            .unwrap_or_else(|| panic!("layer `{}` is missing from ALLOWED", layer(&from)));
        for (to, made_by) in targets {
            let (a, b) = (layer(&from), layer(&to));
            assert!(
                a == b || may.contains(&b),
                "`{a}` may not import `{b}`: {made_by}"
            );
            for (file, forbidden) in FORBIDDEN {
                assert!(
                    !(made_by.starts_with(&format!("src/{file} ")) && b == *forbidden),
                    "`{file}` may not import `{forbidden}`: {made_by}"
                );
            }
        }
    }
}

#[test]
fn no_two_files_import_each_other_round_a_cycle() {
    // A layer's mod.rs re-exports its files: that is its facade, not a dependency.
    let edges: BTreeMap<String, BTreeMap<String, String>> = imports()
        .into_iter()
        .map(|(from, to)| {
            let to = to
                .into_iter()
                .filter(|(to, _)| !(from.find('/').is_none() && layer(to) == from))
                .collect();
            (from, to)
        })
        .collect();
    // Depth-first search, reporting the first cycle with the paths that make it.
    fn visit(
        unit: &str,
        edges: &BTreeMap<String, BTreeMap<String, String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(unit) {
            return;
        }
        if let Some(at) = stack.iter().position(|u| u == unit) {
            let cycle = &stack[at..];
            let why: Vec<&String> = cycle
                .iter()
                .zip(cycle.iter().skip(1).chain([&cycle[0]]))
                .map(|(a, b)| &edges[a][b])
                .collect();
            panic!("import cycle {cycle:?}:\n{why:#?}");
        }
        stack.push(unit.to_string());
        for next in edges.get(unit).into_iter().flat_map(|m| m.keys()) {
            visit(next, edges, stack, done);
        }
        stack.pop();
        done.insert(unit.to_string());
    }
    let mut done = BTreeSet::new();
    for unit in edges.keys() {
        visit(unit, &edges, &mut Vec::new(), &mut done);
    }
}

/// The parser itself, on the forms the source uses.
#[test]
fn use_trees_expand_over_braces() {
    let paths = use_paths("kernels::{BufferView, grouped_gemm::{A, B}, loss::LossForward};");
    let joined: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        joined,
        [
            "kernels::BufferView",
            "kernels::grouped_gemm::A",
            "kernels::grouped_gemm::B",
            "kernels::loss::LossForward"
        ]
    );
}
