//! The whole model: the GPU executor against the CPU executor on the same graph
//! (outputs, every parameter's gradient, parameters after Adam steps), the CPU
//! model against finite differences, determinism, fusion and bad input.

use crate::common::{gpu, random, relative_error, to_f64};
use mmoe_wgpu::Error;
use mmoe_wgpu::graph::{CpuExecutor, Role};
use mmoe_wgpu::model::{Architecture, Gate, ModelConfig, TaskConfig, TaskKind, Trainer};
use mmoe_wgpu::rng::Rng;

const ROWS: usize = 19;
const INPUTS: usize = 7;

pub(crate) fn tasks(n: usize) -> Vec<TaskConfig> {
    (0..n)
        .map(|t| {
            let kind = if t % 2 == 0 {
                TaskKind::Regression
            } else {
                TaskKind::BinaryClassification
            };
            TaskConfig {
                weight: 1.0 + 0.5 * t as f32,
                ..TaskConfig::new(format!("task{t}"), kind)
            }
        })
        .collect()
}

/// The architectures and gate kinds, small and with awkward widths.
fn configs() -> Vec<(&'static str, ModelConfig)> {
    let mmoe = ModelConfig {
        tower_layers: vec![3],
        seed: 11,
        learning_rate: 0.01,
        ..ModelConfig::mmoe(INPUTS, 3, 5, 3, tasks(2))
    };
    let mut all = vec![
        ("mmoe", mmoe.clone()),
        (
            "omoe",
            ModelConfig {
                architecture: Architecture::Omoe {
                    experts: 3,
                    expert_layers: vec![5],
                    gate: Gate::SOFTMAX,
                },
                ..mmoe.clone()
            },
        ),
        (
            "shared-bottom",
            ModelConfig {
                architecture: Architecture::SharedBottom {
                    bottom_layers: vec![9],
                },
                ..mmoe.clone()
            },
        ),
        (
            "mmoe on a shared hidden layer, two-layer experts, three tasks",
            ModelConfig {
                shared_layers: vec![6],
                architecture: Architecture::Mmoe {
                    experts: 4,
                    expert_layers: vec![5, 4],
                    gate: Gate::SOFTMAX,
                    task_experts: 0,
                },
                tower_layers: vec![3, 2],
                tasks: tasks(3),
                ..mmoe.clone()
            },
        ),
    ];
    let gated = |gate: Gate, experts: usize, task_experts: usize| ModelConfig {
        architecture: Architecture::Mmoe {
            experts,
            expert_layers: vec![5],
            gate,
            task_experts,
        },
        ..mmoe.clone()
    };
    all.extend([
        ("mmoe, top-1 gates", gated(Gate::top_k(1), 4, 0)),
        ("mmoe, top-2 gates", gated(Gate::top_k(2), 5, 0)),
        ("mmoe, top-k gates with k = E", gated(Gate::top_k(3), 3, 0)),
        ("mmoe, static gates", gated(Gate::STATIC, 3, 0)),
        (
            "mmoe, top-2 gates with the balancing loss",
            gated(Gate::top_k(2).balanced(0.5), 5, 0),
        ),
        (
            "mmoe, softmax gates with the balancing loss, on a shared layer",
            ModelConfig {
                shared_layers: vec![6],
                ..gated(Gate::SOFTMAX.balanced(2.0), 3, 0)
            },
        ),
        (
            "mmoe, 2 shared and 1 task-specific expert per task, top-2",
            gated(Gate::top_k(2), 2, 1),
        ),
        (
            "mmoe, 1 shared and 2 task-specific experts per task, on a shared layer",
            ModelConfig {
                shared_layers: vec![6],
                ..gated(Gate::SOFTMAX, 1, 2)
            },
        ),
        (
            "omoe, top-2 gate",
            ModelConfig {
                architecture: Architecture::Omoe {
                    experts: 4,
                    expert_layers: vec![5],
                    gate: Gate::top_k(2),
                },
                ..mmoe.clone()
            },
        ),
        (
            "mmoe, static gates on a shared layer",
            ModelConfig {
                shared_layers: vec![6],
                ..gated(Gate::STATIC, 3, 0)
            },
        ),
        ("mmoe, noisy top-2 gates", gated(Gate::top_k(2).noisy(), 5, 0)),
        (
            "mmoe, noisy top-2 gates with the balancing loss, 2 shared and 1 task-specific expert per task, on a shared layer",
            ModelConfig {
                shared_layers: vec![6],
                ..gated(Gate::top_k(2).noisy().balanced(0.5), 2, 1)
            },
        ),
        (
            "mmoe, top-2 gates with the load balancing loss",
            gated(Gate::top_k(2).balanced_load(0.5), 5, 0),
        ),
        (
            "mmoe, softmax gates with the load balancing loss",
            gated(Gate::SOFTMAX.balanced_load(1.5), 3, 0),
        ),
        (
            "mmoe, noisy top-2 gates with the load balancing loss, 2 shared and 1 task-specific expert per task, on a shared layer",
            ModelConfig {
                shared_layers: vec![6],
                ..gated(Gate::top_k(2).noisy().balanced_load(0.7), 2, 1)
            },
        ),
        // Sparse experts' input gradients: ragged on a per-group input (the second
        // layer) and on a shared one (the shared layer below), one or more routes a row.
        (
            "mmoe, top-2 gates, two-layer experts",
            ModelConfig {
                architecture: Architecture::Mmoe {
                    experts: 5,
                    expert_layers: vec![5, 4],
                    gate: Gate::top_k(2),
                    task_experts: 0,
                },
                ..mmoe.clone()
            },
        ),
        (
            "mmoe, top-1 gates on a shared layer",
            ModelConfig {
                shared_layers: vec![6],
                ..gated(Gate::top_k(1), 4, 0)
            },
        ),
        (
            "mmoe, top-2 gates, two-layer experts on a shared layer, three tasks",
            ModelConfig {
                shared_layers: vec![6],
                architecture: Architecture::Mmoe {
                    experts: 4,
                    expert_layers: vec![5, 4],
                    gate: Gate::top_k(2),
                    task_experts: 0,
                },
                tasks: tasks(3),
                ..mmoe.clone()
            },
        ),
        (
            "mmoe, three tasks, top-2 gates sharing one selection, two-layer experts on a shared layer",
            ModelConfig {
                shared_layers: vec![6],
                architecture: Architecture::Mmoe {
                    experts: 5,
                    expert_layers: vec![5, 4],
                    gate: Gate::top_k(2).shared_selection(),
                    task_experts: 0,
                },
                tasks: tasks(3),
                ..mmoe.clone()
            },
        ),
        (
            "mmoe, noisy top-2 gates sharing one selection, with the load balancing loss",
            gated(
                Gate::top_k(2)
                    .noisy()
                    .shared_selection()
                    .balanced_load(0.5),
                5,
                0,
            ),
        ),
    ]);
    all
}

/// The largest gradient of the noise layer's weights against the largest of all,
/// for a noisy config (`None` otherwise): the control that the noise is trained.
fn noise_gradient_share(trainer: &Trainer, grads: &[f64]) -> Option<f64> {
    let graph = &trainer.model().graph;
    let id = graph.find("gate.noise.weight")?;
    let offset = trainer.executor().plan().param_offsets[id.0].unwrap();
    let largest = |g: &[f64]| g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    Some(largest(&grads[offset..offset + graph.tensor(id).len()]) / largest(grads))
}

/// A batch whose targets suit each task's kind (0/1 labels for classification).
pub(crate) fn batch(config: &ModelConfig, rows: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let x = random(&mut rng, rows * config.inputs, 1.0);
    let y = config
        .tasks
        .iter()
        .flat_map(|t| {
            (0..rows)
                .map(|_| match t.kind {
                    TaskKind::Regression => rng.uniform(-1.0, 1.0) as f32,
                    TaskKind::BinaryClassification => (rng.unit() < 0.5) as u8 as f32,
                })
                .collect::<Vec<_>>()
        })
        .collect();
    (x, y)
}

/// Norm-wise relative error of every parameter tensor of a flat vector.
pub(crate) fn worst_parameter_error(trainer: &Trainer, got: &[f32], want: &[f64]) -> (String, f64) {
    let graph = &trainer.model().graph;
    let plan = trainer.executor().plan();
    graph
        .with_role(Role::Parameter)
        .into_iter()
        .map(|id| {
            let offset = plan.param_offsets[id.0].unwrap();
            let len = graph.tensor(id).len();
            let err = relative_error(&got[offset..offset + len], &want[offset..offset + len]);
            (graph.tensor(id).name.clone(), err)
        })
        .fold((String::new(), 0.0), |a, b| if b.1 > a.1 { b } else { a })
}

/// The GPU executor against the CPU executor on `config`: outputs and every
/// parameter's gradient on a full and a partial batch (the CPU given the gate noise
/// the GPU's pass drew, if any), then every parameter after three Adam steps.
pub(crate) fn assert_executors_agree(name: &str, config: &ModelConfig) {
    assert_executors_agree_and(name, config, |_, _, _| {});
}

/// [`assert_executors_agree`], calling `also(trainer, cpu gradients, rows)` after
/// each batch's gradients are compared.
fn assert_executors_agree_and(
    name: &str,
    config: &ModelConfig,
    mut also: impl FnMut(&Trainer, &[f64], usize),
) {
    let mut trainer = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
    let mut cpu = trainer.reference().unwrap();
    let (x, y) = batch(config, ROWS, 5);
    let tasks = config.tasks.len();
    for rows in [ROWS, 4] {
        let (x, y) = (
            &x[..rows * config.inputs],
            &subset_targets(&y, tasks, ROWS, rows),
        );
        let got_grads = trainer.gradients(x, y).unwrap();
        // The noise the GPU's pass drew: that of the next step.
        let noise = trainer.gate_noise(trainer.steps() + 1, rows);
        cpu_forward_backward(&mut cpu, (x, y), rows, noise);
        let preds = trainer
            .executor()
            .read(trainer.model().predictions, rows)
            .unwrap();
        let err = relative_error(&preds, cpu.tensor(trainer.model().predictions));
        assert!(
            err <= 1e-4,
            "{name}, {rows} rows: predictions differ by {err:.2e}"
        );
        let (worst, err) = worst_parameter_error(&trainer, &got_grads, cpu.gradients());
        assert!(
            err <= 1e-4,
            "{name}, {rows} rows: gradient of `{worst}` differs by {err:.2e}"
        );
        also(&trainer, cpu.gradients(), rows);
    }
    for step in 1..=3 {
        let (x, y) = batch(config, ROWS, 100 + step as u64);
        trainer.step(&x, &y).unwrap();
        cpu_forward_backward(&mut cpu, (&x, &y), ROWS, trainer.gate_noise(step, ROWS));
        cpu.optimizer_step(step, config.learning_rate as f64)
            .unwrap();
    }
    let params = trainer.parameters().unwrap();
    let (worst, err) = worst_parameter_error(&trainer, &params, cpu.parameters());
    assert!(
        err <= 1e-3,
        "{name}: after 3 Adam steps `{worst}` differs by {err:.2e}"
    );
    eprintln!("{name}: after 3 Adam steps the worst parameter `{worst}` differs by {err:.2e}");
}

/// The reference's gradient of `config`'s model, without gate noise, against
/// central finite differences on a batch of 5 rows.
pub(crate) fn assert_reference_matches_finite_differences(name: &str, config: &ModelConfig) {
    let trainer = Trainer::new(gpu(), config.clone(), 5).unwrap();
    let (x, y) = batch(config, 5, 9);
    let (_, worst) = finite_difference_gap(&trainer, 5, &x, &y);
    assert!(
        worst < 1e-6,
        "{name}: finite differences differ by {worst:.2e} of the largest gradient"
    );
}

/// Forward with the gate noise `noise` (if any) and backward on the CPU.
pub(crate) fn cpu_forward_backward(
    cpu: &mut CpuExecutor,
    (x, y): (&[f32], &[f32]),
    rows: usize,
    noise: Option<Vec<f32>>,
) {
    let noise: Vec<Vec<f64>> = noise.iter().map(|n| to_f64(n)).collect();
    let noise: Vec<&[f64]> = noise.iter().map(Vec::as_slice).collect();
    cpu.forward_with_noise(rows, &[&to_f64(x)], &noise, &[&to_f64(y)])
        .unwrap();
    cpu.backward().unwrap();
}

#[test]
fn gpu_and_cpu_executors_agree_on_outputs_gradients_and_adam_steps() {
    for (name, config) in configs() {
        assert_executors_agree_and(name, &config, |trainer, grads, rows| {
            if let Some(share) = noise_gradient_share(trainer, grads) {
                assert!(
                    share > 1e-2,
                    "{name}, {rows} rows: the noise layer's gradient is {share:.1e} of the largest"
                );
            }
        });
    }
}

pub(crate) fn subset_targets(y: &[f32], tasks: usize, rows: usize, keep: usize) -> Vec<f32> {
    (0..tasks)
        .flat_map(|t| y[t * rows..t * rows + keep].to_vec())
        .collect()
}

/// The reference's gradient of the summed loss (with noisy gates' draws and the
/// balancing loss) on `rows` rows of `x`, `y`, and its worst gap to central finite
/// differences, relative to the largest gradient.
pub(crate) fn finite_difference_gap(
    trainer: &Trainer,
    rows: usize,
    x: &[f32],
    y: &[f32],
) -> (Vec<f64>, f64) {
    let mut cpu = trainer.reference().unwrap();
    let (x, y) = (to_f64(x), to_f64(y));
    // Zero biases put every row whose layer input is all zero (a dead ReLU row)
    // exactly on the kink of the next ReLU, where finite differences see half a
    // slope: move every parameter off such ties first.
    let mut rng = Rng::new(17);
    for p in cpu.parameters_mut() {
        *p += rng.uniform(-0.1, 0.1);
    }
    let loss_id = trainer.model().graph.find("loss").unwrap();
    let noise: Vec<Vec<f64>> = trainer
        .gate_noise(1, rows)
        .iter()
        .map(|n| to_f64(n))
        .collect();
    let noise: Vec<&[f64]> = noise.iter().map(Vec::as_slice).collect();
    let total = |cpu: &mut CpuExecutor| -> f64 {
        cpu.forward_with_noise(rows, &[&x], &noise, &[&y]).unwrap();
        cpu.tensor(loss_id).iter().sum::<f64>() + cpu.balance_loss()
    };
    total(&mut cpu);
    cpu.backward().unwrap();
    let analytic = cpu.gradients().to_vec();
    let eps = 1e-6;
    let mut worst: f64 = 0.0;
    let scale = analytic.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    for (i, &want) in analytic.iter().enumerate() {
        let p = cpu.parameters()[i];
        cpu.parameters_mut()[i] = p + eps;
        let up = total(&mut cpu);
        cpu.parameters_mut()[i] = p - eps;
        let down = total(&mut cpu);
        cpu.parameters_mut()[i] = p;
        let numeric = (up - down) / (2.0 * eps);
        worst = worst.max((numeric - want).abs() / scale);
    }
    (analytic, worst)
}

#[test]
fn cpu_reference_gradients_match_finite_differences() {
    for (name, config) in configs() {
        let trainer = Trainer::new(gpu(), config.clone(), 5).unwrap();
        let (x, y) = batch(&config, 5, 9);
        let (analytic, worst) = finite_difference_gap(&trainer, 5, &x, &y);
        assert!(
            worst < 1e-6,
            "{name}: finite differences differ by {worst:.2e} of the largest gradient"
        );
        if let Some(share) = noise_gradient_share(&trainer, &analytic) {
            assert!(
                share > 1e-2,
                "{name}: the noise layer's gradient is {share:.1e} of the largest"
            );
        }
    }
}

#[test]
fn same_seed_trains_to_bitwise_identical_parameters() {
    let config = configs().remove(0).1;
    let train = || {
        let mut trainer = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
        for step in 0..5 {
            let (x, y) = batch(&config, ROWS, 40 + step);
            trainer.step(&x, &y).unwrap();
        }
        trainer.parameters().unwrap()
    };
    let (a, b) = (train(), train());
    assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
    let other = Trainer::new(
        gpu(),
        ModelConfig {
            seed: 12,
            ..config.clone()
        },
        ROWS,
    )
    .unwrap();
    assert_ne!(
        other.parameters().unwrap(),
        Trainer::new(gpu(), config, ROWS)
            .unwrap()
            .parameters()
            .unwrap()
    );
}

#[test]
fn experts_start_different() {
    let config = ModelConfig::mmoe(INPUTS, 4, 6, 3, tasks(2));
    let trainer = Trainer::new(gpu(), config, 8).unwrap();
    let w = trainer.parameter("experts.0.weight").unwrap();
    let per_expert = INPUTS * 6;
    for e in 1..4 {
        assert_ne!(
            w[..per_expert],
            w[e * per_expert..(e + 1) * per_expert],
            "expert {e} equals expert 0"
        );
    }
}

#[test]
fn one_layer_mmoe_step_records_at_most_16_dispatches() {
    for experts in [2, 8, 16] {
        for task_count in [1, 2, 4] {
            let config = ModelConfig::mmoe(INPUTS, experts, 4, 3, tasks(task_count));
            let mut trainer = Trainer::new(gpu(), config, 8).unwrap();
            let n = trainer.dispatches_per_step().unwrap();
            eprintln!("E={experts}, T={task_count}: {n} dispatches per step");
            assert!(n <= 16, "E={experts}, T={task_count}: {n} dispatches");
        }
    }
}

/// Sparse experts' input gradients run ragged: the second layer's (per-group input)
/// in one dispatch, the first layer's (on the shared layer) as the products and
/// their reduce; the heads, the towers and the gate's logits keep the dense kernel.
#[test]
fn sparse_experts_input_gradients_run_ragged() {
    let config = ModelConfig {
        shared_layers: vec![6],
        architecture: Architecture::Mmoe {
            experts: 4,
            expert_layers: vec![5, 4],
            gate: Gate::top_k(2),
            task_experts: 0,
        },
        tower_layers: vec![3],
        ..ModelConfig::mmoe(INPUTS, 4, 5, 3, tasks(2))
    };
    let mut trainer = Trainer::new(gpu(), config.clone(), 8).unwrap();
    let (x, y) = batch(&config, 8, 3);
    let labels: Vec<&str> = trainer
        .profile_step(&x, &y)
        .unwrap()
        .into_iter()
        .map(|(label, _)| label)
        .collect();
    let count = |name: &str| labels.iter().filter(|l| **l == name).count();
    assert_eq!(count("grouped_gemm backward_input_ragged"), 2, "{labels:?}");
    assert_eq!(
        count("grouped_gemm backward_input_ragged reduce"),
        1,
        "{labels:?}"
    );
    // The heads, the towers (into the mixtures) and the gate's logits (into the shared
    // layer's output); the shared layer reads the model input, which needs none.
    assert_eq!(count("grouped_gemm backward_input"), 3, "{labels:?}");
}

#[test]
fn short_training_lowers_the_loss_tenfold() {
    // Two regression tasks that are smooth functions of the input.
    let config = ModelConfig {
        learning_rate: 0.01,
        seed: 3,
        ..ModelConfig::mmoe(
            4,
            4,
            16,
            8,
            vec![
                TaskConfig::new("a", TaskKind::Regression),
                TaskConfig::new("b", TaskKind::Regression),
            ],
        )
    };
    let mut rng = Rng::new(21);
    let rows = 256;
    let x = random(&mut rng, rows * 4, 1.0);
    let mut y = vec![0.0f32; 2 * rows];
    for r in 0..rows {
        let v = &x[r * 4..r * 4 + 4];
        y[r] = 2.0 * v[0] - v[1] + 0.5;
        y[rows + r] = v[2] * v[3] + v[0] - 1.0;
    }
    let mut trainer = Trainer::new(gpu(), config, rows).unwrap();
    let before = trainer.evaluate(&x, &y).unwrap().total;
    for _ in 0..300 {
        trainer.step(&x, &y).unwrap();
    }
    let after = trainer.evaluate(&x, &y).unwrap().total;
    eprintln!("loss {before:.4} -> {after:.5} after 300 steps");
    assert!(after * 10.0 <= before, "loss went from {before} to {after}");
    let report = trainer.gate_report(&x).unwrap();
    for row in &report.weights {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-4);
    }
}

#[test]
fn bad_input_is_an_error() {
    let config = ModelConfig::mmoe(INPUTS, 3, 4, 3, tasks(2));
    let mut trainer = Trainer::new(gpu(), config.clone(), 8).unwrap();
    let (x, y) = batch(&config, 8, 1);
    assert!(matches!(
        trainer.step(&x[..x.len() - 1], &y),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        trainer.step(&x, &y[..8]),
        Err(Error::Shape { .. })
    ));
    let big = batch(&config, 9, 1);
    assert!(trainer.step(&big.0, &big.1).is_err());
    let mut nan_x = x.clone();
    nan_x[3] = f32::NAN;
    assert!(matches!(
        trainer.step(&nan_x, &y),
        Err(Error::NonFinite { index: 3, .. })
    ));
    let mut inf_y = y.clone();
    inf_y[0] = f32::INFINITY;
    assert!(matches!(
        trainer.step(&x, &inf_y),
        Err(Error::NonFinite { .. })
    ));
    for bad in [
        ModelConfig::mmoe(INPUTS, 0, 4, 3, tasks(2)),
        ModelConfig::mmoe(INPUTS, 3, 0, 3, tasks(2)),
        ModelConfig::mmoe(0, 3, 4, 3, tasks(2)),
        ModelConfig::mmoe(INPUTS, 3, 4, 3, vec![]),
    ] {
        assert!(matches!(
            Trainer::new(gpu(), bad, 8),
            Err(Error::Invalid { .. })
        ));
    }
    assert!(trainer.gate_report(&x).is_ok());
    assert_eq!(trainer.steps(), 0, "failed steps must not count");
}

#[test]
fn a_diverging_loss_is_reported_with_its_step() {
    // A learning rate this large overflows the regression head within a few steps.
    let config = ModelConfig {
        learning_rate: 1e30,
        optimizer: mmoe_wgpu::kernels::optimizer::OptimizerConfig::Sgd { momentum: 0.0 },
        ..ModelConfig::mmoe(
            INPUTS,
            3,
            4,
            3,
            vec![TaskConfig::new("r", TaskKind::Regression)],
        )
    };
    let mut trainer = Trainer::new(gpu(), config.clone(), 8).unwrap();
    let (x, y) = batch(&config, 8, 2);
    let mut reported = None;
    for _ in 0..20 {
        trainer.step(&x, &y).unwrap();
        if let Err(e) = trainer.loss() {
            reported = Some(e);
            break;
        }
    }
    match reported {
        Some(Error::NonFiniteLoss {
            step,
            task: 0,
            value,
        }) => {
            assert!(step >= 2 && step <= trainer.steps() as u64, "step {step}");
            assert!(!value.is_finite());
            // The update of the failing step was not applied: parameters stay finite.
            let params = trainer.executor().parameters().unwrap();
            assert!(params.iter().all(|p| p.is_finite()));
        }
        other => panic!("expected a non-finite loss error, got {other:?}"),
    }
}

#[test]
fn device_memory_stays_within_the_plan_over_100_steps() {
    let config = configs().remove(3).1;
    let mut trainer = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
    let planned = trainer.planned_memory().total();
    let (x, y) = batch(&config, ROWS, 8);
    for step in 0..100 {
        // Alternate batch sizes: each size builds its dispatches once, no buffers.
        let rows = if step % 2 == 0 { ROWS } else { 5 };
        trainer
            .step(
                &x[..rows * INPUTS],
                &subset_targets(&y, config.tasks.len(), ROWS, rows),
            )
            .unwrap();
    }
    trainer.loss().unwrap();
    let used = trainer.memory();
    assert!(
        used.total() as f64 <= 1.25 * planned as f64,
        "allocated {used:?} against {planned} bytes planned"
    );
    assert_eq!(used.parameters, trainer.planned_memory().parameters);
}

/// What each gate kind weighs, read from the gate values of a trained model: top-k
/// gates exactly k experts per row, task-specific experts only by their task's gate,
/// static gates the same weights on every row; and the load report says so.
#[test]
fn gate_kinds_weigh_the_experts_they_should() {
    let base = &configs()[0].1;
    let mmoe = |gate: Gate, experts: usize, task_experts: usize| ModelConfig {
        architecture: Architecture::Mmoe {
            experts,
            expert_layers: vec![5],
            gate,
            task_experts,
        },
        ..base.clone()
    };
    let gate_rows = |config: &ModelConfig| -> (Trainer, Vec<Vec<Vec<f32>>>) {
        let mut trainer = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
        for seed in 0..3 {
            let (x, y) = batch(config, ROWS, 40 + seed);
            trainer.step(&x, &y).unwrap();
        }
        let (x, _) = batch(config, ROWS, 50);
        trainer.predict(&x).unwrap();
        let values = trainer.model().gate_values.unwrap();
        let g = trainer.executor().read(values, ROWS).unwrap();
        let experts = trainer.model().graph.tensor(values).shape[2];
        let gates: Vec<Vec<Vec<f32>>> = g
            .chunks(ROWS * experts)
            .map(|gate| gate.chunks(experts).map(<[f32]>::to_vec).collect())
            .collect();
        (trainer, gates)
    };

    for k in [1, 2, 5] {
        let config = mmoe(Gate::top_k(k), 5, 0);
        let (mut trainer, gates) = gate_rows(&config);
        for row in gates.iter().flatten() {
            assert_eq!(
                row.iter().filter(|&&p| p != 0.0).count(),
                k,
                "top-{k}: {row:?}"
            );
        }
        // Sparse experts ran on the routed rows alone: the others are exact zeros.
        let h_id = trainer.model().graph.find("experts.0").unwrap();
        let h = trainer.executor().read(h_id, ROWS).unwrap();
        let width = h.len() / (5 * ROWS);
        let mut skipped = 0;
        for e in 0..5 {
            for row in 0..ROWS {
                if gates.iter().all(|gate| gate[row][e] == 0.0) {
                    let at = (e * ROWS + row) * width;
                    assert!(h[at..at + width].iter().all(|&v| v.to_bits() == 0));
                    skipped += 1;
                }
            }
        }
        assert_eq!(
            skipped > 0,
            k < 5,
            "top-{k}: {skipped} (row, expert) pairs skipped"
        );
        let (x, _) = batch(&config, ROWS, 50);
        let report = trainer.gate_report(&x).unwrap();
        for load in &report.load {
            let mean: f64 = load.iter().sum();
            assert!(
                (mean - k as f64).abs() < 1e-9,
                "top-{k}: loads {load:?} sum to {mean}"
            );
        }
        assert!(report.routed.iter().all(|&r| (0.0..=1.0).contains(&r)));
    }

    // A shared selection: every gate of a row weighs the same k experts, so the
    // experts compute k rows each on average, not up to gates · k.
    let config = ModelConfig {
        tasks: tasks(3),
        ..mmoe(Gate::top_k(2).shared_selection(), 6, 0)
    };
    let (mut trainer, gates) = gate_rows(&config);
    for row in 0..ROWS {
        let chosen = |t: usize| -> Vec<bool> { gates[t][row].iter().map(|&p| p != 0.0).collect() };
        assert_eq!(chosen(0).iter().filter(|&&c| c).count(), 2, "row {row}");
        assert!(
            (1..3).all(|t| chosen(t) == chosen(0)),
            "row {row}: {gates:?}"
        );
        assert_ne!(
            gates[0][row], gates[1][row],
            "row {row}: the gates' weights differ"
        );
    }
    let (x, _) = batch(&config, ROWS, 50);
    let report = trainer.gate_report(&x).unwrap();
    let routed: f64 = report.routed.iter().sum();
    assert!((routed - 2.0).abs() < 1e-9, "{:?}", report.routed);

    let (trainer, _) = gate_rows(&mmoe(Gate::top_k(2).balanced(0.5), 5, 0));
    let aux = trainer.balance_loss().unwrap().expect("a balancing loss");
    assert_eq!(aux.len(), 2);
    assert!(aux.iter().all(|&l| l.is_finite() && l >= 0.0), "{aux:?}");
    assert!(aux.iter().any(|&l| l > 0.0), "{aux:?}");

    let (trainer, gates) = gate_rows(&mmoe(Gate::top_k(2), 2, 2));
    assert_eq!(trainer.balance_loss().unwrap(), None);
    assert!(trainer.model().graph.find("gate.weight").is_some());
    for (t, gate) in gates.iter().enumerate() {
        for row in gate {
            assert_eq!(row.len(), 2 + 2 * 2);
            for (e, &p) in row.iter().enumerate() {
                let own = e < 2 || (e - 2) / 2 == t;
                assert!(
                    own || p == 0.0,
                    "gate {t} weighs expert {e} of another task"
                );
            }
            assert_eq!(row.iter().filter(|&&p| p != 0.0).count(), 2);
        }
    }

    let (trainer, gates) = gate_rows(&mmoe(Gate::STATIC, 3, 0));
    assert!(trainer.model().graph.find("gate.weight").is_none());
    for gate in &gates {
        assert!(
            gate.iter().all(|row| row == &gate[0]),
            "a static gate varies"
        );
        let sum: f32 = gate[0].iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
    }
    // Trained: the static weights moved away from the uniform start.
    assert!(gates[0][0].iter().any(|&p| (p - 1.0 / 3.0).abs() > 1e-5));
}

#[test]
fn bad_gate_settings_are_errors() {
    let base = &configs()[0].1;
    for (gate, experts, task_experts, want) in [
        (Gate::top_k(0), 3, 0, "1 ≤ k ≤ 3"),
        (Gate::top_k(4), 3, 0, "1 ≤ k ≤ 3"),
        (Gate::top_k(4), 2, 1, "1 ≤ k ≤ 3"),
        (Gate::SOFTMAX.balanced(-1.0), 3, 0, "balance weight"),
        (Gate::SOFTMAX, 0, 0, "experts must be at least 1"),
        (
            Gate::SOFTMAX.noisy(),
            3,
            0,
            "gate noise (`Gate::noisy`) needs a top-k",
        ),
        (
            Gate::STATIC.noisy(),
            3,
            0,
            "gate noise (`Gate::noisy`) needs a top-k",
        ),
        (
            Gate::SOFTMAX.shared_selection(),
            3,
            0,
            "a shared selection (`Gate::shared_selection`) needs a top-k gate",
        ),
        (
            Gate::top_k(2).shared_selection(),
            2,
            1,
            "every gate to see every expert, but the tasks have experts of their own (1 each)",
        ),
        (
            Gate::top_k(2).shared_selection(),
            257,
            0,
            "limited to 256 experts; this model has 257",
        ),
    ] {
        let config = ModelConfig {
            architecture: Architecture::Mmoe {
                experts,
                expert_layers: vec![5],
                gate,
                task_experts,
            },
            ..base.clone()
        };
        match Trainer::new(gpu(), config, 4) {
            Err(e @ Error::Invalid { .. }) => {
                assert!(e.to_string().contains(want), "{e} should say {want}")
            }
            Err(e) => panic!("{gate:?}: wrong error {e}"),
            Ok(_) => panic!("{gate:?} with {experts} + {task_experts} experts accepted"),
        }
    }
}

/// `config` with a noisy top-2 gate over 5 experts, or the plain one.
fn top_2(noisy: bool) -> ModelConfig {
    let gate = if noisy {
        Gate::top_k(2).noisy()
    } else {
        Gate::top_k(2)
    };
    ModelConfig {
        architecture: Architecture::Mmoe {
            experts: 5,
            expert_layers: vec![5],
            gate,
            task_experts: 0,
        },
        ..configs()[0].1.clone()
    }
}

/// Predictions, evaluations and gate reports of a noisy gate add no noise: they are
/// bitwise those of the plain top-k gate with the same other parameters, whatever the
/// noise layer holds. Training passes do add it.
#[test]
fn noisy_gates_add_noise_in_training_only() {
    let mut plain = Trainer::new(gpu(), top_2(false), ROWS).unwrap();
    let mut noisy = Trainer::new(gpu(), top_2(true), ROWS).unwrap();
    let graph = noisy.model().graph.clone();
    let plan = noisy.executor().plan().clone();
    for (name, shape) in [
        ("gate.noise.weight", [2, INPUTS, 5]),
        ("gate.noise.bias", [2, 5, 1]),
    ] {
        let id = graph.find(name).unwrap();
        assert_eq!(
            graph.tensor(id).len(),
            shape.iter().product::<usize>(),
            "{name}"
        );
        assert!(
            noisy.parameter(name).unwrap().iter().all(|&v| v == 0.0),
            "{name} starts at 0"
        );
    }
    let mut rng = Rng::new(4);
    let mut flat = vec![0.0f32; plan.param_len];
    for id in graph.with_role(Role::Parameter) {
        let name = &graph.tensor(id).name;
        let offset = plan.param_offsets[id.0].unwrap();
        let values = if name.starts_with("gate.noise.") {
            random(&mut rng, graph.tensor(id).len(), 2.0)
        } else {
            plain.parameter(name).unwrap()
        };
        flat[offset..offset + values.len()].copy_from_slice(&values);
    }
    noisy.set_parameters(&flat).unwrap();

    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    // A training pass sees the noise, in the gate's gradient (and leaves the draws
    // on the device, where the passes below must not read them).
    let (x, y) = batch(&top_2(true), ROWS, 61);
    let gate_gradient = |t: &mut Trainer| {
        let g = t.gradients(&x, &y).unwrap();
        let id = t.model().graph.find("gate.weight").unwrap();
        let at = t.executor().plan().param_offsets[id.0].unwrap();
        bits(&g[at..at + t.model().graph.tensor(id).len()])
    };
    assert_ne!(gate_gradient(&mut plain), gate_gradient(&mut noisy));

    // More rows than the capacity: several chunks, the last one partial.
    let (x, y) = batch(&top_2(true), 2 * ROWS + 3, 60);
    assert_eq!(
        bits(&plain.predict(&x).unwrap()),
        bits(&noisy.predict(&x).unwrap())
    );
    assert_eq!(
        plain.evaluate(&x, &y).unwrap(),
        noisy.evaluate(&x, &y).unwrap()
    );
    assert_eq!(
        plain.gate_report(&x).unwrap(),
        noisy.gate_report(&x).unwrap()
    );
}

#[test]
fn noisy_training_is_bitwise_reproducible_and_its_noise_fresh_each_step() {
    let config = top_2(true);
    let train = |config: &ModelConfig| {
        let mut trainer = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
        for step in 0..5 {
            let (x, y) = batch(config, ROWS, 40 + step);
            trainer.step(&x, &y).unwrap();
        }
        trainer
    };
    let (a, b) = (train(&config), train(&config));
    let bits = |t: &Trainer| -> Vec<u32> {
        t.parameters()
            .unwrap()
            .iter()
            .map(|p| p.to_bits())
            .collect()
    };
    assert_eq!(bits(&a), bits(&b));
    // The noise layer trained away from its zero start.
    assert!(
        a.parameter("gate.noise.weight")
            .unwrap()
            .iter()
            .any(|&v| v != 0.0)
    );

    // Fresh draws each step and seed, standard normal.
    let eps = |t: &Trainer, step| t.gate_noise(step, ROWS).unwrap();
    assert_eq!(eps(&a, 1).len(), 2 * ROWS * 5);
    assert_eq!(eps(&a, 3), eps(&b, 3));
    assert_ne!(eps(&a, 1), eps(&a, 2));
    let other = Trainer::new(gpu(), ModelConfig { seed: 12, ..config }, ROWS).unwrap();
    assert_ne!(eps(&a, 1), eps(&other, 1));
    let many = a.gate_noise(7, 10_000).unwrap();
    let mean = many.iter().map(|&v| v as f64).sum::<f64>() / many.len() as f64;
    let var = many.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / many.len() as f64;
    assert!(
        mean.abs() < 0.02 && (var - 1.0).abs() < 0.02,
        "mean {mean}, variance {var}"
    );
    assert_eq!(
        Trainer::new(gpu(), top_2(false), ROWS)
            .unwrap()
            .gate_noise(1, ROWS),
        None
    );
}

/// A top-1 gate's weight is 1 whatever its logits, so neither the tasks nor the
/// importance loss give its parameters a gradient; the load loss does (it reaches
/// the logits through the full softmax). The loss is reported per gate: `w` exactly
/// for a dense gate.
#[test]
fn the_load_loss_trains_top_1_gates_and_is_reported() {
    let base = &configs()[0].1;
    let with_gate = |gate: Gate| ModelConfig {
        architecture: Architecture::Mmoe {
            experts: 4,
            expert_layers: vec![5],
            gate,
            task_experts: 0,
        },
        ..base.clone()
    };
    let gate_grads = |config: &ModelConfig| -> (Vec<f32>, Option<Vec<f32>>) {
        let mut trainer = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
        let (x, y) = batch(config, ROWS, 3);
        let grads = trainer.gradients(&x, &y).unwrap();
        let graph = &trainer.model().graph;
        let mut out = Vec::new();
        for name in ["gate.weight", "gate.bias"] {
            let id = graph.find(name).unwrap();
            let offset = trainer.executor().plan().param_offsets[id.0].unwrap();
            out.extend_from_slice(&grads[offset..offset + graph.tensor(id).len()]);
        }
        (out, trainer.balance_loss().unwrap())
    };
    for gate in [Gate::top_k(1), Gate::top_k(1).balanced(1.0)] {
        let (grads, _) = gate_grads(&with_gate(gate));
        assert!(grads.iter().all(|&g| g == 0.0), "{gate:?}: {grads:?}");
    }
    let (grads, loss) = gate_grads(&with_gate(Gate::top_k(1).balanced_load(1.0)));
    assert!(
        grads.iter().any(|&g| g.abs() > 1e-4),
        "load loss: {grads:?}"
    );
    let loss = loss.expect("the load loss is reported");
    assert_eq!(loss.len(), 2);
    // w · E · Σ_e f·P: positive (P > 0 wherever f > 0), at most w·E (Σ f = 1, P ≤ 1).
    assert!(loss.iter().all(|&l| l > 0.0 && l <= 4.0), "{loss:?}");

    let (grads, loss) = gate_grads(&with_gate(Gate::SOFTMAX.balanced_load(0.3)));
    assert!(
        grads.iter().any(|&g| g != 0.0),
        "the tasks still train a dense gate"
    );
    for l in loss.unwrap() {
        assert!((l - 0.3).abs() < 1e-6, "dense gate load loss {l}");
    }
}

/// The gate + mix stores the expert outputs' gradient at their ReLU's input, so
/// the experts' backward runs without loading H; the towers, read by a dense layer,
/// keep their ReLU derivative in their own backward.
#[test]
fn the_gate_applies_the_experts_relu_derivative() {
    let config = ModelConfig {
        tower_layers: vec![3],
        ..ModelConfig::mmoe(INPUTS, 3, 5, 3, tasks(2))
    };
    let trainer = Trainer::new(gpu(), config, ROWS).unwrap();
    let graph = &trainer.model().graph;
    let applied = &trainer.executor().plan().relu_applied;
    assert!(applied[graph.find("experts.0").unwrap().0]);
    assert!(!applied[graph.find("towers.0").unwrap().0]);
}
