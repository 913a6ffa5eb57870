//! The modules of src/ are layered: each top-level module imports only the modules declared
//! before it in src/lib.rs, so there are no import cycles. Read from the source itself.
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
    let mut out = vec![];
    let mut stack = vec![root().join(module)];
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
