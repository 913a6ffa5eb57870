//! How to call the PyTorch side, `experiments/pytorch_reference.py`, in the project's venv.
use crate::BadInput;
use anyhow::{anyhow, Result};
use std::path::PathBuf;
use std::process::{Command, Output};

/// `$LINATTN_VENV`, default `~/.cache/linattn/venv-torch-2.11.0` (made by scripts/env.sh).
pub fn venv() -> PathBuf {
    match std::env::var_os("LINATTN_VENV") {
        Some(v) => PathBuf::from(v),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/linattn/venv-torch-2.11.0"),
    }
}

/// The script: `$LINATTN_REFERENCE`, else the copy shipped in this binary (the one it was
/// built and tested with).
pub fn script() -> Result<PathBuf> {
    match std::env::var_os("LINATTN_REFERENCE") {
        Some(p) => Ok(PathBuf::from(p)),
        None => Ok(crate::shipped::unpacked()?.join("pytorch_reference.py")),
    }
}

/// A command running the PyTorch side with `args`.
pub fn command<I, S>(args: I) -> Result<Command>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let python = venv().join("bin/python3");
    if !python.exists() {
        return Err(anyhow!(BadInput(format!(
            "the PyTorch side needs {} (run scripts/env.sh or set LINATTN_VENV)",
            python.display()
        ))));
    }
    let script = script()?;
    if !script.exists() {
        return Err(anyhow!(BadInput(format!(
            "no PyTorch reference script at {} (set LINATTN_REFERENCE)",
            script.display()
        ))));
    }
    let mut c = Command::new(python);
    c.arg(script).args(args);
    Ok(c)
}

/// Runs the PyTorch side and turns its failure into one line: its own last stderr line,
/// as bad input when it exited with 2.
pub fn run(mut c: Command, what: &str) -> Result<Output> {
    let out = c
        .output()
        .map_err(|e| anyhow!("could not start the PyTorch side: {e}"))?;
    match out.status.code() {
        Some(0) | Some(3) => Ok(out),
        code => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let line = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("(no message)")
                .trim()
                .to_string();
            let msg = format!("the PyTorch side rejected {what}: {line}");
            if code == Some(2) {
                Err(anyhow!(BadInput(msg)))
            } else {
                Err(anyhow!("{msg} (exit code {code:?})"))
            }
        }
    }
}
