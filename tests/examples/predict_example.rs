//! The predict example end to end, run as the binary cargo builds next to this test
//! (`target/<profile>/examples/predict`): its output against `Trainer::predict`, and
//! its errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{example_binary, gpu, random, scratch_dir};
use mmoe_wgpu::model::{ModelConfig, TaskConfig, TaskKind, Trainer};
use mmoe_wgpu::rng::Rng;

const INPUTS: usize = 4;

fn run(args: &[&std::ffi::OsStr]) -> Output {
    let binary = example_binary("predict");
    Command::new(&binary)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("could not run `{}`: {e}", binary.display()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A trained model saved in `dir`, the trainer, and some input rows.
fn saved_model(dir: &Path) -> (PathBuf, Trainer, Vec<f32>) {
    let tasks = vec![
        TaskConfig::new("spend", TaskKind::Regression),
        TaskConfig::new("churn, 30 days", TaskKind::BinaryClassification),
    ];
    let config = ModelConfig {
        learning_rate: 0.05,
        ..ModelConfig::mmoe(INPUTS, 3, 5, 3, tasks)
    };
    let mut trainer = Trainer::new(gpu(), config, 8).unwrap();
    let mut rng = Rng::new(9);
    for _ in 0..5 {
        let x = random(&mut rng, 8 * INPUTS, 1.0);
        let y: Vec<f32> = (0..16).map(|i| (i % 2) as f32).collect();
        trainer.step(&x, &y).unwrap();
    }
    let path = dir.join("model.safetensors");
    trainer.checkpoint().unwrap().save(&path).unwrap();
    (path, trainer, random(&mut rng, 23 * INPUTS, 2.0))
}

fn csv(rows: &[f32], header: bool) -> String {
    let mut out = String::new();
    if header {
        out.push_str("a,b,\"c, d\",e\n");
    }
    for row in rows.chunks(INPUTS) {
        let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

#[test]
fn predictions_match_the_trainer_exactly_on_stdout_and_in_a_file() {
    let dir = scratch_dir("predict-example");
    let (model, mut trainer, x) = saved_model(&dir);
    let want = trainer.predict(&x).unwrap();
    let rows = x.len() / INPUTS;
    let with_header = dir.join("with-header.csv");
    let without = dir.join("without-header.csv");
    std::fs::write(&with_header, csv(&x, true)).unwrap();
    std::fs::write(&without, csv(&x, false)).unwrap();

    let out_file = dir.join("predictions.csv");
    let runs: Vec<Vec<&std::ffi::OsStr>> = vec![
        vec!["--input".as_ref(), with_header.as_os_str()],
        vec![
            "--input".as_ref(),
            without.as_os_str(),
            "--batch".as_ref(),
            "5".as_ref(),
        ],
        vec![
            "--input".as_ref(),
            without.as_os_str(),
            "--header".as_ref(),
            "no".as_ref(),
        ],
    ];
    let mut outputs = Vec::new();
    for extra in runs {
        let mut args = vec!["--checkpoint".as_ref(), model.as_os_str()];
        args.extend(extra);
        let output = run(&args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            text(&output.stderr)
        );
        outputs.push(text(&output.stdout));
    }
    let output = run(&[
        "--checkpoint".as_ref(),
        model.as_os_str(),
        "--input".as_ref(),
        with_header.as_os_str(),
        "--out".as_ref(),
        out_file.as_os_str(),
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(output.stdout.is_empty());
    outputs.push(std::fs::read_to_string(&out_file).unwrap());

    for out in &outputs {
        assert_eq!(
            out, &outputs[0],
            "every way of running gives the same output"
        );
    }
    let mut lines = outputs[0].lines();
    assert_eq!(lines.next(), Some("spend,\"churn, 30 days\""));
    let got: Vec<Vec<f32>> = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(got.len(), rows);
    for (r, row) in got.iter().enumerate() {
        for (t, v) in row.iter().enumerate() {
            assert_eq!(
                v.to_bits(),
                want[t * rows + r].to_bits(),
                "row {r}, task {t}"
            );
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_flags_and_inputs_exit_non_zero_with_a_clear_message() {
    let dir = scratch_dir("predict-example-errors");
    let (model, _, x) = saved_model(&dir);
    let good = dir.join("good.csv");
    std::fs::write(&good, csv(&x, true)).unwrap();
    let narrow = dir.join("narrow.csv");
    std::fs::write(&narrow, "1,2,3\n4,5,6\n").unwrap();
    let ragged = dir.join("ragged.csv");
    std::fs::write(&ragged, "1,2,3,4\n5,6,x,8\n").unwrap();
    let mixed = dir.join("mixed.csv");
    std::fs::write(&mixed, "1,b,3,4\n5,6,7,8\n").unwrap();
    let damaged = dir.join("damaged.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&damaged, bytes).unwrap();
    let missing = dir.join("missing.safetensors");

    let s = |p: &Path| p.to_string_lossy().into_owned();
    let cases: Vec<(Vec<String>, i32, String)> = vec![
        (vec!["--bogus".into()], 2, "--bogus".into()),
        (vec!["--input".into(), s(&good)], 2, "--checkpoint".into()),
        (
            vec![
                "--checkpoint".into(),
                s(&model),
                "--input".into(),
                s(&good),
                "--batch".into(),
                "0".into(),
            ],
            2,
            "--batch".into(),
        ),
        (
            vec![
                "--checkpoint".into(),
                s(&model),
                "--input".into(),
                s(&good),
                "--header".into(),
                "maybe".into(),
            ],
            2,
            "--header".into(),
        ),
        (
            vec![
                "--checkpoint".into(),
                s(&missing),
                "--input".into(),
                s(&good),
            ],
            1,
            s(&missing),
        ),
        (
            vec![
                "--checkpoint".into(),
                s(&damaged),
                "--input".into(),
                s(&good),
            ],
            1,
            "damaged".into(),
        ),
        (
            vec![
                "--checkpoint".into(),
                s(&model),
                "--input".into(),
                s(&narrow),
            ],
            1,
            "has 3 columns but the model".into(),
        ),
        (
            vec![
                "--checkpoint".into(),
                s(&model),
                "--input".into(),
                s(&ragged),
            ],
            1,
            format!("{}:2: field column 3: `x` is not a number", s(&ragged)),
        ),
        (
            vec![
                "--checkpoint".into(),
                s(&model),
                "--input".into(),
                s(&mixed),
            ],
            1,
            "pass --header yes or --header no".into(),
        ),
    ];
    for (args, code, needle) in cases {
        let args_os: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        let output = run(&args_os);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&needle),
            "{args:?}: `{needle}` not in {stderr}"
        );
        assert!(output.stdout.is_empty(), "{args:?} printed output");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
