//! Checkpoint files written by an earlier version of the crate (0.1.0 at f91688a,
//! before the checkpoint code moved to serde) keep loading, to the same trainer state
//! bit for bit, and are written back byte for byte. One file per architecture, gate
//! kind, balancing loss, selection and optimizer, in `tests/fixtures/checkpoints/`.
//!
//! The files are frozen: `write_fixtures` made them once and refuses to overwrite
//! them. The configs below are the ones they were made from.

use std::path::PathBuf;

use crate::common::{gpu, random};
use mmoe_wgpu::kernels::optimizer::OptimizerConfig;
use mmoe_wgpu::model::{
    Architecture, Checkpoint, Gate, ModelConfig, TaskConfig, TaskKind, Trainer,
};
use mmoe_wgpu::rng::Rng;

const INPUTS: usize = 5;
const ROWS: usize = 8;
const STEPS: u32 = 3;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkpoints")
}

fn tasks() -> Vec<TaskConfig> {
    vec![
        TaskConfig::new("value", TaskKind::Regression),
        TaskConfig {
            weight: 0.5,
            ..TaskConfig::new("clicked", TaskKind::BinaryClassification)
        },
    ]
}

fn mmoe(experts: usize, gate: Gate, task_experts: usize) -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Mmoe {
            experts,
            expert_layers: vec![4],
            gate,
            task_experts,
        },
        learning_rate: 0.01,
        seed: 11,
        ..ModelConfig::mmoe(INPUTS, experts, 4, 3, tasks())
    }
}

/// Every fixture's name and config.
fn fixtures() -> Vec<(&'static str, ModelConfig)> {
    let base = mmoe(3, Gate::SOFTMAX, 0);
    vec![
        ("mmoe-softmax-adam", base.clone()),
        (
            "mmoe-softmax-adamw",
            ModelConfig {
                optimizer: OptimizerConfig::AdamW {
                    beta1: 0.8,
                    beta2: 0.99,
                    eps: 1e-7,
                    weight_decay: 0.01,
                },
                ..base.clone()
            },
        ),
        (
            "mmoe-softmax-sgd",
            ModelConfig {
                optimizer: OptimizerConfig::Sgd { momentum: 0.9 },
                ..base.clone()
            },
        ),
        (
            "mmoe-shared-layer-two-layer-experts",
            ModelConfig {
                shared_layers: vec![6],
                architecture: Architecture::Mmoe {
                    experts: 3,
                    expert_layers: vec![5, 4],
                    gate: Gate::SOFTMAX,
                    task_experts: 0,
                },
                tower_layers: vec![3, 2],
                ..base.clone()
            },
        ),
        (
            "omoe-softmax",
            ModelConfig {
                architecture: Architecture::Omoe {
                    experts: 2,
                    expert_layers: vec![4],
                    gate: Gate::SOFTMAX,
                },
                ..base.clone()
            },
        ),
        (
            "omoe-static",
            ModelConfig {
                architecture: Architecture::Omoe {
                    experts: 3,
                    expert_layers: vec![4],
                    gate: Gate::STATIC,
                },
                ..base.clone()
            },
        ),
        (
            "shared-bottom-no-towers",
            ModelConfig {
                architecture: Architecture::SharedBottom {
                    bottom_layers: vec![6],
                },
                tower_layers: vec![],
                ..base.clone()
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

/// Batch `index` of a fixed stream, 0/1 labels for the second task.
fn batch(index: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(500 + index);
    let x = random(&mut rng, ROWS * INPUTS, 1.0);
    let mut y = random(&mut rng, ROWS, 1.0);
    y.extend((0..ROWS).map(|_| (rng.unit() < 0.5) as u8 as f32));
    (x, y)
}

/// Writes the fixtures that do not exist yet (never overwriting one): run once with
/// `cargo test --release --test model checkpoint_fixtures -- --ignored`.
#[test]
#[ignore = "writes the frozen fixtures; they are committed"]
fn write_fixtures() {
    std::fs::create_dir_all(fixture_dir()).unwrap();
    for (name, config) in fixtures() {
        let path = fixture_dir().join(format!("{name}.safetensors"));
        if path.exists() {
            eprintln!("{} exists: kept", path.display());
            continue;
        }
        let mut trainer = Trainer::new(gpu(), config, ROWS).unwrap();
        for step in 0..STEPS {
            trainer
                .set_learning_rate(0.01 / (1.0 + step as f32))
                .unwrap();
            let (x, y) = batch(step as u64);
            trainer.step(&x, &y).unwrap();
        }
        trainer.checkpoint().unwrap().save(&path).unwrap();
        eprintln!("wrote {}", path.display());
    }
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// Each file loads as its config, with every tensor as the file holds it (read here
/// with the safetensors crate alone, not through the checkpoint code), restores into
/// a trainer whose state reads back bit for bit, and is written back byte for byte.
#[test]
fn checkpoints_of_earlier_versions_load_bitwise() {
    let all = fixtures();
    for (name, config) in &all {
        let path = fixture_dir().join(format!("{name}.safetensors"));
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("fixture {} is missing: {e}", path.display()));
        let loaded = Checkpoint::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(loaded.config(), config, "{name}: config");
        assert_eq!(loaded.steps(), STEPS, "{name}: steps");
        assert_eq!(
            loaded.learning_rate().to_bits(),
            (0.01f32 / STEPS as f32).to_bits(),
            "{name}: learning rate"
        );

        let raw = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(raw.len(), loaded.tensors().len(), "{name}: tensor count");
        for tensor in loaded.tensors() {
            let view = raw.tensor(&tensor.name).unwrap();
            assert_eq!(view.shape(), tensor.shape, "{name}: `{}`", tensor.name);
            let file: Vec<u32> = view
                .data()
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            assert_eq!(file, bits(&tensor.values), "{name}: `{}`", tensor.name);
        }

        let trainer = Trainer::from_checkpoint(gpu(), &loaded, ROWS).unwrap();
        let state = trainer.checkpoint().unwrap();
        assert_eq!(state, loaded, "{name}: trainer state");
        for tensor in state.tensors() {
            let same = loaded.tensor(&tensor.name).unwrap();
            assert_eq!(bits(&tensor.values), bits(&same.values), "{name}");
        }
        assert!(
            state.to_bytes().unwrap() == bytes,
            "{name}: not written back byte for byte"
        );
    }
    // Every fixture file is one of the list: none is left untested.
    let files = std::fs::read_dir(fixture_dir()).unwrap().count();
    assert_eq!(files, all.len(), "files in {}", fixture_dir().display());
}
