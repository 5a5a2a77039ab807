//! Every kernel family against the CPU reference, the backend's contract and
//! autotuning. One binary, so the device opens once and each pipeline compiles once
//! for all of them.

#[path = "../common/mod.rs"]
mod common;

mod async_api;
mod backend_api;
mod backend_checks;
mod balance;
mod ceiling_probe;
mod embedding;
mod gate_levels;
mod gate_mix;
mod gate_topk;
mod grouped_gemm;
mod kmeans;
mod loss;
mod loss_esmm;
mod noise;
mod optimizer;
mod optimizer_lanes;
mod ragged_gemm;
mod routing;
mod tune;
mod without_subgroups;
