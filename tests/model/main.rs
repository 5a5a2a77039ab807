//! The whole model on the GPU and the CPU, its checkpoints (including the frozen
//! files of earlier versions) and the checkpoint loader under fuzzing, and models
//! with categorical fields, on one device.

#[path = "../common/mod.rs"]
mod common;

mod checkpoint;
mod checkpoint_fixtures;
mod dense_inputs;
mod esmm;
mod expert_start;
mod fields;
mod fields_checkpoint;
mod fields_input;
mod fuzz_checkpoint;
mod model;
mod ple;
mod subsets;
