//! Models for the checkpoint tests: two tasks, a fixed stream of batches for them,
//! the optimizers, and one model of every kind a checkpoint records.

use mmoe_wgpu::kernels::optimizer::OptimizerConfig;
use mmoe_wgpu::model::{Architecture, Gate, ModelConfig, TaskConfig, TaskKind};
use mmoe_wgpu::rng::Rng;

use super::random;

/// A regression task, then a classification task of half its weight.
pub fn two_tasks(regression: &str, classification: &str) -> Vec<TaskConfig> {
    vec![
        TaskConfig::new(regression, TaskKind::Regression),
        TaskConfig {
            weight: 0.5,
            ..TaskConfig::new(classification, TaskKind::BinaryClassification)
        },
    ]
}

/// `rows` examples of `inputs` features for [`two_tasks`]: regression targets, then
/// 0/1 labels. The same seed gives the same batch, so runs can be compared bitwise.
pub fn two_task_batch(seed: u64, rows: usize, inputs: usize) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let x = random(&mut rng, rows * inputs, 1.0);
    let mut y = random(&mut rng, rows, 1.0);
    y.extend((0..rows).map(|_| (rng.unit() < 0.5) as u8 as f32));
    (x, y)
}

/// AdamW with every setting away from Adam's defaults, so that a field lost on the
/// way through a file shows.
pub const ADAMW: OptimizerConfig = OptimizerConfig::AdamW {
    beta1: 0.8,
    beta2: 0.99,
    eps: 1e-7,
    weight_decay: 0.01,
};

pub const SGD: OptimizerConfig = OptimizerConfig::Sgd { momentum: 0.9 };

pub fn optimizers() -> [(&'static str, OptimizerConfig); 3] {
    [("adam", ModelConfig::ADAM), ("adamw", ADAMW), ("sgd", SGD)]
}

/// One model of every kind a checkpoint records (each architecture, gate kind,
/// balancing loss, selection and optimizer), named. `base`, a softmax MMoE with
/// Adam, is the first; the others keep its inputs, tasks, rate and seed.
///
/// The frozen files in `tests/fixtures/checkpoints/` were written from this list:
/// a change that alters what it builds from their base breaks them.
pub fn every_kind(base: &ModelConfig) -> Vec<(&'static str, ModelConfig)> {
    let with = |architecture| ModelConfig {
        architecture,
        ..base.clone()
    };
    let mmoe = |experts, gate, task_experts| {
        with(Architecture::Mmoe {
            experts,
            expert_layers: vec![4],
            gate,
            task_experts,
        })
    };
    let omoe = |experts, gate| {
        with(Architecture::Omoe {
            experts,
            expert_layers: vec![4],
            gate,
        })
    };
    vec![
        ("mmoe-softmax-adam", base.clone()),
        (
            "mmoe-softmax-adamw",
            ModelConfig {
                optimizer: ADAMW,
                ..base.clone()
            },
        ),
        (
            "mmoe-softmax-sgd",
            ModelConfig {
                optimizer: SGD,
                ..base.clone()
            },
        ),
        (
            "mmoe-shared-layer-two-layer-experts",
            ModelConfig {
                shared_layers: vec![6],
                tower_layers: vec![3, 2],
                ..with(Architecture::Mmoe {
                    experts: 3,
                    expert_layers: vec![5, 4],
                    gate: Gate::SOFTMAX,
                    task_experts: 0,
                })
            },
        ),
        ("omoe-softmax", omoe(2, Gate::SOFTMAX)),
        ("omoe-static", omoe(3, Gate::STATIC)),
        (
            "shared-bottom-no-towers",
            ModelConfig {
                tower_layers: vec![],
                ..with(Architecture::SharedBottom {
                    bottom_layers: vec![6],
                })
            },
        ),
        (
            "mmoe-top2-task-experts-importance",
            mmoe(2, Gate::top_k(2).balanced(0.25), 1),
        ),
        (
            "mmoe-top2-load",
            mmoe(4, Gate::top_k(2).balanced_load(0.1), 0),
        ),
        ("mmoe-top2-noisy", mmoe(3, Gate::top_k(2).noisy(), 0)),
        (
            "mmoe-top2-shared-selection",
            mmoe(4, Gate::top_k(2).shared_selection(), 0),
        ),
    ]
}
