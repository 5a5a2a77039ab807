//! Bad input to a model with categorical fields: each is an error naming the field
//! and the row (or the bound a batch exceeds), nothing reaches the device, and the
//! trainer trains on afterwards exactly as one that never saw it. Bad configs and
//! encoders are errors naming what is wrong.

use crate::common::fields::{OwnedBatch, fields, mmoe_with_fields};
use crate::common::{bits, expect_err, gpu};
use mmoe_wgpu::Error;
use mmoe_wgpu::data::categorical::{Encoders, FieldEncoder};
use mmoe_wgpu::model::{Batch, FieldConfig, ModelConfig, Pooling, TableOptimizer, Trainer};

const ROWS: usize = 8;

#[test]
fn bad_batches_are_errors_naming_the_field_and_row_and_leave_the_trainer_as_it_was() {
    let config = mmoe_with_fields(TableOptimizer::LAZY_ADAM);
    let mut trainer = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
    let good = OwnedBatch::random(&config, ROWS, 3);
    // Row 2 of `tags` has IDs at positions offsets[2]..offsets[3].
    let tags = &good.fields[1];
    let at_row_2 = tags.2.as_ref().unwrap()[2] as usize;
    assert!(
        tags.2.as_ref().unwrap()[3] as usize > at_row_2,
        "row 2 has a bag"
    );

    let mut cases: Vec<(&str, OwnedBatch, Vec<&str>)> = Vec::new();
    let mut bad = good.clone();
    bad.fields[0].1[5] = 13;
    cases.push((
        "ID out of range",
        bad,
        vec!["`country`, row 5", "ID 13", "vocabulary of 13"],
    ));
    let mut bad = good.clone();
    bad.fields[1].1[at_row_2] = 1000;
    cases.push((
        "ID out of range in a bag",
        bad,
        vec!["`tags`, row 2", "ID 1000"],
    ));
    let mut bad = good.clone();
    let offsets = bad.fields[1].2.as_mut().unwrap();
    offsets.swap(2, 3);
    cases.push((
        "offsets decrease",
        bad,
        vec!["`tags`, row", "offsets decrease"],
    ));
    let mut bad = good.clone();
    let ids = bad.fields[2].1.len() as u32;
    bad.fields[2].2.as_mut().unwrap()[ROWS - 1] = ids + 2;
    cases.push(("a bag past the IDs", bad, vec!["`recent`, row", "past the"]));
    let mut bad = good.clone();
    bad.dense[2 * 5 + 3] = f32::NAN;
    cases.push((
        "NaN dense value",
        bad,
        vec!["dense input (row 2, column 3)", "NaN"],
    ));
    let mut bad = good.clone();
    bad.fields[1].3.as_mut().unwrap()[at_row_2] = f32::INFINITY;
    cases.push(("infinite weight", bad, vec!["`tags`, row 2", "weight"]));
    let mut bad = good.clone();
    bad.fields.remove(2);
    cases.push(("a field missing", bad, vec!["no IDs for field `recent`"]));
    let mut bad = good.clone();
    bad.fields.push(("city".into(), vec![0; ROWS], None, None));
    cases.push(("an unknown field", bad, vec!["field `city`", "does not"]));
    let mut bad = good.clone();
    bad.fields.push(bad.fields[0].clone());
    cases.push(("a field twice", bad, vec!["field `country` is given twice"]));
    let mut bad = good.clone();
    bad.fields[0].2 = Some((0..=ROWS as u32).collect());
    cases.push((
        "offsets for a single-valued field",
        bad,
        vec!["`country`", "single-valued"],
    ));
    let mut bad = good.clone();
    bad.fields[1].3 = None;
    cases.push(("weights missing", bad, vec!["`tags`", "`weights`"]));
    let mut bad = good.clone();
    bad.targets.pop();
    cases.push(("targets short", bad, vec!["`targets`"]));

    for (case, batch, needles) in &cases {
        for result in [
            trainer.step_batch(&batch.batch()).map(|_| ()),
            trainer.gradients_batch(&batch.batch()).map(|_| ()),
            trainer.predict_batch(&batch.batch()).map(|_| ()),
        ] {
            // Prediction reads no targets.
            if *case == "targets short" && result.is_ok() {
                continue;
            }
            let e = expect_err(result, needles);
            eprintln!("{case}: {e}");
        }
    }
    // A bag over the field's max_bag, a batch over the capacity: the bound.
    let mut long = good.clone();
    let (name, ids, offsets, _) = &mut long.fields[2];
    assert_eq!(name, "recent");
    let offsets = offsets.as_mut().unwrap();
    let extra = 4 - (offsets[1] - offsets[0]);
    ids.splice(
        offsets[1] as usize..offsets[1] as usize,
        vec![0; extra as usize],
    );
    for o in &mut offsets[1..] {
        *o += extra;
    }
    match trainer.step_batch(&long.batch()) {
        Err(
            e @ Error::Limit {
                value: 4, limit: 3, ..
            },
        ) => {
            let message = e.to_string();
            assert!(
                message.contains("field `recent`, row 0") && message.contains("max_bag"),
                "{message}"
            );
        }
        other => panic!("a bag of 4 over max_bag 3 gave {other:?}"),
    }
    let big = OwnedBatch::random(&config, ROWS + 1, 3);
    match trainer.step_batch(&big.batch()) {
        Err(
            e @ Error::Limit {
                value: 9, limit: 8, ..
            },
        ) => {
            assert!(e.to_string().contains("batch capacity"), "{e}");
        }
        other => panic!("9 rows at capacity 8 gave {other:?}"),
    }
    // Prediction takes any number of rows, but not longer bags.
    assert!(trainer.predict_batch(&big.batch()).is_ok());
    assert!(matches!(
        trainer.predict_batch(&long.batch()),
        Err(Error::Limit { .. })
    ));
    let empty = Batch::new(0, &[]);
    expect_err(trainer.step_batch(&empty), &["`rows`"]);
    assert_eq!(trainer.steps(), 0, "failed steps must not count");

    // Nothing reached the device: the next good steps are those of a fresh trainer.
    let mut fresh = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
    for t in [&mut trainer, &mut fresh] {
        for step in 0..2 {
            t.step_batch(&OwnedBatch::random(&config, ROWS, 50 + step).batch())
                .unwrap();
        }
    }
    assert_eq!(
        bits(&trainer.parameters().unwrap()),
        bits(&fresh.parameters().unwrap())
    );
    for name in ["embeddings.country.weight", "embeddings.tags.weight"] {
        assert_eq!(
            bits(&trainer.parameter(name).unwrap()),
            bits(&fresh.parameter(name).unwrap()),
            "{name}"
        );
    }
}

#[test]
fn bad_field_configs_and_encoders_are_errors_naming_what_is_wrong() {
    let base = mmoe_with_fields(TableOptimizer::LAZY_ADAM);
    let with = |f: &dyn Fn(&mut Vec<FieldConfig>)| {
        let mut fields = fields();
        f(&mut fields);
        ModelConfig {
            fields,
            ..base.clone()
        }
    };
    let cases: Vec<(ModelConfig, &str)> = vec![
        (
            with(&|f| f[1].name = "country".into()),
            "field `country` is defined twice",
        ),
        (
            with(&|f| f[0].name = String::new()),
            "field 0 has an empty name",
        ),
        (
            with(&|f| f[0].vocab = 0),
            "field `country` has a table of 0 rows",
        ),
        (
            with(&|f| f[0].dim = 0),
            "field `country` has a table of 13 rows of 0",
        ),
        (
            with(&|f| f[1] = FieldConfig::multi("tags", 29, 4, Pooling::Sum, 0)),
            "field `tags` has max_bag 0",
        ),
        (
            with(&|f| f[2].shares = Some("city".into())),
            "shares the table of `city`, which is not a field",
        ),
        (
            with(&|f| f[2].shares = Some("recent".into())),
            "which does not have one of its own",
        ),
        (
            with(&|f| f.push(FieldConfig::single("more", 29, 4).sharing("recent"))),
            "which does not have one of its own",
        ),
        (
            with(&|f| f[2].vocab = 30),
            "(30 rows of 4) shares the table of `tags` (29 rows of 4)",
        ),
        (
            ModelConfig {
                table_optimizer: TableOptimizer::Adagrad {
                    eps: 1e-10,
                    initial_accumulator: -1.0,
                    learning_rate: None,
                },
                ..base.clone()
            },
            "initial accumulator -1",
        ),
        (
            ModelConfig {
                table_optimizer: TableOptimizer::LazyAdam {
                    beta1: 0.9,
                    beta2: 1.0,
                    eps: 1e-8,
                    learning_rate: None,
                },
                ..base.clone()
            },
            "beta2",
        ),
        (
            ModelConfig {
                inputs: 0,
                fields: vec![],
                ..base.clone()
            },
            "inputs must be at least 1",
        ),
    ];
    for (config, want) in cases {
        match Trainer::new(gpu(), config, 4) {
            Err(e @ Error::Invalid { .. }) => {
                assert!(e.to_string().contains(want), "{e} should say {want}")
            }
            Err(e) => panic!("{want}: wrong error {e}"),
            Ok(_) => panic!("accepted a config that should fail with {want}"),
        }
    }
    // A model of fields only has no dense input.
    let fields_only = ModelConfig {
        inputs: 0,
        ..base.clone()
    };
    let mut trainer = Trainer::new(gpu(), fields_only.clone(), 4).unwrap();
    trainer
        .step_batch(&OwnedBatch::random(&fields_only, 4, 1).batch())
        .unwrap();

    let mut trainer = Trainer::new(gpu(), base, 4).unwrap();
    for (encoders, want) in [
        (
            ("city", FieldEncoder::Hash { buckets: 5 }),
            "`city` is not a field",
        ),
        (
            ("country", FieldEncoder::Hash { buckets: 14 }),
            "IDs 0 .. 14, its table has 13 rows",
        ),
    ] {
        let mut e = Encoders::new();
        e.insert(encoders.0, encoders.1);
        expect_err(trainer.set_encoders(e), &[want]);
    }
}

/// A loss that goes non-finite stops the tables' updates with the rest: the tables
/// keep the values of the step before, whichever optimizer trains them.
#[test]
fn a_diverging_loss_stops_the_tables_too() {
    for tables in [TableOptimizer::LAZY_ADAM, TableOptimizer::Dense] {
        let config = ModelConfig {
            learning_rate: 1e30,
            optimizer: mmoe_wgpu::kernels::optimizer::OptimizerConfig::Sgd { momentum: 0.0 },
            ..mmoe_with_fields(tables)
        };
        let mut trainer = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
        let mut reported = None;
        for step in 0..20 {
            let b = OwnedBatch::random(&config, ROWS, 60 + step);
            trainer.step_batch(&b.batch()).unwrap();
            if let Err(e) = trainer.loss() {
                reported = Some(e);
                break;
            }
        }
        match reported {
            Some(Error::NonFiniteLoss { step, .. }) => {
                assert!(step >= 2, "{tables:?}: step {step}");
                for t in 0..2 {
                    let values = trainer.executor().table(t).unwrap();
                    assert!(
                        values.iter().all(|v| v.is_finite()),
                        "{tables:?}: table {t}"
                    );
                    for state in trainer.executor().table_state(t).unwrap() {
                        assert!(
                            state.iter().all(|v| v.is_finite()),
                            "{tables:?}: state of {t}"
                        );
                    }
                }
                assert!(
                    trainer.checkpoint().is_err(),
                    "no checkpoint of a failed state"
                );
            }
            other => panic!("{tables:?}: expected a non-finite loss, got {other:?}"),
        }
    }
}

/// One ID occurring more often in a batch than the kernels' loops may count is an
/// `Error::Limit` naming the ID, before anything is written; fewer train.
#[test]
fn an_id_occurring_past_the_kernels_loop_budget_is_an_error() {
    let config = ModelConfig {
        fields: vec![FieldConfig::multi("tags", 10, 2, Pooling::Sum, 70)],
        ..ModelConfig::mmoe(1, 2, 3, 2, crate::common::models::two_tasks("a", "b"))
    };
    let rows = 1000;
    let mut trainer = Trainer::new(gpu(), config, rows).unwrap();
    let dense = vec![0.5f32; rows];
    let targets = vec![0.0f32; 2 * rows];
    let offsets: Vec<u32> = (0..=rows as u32).map(|r| 70 * r).collect();
    let ids = vec![3u32; 70 * rows];
    let batch = Batch::new(rows, &dense)
        .bags("tags", &offsets, &ids)
        .targets(&targets);
    for e in [
        trainer.step_batch(&batch).unwrap_err(),
        trainer.predict_batch(&batch).unwrap_err(),
    ] {
        match &e {
            Error::Limit {
                value: 70_000,
                limit: 65_533,
                ..
            } => assert!(e.to_string().contains("occurrences of ID 3"), "{e}"),
            other => panic!("expected the occurrence bound, got {other}"),
        }
    }
    assert_eq!(trainer.steps(), 0);
    // 65,520 occurrences (936 rows of 70) are within it.
    let batch = Batch::new(936, &dense[..936])
        .bags("tags", &offsets[..937], &ids[..70 * 936])
        .targets(&targets[..2 * 936]);
    trainer.step_batch(&batch).unwrap();
    trainer.loss().unwrap();
}
