//! A small checker of module layering: it reads a crate's `src/` tree, finds
//! every path a module names inside its own crate (`use crate::a::b`,
//! `crate::a::f()`, `super::x`, `use crate::{a, b::{c, d}}`), and reports
//! each cycle between modules.
//!
//! What counts:
//! - A node is a module file (`a.rs` or `a/mod.rs` is `a`, `a/b.rs` is
//!   `a::b`). A path is charged to the longest module it starts with; a name
//!   a module re-exports (`pub use b::Thing`) is followed once, to where it
//!   is defined.
//! - A module and its own descendants are one unit (Rust gives them each
//!   other's privacy), so edges between them are not counted.
//! - `#[cfg(test)] mod ... { }` blocks are left out: a test may use a layer
//!   above the code it tests.
//! - Comments, strings and character literals are blanked first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `a::b` as segments; the crate root is empty.
pub type ModPath = Vec<String>;

/// Display form of a module path: `a::b`, or `crate` for the root.
pub fn show(m: &[String]) -> String {
    if m.is_empty() {
        "crate".to_string()
    } else {
        m.join("::")
    }
}

/// The modules of a crate's source tree, each with its file. `main.rs` is
/// left out when `lib.rs` exists (it is another crate that uses the library
/// by name), and so is `src/bin/`.
pub fn module_files(src: &Path) -> std::io::Result<BTreeMap<ModPath, PathBuf>> {
    let mut out = BTreeMap::new();
    let has_lib = src.join("lib.rs").exists();
    walk(src, src, has_lib, &mut out)?;
    Ok(out)
}

fn walk(
    root: &Path,
    dir: &Path,
    has_lib: bool,
    out: &mut BTreeMap<ModPath, PathBuf>,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let path = e.path();
        let rel = path.strip_prefix(root).expect("under root");
        if path.is_dir() {
            if rel == Path::new("bin") {
                continue;
            }
            walk(root, &path, has_lib, out)?;
            continue;
        }
        if path.extension().is_none_or(|x| x != "rs") {
            continue;
        }
        let mut segs: Vec<String> = rel
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        match segs.last().map(String::as_str) {
            Some("mod") => {
                segs.pop();
            }
            Some("lib") if segs.len() == 1 => segs.clear(),
            Some("main") if segs.len() == 1 => {
                if has_lib {
                    continue;
                }
                segs.clear();
            }
            _ => {}
        }
        out.insert(segs, path);
    }
    Ok(())
}

/// Blanks comments, string and character literals (keeping line breaks), so
/// only code is searched.
pub fn strip_literals(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && (i == 0 || !is_ident(b[i - 1]))
        {
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
                j += 1;
            }
            for &ch in &b[i..j.min(b.len())] {
                out.push(blank(ch));
            }
            i = j;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < b.len() {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{7f}') or a lifetime ('a).
            let is_char = next == Some('\\') || b.get(i + 2) == Some(&'\'');
            if is_char {
                out.push(' ');
                i += 1;
                while i < b.len() && b[i] != '\'' {
                    if b[i] == '\\' {
                        out.push(' ');
                        i += 1;
                    }
                    out.push(' ');
                    i += 1;
                }
                out.push(' ');
                i += 1;
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Removes `#[cfg(test)]` items that are blocks (`mod tests { ... }`).
pub fn strip_test_modules(code: &str) -> String {
    let mut out = code.to_string();
    while let Some(at) = out.find("#[cfg(test)]") {
        let after = &out[at..];
        let Some(open) = after.find('{') else { break };
        // Only a `mod` item: `#[cfg(test)] fn` etc. are blanked the same way.
        let mut depth = 0;
        let mut end = after.len();
        for (k, ch) in after[open..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        let blanked: String = after[..end]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        out.replace_range(at..at + end, &blanked);
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every path that starts with `crate`, `super` or `self` in `code`, made
/// absolute for module `module` (segments after the crate root).
pub fn crate_paths(module: &[String], is_mod_rs: bool, code: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !is_ident(chars[i]) || (i > 0 && (is_ident(chars[i - 1]) || chars[i - 1] == ':')) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        if !matches!(word.as_str(), "crate" | "super" | "self") {
            continue;
        }
        let mut j = skip_ws(&chars, i);
        if !(chars.get(j) == Some(&':') && chars.get(j + 1) == Some(&':')) {
            continue;
        }
        // The base the path starts from.
        let mut base: Vec<String> = match word.as_str() {
            "crate" => Vec::new(),
            // In `a/b.rs` (module a::b) and in `a/b/mod.rs` alike, `self`
            // is a::b and `super` is a.
            "self" => module.to_vec(),
            _ => parent(module),
        };
        let _ = is_mod_rs;
        j += 2;
        let mut prefix = Vec::new();
        // Further `super::` segments.
        loop {
            let k = skip_ws(&chars, j);
            let (w, after) = ident_at(&chars, k);
            if w == "super" && is_sep(&chars, after) {
                base = parent(&base);
                j = skip_ws(&chars, after) + 2;
            } else {
                break;
            }
        }
        parse_tree(&chars, &mut j, &mut prefix, &base, &mut out);
        i = j.max(i);
    }
    out
}

fn parent(m: &[String]) -> Vec<String> {
    m[..m.len().saturating_sub(1)].to_vec()
}

fn skip_ws(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    i
}

fn ident_at(chars: &[char], i: usize) -> (String, usize) {
    let mut j = i;
    while j < chars.len() && is_ident(chars[j]) {
        j += 1;
    }
    (chars[i..j].iter().collect(), j)
}

fn is_sep(chars: &[char], i: usize) -> bool {
    let k = skip_ws(chars, i);
    chars.get(k) == Some(&':') && chars.get(k + 1) == Some(&':')
}

/// Reads `a::b::c`, `a::{b, c::d}` or `*` at `*j`, pushing every full path.
fn parse_tree(
    chars: &[char],
    j: &mut usize,
    prefix: &mut Vec<String>,
    base: &[String],
    out: &mut Vec<Vec<String>>,
) {
    let depth = prefix.len();
    loop {
        *j = skip_ws(chars, *j);
        match chars.get(*j) {
            Some('{') => {
                *j += 1;
                loop {
                    *j = skip_ws(chars, *j);
                    match chars.get(*j) {
                        Some('}') => {
                            *j += 1;
                            break;
                        }
                        Some(',') => *j += 1,
                        None => break,
                        _ => {
                            let before = *j;
                            parse_tree(chars, j, prefix, base, out);
                            if *j == before {
                                *j += 1;
                            }
                        }
                    }
                }
                prefix.truncate(depth);
                return;
            }
            Some('*') => {
                *j += 1;
                break;
            }
            Some(c) if is_ident(*c) => {
                let (w, after) = ident_at(chars, *j);
                *j = after;
                if w != "self" {
                    prefix.push(w);
                }
                if is_sep(chars, *j) {
                    *j = skip_ws(chars, *j) + 2;
                    continue;
                }
                break;
            }
            _ => break,
        }
    }
    // `path as alias`
    let k = skip_ws(chars, *j);
    let (w, after) = ident_at(chars, k);
    if w == "as" {
        let (_, end) = ident_at(chars, skip_ws(chars, after));
        *j = end;
    }
    let mut full = base.to_vec();
    full.extend(prefix.iter().cloned());
    out.push(full);
    prefix.truncate(depth);
}

/// Names a module re-exports: `pub use a::Thing;` maps `Thing` to the
/// absolute path `a::Thing`.
pub fn reexports(module: &[String], code: &str) -> BTreeMap<String, Vec<String>> {
    let mut map = BTreeMap::new();
    for stmt in code.split(';') {
        let t = stmt.trim();
        let Some(rest) = t
            .strip_prefix("pub use ")
            .or_else(|| t.strip_prefix("pub(crate) use "))
        else {
            continue;
        };
        // Relative (`pub use store::X`) or absolute (`pub use crate::x::Y`).
        let rest = rest.trim();
        let text = if rest.starts_with("crate::")
            || rest.starts_with("super::")
            || rest.starts_with("self::")
        {
            rest.to_string()
        } else {
            format!("self::{rest}")
        };
        for p in crate_paths(module, false, &text) {
            if let Some(last) = p.last() {
                map.insert(last.clone(), p);
            }
        }
    }
    map
}

/// The module a path belongs to: its longest prefix that is a module,
/// following one re-export.
pub fn resolve(
    path: &[String],
    known: &BTreeSet<ModPath>,
    exports: &BTreeMap<ModPath, BTreeMap<String, Vec<String>>>,
) -> ModPath {
    let longest = |p: &[String]| -> ModPath {
        (0..=p.len())
            .rev()
            .map(|n| p[..n].to_vec())
            .find(|m| known.contains(m))
            .unwrap_or_default()
    };
    let m = longest(path);
    if let Some(name) = path.get(m.len())
        && let Some(target) = exports.get(&m).and_then(|e| e.get(name))
        && target.as_slice() != path
    {
        let t = longest(target);
        if t != m {
            return t;
        }
    }
    m
}

fn related(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// The module graph of a crate: each module with the modules it uses.
pub fn graph(src: &Path) -> std::io::Result<BTreeMap<ModPath, BTreeSet<ModPath>>> {
    let files = module_files(src)?;
    let known: BTreeSet<ModPath> = files.keys().cloned().collect();
    let mut code = BTreeMap::new();
    for (m, f) in &files {
        let text = std::fs::read_to_string(f)?;
        code.insert(m.clone(), strip_test_modules(&strip_literals(&text)));
    }
    let exports: BTreeMap<ModPath, BTreeMap<String, Vec<String>>> = code
        .iter()
        .map(|(m, c)| (m.clone(), reexports(m, c)))
        .collect();
    let mut g = BTreeMap::new();
    for (m, c) in &code {
        let mut uses = BTreeSet::new();
        for p in crate_paths(m, false, c) {
            let target = resolve(&p, &known, &exports);
            if !related(m, &target) {
                uses.insert(target);
            }
        }
        g.insert(m.clone(), uses);
    }
    Ok(g)
}

/// Each cycle (as a path that returns to its start), one per strongly
/// connected component.
pub fn cycles(g: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    let mut out = Vec::new();
    let mut seen_in_cycle: BTreeSet<ModPath> = BTreeSet::new();
    for start in g.keys() {
        if seen_in_cycle.contains(start) {
            continue;
        }
        if let Some(cycle) = shortest_cycle(g, start) {
            seen_in_cycle.extend(component(g, start));
            out.push(cycle);
        }
    }
    out
}

fn reachable(g: &BTreeMap<ModPath, BTreeSet<ModPath>>, from: &ModPath) -> BTreeSet<ModPath> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.clone()];
    while let Some(n) = stack.pop() {
        for m in g.get(&n).into_iter().flatten() {
            if seen.insert(m.clone()) {
                stack.push(m.clone());
            }
        }
    }
    seen
}

/// The modules on some cycle through `start` (its strongly connected
/// component, `start` included when it is on a cycle).
pub fn component(g: &BTreeMap<ModPath, BTreeSet<ModPath>>, start: &ModPath) -> BTreeSet<ModPath> {
    reachable(g, start)
        .into_iter()
        .filter(|m| reachable(g, m).contains(start))
        .collect()
}

fn shortest_cycle(
    g: &BTreeMap<ModPath, BTreeSet<ModPath>>,
    start: &ModPath,
) -> Option<Vec<ModPath>> {
    let mut prev: BTreeMap<ModPath, ModPath> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.clone()]);
    let mut visited = BTreeSet::new();
    while let Some(n) = queue.pop_front() {
        for m in g.get(&n).into_iter().flatten() {
            if m == start {
                let mut path = vec![start.clone()];
                let mut cur = n.clone();
                let mut back = vec![];
                while &cur != start {
                    back.push(cur.clone());
                    cur = prev[&cur].clone();
                }
                back.reverse();
                path.extend(back);
                path.push(start.clone());
                return Some(path);
            }
            if visited.insert(m.clone()) {
                prev.insert(m.clone(), n.clone());
                queue.push_back(m.clone());
            }
        }
    }
    None
}

/// The layers of an acyclic graph, lowest first: a module's layer is one
/// above the highest layer it uses.
pub fn layers(g: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    fn level(
        m: &ModPath,
        g: &BTreeMap<ModPath, BTreeSet<ModPath>>,
        memo: &mut BTreeMap<ModPath, usize>,
        depth: usize,
    ) -> usize {
        if let Some(&l) = memo.get(m) {
            return l;
        }
        if depth > g.len() {
            return 0; // a cycle: reported elsewhere
        }
        let l = g
            .get(m)
            .into_iter()
            .flatten()
            .map(|d| level(d, g, memo, depth + 1) + 1)
            .max()
            .unwrap_or(0);
        memo.insert(m.clone(), l);
        l
    }
    let mut memo = BTreeMap::new();
    let mut out: Vec<Vec<ModPath>> = Vec::new();
    for m in g.keys() {
        let l = level(m, g, &mut memo, 0);
        if out.len() <= l {
            out.resize(l + 1, Vec::new());
        }
        out[l].push(m.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> ModPath {
        if s.is_empty() {
            vec![]
        } else {
            s.split("::").map(String::from).collect()
        }
    }

    fn paths(module: &str, code: &str) -> Vec<String> {
        crate_paths(&m(module), false, &strip_literals(code))
            .iter()
            .map(|p| show(p))
            .collect()
    }

    #[test]
    fn finds_plain_grouped_nested_and_inline_paths() {
        let code = r#"
            use crate::store::{Store, records::{Job, Sweep}};
            use crate::error::Result;
            fn f() { crate::validate::hello(x); let s = "crate::not_code"; }
            // crate::in_a_comment
            use super::sibling::Thing;
            use self::child::X;
        "#;
        assert_eq!(
            paths("api::grpc", code),
            vec![
                "store::Store",
                "store::records::Job",
                "store::records::Sweep",
                "error::Result",
                "validate::hello",
                "api::sibling::Thing",
                "api::grpc::child::X",
            ]
        );
        assert_eq!(paths("a::b", "use super::super::top;"), vec!["top"]);
        assert_eq!(
            paths("a", "use crate::{self as c, x::*};"),
            vec!["crate", "x"]
        );
    }

    #[test]
    fn literals_and_lifetimes_are_handled() {
        let code =
            "fn f<'a>(x: &'a str) -> char { let c = '{'; let r = r#\"crate::x\"#; crate::y::z() }";
        assert_eq!(paths("m", code), vec!["y::z"]);
    }

    #[test]
    fn test_modules_are_left_out() {
        let code = "use crate::a::X;\n#[cfg(test)]\nmod tests {\n use crate::b::Y;\n fn t() { {} }\n}\nuse crate::c::Z;";
        let code = strip_test_modules(&strip_literals(code));
        let found: Vec<String> = crate_paths(&m("m"), false, &code)
            .iter()
            .map(|p| show(p))
            .collect();
        assert_eq!(found, vec!["a::X", "c::Z"]);
    }

    fn write(dir: &Path, files: &[(&str, &str)]) {
        for (name, text) in files {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("layers-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_cycle_between_siblings_is_reported_and_a_parent_child_pair_is_not() {
        let d = temp("cycle");
        write(
            &d,
            &[
                (
                    "lib.rs",
                    "mod core; mod results; mod store; pub use core::Handle;",
                ),
                ("core.rs", "use crate::results::rank; pub struct Handle;"),
                ("results.rs", "use crate::Handle; use crate::store::Store;"),
                (
                    "store/mod.rs",
                    "mod rows; pub use rows::Row; pub struct Store;",
                ),
                ("store/rows.rs", "use super::Store; pub struct Row;"),
            ],
        );
        let g = graph(&d).unwrap();
        // The re-export at the root is followed to `core`.
        assert!(g[&m("results")].contains(&m("core")), "{g:?}");
        assert!(
            g[&m("store::rows")].is_empty(),
            "a child using its parent is fine"
        );
        let c = cycles(&g);
        assert_eq!(c.len(), 1, "{c:?}");
        let shown: Vec<String> = c[0].iter().map(|p| show(p)).collect();
        assert_eq!(shown, vec!["core", "results", "core"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_acyclic_crate_has_layers_from_leaves_up() {
        let d = temp("layers");
        write(
            &d,
            &[
                ("lib.rs", "pub mod api; pub mod state; pub mod store;"),
                ("main.rs", "use crate::anything;"),
                ("store.rs", ""),
                ("state.rs", "use crate::store::Store;"),
                ("api.rs", "use crate::state::Handle; use crate::store::Row;"),
            ],
        );
        let g = graph(&d).unwrap();
        assert!(
            !g.contains_key(&m("main")),
            "main.rs beside lib.rs is another crate"
        );
        assert!(cycles(&g).is_empty());
        let l = layers(&g);
        let shown: Vec<Vec<String>> = l
            .iter()
            .map(|layer| layer.iter().map(|p| show(p)).collect())
            .collect();
        assert_eq!(
            shown,
            vec![vec!["crate", "store"], vec!["state"], vec!["api"]]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
