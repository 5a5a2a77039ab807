//! A small grouped GEMM problem with valid operands, which the bad-input tests of the
//! dense and the ragged kernels break one field at a time, and the inputs of the
//! reference gradient checks.

use mmoe_wgpu::kernels::Precision;
use mmoe_wgpu::kernels::grouped_gemm::{GroupedGemmBackwardWeights, GroupedGemmForward};
use mmoe_wgpu::rng::Rng;
use mmoe_wgpu::{Activation, ColumnWindow, ColumnWindows, GemmShape, Gpu, InputLayout};

pub struct SmallGemm {
    pub shape: GemmShape,
    pub x: wgpu::Buffer,
    pub w: wgpu::Buffer,
    pub y: wgpu::Buffer,
    pub dw: wgpu::Buffer,
}

impl SmallGemm {
    /// Small: the tests that use it are about checks and bookkeeping, not numbers.
    pub const SHAPE: GemmShape = GemmShape {
        groups: 2,
        rows: 4,
        inputs: 3,
        outputs: 5,
        input: InputLayout::Shared,
    };

    pub fn new(gpu: &Gpu) -> SmallGemm {
        let shape = Self::SHAPE;
        let buffer = |name: &str, len: usize| gpu.storage_buffer(name, 4 * len as u64).unwrap();
        SmallGemm {
            shape,
            x: buffer("x", shape.x_len()),
            w: buffer("w", shape.w_len()),
            y: buffer("y", shape.y_len()),
            dw: buffer("dw", shape.w_len()),
        }
    }

    /// A ReLU forward without bias.
    pub fn forward(&self) -> GroupedGemmForward<'_> {
        GroupedGemmForward {
            precision: Precision::F32,
            shape: self.shape,
            activation: Activation::Relu,
            x: (&self.x).into(),
            w: (&self.w).into(),
            bias: None,
            y: (&self.y).into(),
        }
    }

    /// The weight gradient of `activation` with `y` as `dY`, no forward output and
    /// no bias.
    pub fn backward_weights(&self, activation: Activation) -> GroupedGemmBackwardWeights<'_> {
        GroupedGemmBackwardWeights {
            precision: Precision::F32,
            shape: self.shape,
            activation,
            x: (&self.x).into(),
            dy: (&self.y).into(),
            y: None,
            dw: (&self.dw).into(),
            db: None,
        }
    }
}

/// X and W uniform in [-1, 1), the bias in [-0.5, 0.5), then the weights `r` of the
/// loss `Σ r ⊙ Y` the gradient checks differentiate.
pub fn gradient_point(shape: &GemmShape, rng: &mut Rng) -> ([Vec<f64>; 3], Vec<f64>) {
    let mut draw =
        |n: usize, scale: f64| -> Vec<f64> { (0..n).map(|_| rng.uniform(-scale, scale)).collect() };
    let p = [
        draw(shape.x_len(), 1.0),
        draw(shape.w_len(), 1.0),
        draw(shape.b_len(), 0.5),
    ];
    (p, draw(shape.y_len(), 1.0))
}

/// A run of `groups` groups reading columns `offset..offset + width`.
pub fn window_run(groups: usize, offset: usize, width: usize) -> ColumnWindow {
    ColumnWindow {
        groups,
        offset,
        width,
    }
}

/// The grouped GEMM of `rows` rows and `outputs` outputs per group on the column
/// windows `runs` of an input `columns` wide: a group per run member, the widest
/// window as its inputs.
pub fn on_windows(columns: usize, runs: &[ColumnWindow], rows: usize, outputs: usize) -> GemmShape {
    let windows = ColumnWindows::new(columns, runs).unwrap();
    GemmShape {
        groups: windows.groups(),
        rows,
        inputs: windows.max_width(),
        outputs,
        input: InputLayout::Columns(windows),
    }
}
