//! Bit-for-bit comparison of `linattn::rng` against real numpy.
//!
//! Needs the project venv (`$LINATTN_VENV`, default
//! `~/.cache/linattn/venv-torch-2.11.0`) with numpy; a missing interpreter is a
//! test FAILURE, not a skip, because the whole point is the exact match.

use linattn::rng::LegacyRandomState;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

fn python() -> PathBuf {
    let venv = std::env::var("LINATTN_VENV").unwrap_or_else(|_| {
        let home = std::env::var("HOME").expect("HOME not set");
        format!("{home}/.cache/linattn/venv-torch-2.11.0")
    });
    let py = PathBuf::from(&venv).join("bin/python3");
    assert!(
        py.exists(),
        "numpy reference needs python at {} (set LINATTN_VENV to a venv with numpy)",
        py.display()
    );
    py
}

/// Runs `body` (Python, with `np` imported and a list `out` of arrays to
/// fill) and returns the concatenation of `out` as f64 values.
fn numpy_draws(body: &str) -> Vec<f64> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "linattn_numpy_gamma_{}_{}.f64",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let script = format!(
        "import sys\nimport numpy as np\nout = []\n{body}\n\
         np.concatenate([np.ravel(a) for a in out]).astype('<f8').tofile(sys.argv[1])\n"
    );
    let py = python();
    let res = Command::new(&py)
        .arg("-c")
        .arg(&script)
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("failed to run {}: {e}", py.display()));
    assert!(
        res.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    let bytes = std::fs::read(&path).expect("read numpy output");
    let _ = std::fs::remove_file(&path);
    assert_eq!(bytes.len() % 8, 0);
    bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn assert_bits_equal(ours: &[f64], theirs: &[f64], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "{what}: index {i}: ours {a:e} numpy {b:e}"
        );
    }
}

fn check_gamma(k: f64, seed: u32, n: usize) {
    let scale = (10.0 / k).sqrt();
    let theirs = numpy_draws(&format!(
        "k = float.fromhex('{}')\nnp.random.seed({seed})\n\
         out.append(np.random.gamma(k, np.sqrt(10.0 / k), size={n}))",
        hex(k)
    ));
    let ours = LegacyRandomState::new(seed).gamma_fill(k, scale, n);
    assert_bits_equal(&ours, &theirs, &format!("gamma k={k} seed={seed}"));
}

/// Exact hex literal of an f64 so python sees the identical shape value.
fn hex(x: f64) -> String {
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mant = bits & ((1u64 << 52) - 1);
    assert!(
        x > 0.0 && exp > -1023,
        "hex() only for positive normal numbers"
    );
    format!("0x1.{mant:013x}p{exp}")
}

#[test]
fn legacy_gamma_is_bit_identical_to_numpy_for_small_shapes() {
    for k in [0.1, 0.5] {
        for seed in [0, 1] {
            check_gamma(k, seed, 100_000);
        }
    }
}

#[test]
fn legacy_gamma_is_bit_identical_to_numpy_for_shape_one_and_above() {
    for k in [1.0, 2.5, 7.0] {
        for seed in [0, 1] {
            check_gamma(k, seed, 100_000);
        }
    }
}

#[test]
fn interleaved_gamma_calls_like_the_data_generator_match_numpy() {
    let k = 0.1;
    let scale = (10.0_f64 / k).sqrt();
    for seed in [0u32, 1, 12345] {
        let theirs = numpy_draws(&format!(
            "k = float.fromhex('{}')\nnp.random.seed({seed})\n\
             for _ in range(3):\n\
             \x20   out.append(np.random.gamma(k, np.sqrt(10.0 / k), size=(1000, 20)))\n\
             \x20   out.append(np.random.gamma(k, np.sqrt(10.0 / k), size=(1000, 1)))",
            hex(k)
        ));
        let mut rng = LegacyRandomState::new(seed);
        let mut ours = Vec::new();
        for _ in 0..3 {
            ours.extend(rng.gamma_fill(k, scale, 1000 * 20));
            ours.extend(rng.gamma_fill(k, scale, 1000));
        }
        assert_bits_equal(&ours, &theirs, &format!("interleaved seed={seed}"));
    }
}

#[test]
fn random_sample_and_standard_normal_match_numpy() {
    // Odd counts and a mixed sequence exercise the cached second gauss.
    for seed in [0u32, 1, 4_294_967_295] {
        let theirs = numpy_draws(&format!(
            "np.random.seed({seed})\n\
             out.append(np.random.random_sample(3001))\n\
             out.append(np.random.standard_normal(2999))\n\
             out.append(np.random.standard_exponential(5))\n\
             out.append(np.array([np.random.standard_normal()]))\n\
             out.append(np.random.random_sample(7))\n\
             out.append(np.random.standard_normal(4))"
        ));
        let mut r = LegacyRandomState::new(seed);
        let mut ours: Vec<f64> = (0..3001).map(|_| r.random_sample()).collect();
        ours.extend((0..2999).map(|_| r.standard_normal()));
        ours.extend((0..5).map(|_| r.standard_exponential()));
        ours.push(r.standard_normal());
        ours.extend((0..7).map(|_| r.random_sample()));
        ours.extend((0..4).map(|_| r.standard_normal()));
        assert_bits_equal(&ours, &theirs, &format!("uniform/normal seed={seed}"));
    }
}
