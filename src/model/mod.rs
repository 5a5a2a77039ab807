//! MMoE and its baselines as graphs, and the trainer that runs them on the GPU.
//!
//! - [`ModelConfig`]: MMoE, OMoE (one gate shared by all tasks), shared-bottom, each
//!   optionally on shared hidden layers; experts, bottom and towers of one or more
//!   ReLU layers; per-task head kind (its own, or an ESMM pair's CVR head:
//!   [`HeadKind`]) and loss weight; an input of dense features and
//!   categorical fields ([`FieldConfig`]) looked up in embedding tables, trained by a
//!   sparse optimizer or the dense one ([`TableOptimizer`]).
//! - [`build`]: the config as a [`crate::graph::Graph`], and seeded initial weights
//!   (He uniform for ReLU layers, Glorot uniform for gates and heads, zero biases and
//!   zero noise layers of noisy gates, standard normal tables).
//! - [`Trainer`]: `step`, `predict`, `evaluate`, `gate_report`, `checkpoint` and
//!   `restore`, and the forms that take a [`Batch`] with categorical IDs.
//! - [`checkpoint`]: [`Checkpoint`], saved and loaded as safetensors files.
//! - [`Trainer::start_experts`] ([`ExpertStart`]): the classical mixture-of-experts
//!   start, each expert pre-trained on its own cluster of the rows (k-means on the
//!   GPU, [`partition`]) and the gates routing each cluster to its expert.

mod batch;
mod build;
pub mod checkpoint;
mod config;
mod esmm;
mod expert_start;
mod fields;
mod gate;
mod level;
mod noise;
pub mod partition;
mod subsets;
mod trainer;

pub use crate::shape::BalanceLoss;
pub use crate::shape::Selection;
pub use crate::shape::{Pooling, TableOptimizer};
pub use batch::{Batch, FieldIds};
pub use build::{ModelGraph, build, initial_parameters, initial_tables};
pub use checkpoint::Checkpoint;
pub use config::{
    Architecture, Gate, GateKind, HeadKind, Level, ModelConfig, TaskConfig, TaskKind,
};
pub use esmm::EsmmPair;
pub use expert_start::{ExpertStart, ExpertStartReport, PartitionOn};
pub use fields::{FieldConfig, FieldValues, table_name};
pub use subsets::{ExpertInput, InputSubset};
pub use trainer::{BatchGradients, Evaluation, GateReport, TableGradient, Trainer};
