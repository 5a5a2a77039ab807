//! CPU reference of every kernel: plain loops over `f64`, the ground truth the GPU
//! kernels and the finite-difference checks are measured against.

pub mod balance;
pub mod ceiling_probe;
pub mod embedding;
pub mod gate_mix;
pub mod gate_topk;
pub mod grouped_gemm;
pub mod kmeans;
pub mod loss;
pub mod noise;
pub mod optimizer;
pub mod routing;

pub(crate) use crate::error::check_len;
