//! MMoE and its baselines as graphs, and the trainer that runs them on the GPU.
//!
//! - [`ModelConfig`]: MMoE, OMoE (one gate shared by all tasks), shared-bottom, each
//!   optionally on shared hidden layers; experts, bottom and towers of one or more
//!   ReLU layers; per-task head kind and loss weight.
//! - [`build`]: the config as a [`crate::graph::Graph`], and seeded initial weights
//!   (He uniform for ReLU layers, Glorot uniform for gates and heads, zero biases and
//!   zero noise layers of noisy gates).
//! - [`Trainer`]: `step`, `predict`, `evaluate`, `gate_report`, `checkpoint` and
//!   `restore`.
//! - [`checkpoint`]: [`Checkpoint`], saved and loaded as safetensors files.

mod build;
pub mod checkpoint;
mod config;
mod noise;
mod trainer;

pub use crate::shape::BalanceLoss;
pub use crate::shape::Selection;
pub use build::{ModelGraph, build, initial_parameters};
pub use checkpoint::Checkpoint;
pub use config::{Architecture, Gate, GateKind, ModelConfig, TaskConfig, TaskKind};
pub use trainer::{Evaluation, GateReport, Trainer};
