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

use crate::{Error, Result};

/// Checks `data` holds `len` values.
pub(crate) fn check_len(context: &str, name: &str, data: &[f64], len: usize) -> Result<()> {
    if data.len() == len {
        Ok(())
    } else {
        Err(Error::shape(
            context,
            name,
            format!("{len} values"),
            format!("{} values", data.len()),
        ))
    }
}
