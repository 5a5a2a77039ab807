//! The data layer: `Dataset` layout and batching, the paper's synthetic generator
//! (geometry, correlation, determinism), and the census loader on a committed
//! fixture of real rows, on malformed files, and (with `MMOE_CENSUS_DIR` set) on the
//! full data set.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::common::scratch_dir;
use mmoe_wgpu::Error;
use mmoe_wgpu::data::census::{
    self, COLUMNS, CensusEncoder, EDUCATION, LABEL, MARITAL, NUMERIC_COLUMNS, TaskGroup, WEIGHT,
};
use mmoe_wgpu::data::synthetic::{SyntheticConfig, SyntheticProblem, generate, generate_on_halves};
use mmoe_wgpu::data::{Dataset, Splits};
use mmoe_wgpu::rng::Rng;

// ---------------------------------------------------------------- Dataset

/// 4 rows, 3 inputs, 2 tasks; x[r][i] = 10r + i, y[t][r] = 100t + r.
fn small() -> Dataset {
    let x = (0..4)
        .flat_map(|r| (0..3).map(move |i| (10 * r + i) as f32))
        .collect();
    let y = (0..2)
        .flat_map(|t| (0..4).map(move |r| (100 * t + r) as f32))
        .collect();
    Dataset::new(3, 2, 4, x, y).unwrap()
}

#[test]
fn dataset_new_checks_lengths_and_values() {
    assert!(matches!(
        Dataset::new(3, 2, 4, vec![0.0; 11], vec![0.0; 8]),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        Dataset::new(3, 2, 4, vec![0.0; 12], vec![0.0; 4]),
        Err(Error::Shape { .. })
    ));
    let mut x = vec![0.0; 12];
    x[7] = f32::NAN;
    match Dataset::new(3, 2, 4, x, vec![0.0; 8]) {
        Err(Error::NonFinite { index: 7, .. }) => {}
        other => panic!("expected NonFinite at 7, got {other:?}"),
    }
    assert!(Dataset::new(0, 2, 0, vec![], vec![]).is_err());
    assert!(Dataset::new(3, 0, 0, vec![], vec![]).is_err());
    assert!(Dataset::new(3, 2, 0, vec![], vec![]).is_ok());
}

#[test]
fn batch_returns_rows_and_task_major_targets_clipped_at_the_end() {
    let d = small();
    let (x, y) = d.batch(1, 2);
    assert_eq!(x, [10.0, 11.0, 12.0, 20.0, 21.0, 22.0]);
    assert_eq!(y, [1.0, 2.0, 101.0, 102.0]);
    let (x, y) = d.batch(3, 5);
    assert_eq!(x, [30.0, 31.0, 32.0]);
    assert_eq!(y, [3.0, 103.0]);
    let (x, y) = d.batch(9, 2);
    assert!(x.is_empty() && y.is_empty());
    assert_eq!(d.targets(1), Some(&[100.0, 101.0, 102.0, 103.0][..]));
    assert_eq!(d.targets(2), None);
}

#[test]
fn select_and_gather_follow_the_given_order() {
    let d = small();
    let s = d.select(&[3, 0, 3]).unwrap();
    assert_eq!((s.rows, s.inputs, s.tasks), (3, 3, 2));
    assert_eq!(s.x, [30.0, 31.0, 32.0, 0.0, 1.0, 2.0, 30.0, 31.0, 32.0]);
    assert_eq!(s.y, [3.0, 0.0, 3.0, 103.0, 100.0, 103.0]);
    assert_eq!(d.gather(&[3, 0, 3]).unwrap(), (s.x.clone(), s.y.clone()));
    assert!(d.select(&[4]).is_err());
    assert!(d.gather(&[0, 9]).is_err());
}

#[test]
fn shuffled_order_is_a_seeded_permutation() {
    let d = Dataset::new(1, 1, 50, vec![0.0; 50], vec![0.0; 50]).unwrap();
    let a = d.shuffled_order(&mut Rng::new(5));
    assert_eq!(a, d.shuffled_order(&mut Rng::new(5)));
    assert_ne!(a, d.shuffled_order(&mut Rng::new(6)));
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, (0..50).collect::<Vec<_>>());
}

// ---------------------------------------------------------------- synthetic

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

#[test]
fn synthetic_directions_are_orthonormal_and_weights_have_cosine_p() {
    for p in [-0.7, 0.0, 0.5, 1.0] {
        let config = SyntheticConfig {
            correlation: p,
            scale: 2.0,
            ..SyntheticConfig::default()
        };
        let problem = SyntheticProblem::new(&config, &mut Rng::new(11)).unwrap();
        assert_eq!(problem.u1.len(), 100);
        assert!((dot(&problem.u1, &problem.u1) - 1.0).abs() < 1e-12);
        assert!((dot(&problem.u2, &problem.u2) - 1.0).abs() < 1e-12);
        assert!(dot(&problem.u1, &problem.u2).abs() < 1e-12);
        assert!((dot(&problem.w1, &problem.w1) - 4.0).abs() < 1e-10);
        assert!((dot(&problem.w2, &problem.w2) - 4.0).abs() < 1e-10);
        assert!((dot(&problem.w1, &problem.w2) - 4.0 * p).abs() < 1e-10);
        assert_eq!((problem.alpha.len(), problem.beta.len()), (10, 10));
    }
}

/// On halves, each task's weights live on its own half of the inputs (odd d too),
/// unit length times the scale, whatever the correlation asked for.
#[test]
fn synthetic_on_halves_puts_each_task_on_its_own_half() {
    for (inputs, p) in [(100, 0.5), (7, 1.0)] {
        let config = SyntheticConfig {
            inputs,
            correlation: p,
            scale: 2.0,
            ..SyntheticConfig::default()
        };
        let problem = SyntheticProblem::on_halves(&config, &mut Rng::new(5)).unwrap();
        let half = inputs / 2;
        assert!(problem.w1[half..].iter().all(|&v| v == 0.0));
        assert!(problem.w2[..half].iter().all(|&v| v == 0.0));
        assert!(problem.w1[..half].iter().all(|&v| v != 0.0));
        assert!(problem.w2[half..].iter().all(|&v| v != 0.0));
        assert!((dot(&problem.w1, &problem.w1) - 4.0).abs() < 1e-10);
        assert!((dot(&problem.w2, &problem.w2) - 4.0).abs() < 1e-10);
        assert_eq!(dot(&problem.w1, &problem.w2), 0.0);
        let splits = generate_on_halves(&config).unwrap();
        assert_eq!(splits.train.inputs, inputs);
    }
}

#[test]
fn synthetic_linear_parts_correlate_as_p_and_noise_has_the_configured_std() {
    for p in [-0.5, 0.2, 0.9] {
        let config = SyntheticConfig {
            correlation: p,
            train_rows: 20_000,
            validation_rows: 10,
            test_rows: 10,
            seed: 3,
            ..SyntheticConfig::default()
        };
        let splits = generate(&config).unwrap();
        let train = &splits.train;
        assert_eq!((train.rows, train.inputs, train.tasks), (20_000, 100, 2));
        // generate() documents that the problem comes from fork 0 of the seed.
        let problem = SyntheticProblem::new(&config, &mut Rng::new(3).fork(0)).unwrap();
        let linear = |w: &[f64]| -> Vec<f64> {
            train
                .x
                .chunks(100)
                .map(|row| row.iter().zip(w).map(|(&x, w)| f64::from(x) * w).sum())
                .collect()
        };
        let (l1, l2) = (linear(&problem.w1), linear(&problem.w2));
        let r = pearson(&l1, &l2);
        assert!((r - p).abs() < 0.03, "p = {p}: sample correlation {r}");

        // Subtracting the noiseless target leaves the noise.
        let mut residuals = Vec::new();
        for (k, l) in [&l1, &l2].into_iter().enumerate() {
            for (row, &lin) in l.iter().enumerate() {
                let waves: f64 = problem
                    .alpha
                    .iter()
                    .zip(&problem.beta)
                    .map(|(a, b)| (a * lin + b).sin())
                    .sum();
                residuals.push(f64::from(train.y[k * train.rows + row]) - lin - waves);
            }
        }
        let n = residuals.len() as f64;
        let mean = residuals.iter().sum::<f64>() / n;
        let std = (residuals.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 0.005, "noise mean {mean}");
        assert!((std - 0.1).abs() < 0.005, "noise std {std}");
    }
}

#[test]
fn synthetic_is_reproducible_from_its_seed() {
    let config = SyntheticConfig {
        inputs: 8,
        train_rows: 300,
        validation_rows: 50,
        test_rows: 70,
        seed: 42,
        ..SyntheticConfig::default()
    };
    let a = generate(&config).unwrap();
    assert_eq!(a, generate(&config).unwrap());
    assert_eq!(
        (a.train.rows, a.validation.rows, a.test.rows),
        (300, 50, 70)
    );
    let b = generate(&SyntheticConfig {
        seed: 43,
        ..config.clone()
    })
    .unwrap();
    assert_ne!(a.train.x, b.train.x);
    assert_ne!(a.train.y, b.train.y);
    // Each split has its own stream, so resizing one leaves the others alone.
    let c = generate(&SyntheticConfig {
        train_rows: 10,
        ..config
    })
    .unwrap();
    assert_eq!((a.validation, a.test), (c.validation, c.test));
}

#[test]
fn synthetic_rejects_bad_configs() {
    let base = SyntheticConfig::default();
    assert!(base.validate().is_ok());
    let bad = [
        SyntheticConfig {
            correlation: 1.01,
            ..base.clone()
        },
        SyntheticConfig {
            correlation: -1.5,
            ..base.clone()
        },
        SyntheticConfig {
            correlation: f64::NAN,
            ..base.clone()
        },
        SyntheticConfig {
            inputs: 1,
            ..base.clone()
        },
        SyntheticConfig {
            scale: f64::INFINITY,
            ..base.clone()
        },
        SyntheticConfig {
            noise_std: -0.1,
            ..base.clone()
        },
        SyntheticConfig {
            noise_std: f64::NAN,
            ..base.clone()
        },
        SyntheticConfig {
            train_rows: usize::MAX,
            ..base.clone()
        },
    ];
    for config in bad {
        assert!(
            matches!(generate(&config), Err(Error::Invalid { .. })),
            "{config:?} accepted"
        );
    }
}

// ---------------------------------------------------------------- census

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The fixture's fields split independently of the loader.
fn raw_rows(name: &str) -> Vec<Vec<String>> {
    std::fs::read_to_string(fixture(name))
        .unwrap()
        .lines()
        .map(|l| l.split(", ").map(|f| f.trim().to_string()).collect())
        .collect()
}

fn one_hot_columns() -> Vec<usize> {
    (0..42)
        .filter(|c| {
            !NUMERIC_COLUMNS.contains(c) && ![EDUCATION, MARITAL, WEIGHT, LABEL].contains(c)
        })
        .collect()
}

#[test]
fn census_fixture_parses_with_the_right_fields() {
    let table = census::read_census(fixture("census-sample.data")).unwrap();
    assert_eq!(table.rows(), 36);
    assert_eq!(table.field(0, 0), Some("73"));
    assert_eq!(table.number(0, 0), Some(73.0));
    assert_eq!(table.field(0, EDUCATION), Some("High school graduate"));
    assert_eq!(table.field(0, MARITAL), Some("Widowed"));
    assert_eq!(table.number(0, WEIGHT), Some(1700.09));
    assert_eq!(table.field(0, 25), Some("?"));
    assert_eq!(table.field(0, LABEL), Some("- 50000."));
    assert_eq!(table.field(1, 1), Some("Self-employed-not incorporated"));
    assert_eq!(table.number(1, 39), Some(52.0));
    assert_eq!(
        table.field(2, 35),
        Some("Foreign born- Not a citizen of U S")
    );
    assert_eq!(table.number(2, 1), None, "class of worker is not numeric");
    assert_eq!(table.field(36, 0), None);
    assert_eq!(table.field(0, 42), None);

    let raw = raw_rows("census-sample.data");
    for (r, fields) in raw.iter().enumerate() {
        for (c, value) in fields.iter().enumerate() {
            assert_eq!(
                table.field(r, c),
                Some(value.as_str()),
                "row {r} column {}",
                COLUMNS[c]
            );
        }
    }
    let y = table.targets(TaskGroup::IncomeMarital);
    let count = |task: usize| y[task * 36..(task + 1) * 36].iter().sum::<f32>();
    assert_eq!((count(0), count(1)), (4.0, 15.0));
    for (r, fields) in raw.iter().enumerate() {
        assert_eq!(y[r] == 1.0, fields[LABEL] == "50000+.");
        assert_eq!(y[36 + r] == 1.0, fields[MARITAL] == "Never married");
    }
    let y = table.targets(TaskGroup::EducationMarital);
    for (r, fields) in raw.iter().enumerate() {
        let college = [
            "Bachelors",
            "Masters",
            "Doctorate",
            "Prof school",
            "Associates",
            "Some college",
        ]
        .iter()
        .any(|p| fields[EDUCATION].starts_with(p));
        assert_eq!(y[r] == 1.0, college, "row {r}: {}", fields[EDUCATION]);
    }
}

#[test]
fn census_encoder_width_one_hot_and_standardisation() {
    let train = census::read_census(fixture("census-sample.data")).unwrap();
    let encoder = CensusEncoder::fit(&train).unwrap();
    let raw = raw_rows("census-sample.data");
    let distinct = |c: usize| raw.iter().map(|f| f[c].as_str()).collect::<BTreeSet<_>>();
    let expected_width = 7 + one_hot_columns()
        .iter()
        .map(|&c| distinct(c).len() + 1)
        .sum::<usize>();
    assert_eq!(encoder.width(), expected_width);
    let names = encoder.feature_names();
    assert_eq!(names.len(), expected_width);
    assert_eq!(names[0], "age");
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with("education") && !n.starts_with("marital"))
    );

    let all: Vec<usize> = (0..36).collect();
    let data = encoder
        .dataset(&train, TaskGroup::IncomeMarital, &all)
        .unwrap();
    assert_eq!(
        (data.rows, data.inputs, data.tasks),
        (36, expected_width, 2)
    );
    for (i, &column) in NUMERIC_COLUMNS.iter().enumerate() {
        let raw_values: Vec<f64> = raw.iter().map(|f| f[column].parse().unwrap()).collect();
        let mean = raw_values.iter().sum::<f64>() / 36.0;
        let (fitted_mean, std) = encoder.standardisation(column).unwrap();
        assert!((fitted_mean - mean).abs() < 1e-9, "{}", COLUMNS[column]);
        let encoded: Vec<f64> = (0..36)
            .map(|r| f64::from(data.x[r * data.inputs + i]))
            .collect();
        let m = encoded.iter().sum::<f64>() / 36.0;
        let v = encoded.iter().map(|e| (e - m).powi(2)).sum::<f64>() / 36.0;
        assert!(m.abs() < 1e-6, "{}: mean {m}", COLUMNS[column]);
        let constant = raw_values.iter().all(|&x| x == raw_values[0]);
        let expected_var = if constant { 0.0 } else { 1.0 };
        assert!(
            (v - expected_var).abs() < 1e-5,
            "{}: variance {v}",
            COLUMNS[column]
        );
        if constant {
            assert_eq!(std, 1.0);
        }
    }
    let unknown: Vec<usize> = (0..names.len())
        .filter(|&i| names[i].ends_with("=<unknown>"))
        .collect();
    assert_eq!(unknown.len(), one_hot_columns().len());
    for row in data.x.chunks(data.inputs) {
        let ones = row[7..].iter().filter(|&&v| v == 1.0).count();
        let zeros = row[7..].iter().filter(|&&v| v == 0.0).count();
        assert_eq!(
            (ones, ones + zeros),
            (one_hot_columns().len(), expected_width - 7)
        );
        assert!(
            unknown.iter().all(|&i| row[i] == 0.0),
            "training value marked unknown"
        );
    }
    // Spot check: row 0 (age 73, "Not in universe" worker class) sets its slots.
    let slot = |name: &str| names.iter().position(|n| n == name).unwrap();
    assert_eq!(data.x[slot("class of worker=Not in universe")], 1.0);
    assert_eq!(data.x[slot("class of worker=Private")], 0.0);
    assert_eq!(data.x[slot("year=95")], 1.0);

    // Held-out rows: values the training fixture lacks go to the unknown slot.
    let test = census::read_census(fixture("census-sample.test")).unwrap();
    let test_raw = raw_rows("census-sample.test");
    let held = encoder
        .dataset(
            &test,
            TaskGroup::EducationMarital,
            &(0..test.rows()).collect::<Vec<_>>(),
        )
        .unwrap();
    let mut unknown_hits = 0;
    for (r, row) in held.x.chunks(held.inputs).enumerate() {
        for &column in &one_hot_columns() {
            let name = format!("{}={}", COLUMNS[column], test_raw[r][column]);
            let index = names
                .iter()
                .position(|n| *n == name)
                .unwrap_or_else(|| slot(&format!("{}=<unknown>", COLUMNS[column])));
            unknown_hits += usize::from(names[index].ends_with("=<unknown>"));
            assert_eq!(row[index], 1.0, "row {r}: {name}");
        }
    }
    assert!(
        unknown_hits > 0,
        "the test fixture should exercise unknown slots"
    );
}

#[test]
fn census_files_split_the_test_file_in_half_by_seed() {
    let load = |seed| {
        census::load_census_files(
            fixture("census-sample.data"),
            fixture("census-sample.test"),
            TaskGroup::IncomeMarital,
            seed,
        )
        .unwrap()
    };
    let a: Splits = load(1);
    assert_eq!((a.train.rows, a.validation.rows, a.test.rows), (36, 4, 4));
    assert_eq!(a, load(1));
    assert_ne!(a.validation, load(2).validation);

    let train = census::read_census(fixture("census-sample.data")).unwrap();
    let encoder = CensusEncoder::fit(&train).unwrap();
    assert_eq!(
        a.train,
        encoder
            .dataset(
                &train,
                TaskGroup::IncomeMarital,
                &(0..36).collect::<Vec<_>>()
            )
            .unwrap()
    );
    // Validation and test together are exactly the held-out rows.
    let test = census::read_census(fixture("census-sample.test")).unwrap();
    let whole = encoder
        .dataset(&test, TaskGroup::IncomeMarital, &(0..8).collect::<Vec<_>>())
        .unwrap();
    let rows_of = |d: &Dataset| -> Vec<Vec<u32>> {
        (0..d.rows)
            .map(|r| {
                let (x, y) = d.batch(r, 1);
                x.iter().chain(&y).map(|v| v.to_bits()).collect()
            })
            .collect()
    };
    let mut parts = rows_of(&a.validation);
    parts.extend(rows_of(&a.test));
    parts.sort();
    let mut expected = rows_of(&whole);
    expected.sort();
    assert_eq!(parts, expected);
}

/// The fixture with `edit` applied to line `line` (1-based), written to `dir/name`,
/// whose name the error must report.
fn write_edited(dir: &Path, name: &str, line: usize, edit: impl Fn(&str) -> String) -> PathBuf {
    let text = std::fs::read_to_string(fixture("census-sample.data")).unwrap();
    let edited: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i + 1 == line {
                edit(l)
            } else {
                l.to_string()
            }
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, edited.join("\n") + "\n").unwrap();
    path
}

fn expect_data_error(path: &Path, line: usize, field: &str) {
    match census::read_census(path) {
        Err(Error::Data {
            file,
            line: l,
            field: f,
            message,
        }) => {
            assert_eq!(
                (file.as_path(), l, f.as_str()),
                (path, line, field),
                "{message}"
            );
            let shown = census::read_census(path).unwrap_err().to_string();
            assert!(
                shown.contains(&format!("{}:{line}", path.display())),
                "{shown}"
            );
            assert!(shown.contains(field), "{shown}");
        }
        other => panic!("{}: expected a data error, got {other:?}", path.display()),
    }
}

#[test]
fn census_malformed_rows_name_file_line_and_field() {
    let dir = scratch_dir("census-malformed");
    let truncated = write_edited(&dir, "truncated.data", 5, |l| {
        l.split(", ").take(20).collect::<Vec<_>>().join(", ")
    });
    expect_data_error(&truncated, 5, COLUMNS[20]);

    let bad_age = write_edited(&dir, "bad-age.data", 3, |l| l.replacen("18, ", "abc, ", 1));
    expect_data_error(&bad_age, 3, "age");

    let bad_weight = write_edited(&dir, "bad-weight.data", 7, |l| {
        let mut f: Vec<&str> = l.split(", ").collect();
        f[WEIGHT] = "1.2.3";
        f.join(", ")
    });
    expect_data_error(&bad_weight, 7, "instance weight");

    let bad_label = write_edited(&dir, "bad-label.data", 9, |l| {
        l.replace("- 50000.", "maybe")
    });
    expect_data_error(&bad_label, 9, "label");

    let extra = write_edited(&dir, "extra.data", 2, |l| format!("{l}, 1"));
    expect_data_error(&extra, 2, "field 43");

    let blank = write_edited(&dir, "blank.data", 4, |_| String::new());
    expect_data_error(&blank, 4, "row");

    let missing = Path::new("/nonexistent/census-income.data");
    match census::read_census(missing) {
        Err(Error::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected an I/O error, got {other:?}"),
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn census_blank_trailing_lines_and_crlf_are_accepted() {
    let text = std::fs::read_to_string(fixture("census-sample.data")).unwrap();
    let file = Path::new("in-memory.data");
    let plain = census::parse_census(file, &text).unwrap();
    let trailing = census::parse_census(file, &format!("{text}\n \n")).unwrap();
    let crlf = census::parse_census(file, &text.replace('\n', "\r\n")).unwrap();
    for table in [&trailing, &crlf] {
        assert_eq!(table.rows(), plain.rows());
        assert_eq!(
            table.targets(TaskGroup::IncomeMarital),
            plain.targets(TaskGroup::IncomeMarital)
        );
        assert_eq!(table.field(35, LABEL), plain.field(35, LABEL));
    }
    assert_eq!(census::parse_census(file, "").unwrap().rows(), 0);
    assert!(CensusEncoder::fit(&census::parse_census(file, "").unwrap()).is_err());
}

/// Optional: the full UCI files, decompressed into the directory `MMOE_CENSUS_DIR`.
#[test]
fn census_full_data_when_available() {
    let Some(dir) = std::env::var_os("MMOE_CENSUS_DIR") else {
        println!("MMOE_CENSUS_DIR is not set: skipping the full census data test");
        return;
    };
    let dir = PathBuf::from(dir);
    let start = Instant::now();
    let splits = census::load_census(&dir, TaskGroup::IncomeMarital, 7).unwrap();
    println!("loaded the full census splits in {:.2?}", start.elapsed());
    assert_eq!(splits.train.rows, 199_523);
    assert_eq!(splits.validation.rows + splits.test.rows, 99_762);
    assert_eq!(splits.validation.rows, 49_881);
    // 40 attributes − 7 numeric − education − marital − weight = 31 one-hot blocks
    // over 479 training values, plus an unknown slot each.
    assert_eq!(splits.train.inputs, 517);
    let sum = |d: &Dataset, t: usize| {
        d.targets(t)
            .unwrap()
            .iter()
            .map(|&v| v as usize)
            .sum::<usize>()
    };
    assert_eq!(sum(&splits.train, 0), 12_382);
    assert_eq!(sum(&splits.train, 1), 86_485);
    assert_eq!(sum(&splits.validation, 0) + sum(&splits.test, 0), 6_186);
    assert_eq!(sum(&splits.validation, 1) + sum(&splits.test, 1), 43_143);

    let start = Instant::now();
    let train = census::read_census(dir.join("census-income.data")).unwrap();
    println!("parsed census-income.data in {:.2?}", start.elapsed());
    let college = train.targets(TaskGroup::EducationMarital)[..train.rows()]
        .iter()
        .sum::<f32>();
    assert_eq!(college, 67_003.0);
    let distinct: HashSet<&str> = (0..train.rows())
        .filter_map(|r| train.field(r, MARITAL))
        .collect();
    assert_eq!(distinct.len(), 7);
}
