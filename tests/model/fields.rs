//! Models with categorical fields: the GPU executor against the CPU executor on
//! outputs, every gradient (the flat parameters' and each table's touched rows) and
//! the parameters and tables after optimizer steps, for lazy Adam, Adagrad and the
//! dense optimizer over the tables; bitwise reproducible training, also with tables
//! split in chunks; tables trained on their touched rows only; and the dense-only
//! path of a model without fields unchanged.

use crate::common::fields::{DENSE, OwnedBatch, mmoe_with_fields, shared_bottom_with_fields};
use crate::common::models::two_task_batch;
use crate::common::{bits, gpu, relative_error, to_f64};
use mmoe_wgpu::graph::{CpuExecutor, Role};
use mmoe_wgpu::model::{
    Architecture, Batch, ExpertInput, Gate, ModelConfig, TableOptimizer, Trainer,
};

const ROWS: usize = 17;

const ADAGRAD: TableOptimizer = TableOptimizer::Adagrad {
    eps: 1e-10,
    initial_accumulator: 0.1,
    learning_rate: Some(0.05),
};

/// Every kind the tests cover: MMoE and shared-bottom, each table optimizer, and
/// noisy top-2 gates on a shared layer reading the fields.
fn configs() -> Vec<(&'static str, ModelConfig)> {
    vec![
        (
            "mmoe, lazy Adam",
            mmoe_with_fields(TableOptimizer::LAZY_ADAM),
        ),
        ("shared-bottom, Adagrad", shared_bottom_with_fields(ADAGRAD)),
        (
            "mmoe, dense Adam over the tables",
            mmoe_with_fields(TableOptimizer::Dense),
        ),
        (
            "mmoe, noisy top-2 gates on a shared layer, Adagrad",
            ModelConfig {
                shared_layers: vec![6],
                architecture: Architecture::Mmoe {
                    experts: 4,
                    expert_layers: vec![5],
                    gate: Gate::top_k(2).noisy(),
                    task_experts: 0,
                },
                ..mmoe_with_fields(ADAGRAD)
            },
        ),
        (
            "mmoe, experts on the dense columns and country, and on the tag fields",
            ModelConfig {
                expert_inputs: vec![
                    ExpertInput::columns(1, 0..DENSE + 3),
                    ExpertInput::fields(2, ["tags", "recent"]),
                ],
                ..mmoe_with_fields(TableOptimizer::LAZY_ADAM)
            },
        ),
    ]
}

/// Fields an expert run reads must be adjacent, their columns one range.
#[test]
fn experts_on_fields_that_are_not_adjacent_are_an_error() {
    let config = ModelConfig {
        expert_inputs: vec![
            ExpertInput::fields(1, ["country", "recent"]),
            ExpertInput::columns(2, 0..DENSE),
        ],
        ..mmoe_with_fields(TableOptimizer::LAZY_ADAM)
    };
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains(r#"run 0's fields ["country", "recent"] are not adjacent"#),
        "{err}"
    );
}

/// Forward (with the step's gate noise) and backward of `batch` on the CPU.
fn cpu_forward_backward(
    cpu: &mut CpuExecutor,
    config: &ModelConfig,
    b: &OwnedBatch,
    noise: Option<Vec<f32>>,
) {
    let (x, lookups) = b.graph_inputs(config);
    cpu.set_lookups(&lookups).unwrap();
    let noise: Vec<Vec<f64>> = noise.iter().map(|n| to_f64(n)).collect();
    let noise: Vec<&[f64]> = noise.iter().map(Vec::as_slice).collect();
    cpu.forward_with_noise(b.rows, &[&x], &noise, &[&to_f64(&b.targets)])
        .unwrap();
    cpu.backward().unwrap();
}

/// The worst norm-wise relative error of any parameter of a flat vector.
fn worst_parameter(trainer: &Trainer, got: &[f32], want: &[f64]) -> (String, f64) {
    let graph = &trainer.model().graph;
    let plan = trainer.executor().plan();
    graph
        .with_role(Role::Parameter)
        .into_iter()
        .map(|id| {
            let at = plan.param_offsets[id.0].unwrap();
            let len = graph.tensor(id).len();
            let err = relative_error(&got[at..at + len], &want[at..at + len]);
            (graph.tensor(id).name.clone(), err)
        })
        .fold((String::new(), 0.0), |a, b| if b.1 > a.1 { b } else { a })
}

#[test]
fn gpu_and_cpu_executors_agree_with_categorical_fields() {
    for (name, config) in configs() {
        let mut trainer = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
        let mut cpu = trainer.reference().unwrap();
        let tables = trainer.model().graph.tables().to_vec();
        assert_eq!(tables.len(), 2, "{name}: `recent` shares `tags`' table");

        for rows in [ROWS, 4] {
            let b = OwnedBatch::random(&config, rows, 5);
            let got = trainer.gradients_batch(&b.batch()).unwrap();
            let noise = trainer.gate_noise(trainer.steps() + 1, rows);
            cpu_forward_backward(&mut cpu, &config, &b, noise);
            let predictions = trainer.model().predictions;
            let preds = trainer.executor().read(predictions, rows).unwrap();
            let err = relative_error(&preds, cpu.tensor(predictions));
            assert!(
                err <= 1e-4,
                "{name}, {rows} rows: predictions differ by {err:.2e}"
            );
            let (worst, err) = worst_parameter(&trainer, &got.dense, cpu.gradients());
            assert!(
                err <= 1e-4,
                "{name}, {rows} rows: gradient of `{worst}` differs by {err:.2e}"
            );
            for (t, table) in got.tables.iter().enumerate() {
                let (ids, want) = cpu.table_gradient(t);
                assert_eq!(table.table, tables[t].name);
                assert_eq!(
                    table.ids, ids,
                    "{name}, {rows} rows: `{}` touched rows",
                    table.table
                );
                let err = relative_error(&table.values, want);
                assert!(
                    err <= 1e-4,
                    "{name}, {rows} rows: gradient of `{}` differs by {err:.2e}",
                    table.table
                );
                assert!(
                    want.iter().any(|&g| g != 0.0),
                    "{name}: `{}` has a gradient",
                    table.table
                );
            }
        }

        let initial: Vec<Vec<f32>> = (0..tables.len())
            .map(|t| trainer.executor().table(t).unwrap())
            .collect();
        for step in 1..=3 {
            let b = OwnedBatch::random(&config, ROWS, 100 + step as u64);
            trainer.step_batch(&b.batch()).unwrap();
            cpu_forward_backward(&mut cpu, &config, &b, trainer.gate_noise(step, ROWS));
            cpu.optimizer_step(step, config.learning_rate as f64)
                .unwrap();
        }
        let params = trainer.parameters().unwrap();
        let (worst, err) = worst_parameter(&trainer, &params, cpu.parameters());
        assert!(
            err <= 1e-3,
            "{name}: after 3 steps `{worst}` differs by {err:.2e}"
        );
        for (t, table) in tables.iter().enumerate() {
            // The tables' moves, which their N(0, 1) start would hide.
            let got = trainer.parameter(&table.name).unwrap();
            let moved: Vec<f32> = got.iter().zip(&initial[t]).map(|(a, b)| a - b).collect();
            let want: Vec<f64> = (cpu.table(t).iter().zip(&initial[t]))
                .map(|(a, &b)| a - b as f64)
                .collect();
            let err = relative_error(&moved, &want);
            assert!(
                err <= 1e-3,
                "{name}: after 3 steps `{}` moved differently, by {err:.2e}",
                table.name
            );
            let state = trainer.executor().table_state(t).unwrap();
            for (k, (got, want)) in state.iter().zip(cpu.table_state(t)).enumerate() {
                let err = relative_error(got, want);
                assert!(
                    err <= 1e-3,
                    "{name}: state {k} of `{}` differs by {err:.2e}",
                    table.name
                );
            }
            eprintln!(
                "{name}: after 3 steps the move of `{}` differs by {err:.2e}",
                table.name
            );
        }
        eprintln!("{name}: after 3 steps the worst parameter `{worst}` differs by {err:.2e}");
    }
}

/// The CPU executor's table gradients, summed over the gates, experts, shared layer
/// and noise layer that read the fields' columns, against central differences of the
/// loss.
#[test]
fn cpu_table_gradients_match_finite_differences() {
    for (name, config) in configs() {
        let trainer = Trainer::new(gpu(), config.clone(), 5).unwrap();
        let mut cpu = trainer.reference().unwrap();
        let b = OwnedBatch::random(&config, 5, 9);
        let (x, lookups) = b.graph_inputs(&config);
        cpu.set_lookups(&lookups).unwrap();
        let y = to_f64(&b.targets);
        let noise: Vec<Vec<f64>> = trainer.gate_noise(1, 5).iter().map(|n| to_f64(n)).collect();
        let noise: Vec<&[f64]> = noise.iter().map(Vec::as_slice).collect();
        let loss_id = trainer.model().graph.find("loss").unwrap();
        let total = |cpu: &mut CpuExecutor| -> f64 {
            cpu.forward_with_noise(5, &[&x], &noise, &[&y]).unwrap();
            cpu.tensor(loss_id).iter().sum::<f64>() + cpu.balance_loss()
        };
        total(&mut cpu);
        cpu.backward().unwrap();
        for (t, table) in trainer.model().graph.tables().iter().enumerate() {
            let (ids, grad) = cpu.table_gradient(t);
            let (ids, grad) = (ids.to_vec(), grad.to_vec());
            let scale = grad.iter().fold(1e-12f64, |m, g| m.max(g.abs()));
            let mut worst = 0.0f64;
            for row in 0..table.vocab {
                for c in 0..table.dim {
                    let e = row * table.dim + c;
                    let p = cpu.table(t)[e];
                    cpu.table_mut(t)[e] = p + 1e-6;
                    let up = total(&mut cpu);
                    cpu.table_mut(t)[e] = p - 1e-6;
                    let down = total(&mut cpu);
                    cpu.table_mut(t)[e] = p;
                    let numeric = (up - down) / 2e-6;
                    let analytic = ids
                        .iter()
                        .position(|&id| id as usize == row)
                        .map_or(0.0, |u| grad[u * table.dim + c]);
                    worst = worst.max((numeric - analytic).abs() / scale);
                }
            }
            eprintln!(
                "{name}: `{}` against finite differences: {worst:.2e}",
                table.name
            );
            assert!(
                worst < 1e-6,
                "{name}: `{}` differs from finite differences by {worst:.2e}",
                table.name
            );
        }
    }
}

/// Trains `config` 4 steps on `gpu`'s device and returns every parameter and table.
fn train(gpu: &mmoe_wgpu::Gpu, config: &ModelConfig) -> (Vec<f32>, Vec<Vec<f32>>) {
    let mut trainer = Trainer::new(gpu, config.clone(), ROWS).unwrap();
    for step in 0..4 {
        let b = OwnedBatch::random(config, ROWS, 40 + step);
        trainer.step_batch(&b.batch()).unwrap();
    }
    let tables = (0..trainer.model().graph.tables().len())
        .map(|t| trainer.executor().table(t).unwrap())
        .collect();
    (trainer.parameters().unwrap(), tables)
}

#[test]
fn the_same_seed_trains_bitwise_identically_with_fields_and_split_tables() {
    for (name, config) in configs().into_iter().take(3) {
        let (a, b) = (train(gpu(), &config), train(gpu(), &config));
        assert_eq!(bits(&a.0), bits(&b.0), "{name}: parameters");
        for (x, y) in a.1.iter().zip(&b.1) {
            assert_eq!(bits(x), bits(y), "{name}: tables");
        }
        // Bindings of 16 KiB split a table of 1100 rows of 4 in chunks of 1024 rows:
        // the same training, bit for bit.
        let mut config = config;
        for f in &mut config.fields[1..] {
            f.vocab = 1100;
        }
        let small =
            crate::checkpoint::device_with_limits(|l| l.max_storage_buffer_binding_size = 1 << 14);
        let rows = mmoe_wgpu::kernels::embedding::max_chunk_rows(&small, 4).unwrap();
        assert_eq!(rows, 1024, "{name}: the split");
        let (split, whole) = (train_on(&small, &config), train_on(gpu(), &config));
        assert_eq!(
            bits(&split.0),
            bits(&whole.0),
            "{name}: parameters, split tables"
        );
        for (x, y) in split.1.iter().zip(&whole.1) {
            assert_eq!(bits(x), bits(y), "{name}: split tables");
        }
    }
}

/// Trains `config` 3 steps of 4 rows on `gpu`.
fn train_on(gpu: &mmoe_wgpu::Gpu, config: &ModelConfig) -> (Vec<f32>, Vec<Vec<f32>>) {
    let mut trainer = Trainer::new(gpu, config.clone(), 4).unwrap();
    for step in 0..3 {
        let b = OwnedBatch::random(config, 4, 70 + step);
        trainer.step_batch(&b.batch()).unwrap();
    }
    let tables = (0..trainer.model().graph.tables().len())
        .map(|t| trainer.executor().table(t).unwrap())
        .collect();
    (trainer.parameters().unwrap(), tables)
}

#[test]
fn sparse_optimizers_touch_only_the_rows_of_their_batches() {
    for tables in [TableOptimizer::LAZY_ADAM, ADAGRAD] {
        let config = mmoe_with_fields(tables);
        let mut trainer = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
        let before = trainer.parameter("embeddings.country.weight").unwrap();
        let b = OwnedBatch::random(&config, ROWS, 9);
        trainer.step_batch(&b.batch()).unwrap();
        let after = trainer.parameter("embeddings.country.weight").unwrap();
        let touched = &b.fields[0].1;
        for id in 0..13u32 {
            let row = id as usize * 3..id as usize * 3 + 3;
            let moved = bits(&before[row.clone()]) != bits(&after[row]);
            assert_eq!(moved, touched.contains(&id), "{tables:?}: row {id}");
        }
    }
}

/// A model without fields takes batches too, bitwise as the dense calls; a model
/// with fields refuses the dense calls, saying what to use.
#[test]
fn the_dense_path_is_unchanged_and_batches_serve_it_too() {
    let config = ModelConfig {
        learning_rate: 0.02,
        ..ModelConfig::mmoe(7, 3, 5, 3, crate::common::models::two_tasks("a", "b"))
    };
    let mut dense = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
    let mut batched = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
    for step in 0..3 {
        let (x, y) = two_task_batch(10 + step, ROWS, 7);
        dense.step(&x, &y).unwrap();
        batched
            .step_batch(&Batch::new(ROWS, &x).targets(&y))
            .unwrap();
    }
    assert_eq!(
        bits(&dense.parameters().unwrap()),
        bits(&batched.parameters().unwrap())
    );
    let (x, y) = two_task_batch(20, 2 * ROWS + 3, 7);
    let batch = Batch::new(2 * ROWS + 3, &x).targets(&y);
    assert_eq!(
        bits(&dense.predict(&x).unwrap()),
        bits(&batched.predict_batch(&batch).unwrap())
    );
    assert_eq!(
        dense.evaluate(&x, &y).unwrap(),
        batched.evaluate_batch(&batch).unwrap()
    );
    assert_eq!(
        dense.gate_report(&x).unwrap(),
        batched.gate_report_batch(&batch).unwrap()
    );

    let mut with_fields =
        Trainer::new(gpu(), mmoe_with_fields(TableOptimizer::LAZY_ADAM), ROWS).unwrap();
    let x = vec![0.5f32; ROWS * 5];
    let y = vec![0.0f32; 2 * ROWS];
    for e in [
        with_fields.step(&x, &y).unwrap_err(),
        with_fields.predict(&x).unwrap_err(),
        with_fields.evaluate(&x, &y).unwrap_err(),
        with_fields.gate_report(&x).unwrap_err(),
        with_fields.gradients(&x, &y).unwrap_err(),
    ] {
        let message = e.to_string();
        assert!(
            message.contains("categorical fields") && message.contains("`tags`")
                || message.contains("\"tags\""),
            "{message}"
        );
    }
    assert_eq!(with_fields.steps(), 0);
}

/// Predictions, evaluations and gate reports of a model with fields take any number
/// of rows: in chunks of the capacity, bitwise as batch by batch.
#[test]
fn predictions_with_fields_run_in_chunks_over_any_number_of_rows() {
    let config = mmoe_with_fields(TableOptimizer::LAZY_ADAM);
    let mut trainer = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
    for step in 0..2 {
        trainer
            .step_batch(&OwnedBatch::random(&config, ROWS, 80 + step).batch())
            .unwrap();
    }
    let all = OwnedBatch::random(&config, 3 * ROWS + 5, 90);
    let whole = trainer.predict_batch(&all.batch()).unwrap();
    let rows = all.rows;
    for start in (0..rows).step_by(ROWS) {
        let end = (start + ROWS).min(rows);
        let part = slice(&all, start..end);
        let got = trainer.predict_batch(&part.batch()).unwrap();
        for t in 0..2 {
            assert_eq!(
                bits(&got[t * part.rows..(t + 1) * part.rows]),
                bits(&whole[t * rows + start..t * rows + end]),
                "rows {start}..{end}, task {t}"
            );
        }
    }
    let evaluation = trainer.evaluate_batch(&all.batch()).unwrap();
    assert!(evaluation.total.is_finite() && evaluation.total > 0.0);
    let report = trainer.gate_report_batch(&all.batch()).unwrap();
    for weights in &report.weights {
        assert!((weights.iter().sum::<f64>() - 1.0).abs() < 1e-4);
    }
    // Allocated: the plan, the tables exactly.
    let (used, planned) = (trainer.memory(), trainer.planned_memory());
    assert_eq!(used.tables, planned.tables);
    assert_eq!(
        used.tables,
        4 * 3 * (13 * 3 + 29 * 4),
        "two tables and two moments each"
    );
    assert!(used.total() <= planned.total(), "{used:?} over {planned:?}");
}

/// Rows `range` of `b`, offsets rebased.
fn slice(b: &OwnedBatch, range: std::ops::Range<usize>) -> OwnedBatch {
    let rows = range.len();
    let inputs = b.dense.len() / b.rows;
    let fields = b
        .fields
        .iter()
        .map(|(name, ids, offsets, weights)| match offsets {
            None => (
                name.clone(),
                ids[range.clone()].to_vec(),
                None,
                weights.as_ref().map(|w| w[range.clone()].to_vec()),
            ),
            Some(o) => {
                let (lo, hi) = (o[range.start] as usize, o[range.end] as usize);
                let offsets = o[range.start..=range.end]
                    .iter()
                    .map(|v| v - lo as u32)
                    .collect();
                (
                    name.clone(),
                    ids[lo..hi].to_vec(),
                    Some(offsets),
                    weights.as_ref().map(|w| w[lo..hi].to_vec()),
                )
            }
        })
        .collect();
    let tasks = b.targets.len() / b.rows;
    OwnedBatch {
        rows,
        dense: b.dense[range.start * inputs..range.end * inputs].to_vec(),
        fields,
        targets: (0..tasks)
            .flat_map(|t| b.targets[t * b.rows + range.start..t * b.rows + range.end].to_vec())
            .collect(),
    }
}
