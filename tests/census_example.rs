//! The census example end to end, run as the binary cargo builds next to this test
//! (`target/<profile>/examples/census`): its command-line errors always, and with
//! `MMOE_CENSUS_DIR` set (CI sets it) a short training run on the full data set
//! whose test AUCs must already be well above chance.

mod common;

use common::example_binary;

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    let binary = example_binary("census");
    Command::new(&binary)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("could not run `{}`: {e}", binary.display()))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The number stored under `key` in a flat, one-line JSON object.
fn json_number(json: &str, key: &str) -> f64 {
    let pattern = format!("\"{key}\":");
    let at = json
        .find(&pattern)
        .unwrap_or_else(|| panic!("no `{key}` in {json}"))
        + pattern.len();
    let rest = json[at..].trim_start();
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end]
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("`{key}` in {json} is not a number: {e}"))
}

#[test]
fn bad_flags_are_a_usage_error_with_exit_code_2() {
    for args in [
        &["--bogus"][..],
        &["--data", ".", "--experts", "-1"],
        &[],
        &["--data", ".", "--group", "3"],
        &["--data", ".", "--model", "moe"],
        &["--data", ".", "--epochs", "0"],
        &["--data", ".", "--lr", "fast"],
        &["--data", ".", "--seed"],
    ] {
        let output = run(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?} should be a usage error; stderr: {}",
            stderr(&output)
        );
        // clap capitalises its usage heading ("Usage: census ...").
        assert!(
            stderr(&output).to_lowercase().contains("usage: census"),
            "{args:?}: no usage line in {}",
            stderr(&output)
        );
        assert!(output.stdout.is_empty(), "{args:?} printed to stdout");
    }
}

#[test]
fn help_prints_every_flag() {
    let output = run(&["--help"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--data",
        "--group",
        "--model",
        "--epochs",
        "--experts",
        "--units",
        "--lr",
        "--seed",
        "--batch",
        "--json",
    ] {
        assert!(
            text.contains(flag),
            "--help does not mention {flag}:\n{text}"
        );
    }
}

#[test]
fn a_missing_data_directory_is_a_clear_error() {
    let dir = std::env::temp_dir().join("mmoe-census-example-no-such-dir");
    let output = run(&["--data", dir.to_str().unwrap(), "--json"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("does not exist") && message.contains("mmoe-census-example-no-such-dir"),
        "unclear error: {message}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn short_training_on_the_full_data_beats_the_floor() {
    let Some(dir) = std::env::var_os("MMOE_CENSUS_DIR") else {
        eprintln!(
            "note: MMOE_CENSUS_DIR is not set, so the census training run is skipped \
             (point it at a directory with census-income.data and census-income.test)"
        );
        return;
    };
    let dir = dir
        .to_str()
        .expect("MMOE_CENSUS_DIR is valid UTF-8")
        .to_string();
    // A fraction of one epoch: 150 steps of 512 rows, about 77k of the 199,523
    // training rows, with the default model.
    let output = run(&[
        "--data",
        &dir,
        "--group",
        "1",
        "--model",
        "mmoe",
        "--epochs",
        "1",
        "--max-steps",
        "150",
        "--batch",
        "512",
        "--seed",
        "1",
        "--json",
    ]);
    assert!(
        output.status.success(),
        "census example failed: {}",
        stderr(&output)
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    let json = stdout.trim();
    assert!(
        json.starts_with('{') && json.ends_with('}') && !json.contains('\n'),
        "--json should print one JSON object, got:\n{stdout}"
    );
    println!("{json}");
    assert_eq!(json_number(json, "group"), 1.0);
    assert_eq!(json_number(json, "seed"), 1.0);
    assert!(json.contains("\"model\":\"mmoe\""), "{json}");
    let income = json_number(json, "test_auc_income");
    let marital = json_number(json, "test_auc_marital");
    for key in ["validation_auc_income", "validation_auc_marital", "seconds"] {
        assert!(json_number(json, key).is_finite());
    }
    assert!(income > 0.90, "test AUC income {income} ≤ 0.90: {json}");
    assert!(
        marital > 0.97,
        "test AUC marital status {marital} ≤ 0.97: {json}"
    );
}
