//! The `experiments/` folder this binary was built from (the figure and setting YAMLs, the
//! PyTorch side), shipped inside the binary: a binary installed with `cargo install` or copied
//! to a cluster's shared disk needs no checkout. It is unpacked on first use into a cache folder
//! named after its contents, so binaries built from different experiments never share one.
use crate::run::io::fnv1a;
use anyhow::{Context, Result};
use include_dir::{include_dir, Dir, File};
use std::path::PathBuf;

static EXPERIMENTS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/experiments");

fn files(dir: &'static Dir<'static>, out: &mut Vec<&'static File<'static>>) {
    out.extend(dir.files());
    for d in dir.dirs() {
        files(d, out);
    }
}

/// A digest of every shipped file's path and contents.
fn digest() -> u64 {
    let mut all = vec![];
    files(&EXPERIMENTS, &mut all);
    all.sort_by_key(|f| f.path());
    let mut bytes = vec![];
    for f in all {
        bytes.extend(f.path().to_string_lossy().as_bytes());
        bytes.push(0);
        bytes.extend(fnv1a(f.contents()).to_le_bytes());
    }
    fnv1a(&bytes)
}

/// `$XDG_CACHE_HOME/linattn`, else `~/.cache/linattn`, else the system's temporary folder.
fn cache_dir() -> PathBuf {
    let home = |v: &str| {
        std::env::var_os(v)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    };
    home("XDG_CACHE_HOME")
        .or_else(|| home("HOME").map(|h| h.join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("linattn")
}

/// The shipped experiments on disk: unpacked once (into a temporary folder, then renamed, so
/// that a reader never sees half of them and two processes may unpack at once).
pub fn unpacked() -> Result<PathBuf> {
    let root = cache_dir().join(format!("experiments-{:016x}", digest()));
    if root.join("figures").is_dir() {
        return Ok(root);
    }
    let parent = root.parent().expect("a cache folder has a parent");
    let unpack = || -> Result<()> {
        std::fs::create_dir_all(parent)?;
        let tmp = tempfile::Builder::new()
            .prefix(".experiments.")
            .tempdir_in(parent)?;
        EXPERIMENTS.extract(tmp.path())?;
        if let Err(e) = std::fs::rename(tmp.path(), &root) {
            // Another process unpacked the same contents first: either copy would do.
            if !root.join("figures").is_dir() {
                return Err(e.into());
            }
        }
        Ok(())
    };
    unpack().with_context(|| {
        format!(
            "unpacking the experiments shipped in this binary into {}",
            root.display()
        )
    })?;
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_experiments_are_the_checkouts_file_for_file() {
        let mut all = vec![];
        files(&EXPERIMENTS, &mut all);
        assert!(all.len() >= 15, "{} files shipped", all.len());
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("experiments");
        for f in all {
            assert_eq!(
                std::fs::read(root.join(f.path())).unwrap(),
                f.contents(),
                "{}: the shipped copy is stale (build.rs reruns when experiments/ changes)",
                f.path().display()
            );
        }
    }

    #[test]
    fn unpacking_gives_a_folder_of_figures_named_after_the_contents() {
        let dir = unpacked().unwrap();
        assert!(dir.join("figures/fig2_setting1.yaml").is_file());
        assert!(dir.join("pytorch_reference.py").is_file());
        assert_eq!(
            unpacked().unwrap(),
            dir,
            "a second call reuses the first copy"
        );
    }
}
