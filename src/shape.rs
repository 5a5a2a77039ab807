//! Operator shapes shared by the GPU kernels and the CPU reference, with their checks.

use crate::{Error, Result};

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
        for (name, v) in [
            ("groups", self.groups),
            ("rows", self.rows),
            ("inputs", self.inputs),
            ("outputs", self.outputs),
        ] {
            if v == 0 {
                return Err(Error::shape(context, name, "at least 1", "0"));
            }
        }
        for (name, len) in [
            ("X", self.x_len()),
            ("W", self.w_len()),
            ("Y", self.y_len()),
        ] {
            if len >= u32::MAX as usize / 2 {
                return Err(Error::Limit {
                    context: context.into(),
                    what: format!("element count of {name}"),
                    value: len as u64,
                    limit: u32::MAX as u64 / 2,
                });
            }
        }
        Ok(())
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

/// A reference MMoE size used by the benches, examples and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandardShape {
    /// `paper`, `census` or `large`.
    pub name: &'static str,
    /// Batch rows `B`.
    pub batch: usize,
    /// Input features `d`.
    pub inputs: usize,
    /// Experts `E`.
    pub experts: usize,
    /// Expert width `h`.
    pub expert_width: usize,
    /// Tasks `T`.
    pub tasks: usize,
    /// Tower width `u`.
    pub tower_width: usize,
}

impl StandardShape {
    /// The paper's synthetic experiment: B 256, d 100, E 8, h 16, T 2, u 8.
    pub const PAPER: StandardShape = StandardShape {
        name: "paper",
        batch: 256,
        inputs: 100,
        experts: 8,
        expert_width: 16,
        tasks: 2,
        tower_width: 8,
    };
    /// Census-income: B 1024, d 512, E 8, h 64, T 2, u 32.
    pub const CENSUS: StandardShape = StandardShape {
        name: "census",
        batch: 1024,
        inputs: 512,
        experts: 8,
        expert_width: 64,
        tasks: 2,
        tower_width: 32,
    };
    /// A large model: B 2048, d 1024, E 16, h 256, T 4, u 64.
    pub const LARGE: StandardShape = StandardShape {
        name: "large",
        batch: 2048,
        inputs: 1024,
        experts: 16,
        expert_width: 256,
        tasks: 4,
        tower_width: 64,
    };
    /// All three, smallest first.
    pub const ALL: [StandardShape; 3] = [Self::PAPER, Self::CENSUS, Self::LARGE];

    /// Looks a shape up by name.
    pub fn named(name: &str) -> Option<StandardShape> {
        Self::ALL.into_iter().find(|s| s.name == name)
    }

    /// The expert layer as a grouped GEMM: `E` groups on the shared input.
    pub fn expert_gemm(&self) -> GemmShape {
        GemmShape {
            groups: self.experts,
            rows: self.batch,
            inputs: self.inputs,
            outputs: self.expert_width,
            input: InputLayout::Shared,
        }
    }

    /// Floating-point operations of the one-layer MMoE's forward pass at this shape
    /// (2 per multiply-add): experts, gate logits, mixture, towers and heads. A
    /// training step is counted as three times this.
    pub fn model_forward_flops(&self) -> f64 {
        let (b, d, e, h, t, u) = (
            self.batch as f64,
            self.inputs as f64,
            self.experts as f64,
            self.expert_width as f64,
            self.tasks as f64,
            self.tower_width as f64,
        );
        2.0 * b * (d * e * h + d * e * t + e * h * t + h * u * t + u * t)
    }
}
