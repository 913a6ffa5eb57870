//! Bounded property tests: no YAML text and no `--set` value makes config loading panic;
//! every rejection is a one-line BadInput.
use linattn::config::Config;
use linattn::BadInput;
use proptest::prelude::*;

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("model.layers"),
        Just("model.heads"),
        Just("model.dim"),
        Just("model.init_std"),
        Just("model.parametrization"),
        Just("model.attention"),
        Just("model.mlp_hidden"),
        Just("data.setting"),
        Just("data.context"),
        Just("data.batch"),
        Just("data.gamma_shape"),
        Just("data.eval_seed"),
        Just("train.optimizer"),
        Just("train.lr"),
        Just("train.betas"),
        Just("train.clip"),
        Just("train.clip_mode"),
        Just("train.mode"),
        Just("train.iters"),
        Just("train.seed"),
        Just("train.device"),
        Just("train.save_every"),
        Just("train.skip_nonfinite"),
        Just("train.dtype"),
        Just("train.nope"),
        Just("x.y"),
    ]
    .prop_map(str::to_string)
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| v.to_string()),
        "[a-z_:]{0,12}",
        Just("[0.9, 0.99]".to_string()),
        Just("[1, 2, 3]".to_string()),
        Just("{a: 1}".to_string()),
        Just("null".to_string()),
        Just("-.inf".to_string()),
        Just(".nan".to_string()),
        ".{0,20}",
    ]
}

fn check(r: anyhow::Result<Config>) {
    if let Err(e) = r {
        assert!(
            e.downcast_ref::<BadInput>().is_some(),
            "not reported as bad input: {e:#}"
        );
        assert!(!e.to_string().is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_set_values_never_panic(k in key(), v in value(), eq in prop::bool::ANY) {
        let assignment = if eq { format!("{k}={v}") } else { format!("{k}{v}") };
        check(Config::from_yaml_str("", &[assignment]));
    }

    #[test]
    fn random_yaml_text_never_panics(text in ".{0,200}") {
        check(Config::from_yaml_str(&text, &[]));
    }

    #[test]
    fn random_yaml_mappings_never_panic(k in key(), v in value()) {
        let (section, field) = k.split_once('.').unwrap();
        check(Config::from_yaml_str(&format!("{section}:\n  {field}: {v}\n"), &[]));
    }
}
