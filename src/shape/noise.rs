//! The noisy gate's vocabulary: the shape of its noise operands.

use super::{GateMixShape, check_elements, check_nonzero};
use crate::Result;

/// Shape of the gate noise: every operand is `[gates, rows, experts]`, row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NoiseShape {
    /// Number of gates `T`.
    pub gates: usize,
    /// Batch rows `B`.
    pub rows: usize,
    /// Number of experts `E`.
    pub experts: usize,
}

impl From<GateMixShape> for NoiseShape {
    fn from(s: GateMixShape) -> Self {
        NoiseShape {
            gates: s.gates,
            rows: s.rows,
            experts: s.experts,
        }
    }
}

impl NoiseShape {
    /// Checks every dimension is non-zero and the operands fit the 32-bit indexing
    /// the shader uses.
    pub fn validate(&self, context: &str) -> Result<()> {
        let (t, b, e) = (self.gates, self.rows, self.experts);
        check_nonzero(context, &[("gates", t), ("rows", b), ("experts", e)])?;
        check_elements(context, &[("the noise operands", &[t, b, e])])
    }

    /// Elements of every operand: `gates · rows · experts`.
    pub fn len(&self) -> usize {
        self.gates * self.rows * self.experts
    }

    /// Whether the operands have no elements (never, for a valid shape).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
