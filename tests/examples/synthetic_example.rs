//! Runs the `synthetic` example end to end on the default adapter (lavapipe in CI)
//! with a shortened schedule and checks its JSON lines, its plots and its usage
//! errors.
//!
//! `cargo test` builds the examples before the integration tests, next to them:
//! `target/<profile>/deps/<this test>` and `target/<profile>/examples/synthetic`.

use crate::common::example_binary;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(example_binary("synthetic"))
        .args(args)
        .output()
        .expect("the example starts")
}

#[test]
fn short_run_prints_one_finite_json_line_per_model() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("synthetic_example");
    std::fs::create_dir_all(&dir).unwrap();
    let (loss_png, gate_png) = (dir.join("loss.png"), dir.join("gates.png"));
    for png in [&loss_png, &gate_png] {
        let _ = std::fs::remove_file(png);
    }
    let output = run(&[
        "--json",
        "--steps",
        "40",
        "--batch-size",
        "32",
        "--train-rows",
        "256",
        "--test-rows",
        "64",
        "--seeds",
        "1",
        "--first-seed",
        "7",
        "--correlations",
        "0.5",
        "--loss-plot",
        loss_png.to_str().unwrap(),
        "--gate-plot",
        gate_png.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the example failed ({}):\n{stderr}",
        output.status
    );

    let mut models = HashSet::new();
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
        let model = v["model"].as_str().expect("`model` is a string");
        assert!(models.insert(model.to_string()), "{model} reported twice");
        assert_eq!(v["correlation"].as_f64(), Some(0.5), "{line}");
        assert_eq!(v["seed"].as_u64(), Some(7), "{line}");
        assert_eq!(v["steps"].as_u64(), Some(40), "{line}");
        let mse = v["test_mse"].as_f64().expect("`test_mse` is a number");
        assert!(mse.is_finite() && mse > 0.0, "test_mse {mse}: {line}");
        let seconds = v["seconds"].as_f64().expect("`seconds` is a number");
        assert!(
            seconds.is_finite() && seconds > 0.0,
            "seconds {seconds}: {line}"
        );
    }
    let expected: HashSet<String> = ["mmoe", "omoe", "shared-bottom"].map(String::from).into();
    assert_eq!(models, expected, "stdout:\n{stdout}\nstderr:\n{stderr}");

    // The table goes to stderr under --json, and both pictures are written.
    assert!(stderr.contains("test MSE"), "no table on stderr:\n{stderr}");
    for png in [&loss_png, &gate_png] {
        let bytes = std::fs::read(png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{} is not a PNG",
            png.display()
        );
    }
}

#[test]
fn bad_flags_are_usage_errors_with_exit_code_2() {
    for args in [
        &["--correlations", "1.5"][..],
        &["--correlations", "0.5,-2"],
        &["--train-rows", "-5"],
        &["--train-rows", "0"],
        &["--models", "mmoe,moe"],
        &["--learning-rate", "-1"],
        &["--noise"],
        &["--gate", "static", "--noise"],
        &["--selection", "shared"],
        &["--gate", "topk", "--selection", "both"],
        &["--data", "halves", "--correlations", "0,0.5"],
        &["--data", "quarters"],
        &["--no-such-flag"],
    ] {
        let output = run(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?} should be a usage error; stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("error:"),
            "{args:?}: no error message on stderr"
        );
        assert!(output.stdout.is_empty(), "{args:?} printed to stdout");
    }
}

/// A 20-step run of top-2 MMoE with the flags `extra` besides: its one JSON line and
/// its stderr (the example must succeed).
fn small_top_2_run(name: &str, extra: &[&str]) -> (serde_json::Value, String) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let (loss, gates) = (dir.join("loss.png"), dir.join("gates.png"));
    let mut args = vec![
        "--json",
        "--models",
        "mmoe",
        "--gate",
        "topk",
        "--k",
        "2",
        "--steps",
        "20",
        "--batch-size",
        "32",
        "--train-rows",
        "256",
        "--test-rows",
        "64",
        "--seeds",
        "1",
        "--correlations",
        "0.5",
        "--loss-plot",
        loss.to_str().unwrap(),
        "--gate-plot",
        gates.to_str().unwrap(),
    ];
    args.extend(extra);
    let output = run(&args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "the example failed:\n{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let v = lines[0].clone();
    assert_eq!(v["gate"].as_str(), Some("topk"), "{v}");
    assert_eq!(v["k"].as_u64(), Some(2), "{v}");
    assert!(v["test_mse"].as_f64().is_some_and(f64::is_finite), "{v}");
    (v, stderr)
}

#[test]
fn noisy_top_k_gates_run_and_are_recorded_in_the_json() {
    let (v, stderr) = small_top_2_run("synthetic_example_noise", &["--noise"]);
    assert_eq!(v["noise"].as_bool(), Some(true), "{v}");
    assert_eq!(v["selection"].as_str(), Some("own"), "{v}");
    assert!(stderr.contains("noisy top-2 gates"), "{stderr}");
}

#[test]
fn the_load_balancing_loss_runs_and_is_recorded_in_the_json() {
    let (v, stderr) = small_top_2_run(
        "synthetic_example_load",
        &["--balance", "0.1", "--balance-loss", "load"],
    );
    assert_eq!(v["balance_loss"].as_str(), Some("load"), "{v}");
    assert!((v["balance"].as_f64().unwrap() - 0.1).abs() < 1e-6, "{v}");
    assert!(stderr.contains("top-2 gates, load balance 0.1"), "{stderr}");
    // An unknown loss kind is a usage error.
    let output = run(&["--balance-loss", "switch"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn a_shared_selection_computes_two_experts_per_row_and_is_recorded_in_the_json() {
    let (v, stderr) = small_top_2_run("synthetic_example_shared", &["--selection", "shared"]);
    assert_eq!(v["selection"].as_str(), Some("shared"), "{v}");
    let per_row = v["experts_per_row"].as_f64().unwrap();
    assert!((per_row - 2.0).abs() < 1e-9, "{v}");
    assert!(stderr.contains("top-2 shared-selection gates"), "{stderr}");
}

/// `--trainability N` runs N seeds per model and correlation, prints one line per
/// model and correlation with the spread and the failed fraction, and draws the
/// histogram; the failed fraction follows `--fail-mse`.
#[test]
fn the_trainability_mode_reports_every_seed_and_draws_the_histogram() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("synthetic_trainability");
    std::fs::create_dir_all(&dir).unwrap();
    let histogram = dir.join("trainability.png");
    let _ = std::fs::remove_file(&histogram);
    let run_with = |fail_mse: &str| {
        let output = run(&[
            "--json",
            "--trainability",
            "2",
            "--models",
            "mmoe,shared-bottom",
            "--steps",
            "20",
            "--batch-size",
            "32",
            "--train-rows",
            "256",
            "--test-rows",
            "64",
            "--correlations",
            "0.5",
            "--fail-mse",
            fail_mse,
            "--loss-plot",
            dir.join("loss.png").to_str().unwrap(),
            "--gate-plot",
            dir.join("gates.png").to_str().unwrap(),
            "--trainability-plot",
            histogram.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "the example failed:\n{stderr}");
        let runs = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count();
        (runs, stderr)
    };
    // Twenty steps fit nothing: every run fails a tight threshold, none a loose one.
    let (runs, stderr) = run_with("0.05");
    assert_eq!(runs, 4, "2 seeds × 2 models:\n{stderr}");
    let rows: Vec<&str> = stderr
        .lines()
        .skip_while(|l| !l.starts_with("trainability:"))
        .skip(2)
        .take(2)
        .collect();
    assert_eq!(rows.len(), 2, "{stderr}");
    for row in &rows {
        let fields: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(fields.get(fields.len() - 6), Some(&"2"), "runs: {row}");
        assert_eq!(fields.last(), Some(&"100%"), "{row}");
    }
    let bytes = std::fs::read(&histogram).expect("the histogram is written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
    let (_, stderr) = run_with("1000");
    assert!(
        stderr
            .lines()
            .skip_while(|l| !l.starts_with("trainability:"))
            .skip(2)
            .take(2)
            .all(|l| l.ends_with("0%") && !l.ends_with("100%")),
        "{stderr}"
    );
    let output = run(&["--trainability", "0"]);
    assert_eq!(output.status.code(), Some(2), "0 seeds is a usage error");
}

/// `--models cgc,ple` trains both, with expert widths matching MMoE's parameter count
/// (within a few percent), and a level the gates cannot make is an error.
#[test]
fn cgc_and_ple_run_with_parameter_counts_matched_to_mmoe() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("synthetic_ple");
    std::fs::create_dir_all(&dir).unwrap();
    let plots = [dir.join("loss.png"), dir.join("gates.png")];
    let common = [
        "--json",
        "--steps",
        "20",
        "--batch-size",
        "32",
        "--train-rows",
        "128",
        "--test-rows",
        "32",
        "--seeds",
        "1",
        "--correlations",
        "0.9",
        "--loss-plot",
        plots[0].to_str().unwrap(),
        "--gate-plot",
        plots[1].to_str().unwrap(),
    ];
    let output = run(&[&common[..], &["--models", "mmoe,cgc,ple", "--levels", "3"]].concat());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the example failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let params = |model: &str| {
        let line = lines.iter().find(|v| v["model"] == model).unwrap();
        assert!(line["test_mse"].as_f64().unwrap().is_finite(), "{line}");
        line["parameters"].as_f64().unwrap()
    };
    let mmoe = params("mmoe");
    for model in ["cgc", "ple"] {
        let ratio = params(model) / mmoe;
        assert!(
            (0.95..1.05).contains(&ratio),
            "{model}: {ratio} of MMoE's parameters"
        );
    }
    // Top-3 gates over 1 shared + 1 own expert.
    let output = run(&[
        &common[..],
        &[
            "--models",
            "cgc",
            "--gate",
            "topk",
            "--k",
            "3",
            "--shared-experts",
            "1",
            "--task-experts",
            "1",
        ],
    ]
    .concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "accepted:\n{stderr}");
    assert!(
        stderr.contains("level 0: top-k gate with k = 3"),
        "the error does not name the level:\n{stderr}"
    );
}

/// Experts on halves of the input, on data whose tasks each use one half: the run
/// succeeds, says which data it trained on, and matches MMoE's parameter count.
#[test]
fn experts_on_input_halves_run_with_parameters_matched_to_mmoe() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("synthetic_halves");
    std::fs::create_dir_all(&dir).unwrap();
    let (loss, gates) = (dir.join("loss.png"), dir.join("gates.png"));
    let output = run(&[
        "--json",
        "--data",
        "halves",
        "--models",
        "mmoe,mmoe-halves",
        "--steps",
        "20",
        "--batch-size",
        "32",
        "--train-rows",
        "128",
        "--test-rows",
        "32",
        "--seeds",
        "1",
        "--correlations",
        "0",
        "--loss-plot",
        loss.to_str().unwrap(),
        "--gate-plot",
        gates.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "the example failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let params = |model: &str| {
        let line = lines.iter().find(|v| v["model"] == model).unwrap();
        assert_eq!(line["data"], "halves", "{line}");
        assert!(line["test_mse"].as_f64().unwrap().is_finite(), "{line}");
        line["parameters"].as_f64().unwrap()
    };
    let ratio = params("mmoe-halves") / params("mmoe");
    assert!(
        (0.95..1.05).contains(&ratio),
        "{ratio} of MMoE's parameters"
    );
}
