//! Property tests of the checkpoint loader: arbitrary bytes, damaged valid files,
//! edited safetensors headers and edited or arbitrary checkpoint descriptions. No
//! input may panic; every input accepted must survive a save/load round trip.

use std::cell::Cell;

use crate::common::fields::{OwnedBatch, mmoe_with_fields};
use crate::common::fuzz::{apply_byte_edits, apply_json_edits, byte_edits, json_edits, run_cases};
use crate::common::{gpu, random};
use mmoe_wgpu::data::categorical::{Category, Encoders, FieldEncoder, Vocabulary};
use mmoe_wgpu::kernels::optimizer::OptimizerConfig;
use mmoe_wgpu::model::TableOptimizer;
use mmoe_wgpu::model::{
    Architecture, Checkpoint, Gate, ModelConfig, TaskConfig, TaskKind, Trainer,
};
use mmoe_wgpu::rng::Rng;
use proptest::prelude::*;
use serde_json::Value;

/// Valid checkpoint files of a few models, each trained a couple of steps.
fn valid_files() -> Vec<Vec<u8>> {
    let tasks = vec![
        TaskConfig::new("y", TaskKind::Regression),
        TaskConfig::new("p", TaskKind::BinaryClassification),
    ];
    let base = ModelConfig::mmoe(3, 2, 3, 2, tasks);
    let configs = [
        base.clone(),
        ModelConfig {
            architecture: Architecture::SharedBottom {
                bottom_layers: vec![4],
            },
            optimizer: OptimizerConfig::Sgd { momentum: 0.9 },
            ..base.clone()
        },
        ModelConfig {
            shared_layers: vec![2],
            architecture: Architecture::Omoe {
                experts: 2,
                expert_layers: vec![2, 2],
                gate: Gate::SOFTMAX,
            },
            optimizer: OptimizerConfig::AdamW {
                beta1: 0.9,
                beta2: 0.99,
                eps: 1e-6,
                weight_decay: 0.1,
            },
            ..base
        },
    ];
    let mut rng = Rng::new(3);
    let mut files: Vec<Vec<u8>> = configs
        .into_iter()
        .map(|config| {
            let mut trainer = Trainer::new(gpu(), config, 4).unwrap();
            for _ in 0..2 {
                let x = random(&mut rng, 12, 1.0);
                let y = [0.5, -0.5, 0.1, 0.2, 0.0, 1.0, 1.0, 0.0];
                trainer.step(&x, &y).unwrap();
            }
            trainer.checkpoint().unwrap().to_bytes().unwrap()
        })
        .collect();
    // With categorical fields, a table optimizer and encoders in the description.
    let config = mmoe_with_fields(TableOptimizer::ADAGRAD);
    let mut trainer = Trainer::new(gpu(), config.clone(), 4).unwrap();
    trainer
        .step_batch(&OwnedBatch::random(&config, 4, 1).batch())
        .unwrap();
    let mut encoders = Encoders::new();
    let values = vec![Category::Str("a\"b".into()), Category::Int(7)];
    let vocabulary = Vocabulary::from_values(values).unwrap();
    encoders.insert("country", FieldEncoder::Vocabulary(vocabulary));
    encoders.insert("tags", FieldEncoder::Hash { buckets: 3 });
    trainer.set_encoders(encoders).unwrap();
    files.push(trainer.checkpoint().unwrap().to_bytes().unwrap());
    files
}

/// Loads `bytes`; anything accepted must write and read back to itself.
fn load(bytes: &[u8]) -> Option<Checkpoint> {
    match Checkpoint::from_bytes(bytes) {
        Ok(checkpoint) => {
            let again = Checkpoint::from_bytes(&checkpoint.to_bytes().unwrap()).unwrap();
            assert_eq!(again, checkpoint);
            Some(checkpoint)
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            None
        }
    }
}

/// The safetensors header as JSON and the data after it.
fn split(file: &[u8]) -> (Value, Vec<u8>) {
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&file[8..8 + n]).unwrap();
    (header, file[8 + n..].to_vec())
}

/// A file from a header and data, with the length prefix made right again.
fn join(header: &Value, data: &[u8]) -> Vec<u8> {
    let mut text = serde_json::to_vec(header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut file = (text.len() as u64).to_le_bytes().to_vec();
    file.extend(text);
    file.extend(data);
    file
}

#[test]
fn the_checkpoint_loader_never_panics() {
    let files = valid_files();
    let originals: Vec<Checkpoint> = files
        .iter()
        .map(|f| load(f).expect("a valid file was refused"))
        .collect();
    let mut total = 0;

    let arbitrary = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        // A plausible length prefix, so the header parser sees the rest.
        (0u64..600, prop::collection::vec(any::<u8>(), 0..600)).prop_map(|(n, rest)| {
            let mut file = n.to_le_bytes().to_vec();
            file.extend(rest);
            file
        }),
        (0u64..600, "\\{[\"a-z_0-9:,\\[\\]{} .]{0,300}").prop_map(|(n, text)| {
            let mut file = n.to_le_bytes().to_vec();
            file.extend(text.into_bytes());
            file
        }),
    ];
    total += run_cases(
        "checkpoint loader, arbitrary bytes",
        5000,
        arbitrary,
        |bytes| {
            load(&bytes);
        },
    );

    let which = prop::sample::select((0..files.len()).collect::<Vec<_>>());
    total += run_cases(
        "checkpoint loader, damaged valid files",
        10000,
        (which.clone(), byte_edits()),
        |(i, edits)| {
            // Damage is refused, or harmless (whitespace in the header's padding).
            if let Some(loaded) = load(&apply_byte_edits(files[i].clone(), &edits)) {
                assert_eq!(loaded, originals[i], "damage went unnoticed: {edits:?}");
            }
        },
    );

    total += run_cases(
        "checkpoint loader, edited safetensors header",
        5000,
        (which.clone(), json_edits()),
        |(i, edits)| {
            let (header, data) = split(&files[i]);
            load(&join(&apply_json_edits(header, &edits), &data));
        },
    );

    let accepted = Cell::new(0);
    total += run_cases(
        "checkpoint loader, edited description",
        8000,
        (which.clone(), json_edits(), prop::bool::weighted(0.8)),
        |(i, edits, drop_checksum)| {
            let (mut header, data) = split(&files[i]);
            let text = header["__metadata__"]["mmoe_wgpu"].as_str().unwrap();
            let mut description: Value = serde_json::from_str(text).unwrap();
            if drop_checksum {
                description.as_object_mut().unwrap().remove("crc32");
            }
            let edited = apply_json_edits(description, &edits);
            header["__metadata__"]["mmoe_wgpu"] = Value::String(edited.to_string());
            if load(&join(&header, &data)).is_some() {
                accepted.set(accepted.get() + 1);
            }
        },
    );
    eprintln!(
        "  of which {} were valid checkpoints and loaded",
        accepted.get()
    );

    total += run_cases(
        "checkpoint loader, arbitrary description text",
        5000,
        (
            which,
            prop_oneof![any::<String>(), "[\\[\\]{}\":,0-9a-z_.eE+\\- \\\\]{0,200}"],
        ),
        |(i, text)| {
            let (mut header, data) = split(&files[i]);
            header["__metadata__"] = serde_json::json!({ "mmoe_wgpu": text });
            load(&join(&header, &data));
        },
    );
    eprintln!("checkpoint loader: {total} cases in all, none panicked");
    assert_eq!(total, 33_000);
}

/// A description written by another program (no checksum, keys in another order,
/// more metadata entries beside it) loads as the original.
#[test]
fn metadata_without_the_checksum_and_in_any_key_order_loads() {
    let files = valid_files();
    let (mut header, data) = split(&files[0]);
    let text = header["__metadata__"]["mmoe_wgpu"].as_str().unwrap();
    let mut description: serde_json::Map<String, Value> = serde_json::from_str(text).unwrap();
    description.remove("crc32");
    // serde_json sorts keys, so this also reorders the members.
    header["__metadata__"] = serde_json::json!({
        "mmoe_wgpu": Value::Object(description).to_string(),
        "written_by": "torch",
    });
    let loaded = Checkpoint::from_bytes(&join(&header, &data)).unwrap();
    assert_eq!(loaded, Checkpoint::from_bytes(&files[0]).unwrap());
}
