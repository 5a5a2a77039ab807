//! The three reference sizes of the benches, examples and tests.

use super::{GemmShape, InputLayout};

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
