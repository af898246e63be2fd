//! The crate's layers import only downwards, and no two files import each other.
//!
//! The order (ARCHITECTURE.md): tensor, dtype, rng → backend → model → diffusion → io →
//! bench, eval, pipeline → serve → commands → main. This test reads every file under `src/`, collects the
//! crate paths it names (`crate::…`, `super::…`, `self::…`, `diffstyle::…` in
//! main.rs; `use` groups in braces included; comments and string literals skipped),
//! resolves each to the file of the module it reaches, and fails on
//! - a path into a layer that is not strictly below the file's own layer (a layer may
//!   use itself; two modules of one layer may not use each other); `io` reads and
//!   writes files and uses only the bottom layer (the diffusion layer turns what it
//!   reads into inversions, the model layer reads checkpoints), and
//! - two files that name each other, except a folder's `mod.rs` and the files of that
//!   folder (a parent module and its children are one unit).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layer of a top-level module; lower numbers are lower layers.
fn layer(top: &str) -> Option<usize> {
    Some(match top {
        "tensor" | "dtype" | "rng" => 0,
        "backend" => 1,
        "model" => 2,
        "diffusion" => 3,
        "io" => 4,
        "bench" | "eval" | "pipeline" => 5,
        "serve" => 6,
        "commands" => 7,
        "main" => 8,
        _ => return None,
    })
}

/// Whether a file of top-level module `own` may name top-level module `top`.
fn allowed(own: &str, top: &str) -> bool {
    match (layer(own), layer(top)) {
        _ if own == top => true,
        (Some(_), Some(lt)) if own == "io" => lt == 0,
        (Some(lo), Some(lt)) => lt < lo,
        _ => true,
    }
}

/// Every `.rs` file under `dir`, as (path relative to `src`, module path).
fn modules(src: &Path) -> Vec<(PathBuf, Vec<String>)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("readable src/") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = vec![];
    walk(src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(src).expect("under src").to_path_buf();
            let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
            let last = parts.pop().expect("a file name");
            match last.as_str() {
                "lib.rs" => {}
                "main.rs" if parts.is_empty() => parts.push("main".into()),
                "mod.rs" => {}
                f => parts.push(f.trim_end_matches(".rs").to_string()),
            }
            (rel, parts)
        })
        .collect()
}

/// The source with comments, string and char literals blanked (newlines kept).
fn code_only(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !prev_is_ident(&b, i) {
            // Raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                blank(&mut out, b[j]);
                j += 1;
            }
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                if i < b.len() {
                    blank(&mut out, b[i]);
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}'), else a lifetime.
            let close = if next == Some('\\') {
                (i + 2..b.len().min(i + 12)).find(|&k| b[k] == '\'')
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match close {
                Some(k) => i = k + 1,
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn prev_is_ident(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Parses a path tail after `start` (just past a `::`): identifiers separated by
/// `::`, with brace groups expanded. Returns every full path.
fn path_tails(b: &[char], mut i: usize) -> Vec<Vec<String>> {
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_whitespace() {
            *i += 1;
        }
    };
    let mut prefix: Vec<String> = vec![];
    loop {
        skip_ws(&mut i);
        if i < b.len() && b[i] == '{' {
            // Split the group's top-level items and parse each.
            let mut depth = 0;
            let mut start = i + 1;
            let mut items = vec![];
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            items.push((start, j));
                            break;
                        }
                    }
                    ',' if depth == 1 => {
                        items.push((start, j));
                        start = j + 1;
                    }
                    _ => {}
                }
                j += 1;
            }
            let mut out = vec![];
            for (s, e) in items {
                let sub: Vec<char> = b[s..e].to_vec();
                for t in path_tails(&sub, 0) {
                    let mut p = prefix.clone();
                    p.extend(t);
                    out.push(p);
                }
            }
            return out;
        }
        let s = i;
        while i < b.len() && is_ident(b[i]) {
            i += 1;
        }
        if s == i {
            return vec![prefix];
        }
        prefix.push(b[s..i].iter().collect());
        skip_ws(&mut i);
        if i + 1 < b.len() && b[i] == ':' && b[i + 1] == ':' {
            i += 2;
        } else {
            return vec![prefix];
        }
    }
}

/// Every crate-absolute module path a file names (before resolving to files).
fn references(code: &str, module: &[String], is_main: bool) -> Vec<Vec<String>> {
    let b: Vec<char> = code.chars().collect();
    // Inline modules (`mod tests { .. }`): `super` inside them is the file's module.
    let mut out = vec![];
    let mut inline: Vec<usize> = vec![]; // brace depth at which each inline module opened
    let mut depth = 0usize;
    let mut i = 0;
    let roots: &[&str] = if is_main { &["diffstyle"] } else { &["crate", "super", "self"] };
    while i < b.len() {
        let c = b[i];
        if c == '{' {
            depth += 1;
        } else if c == '}' {
            depth = depth.saturating_sub(1);
            if inline.last() == Some(&depth) {
                inline.pop();
            }
        }
        if is_ident(c) && !prev_is_ident(&b, i) {
            let s = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            let word: String = b[s..i].iter().collect();
            if word == "mod" {
                let mut j = i;
                while j < b.len() && (b[j].is_whitespace() || is_ident(b[j])) {
                    j += 1;
                }
                if b.get(j) == Some(&'{') {
                    inline.push(depth);
                }
                continue;
            }
            if roots.contains(&word.as_str()) && b.get(i) == Some(&':') && b.get(i + 1) == Some(&':') {
                for tail in path_tails(&b, i + 2) {
                    // The module that `word` names, then the tail.
                    let mut base: Vec<String> = match word.as_str() {
                        "crate" | "diffstyle" => vec![],
                        _ => {
                            let here_inline = !inline.is_empty();
                            let mut m = module.to_vec();
                            if word == "super" && !here_inline {
                                m.pop();
                            }
                            m
                        }
                    };
                    let mut t = tail.as_slice();
                    // Further `super`s climb on.
                    while t.first().is_some_and(|s| s == "super") {
                        base.pop();
                        t = &t[1..];
                    }
                    base.extend(t.iter().cloned());
                    // `a::b::{self, ..}` names `a::b`.
                    if base.last().is_some_and(|s| s == "self") {
                        base.pop();
                    }
                    out.push(base);
                }
            }
            continue;
        }
        i += 1;
    }
    out
}

/// The file of the longest module prefix of `path`.
fn resolve<'a>(path: &[String], files: &'a BTreeMap<Vec<String>, PathBuf>) -> Option<&'a PathBuf> {
    (1..=path.len()).rev().find_map(|n| files.get(&path[..n]))
}

/// A folder's `mod.rs` and a file in that folder.
fn parent_and_child(a: &Path, b: &Path) -> bool {
    let is_parent = |m: &Path, c: &Path| m.file_name().is_some_and(|f| f == "mod.rs") && m.parent() == c.parent();
    is_parent(a, b) || is_parent(b, a)
}

/// All violations in the tree at `src`.
fn violations(src: &Path) -> Vec<String> {
    let mods = modules(src);
    let files: BTreeMap<Vec<String>, PathBuf> = mods.iter().map(|(p, m)| (m.clone(), p.clone())).collect();
    let mut bad = vec![];
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    // One report per (file, file it reaches).
    let mut seen: BTreeSet<(PathBuf, PathBuf)> = BTreeSet::new();
    for (rel, module) in &mods {
        let text = std::fs::read_to_string(src.join(rel)).expect("readable source");
        let is_main = module.first().is_some_and(|m| m == "main");
        let code = code_only(&text);
        let own = module.first().map(String::as_str);
        for path in references(&code, module, is_main) {
            let Some(target) = resolve(&path, &files) else { continue };
            let top = path.first().map(String::as_str);
            if let (Some(own), Some(top)) = (own, top) {
                if !allowed(own, top) && seen.insert((rel.clone(), target.clone())) {
                    let lt = layer(top).map_or("?".to_string(), |l| l.to_string());
                    let lo = layer(own).map_or("?".to_string(), |l| l.to_string());
                    bad.push(format!(
                        "{}: imports `{}` ({top}, layer {lt}) from layer {lo} ({own})",
                        rel.display(),
                        path.join("::")
                    ));
                }
            }
            if target != rel {
                edges.entry(rel.clone()).or_default().insert(target.clone());
            }
        }
    }
    for (a, targets) in &edges {
        for b in targets {
            if a < b && edges.get(b).is_some_and(|t| t.contains(a)) && !parent_and_child(a, b) {
                bad.push(format!("{} and {} import each other", a.display(), b.display()));
            }
        }
    }
    bad
}

#[test]
fn layers_import_only_downwards() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(bad.is_empty(), "{} layering violation(s):\n{}", bad.len(), bad.join("\n"));
}

/// The checker itself, on a small tree: it must see a wrong import through every
/// spelling, a mutual import, and nothing in comments, strings or inline test modules.
#[test]
fn the_checker_sees_wrong_imports() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path();
    let write = |rel: &str, text: &str| {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    };
    write("lib.rs", "pub mod backend;\npub mod diffusion;\npub mod io;\npub mod model;\npub mod tensor;\n");
    write("diffusion.rs", "use crate::model::a::A;\n");
    write("io.rs", "use crate::tensor::T;\nuse crate::diffusion::Inversion;\n");
    write("tensor.rs", "// use crate::model::x;\nconst S: &str = \"crate::backend::y\";\n");
    write("backend/mod.rs", "pub mod cpu;\nuse crate::tensor::T;\nfn f() { super::model::graph::g(); }\n");
    write("backend/cpu.rs", "use super::Backend;\nuse crate::{tensor::T, model::graph::{self, Graph}};\n");
    write("model/mod.rs", "pub mod a;\npub mod b;\n");
    write("model/a.rs", "use super::b::X;\n#[cfg(test)]\nmod tests { use super::A; use crate::backend::cpu::C; }\n");
    write("model/b.rs", "use crate::model::a::Y;\nfn g() -> char { '{' }\n");
    let bad = violations(src);
    let has = |s: &str| bad.iter().any(|b| b.contains(s));
    assert!(has("backend/mod.rs: imports `model::graph::g`"), "{bad:#?}");
    assert!(has("backend/cpu.rs: imports `model::graph"), "{bad:#?}");
    assert!(has("model/a.rs and model/b.rs import each other"), "{bad:#?}");
    assert!(has("io.rs: imports `diffusion::Inversion`"), "{bad:#?}");
    assert!(!bad.iter().any(|b| b.starts_with("tensor.rs")), "comments and strings are not imports: {bad:#?}");
    assert_eq!(bad.len(), 4, "{bad:#?}");
}
