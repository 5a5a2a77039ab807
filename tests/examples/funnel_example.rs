//! Runs the `funnel` example end to end, tiny, and checks its JSON and a usage error.

use crate::common::example_binary;

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(example_binary("funnel"))
        .args(args)
        .output()
        .expect("the example starts")
}

#[test]
fn tiny_run_measures_both_models_against_the_truth() {
    let output = run(&[
        "--json",
        "--seeds",
        "1",
        "--train-rows",
        "600",
        "--test-rows",
        "600",
        "--steps",
        "15",
        "--batch",
        "64",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the example failed:\n{stderr}");
    let results: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let seeds = results.as_array().unwrap();
    assert_eq!(seeds.len(), 1);
    let seed = &seeds[0];
    let number = |v: &serde_json::Value, key: &str| {
        v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("`{key}` missing in {v}"))
    };
    for model in ["esmm", "naive", "oracle"] {
        let m = &seed[model];
        for key in ["auc_true_cvr", "auc_drawn", "auc_true_cvr_clicked"] {
            let auc = number(m, key);
            assert!((0.0..=1.0).contains(&auc), "{model} {key} {auc}");
        }
        let mean = number(m, "mean_predicted");
        assert!(mean > 0.0 && mean < 1.0, "{model}: {mean}");
        assert!(number(m, "calibration_error") >= 0.0);
    }
    // The truth is its own ceiling: perfectly calibrated, the best ranking.
    let oracle = &seed["oracle"];
    assert_eq!(number(oracle, "calibration_error"), 0.0);
    assert_eq!(
        number(oracle, "mean_predicted"),
        number(oracle, "mean_true")
    );
    for model in ["esmm", "naive"] {
        assert!(number(&seed[model], "auc_true_cvr") <= number(oracle, "auc_true_cvr"));
    }
    for key in ["esmm_ctr_auc", "esmm_ctcvr_auc"] {
        assert!((0.0..=1.0).contains(&number(seed, key)), "{key}");
    }
    assert!(number(seed, "train_clicks") > 0.0);
}

#[test]
fn bad_flags_are_usage_errors() {
    for args in [["--seeds", "0"], ["--steps", "0"], ["--correlation", "2"]] {
        let output = run(&args);
        assert!(!output.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(args[0].trim_start_matches('-')) || stderr.contains(args[1]),
            "{args:?}: {stderr}"
        );
    }
}
