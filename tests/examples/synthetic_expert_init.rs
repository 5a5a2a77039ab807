//! The synthetic example's `--expert-init`: a tiny run of each start, the random one
//! bitwise the default, the start recorded in the JSON, bad input an error.

use crate::common::example_binary;

use std::path::PathBuf;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(example_binary("synthetic"))
        .args(args)
        .output()
        .expect("the example starts")
}

/// A tiny run of MMoE, OMoE and shared-bottom with `extra` flags: the JSON lines.
fn tiny(name: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let (loss, gates) = (dir.join("loss.png"), dir.join("gates.png"));
    let mut args = vec![
        "--json",
        "--steps",
        "20",
        "--batch-size",
        "32",
        "--train-rows",
        "300",
        "--test-rows",
        "64",
        "--seeds",
        "1",
        "--correlations",
        "0.5",
        "--pretrain-steps",
        "5",
        "--loss-plot",
        loss.to_str().unwrap(),
        "--gate-plot",
        gates.to_str().unwrap(),
    ];
    args.extend(extra);
    let output = run(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the example failed:\n{stderr}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn mse_bits(lines: &[serde_json::Value]) -> Vec<(String, u64)> {
    lines
        .iter()
        .map(|v| {
            let mse = v["test_mse"].as_f64().unwrap();
            (v["model"].as_str().unwrap().to_string(), mse.to_bits())
        })
        .collect()
}

#[test]
fn each_expert_start_runs_and_the_random_one_is_the_default_bit_for_bit() {
    let default = tiny("synthetic_init_default", &[]);
    let random = tiny("synthetic_init_random", &["--expert-init", "random"]);
    assert_eq!(default.len(), 3);
    assert_eq!(mse_bits(&default), mse_bits(&random));
    assert!(random.iter().all(|v| v["expert_init"] == "random"));
    for init in ["input", "input-output"] {
        let lines = tiny(&format!("synthetic_init_{init}"), &["--expert-init", init]);
        assert_eq!(lines.len(), 3);
        for v in &lines {
            assert_eq!(v["expert_init"].as_str(), Some(init), "{v}");
            assert!(v["test_mse"].as_f64().is_some_and(f64::is_finite), "{v}");
        }
        // The gated models start elsewhere; shared-bottom has no experts to start.
        let (started, plain) = (mse_bits(&lines), mse_bits(&random));
        for (s, p) in started.iter().zip(&plain) {
            assert_eq!(s.0, p.0);
            assert_eq!(s.0 == "shared-bottom", s.1 == p.1, "{init}: {s:?} vs {p:?}");
        }
    }
}

#[test]
fn a_start_with_more_experts_than_rows_or_bad_flags_is_an_error() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("synthetic_init_bad");
    std::fs::create_dir_all(&dir).unwrap();
    let (loss, gates) = (dir.join("loss.png"), dir.join("gates.png"));
    let output = run(&[
        "--models",
        "mmoe",
        "--expert-init",
        "input",
        "--steps",
        "2",
        "--train-rows",
        "5",
        "--test-rows",
        "4",
        "--seeds",
        "1",
        "--correlations",
        "0.5",
        "--loss-plot",
        loss.to_str().unwrap(),
        "--gate-plot",
        gates.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("8 clusters for 5 rows"), "{stderr}");
    for bad in [
        &["--expert-init", "kmeans"][..],
        &["--gate-scale", "-1"],
        &["--pretrain-steps", "x"],
    ] {
        assert_eq!(run(bad).status.code(), Some(2), "{bad:?} is a usage error");
    }
}
