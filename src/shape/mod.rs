//! The operator vocabulary: every kernel family's shape, the enums that choose what an
//! operator does (activation, gate selection, balancing loss, loss kind, optimizer
//! hyper-parameters) and their checks. One definition, used by the GPU kernels
//! ([`crate::kernels`]), the CPU reference ([`crate::reference`]), the graph and the
//! model; nothing here knows about a device.
//!
//! A file per family. The kernel family modules re-export the names their argument
//! structs use, so a kernel backend can import a family from one place.

mod balance;
mod columns;
mod embedding;
mod gate;
mod gemm;
mod kmeans;
mod loss;
mod noise;
mod optimizer;
mod routing;
mod standard;

pub use balance::{BalanceLoss, BalanceShape, BalanceStats};
pub(crate) use balance::{check_load_k, check_weight};
pub use columns::{ColumnWindow, ColumnWindows, MAX_COLUMN_WINDOWS};
pub use embedding::{
    EmbeddingArrays, EmbeddingBatch, EmbeddingBounds, EmbeddingField, EmbeddingShape, NO_ID,
    Pooling, SparseOptimizer, TableOptimizer, union_ids,
};
pub use gate::{ExpertAccess, GateMixShape, MAX_SHARED_SELECTION_EXPERTS, Selection};
pub(crate) use gate::{check_k, check_selection};
pub use gemm::{Activation, GemmShape, InputLayout};
pub use kmeans::{KMEANS_CHUNK_ROWS, KMeansShape};
pub use loss::{LossKind, TaskLoss, check_pairs};
pub use noise::NoiseShape;
pub use optimizer::OptimizerConfig;
pub use routing::{RoutingShape, row_map_len};
pub use standard::StandardShape;

use crate::{Error, Result};

/// Shaders index with 32-bit integers and keep the top bit free: no tensor may have
/// this many elements.
const ELEMENT_LIMIT: u64 = u32::MAX as u64 / 2;

/// An error naming the first of `dims` that is zero, in `context`.
fn check_nonzero(context: &str, dims: &[(&str, usize)]) -> Result<()> {
    match dims.iter().find(|(_, v)| *v == 0) {
        Some((name, _)) => Err(Error::shape(context, *name, "at least 1", "0")),
        None => Ok(()),
    }
}

/// An [`Error::Limit`] naming the first tensor of `tensors` (name and dimensions)
/// with [`ELEMENT_LIMIT`] elements or more; the product is taken in u128 so that
/// absurd shapes are reported, not overflowed.
fn check_elements(context: &str, tensors: &[(&str, &[usize])]) -> Result<()> {
    for (name, dims) in tensors {
        let len: u128 = dims.iter().map(|&n| n as u128).product();
        if len >= ELEMENT_LIMIT as u128 {
            return Err(Error::Limit {
                context: context.into(),
                what: format!("element count of {name}"),
                value: len.min(u64::MAX as u128) as u64,
                limit: ELEMENT_LIMIT,
            });
        }
    }
    Ok(())
}
