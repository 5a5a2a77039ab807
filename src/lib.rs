//! # mmoe-wgpu
//!
//! Hand-written WGSL compute kernels for Multi-gate Mixture-of-Experts (MMoE) models
//! (Ma et al., KDD 2018), run through wgpu on Vulkan, Metal or DX12 and checked
//! against a CPU reference.
//!
//! Layers, bottom up:
//! - [`gpu`]: adapter and device, limits, features, buffers, error capture;
//! - [`kernels`]: each kernel family checks its operands and records dispatches into
//!   the caller's encoder over the caller's buffers (the kernel backend);
//! - [`reference`](mod@reference): the same operations on the CPU in `f64`;
//! - [`graph`]: tensors, ops, backward, buffer plan, GPU and CPU executors;
//! - [`model`]: MMoE, OMoE and shared-bottom as graphs, and the [`model::Trainer`];
//! - [`data`] and [`metrics`]: the paper's synthetic data, the census loader, AUC.

#![deny(unsafe_code)]

pub mod data;
mod error;
pub mod gpu;
pub mod graph;
pub mod kernels;
pub mod metrics;
pub mod model;
pub mod reference;
pub mod rng;
pub mod shape;

pub use error::{Error, Result};
pub use gpu::{AdapterReport, Capabilities, Gpu, GpuOptions};
pub use shape::{Activation, GemmShape, InputLayout, StandardShape};
