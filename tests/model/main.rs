//! The whole model on the GPU and the CPU, its checkpoints (including the frozen
//! files of earlier versions) and the checkpoint loader under fuzzing, on one device.

#[path = "../common/mod.rs"]
mod common;

mod checkpoint;
mod checkpoint_fixtures;
mod fuzz_checkpoint;
mod model;
