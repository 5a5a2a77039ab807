//! The census example end to end, run as the binary cargo builds next to this test
//! (`target/<profile>/examples/census`): its command-line errors and a tiny run on
//! the sample fixtures whose saved checkpoint and exported rows go through the
//! predict example, always (one-hot, and with categorical fields on raw census
//! rows); and with `MMOE_CENSUS_DIR` set (CI sets it) a short
//! training run on the full data set whose test AUCs must already be well above
//! chance, and whose checkpoint predicts those AUCs again through the predict
//! example.

use crate::common::{example_binary, gpu, scratch_dir};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mmoe_wgpu::data::census::{COLUMNS, TaskGroup, held_out_split, load_census, read_census};
use mmoe_wgpu::data::census_fields::CensusFields;
use mmoe_wgpu::data::csv::{Header, read_numeric_csv};
use mmoe_wgpu::metrics::auc;
use mmoe_wgpu::model::{Batch, Checkpoint, Trainer};

fn run(args: &[&str]) -> Output {
    run_example("census", args)
}

fn run_example(name: &str, args: &[&str]) -> Output {
    let binary = example_binary(name);
    Command::new(&binary)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("could not run `{}`: {e}", binary.display()))
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("scratch paths are UTF-8")
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
        &["--data", ".", "--save"],
        &["--data", ".", "--export-csv"],
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
        "--save",
        "--export-csv",
        "--features",
        "--export-rows",
    ] {
        assert!(
            text.contains(flag),
            "--help does not mention {flag}:\n{text}"
        );
    }
}

#[test]
fn bad_flags_say_which_flag_and_what_is_wrong() {
    for (args, needles) in [
        (
            &["--data", ".", "--sav", "m.safetensors"][..],
            &["unexpected argument '--sav'", "'--save'"][..],
        ),
        (
            &["--data", ".", "--save"],
            &["a value is required for '--save <FILE>'"],
        ),
        (
            &["--data", ".", "--epochs", "0"],
            &["'--epochs <N>'", "needs a whole number > 0"],
        ),
        (
            &["--data", ".", "--group", "3"],
            &["'--group <1|2>'", "possible values: 1, 2"],
        ),
        (
            &["--data", ".", "--lr", "-1"],
            &["'--lr <X>'", "needs a finite number > 0"],
        ),
    ] {
        let output = run(args);
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {message}");
        for needle in needles {
            assert!(
                message.contains(needle),
                "{args:?}: `{needle}` not in {message}"
            );
        }
    }
}

#[test]
fn a_save_path_in_a_missing_directory_fails_before_training() {
    let dir = scratch_dir("census-example-bad-save");
    let data = sample_data_dir(&dir);
    let model = dir.join("no-such-dir").join("model.safetensors");
    let output = run(&["--data", utf8(&data), "--save", utf8(&model)]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains("does not exist") && message.contains("no-such-dir"),
        "unclear error: {message}"
    );
    assert!(!message.contains("epoch"), "it trained first: {message}");
    assert!(output.stdout.is_empty());
    std::fs::remove_dir_all(dir).unwrap();
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
    let scratch = scratch_dir("census-example-full");
    let (model, csv) = (scratch.join("model.safetensors"), scratch.join("test.csv"));
    let output = run(&[
        "--save",
        utf8(&model),
        "--export-csv",
        utf8(&csv),
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
    let saved = Saved {
        data: Path::new(&dir),
        group: TaskGroup::IncomeMarital,
        seed: 1,
        model: &model,
        csv: &csv,
    };
    saved.check_against(json, ["income", "marital"], 150);
    std::fs::remove_dir_all(scratch).unwrap();
}

/// The sample fixtures as a census data directory in `dir`: the training sample
/// as `census-income.data` and both samples as `census-income.test`, because the
/// 8-row test sample alone has no income over 50K and one college row, too few for
/// an AUC on either random half.
fn sample_data_dir(dir: &Path) -> PathBuf {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let train = std::fs::read(fixtures.join("census-sample.data")).unwrap();
    let mut held_out = train.clone();
    held_out.extend(std::fs::read(fixtures.join("census-sample.test")).unwrap());
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("census-income.data"), train).unwrap();
    std::fs::write(data.join("census-income.test"), held_out).unwrap();
    data
}

/// What a census run wrote with `--save` and `--export-csv`, and how it was run.
struct Saved<'a> {
    data: &'a Path,
    group: TaskGroup,
    seed: u64,
    model: &'a Path,
    csv: &'a Path,
}

impl Saved<'_> {
    /// Checks the files against the run's JSON report `json`: the CSV holds the
    /// test rows exactly; the checkpoint is the best epoch's, `steps_per_epoch` steps
    /// each; the predict example's output on them is `Trainer::predict`'s, bit for
    /// bit, and gives the test AUCs the run reported.
    fn check_against(&self, json: &str, keys: [&str; 2], steps_per_epoch: u32) {
        let test = load_census(self.data, self.group, self.seed).unwrap().test;
        let table = read_numeric_csv(self.csv, Header::Present).unwrap();
        assert_eq!((table.rows, table.columns), (test.rows, test.inputs));
        assert!(
            table
                .values
                .iter()
                .zip(&test.x)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "the exported CSV is not the test rows"
        );

        let checkpoint = Checkpoint::load(self.model).unwrap();
        let best_epoch = json_number(json, "best_epoch") as u32;
        assert_eq!(checkpoint.steps(), best_epoch * steps_per_epoch, "{json}");
        let names: Vec<&str> = checkpoint
            .config()
            .tasks
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, keys);

        let output = run_example(
            "predict",
            &["--checkpoint", utf8(self.model), "--input", utf8(self.csv)],
        );
        assert!(
            output.status.success(),
            "predict failed: {}",
            stderr(&output)
        );
        let text = String::from_utf8(output.stdout).expect("UTF-8 output");
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(keys.join(",").as_str()));
        let mut got = [Vec::new(), Vec::new()];
        for line in lines {
            let cells: Vec<f32> = line.split(',').map(|v| v.parse().unwrap()).collect();
            assert_eq!(cells.len(), 2, "{line}");
            for (task, p) in got.iter_mut().zip(cells) {
                assert!((0.0..=1.0).contains(&p), "probability {p} in `{line}`");
                task.push(p);
            }
        }
        assert_eq!(got[0].len(), test.rows);

        let mut trainer = Trainer::from_checkpoint(gpu(), &checkpoint, 4096).unwrap();
        let want = trainer.predict(&test.x).unwrap();
        for (t, key) in keys.iter().enumerate() {
            let expected = &want[t * test.rows..(t + 1) * test.rows];
            assert!(
                got[t]
                    .iter()
                    .zip(expected)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{key}: predict's output differs from Trainer::predict"
            );
            let reported = json_number(json, &format!("test_auc_{key}"));
            let again = auc(&got[t], test.targets(t).unwrap()).unwrap();
            // The report prints 6 decimals.
            assert!(
                (again - reported).abs() <= 1e-6,
                "{key}: test AUC {again} from the saved model, {reported} reported"
            );
        }
    }
}

#[test]
fn saved_best_epoch_and_exported_rows_run_in_the_predict_example() {
    let dir = scratch_dir("census-example-save");
    let data = sample_data_dir(&dir);
    let (model, csv) = (dir.join("model.safetensors"), dir.join("test.csv"));
    // 36 training rows in batches of 8: 5 steps an epoch.
    let output = run(&[
        "--data",
        utf8(&data),
        "--group",
        "2",
        "--epochs",
        "4",
        "--batch",
        "8",
        "--experts",
        "2",
        "--units",
        "4",
        "--tower",
        "2",
        "--seed",
        "1",
        "--json",
        "--save",
        utf8(&model),
        "--export-csv",
        utf8(&csv),
    ]);
    assert!(
        output.status.success(),
        "census failed: {}",
        stderr(&output)
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    // These settings were picked (on lavapipe) for a best epoch before the last, so
    // that saving the last epoch instead would fail the checkpoint's step count.
    assert_eq!(json_number(stdout.trim(), "best_epoch"), 3.0, "{stdout}");
    let saved = Saved {
        data: &data,
        group: TaskGroup::EducationMarital,
        seed: 1,
        model: &model,
        csv: &csv,
    };
    saved.check_against(stdout.trim(), ["education", "marital"], 5);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn embedding_checkpoint_predicts_raw_census_rows_in_the_predict_example() {
    let dir = scratch_dir("census-example-embedding");
    let data = sample_data_dir(&dir);
    let (model, rows) = (dir.join("model.safetensors"), dir.join("test-rows.txt"));
    let output = run(&[
        "--data",
        utf8(&data),
        "--features",
        "embedding",
        "--group",
        "2",
        "--epochs",
        "2",
        "--batch",
        "8",
        "--experts",
        "2",
        "--units",
        "4",
        "--tower",
        "2",
        "--seed",
        "1",
        "--json",
        "--save",
        utf8(&model),
        "--export-rows",
        utf8(&rows),
    ]);
    assert!(
        output.status.success(),
        "census failed: {}",
        stderr(&output)
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    let json = stdout.trim();
    assert!(json.contains("\"features\":\"embedding\""), "{json}");

    // The checkpoint carries a vocabulary per field and the numbers' statistics.
    let checkpoint = Checkpoint::load(&model).unwrap();
    let config = checkpoint.config();
    assert_eq!(config.inputs, 7);
    assert_eq!(config.fields.len(), 31);
    assert_eq!(checkpoint.dense_inputs().len(), 7);
    for field in &config.fields {
        assert!(
            checkpoint.encoders().get(&field.name).is_some(),
            "{}",
            field.name
        );
    }

    // The raw rows are the test half of the held-out file, as the run split it.
    let held_out = read_census(data.join("census-income.test")).unwrap();
    let (_, test) = held_out_split(held_out.rows(), 1);
    let exported = read_census(&rows).unwrap();
    assert_eq!(exported.rows(), test.len());
    for (i, &r) in test.iter().enumerate() {
        for c in 0..COLUMNS.len() {
            assert_eq!(
                exported.field(i, c),
                held_out.field(r, c),
                "row {i} column {c}"
            );
        }
    }

    let output = run_example(
        "predict",
        &["--checkpoint", utf8(&model), "--input", utf8(&rows)],
    );
    assert!(
        output.status.success(),
        "predict failed: {}",
        stderr(&output)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8 output");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("education,marital"));
    let mut got = [Vec::new(), Vec::new()];
    for line in lines {
        for (task, cell) in got.iter_mut().zip(line.split(',')) {
            task.push(cell.parse::<f32>().unwrap());
        }
    }

    // The same rows encoded by an encoding fitted afresh on the training file give
    // bit for bit the predictions, and the AUCs the run reported.
    let train = read_census(data.join("census-income.data")).unwrap();
    let encoding = CensusFields::fit(&train).unwrap();
    assert_eq!(encoding.encoders(), checkpoint.encoders());
    assert_eq!(encoding.dense_inputs(), checkpoint.dense_inputs());
    let encoded = encoding.encode(&held_out, &test).unwrap();
    let mut batch = Batch::new(encoded.rows, &encoded.dense);
    for (field, ids) in encoding.fields().iter().zip(&encoded.ids) {
        batch = batch.ids(field.name, ids);
    }
    let mut trainer = Trainer::from_checkpoint(gpu(), &checkpoint, 64).unwrap();
    let want = trainer.predict_batch(&batch).unwrap();
    let targets = held_out.targets(TaskGroup::EducationMarital);
    for (t, key) in ["education", "marital"].iter().enumerate() {
        let expected = &want[t * test.len()..(t + 1) * test.len()];
        assert_eq!(got[t].len(), test.len());
        assert!(
            got[t]
                .iter()
                .zip(expected)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{key}: predict's output differs from Trainer::predict_batch"
        );
        let labels: Vec<f32> = test
            .iter()
            .map(|&r| targets[t * held_out.rows() + r])
            .collect();
        let again = auc(&got[t], &labels).unwrap();
        let reported = json_number(json, &format!("test_auc_{key}"));
        assert!(
            (again - reported).abs() <= 1e-6,
            "{key}: test AUC {again} from the raw rows, {reported} reported"
        );
    }

    // A one-hot CSV cannot feed it, and says why.
    let output = run_example(
        "predict",
        &[
            "--checkpoint",
            utf8(&model),
            "--input",
            utf8(&rows),
            "--format",
            "csv",
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("categorical fields"),
        "{}",
        stderr(&output)
    );
    std::fs::remove_dir_all(dir).unwrap();
}
