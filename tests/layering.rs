//! The shape of src/, read from the source itself: the modules are layered (each top-level
//! module imports only the modules declared before it in src/lib.rs, so there are no import
//! cycles), and no function is longer than about 80 lines.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level modules in lib.rs's order.
fn layers() -> Vec<String> {
    let lib = std::fs::read_to_string(root().join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .filter_map(|l| l.strip_suffix(';'))
        .map(String::from)
        .collect()
}

/// Every .rs file of a top-level module (`src/m.rs` or `src/m/**.rs`).
fn files_of(module: &str) -> Vec<PathBuf> {
    let single = root().join(format!("{module}.rs"));
    if single.exists() {
        return vec![single];
    }
    rs_files(&root().join(module))
}

/// Every .rs file below `dir`.
fn rs_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out
}

/// The top-level modules a file names as `crate::<module>` (in `use` lines and in paths).
fn crate_references(path: &Path, known: &[String]) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut found = vec![];
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if known.contains(&name) && !found.contains(&name) {
            found.push(name);
        }
        // `use crate::{a, b}`
        if rest.starts_with('{') {
            let group: String = rest.chars().skip(1).take_while(|c| *c != '}').collect();
            for part in group.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if known.contains(&name) && !found.contains(&name) {
                    found.push(name);
                }
            }
        }
    }
    found
}

#[test]
fn every_module_imports_only_modules_declared_before_it_so_there_are_no_cycles() {
    let layers = layers();
    assert!(layers.len() >= 10, "lib.rs declares the layers: {layers:?}");
    let rank: BTreeMap<&str, usize> = layers
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let mut violations = vec![];
    for module in &layers {
        for file in files_of(module) {
            for used in crate_references(&file, &layers) {
                if used != *module && rank[used.as_str()] > rank[module.as_str()] {
                    violations.push(format!(
                        "{} (layer {module}) uses crate::{used}, a higher layer",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports that reach up:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_layering_check_sees_a_reference_that_reaches_up() {
    let tmp = std::env::temp_dir().join(format!("linattn-layering-{}.rs", std::process::id()));
    std::fs::write(
        &tmp,
        "use crate::{config, figures::spec};\nfn f() { crate::train::drive(); }\n",
    )
    .unwrap();
    let known: Vec<String> = ["config", "train", "figures"].map(String::from).to_vec();
    let mut got = crate_references(&tmp, &known);
    got.sort();
    std::fs::remove_file(&tmp).unwrap();
    assert_eq!(got, ["config", "figures", "train"]);
}

/// `line` without its string and char literals and its `//` comment, so that braces inside
/// them are not counted.
fn code_of(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            // A char literal ('{', '\n'); a lifetime ('a) has no closing quote nearby.
            '\'' => {
                let rest: String = chars.clone().take(3).collect();
                if let Some(end) = rest.find('\'') {
                    for _ in 0..=end {
                        chars.next();
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => break,
            _ => out.push(c),
        }
    }
    out
}

/// Every function of the file at `path` with its length in lines: from its `fn` line to the
/// line that closes its body.
fn function_lengths(path: &Path) -> Vec<(String, usize, usize)> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<String> = text.lines().map(code_of).collect();
    let mut out = vec![];
    for (i, line) in lines.iter().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = words.iter().position(|w| *w == "fn") else {
            continue;
        };
        if !words[..at]
            .iter()
            .all(|w| w.starts_with("pub") || ["const", "unsafe", "async"].contains(w))
        {
            continue;
        }
        let name: String = words
            .get(at + 1)
            .map(|w| {
                w.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect()
            })
            .unwrap_or_default();
        let (mut depth, mut opened) = (0i64, false);
        for (j, l) in lines.iter().enumerate().skip(i) {
            if !opened && l.trim_end().ends_with(';') {
                break; // a declaration without a body
            }
            for c in l.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if opened && depth == 0 {
                out.push((name.clone(), i + 1, j - i + 1));
                break;
            }
        }
    }
    out
}

/// About 80 lines at the most: the longest, the kernel's `block` (one chunk's pass, its
/// parts each a function), is 83.
const LONGEST_FUNCTION: usize = 90;

#[test]
fn no_function_in_src_is_longer_than_about_80_lines() {
    let files = rs_files(&root());
    let mut long = vec![];
    let mut counted = 0;
    for f in &files {
        for (name, line, len) in function_lengths(f) {
            counted += 1;
            if len > LONGEST_FUNCTION {
                long.push(format!("{}:{line} {name}: {len} lines", f.display()));
            }
        }
    }
    assert!(counted > 500, "{counted} functions found");
    assert!(
        long.is_empty(),
        "functions over {LONGEST_FUNCTION} lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_length_check_counts_a_body_and_ignores_braces_in_strings() {
    let tmp = std::env::temp_dir().join(format!("linattn-lengths-{}.rs", std::process::id()));
    std::fs::write(
        &tmp,
        "pub(crate) fn a() {\n    let s = \"}}\";\n    let c = '{';\n}\nfn b<'x>(v: &'x str) -> &'x str {\n    v // }\n}\n",
    )
    .unwrap();
    let got = function_lengths(&tmp);
    std::fs::remove_file(&tmp).unwrap();
    assert_eq!(got, [("a".to_string(), 1, 4), ("b".to_string(), 5, 3)]);
}
