//! The routing family's vocabulary: its shape and the length of the row map it
//! writes.

use super::{check_elements, check_nonzero};
use crate::Result;

/// Shape of a routing: `G: [gates, rows, experts]` in, a [`RowMap`](crate::kernels::grouped_gemm::RowMap) of `experts`
/// groups of `rows` rows out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RoutingShape {
    /// Gates `T` whose choices are merged (one per task).
    pub gates: usize,
    /// Batch rows `B`.
    pub rows: usize,
    /// Experts `E`: the groups of the ragged GEMM.
    pub experts: usize,
}

impl RoutingShape {
    /// Checks every dimension is non-zero and every tensor fits the 32-bit indexing
    /// the shader uses.
    pub fn validate(&self, context: &str) -> Result<()> {
        let (t, b, e) = (self.gates, self.rows, self.experts);
        check_nonzero(context, &[("gates", t), ("rows", b), ("experts", e)])?;
        check_elements(context, &[("G", &[t, b, e]), ("the row map", &[e, b + 1])])
    }

    /// Elements of `G`.
    pub fn g_len(&self) -> usize {
        self.gates * self.rows * self.experts
    }

    /// Elements (`u32`) of the row map: `experts · (rows + 1)`.
    pub fn routes_len(&self) -> usize {
        row_map_len(self.experts, self.rows)
    }
}

/// Elements (`u32`) of a row map for `groups` groups of `rows` rows: a count per
/// group, then each group's list of `rows` row indices (the layout is
/// [`RowMap`](crate::kernels::grouped_gemm::RowMap)'s).
pub const fn row_map_len(groups: usize, rows: usize) -> usize {
    groups * (rows + 1)
}
