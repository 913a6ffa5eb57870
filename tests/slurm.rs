//! `scripts/slurm/`: a figure reproduced as a Slurm array of shards on a private one-node
//! cluster equals the same figure reproduced by one process. The work is done by
//! `scripts/slurm/selftest.sh` (it installs slurm-wlm and munge with apt-get when they are
//! missing, starts its own daemons and stops them); this test runs it with the binary that
//! cargo built. Where the script cannot run (not root, no apt-get) it prints
//! `slurm selftest: skipped: <why>` and the test passes, saying so.
use std::path::PathBuf;
use std::process::Command;

#[test]
fn slurm_array_of_two_shards_reproduces_the_single_process_figure() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("scripts/slurm/selftest.sh");
    let out = Command::new("bash")
        .arg(&script)
        .current_dir(&root)
        .env("LINATTN_BIN", env!("CARGO_BIN_EXE_linattn"))
        .output()
        .unwrap_or_else(|e| panic!("could not run bash {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} failed ({:?}):\n{stdout}\n{stderr}",
        script.display(),
        out.status.code()
    );
    match stdout
        .lines()
        .find(|l| l.starts_with("slurm selftest: skipped:"))
    {
        Some(skip) => println!("{skip}"),
        None => {
            let last = stdout.lines().last().unwrap_or("");
            assert!(
                last.starts_with("slurm selftest: passed"),
                "unexpected last line {last:?}:\n{stdout}\n{stderr}"
            );
            println!("{last}");
        }
    }
}
