//! Checkpoint files written by an earlier version of the crate (0.1.0 at f91688a,
//! before the checkpoint code moved to serde) keep loading, to the same trainer state
//! bit for bit, and are written back byte for byte. One file per architecture, gate
//! kind, balancing loss, selection and optimizer, in `tests/fixtures/checkpoints/`.
//!
//! The files are frozen: `write_fixtures` made them once and refuses to overwrite
//! them. `common::models::every_kind` on the base below gives the configs they were
//! made from.

use std::path::PathBuf;

use crate::common::models::{every_kind, two_task_batch, two_tasks};
use crate::common::{bits, gpu};
use mmoe_wgpu::model::{Checkpoint, ModelConfig, Trainer};

const INPUTS: usize = 5;
const ROWS: usize = 8;
const STEPS: u32 = 3;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkpoints")
}

/// The base of every fixture, as they were made.
fn base() -> ModelConfig {
    ModelConfig {
        learning_rate: 0.01,
        seed: 11,
        ..ModelConfig::mmoe(INPUTS, 3, 4, 3, two_tasks("value", "clicked"))
    }
}

/// Every fixture's name and config.
fn fixtures() -> Vec<(&'static str, ModelConfig)> {
    every_kind(&base())
}

/// Batch `index` of a fixed stream.
fn batch(index: u64) -> (Vec<f32>, Vec<f32>) {
    two_task_batch(500 + index, ROWS, INPUTS)
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

/// Training each fixture's config afresh on the same batches gives the fixture's
/// trainer state bit for bit: parameters and optimizer moments as an earlier version
/// of every kernel (the optimizer's included) computed them.
#[test]
fn training_again_reproduces_the_fixtures_bitwise() {
    for (name, config) in fixtures() {
        let path = fixture_dir().join(format!("{name}.safetensors"));
        let frozen = Checkpoint::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut trainer = Trainer::new(gpu(), config, ROWS).unwrap();
        for step in 0..STEPS {
            trainer
                .set_learning_rate(0.01 / (1.0 + step as f32))
                .unwrap();
            let (x, y) = batch(step as u64);
            trainer.step(&x, &y).unwrap();
        }
        let state = trainer.checkpoint().unwrap();
        for tensor in frozen.tensors() {
            let again = state
                .tensor(&tensor.name)
                .unwrap_or_else(|| panic!("{name}: no `{}`", tensor.name));
            assert_eq!(
                bits(&again.values),
                bits(&tensor.values),
                "{name}: `{}` differs from the frozen fixture",
                tensor.name
            );
        }
    }
}
