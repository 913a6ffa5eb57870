//! `linattn compare` runs both sides, writes compare.csv and an overlay PNG, and judges them.
mod common;
use common::*;
use std::path::Path;

fn compare(config: &Path, sets: &[&str], out: &Path) -> std::process::Output {
    let mut c = linattn();
    c.arg("compare");
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    output(with_config(c, config, &sets, out))
}

/// The command on a linear setting (clipped, Adam) and on the MLP variant (clip_grad_norm_);
/// tests/parity_with_pytorch.rs checks every setting and both optimizers bit for bit.
#[test]
fn compare_says_bit_identical_for_a_linear_setting_and_the_mlp_variant_and_writes_its_files() {
    for (config, sets) in [
        (
            "settings/sphere.yaml",
            vec![
                "train.iters=60",
                "train.optimizer=adam",
                "train.lr=0.1",
                "train.clip=0.1",
            ],
        ),
        ("settings/mlp_variant.yaml", vec!["train.iters=30"]),
    ] {
        let tmp = tempdir();
        let o = compare(&experiment(config), &sets, tmp.path());
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{config}: {stdout}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(stdout.contains("bit-identical: yes"), "{config}: {stdout}");
        let csv = std::fs::read_to_string(tmp.path().join("compare.csv")).unwrap();
        assert!(csv.starts_with("iter,rust_loss,torch_loss,abs_diff,rel_diff\n"));
        assert!(csv.lines().count() > 30);
        let png = std::fs::read(tmp.path().join("compare.png")).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
}

#[test]
fn compare_fails_beyond_tolerance_when_the_sides_differ() {
    // tch's C++ Adam is not bit-identical to torch.optim.AdamW: compare must notice.
    let tmp = tempdir();
    let o = compare(
        &experiment("settings/setting1_normal_n20.yaml"),
        &[
            "train.iters=80",
            "train.optimizer=adam",
            "train.optimizer_impl=libtorch",
        ],
        tmp.path(),
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("bit-identical: no"), "{stdout}");
}

#[test]
fn a_config_the_pytorch_side_rejects_gives_one_clear_line() {
    let tmp = tempdir();
    let stub = tmp.path().join("stub.py");
    std::fs::write(&stub, "import sys\nprint('error: config key data.setting: not supported here', file=sys.stderr)\nsys.exit(2)\n").unwrap();
    let mut c = linattn();
    c.env("LINATTN_REFERENCE", &stub).arg("compare");
    let o = output(with_config(
        c,
        &experiment("settings/setting1_normal_n20.yaml"),
        &["train.iters=2".into()],
        &tmp.path().join("o"),
    ));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("PyTorch side rejected") && stderr.contains("data.setting"),
        "{stderr}"
    );
    assert!(!stderr.contains("Traceback"));
}
