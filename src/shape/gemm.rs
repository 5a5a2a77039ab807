//! The grouped GEMM's vocabulary: its shape, input layout and fused activation.

use super::{check_elements, check_nonzero};
use crate::Result;

/// Activation fused into a GEMM's epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Activation {
    /// `y = z`
    #[default]
    Identity,
    /// `y = max(z, 0)`
    Relu,
}

impl Activation {
    pub(crate) fn code(self) -> u32 {
        match self {
            Activation::Identity => 0,
            Activation::Relu => 1,
        }
    }
}

/// Whether the groups of a grouped GEMM read one input or one input each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputLayout {
    /// One `X: [rows, inputs]` read by every group (experts on the same input).
    Shared,
    /// `X: [groups, rows, inputs]`, one per group (towers on their task's mixture).
    PerGroup,
}

/// Shape of a grouped GEMM `Y_g = act(X_g · W_g + b_g)`, `g = 0..groups`.
///
/// `W: [groups, inputs, outputs]`, `b: [groups, outputs]`, `Y: [groups, rows, outputs]`,
/// `X` as given by [`InputLayout`]. All row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmShape {
    /// Number of groups (experts or towers).
    pub groups: usize,
    /// Batch rows.
    pub rows: usize,
    /// Input features per row (the reduction length of the forward pass).
    pub inputs: usize,
    /// Output features per row and group.
    pub outputs: usize,
    /// Shared or per-group input.
    pub input: InputLayout,
}

impl GemmShape {
    /// Checks every dimension is non-zero and every tensor fits the 32-bit indexing
    /// the shaders use.
    pub fn validate(&self, context: &str) -> Result<()> {
        check_nonzero(
            context,
            &[
                ("groups", self.groups),
                ("rows", self.rows),
                ("inputs", self.inputs),
                ("outputs", self.outputs),
            ],
        )?;
        let (g, b, d, n) = (self.groups, self.rows, self.inputs, self.outputs);
        check_elements(
            context,
            &[
                ("X", &[self.x_groups(), b, d]),
                ("W", &[g, d, n]),
                ("Y", &[g, b, n]),
            ],
        )
    }

    /// Elements of `X` (and of `dX`).
    pub fn x_len(&self) -> usize {
        self.x_groups() * self.rows * self.inputs
    }

    /// Number of distinct inputs: 1 when shared.
    pub fn x_groups(&self) -> usize {
        match self.input {
            InputLayout::Shared => 1,
            InputLayout::PerGroup => self.groups,
        }
    }

    /// Elements of `W` (and of `dW`).
    pub fn w_len(&self) -> usize {
        self.groups * self.inputs * self.outputs
    }

    /// Elements of `b` (and of `db`).
    pub fn b_len(&self) -> usize {
        self.groups * self.outputs
    }

    /// Elements of `Y` (and of `dY`).
    pub fn y_len(&self) -> usize {
        self.groups * self.rows * self.outputs
    }

    /// Floating-point operations of the forward pass (2 per multiply-add).
    pub fn forward_flops(&self) -> f64 {
        2.0 * self.groups as f64 * self.rows as f64 * self.inputs as f64 * self.outputs as f64
    }
}
