//! A checkpoint's dense inputs (names and standardisation): written as the
//! description's `dense_inputs`, read back to the same `f64` bits, absent (and the
//! file as before) without them, and refused when they do not describe the model.

use crate::common::fields::mmoe_with_fields;
use crate::common::{gpu, scratch_dir};
use mmoe_wgpu::data::dense::DenseInput;
use mmoe_wgpu::model::{Checkpoint, TableOptimizer, Trainer};

fn input(name: &str, mean: f64, std: f64) -> DenseInput {
    DenseInput {
        name: name.into(),
        mean,
        std,
    }
}

fn description(bytes: &[u8]) -> String {
    let (_, metadata) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    metadata.metadata().as_ref().unwrap()["mmoe_wgpu"].clone()
}

#[test]
fn dense_inputs_travel_with_the_checkpoint() {
    let config = mmoe_with_fields(TableOptimizer::LAZY_ADAM);
    let trainer = Trainer::new(gpu(), config.clone(), 4).unwrap();
    let plain = trainer.checkpoint().unwrap();
    let inputs: Vec<DenseInput> = (0..config.inputs)
        .map(|i| {
            input(
                &format!("x{i}"),
                0.1 * i as f64 + 1.0 / 3.0,
                1.0 + 1e-17 * i as f64,
            )
        })
        .collect();
    let described = plain.clone().with_dense_inputs(inputs.clone()).unwrap();

    let dir = scratch_dir("dense-inputs");
    let path = dir.join("model.safetensors");
    described.save(&path).unwrap();
    let loaded = Checkpoint::load(&path).unwrap();
    assert_eq!(loaded.dense_inputs(), &inputs[..]);
    for (a, b) in loaded.dense_inputs().iter().zip(&inputs) {
        assert_eq!(
            (a.mean.to_bits(), a.std.to_bits()),
            (b.mean.to_bits(), b.std.to_bits())
        );
    }
    let text = description(&std::fs::read(&path).unwrap());
    assert!(
        text.contains(r#""dense_inputs":[{"name":"x0","mean":0.3333333333333333,"std":1.0},"#),
        "{text}"
    );
    // Without them the member is absent and the file the same as before.
    assert!(!description(&plain.to_bytes().unwrap()).contains("dense_inputs"));
    let cleared = described.clone().with_dense_inputs(Vec::new()).unwrap();
    assert_eq!(cleared.to_bytes().unwrap(), plain.to_bytes().unwrap());

    // One per dense input, or none; a bad one is refused, in memory and in a file.
    let short = plain.clone().with_dense_inputs(inputs[1..].to_vec());
    assert!(short.unwrap_err().to_string().contains("the model has"));
    let mut bad = inputs.clone();
    bad[1].std = 0.0;
    let message = plain
        .clone()
        .with_dense_inputs(bad)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("`x1`") && message.contains("std"),
        "{message}"
    );
    // The same length, so the header stays valid; the loader names the duplicate
    // before it gets to the checksum. (The description is a JSON string inside the
    // safetensors header, its quotes escaped.)
    let mut edited = std::fs::read(&path).unwrap();
    let (from, to) = (br#"\"name\":\"x1\""#, br#"\"name\":\"x0\""#);
    let at = edited.windows(from.len()).position(|w| w == from).unwrap();
    edited[at..at + from.len()].copy_from_slice(to);
    let message = Checkpoint::from_bytes(&edited).unwrap_err().to_string();
    assert!(
        message.contains("dense_inputs") && message.contains("`x0`"),
        "{message}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
