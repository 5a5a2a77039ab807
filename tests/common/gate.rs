//! The operands of a gate + mix problem, shared by the dense gate's tests and the
//! top-k gate's: both gates run on the same buffers and share the backward.

use mmoe_wgpu::Gpu;
use mmoe_wgpu::kernels::Precision;
use mmoe_wgpu::kernels::gate_mix::{GateMixBackward, GateMixForward, GateMixShape, GateMixTopK};
use mmoe_wgpu::rng::Rng;

use super::{assert_gradients_match_finite_differences, random, read, to_f64};

pub fn shape(
    gates: usize,
    experts: usize,
    rows: usize,
    inputs: usize,
    width: usize,
) -> GateMixShape {
    GateMixShape {
        gates,
        experts,
        rows,
        inputs,
        width,
        input: mmoe_wgpu::InputLayout::Shared,
    }
}

pub struct Data {
    pub x: Vec<f32>,
    pub wg: Vec<f32>,
    pub bg: Vec<f32>,
    pub h: Vec<f32>,
    pub dm: Vec<f32>,
    pub dx_prior: Vec<f32>,
}

impl Data {
    /// The reference's `dx`, plus `dx_prior` where the kernel accumulates into it.
    pub fn with_prior(&self, mut dx: Vec<f64>, accumulate: bool) -> Vec<f64> {
        if accumulate {
            for (v, &p) in dx.iter_mut().zip(&self.dx_prior) {
                *v += p as f64;
            }
        }
        dx
    }
}

/// Random operands; `gate_scale` scales the gate weights and biases (large values
/// give logits far beyond where an unshifted `exp` overflows).
pub fn data(shape: &GateMixShape, seed: u64, gate_scale: f64) -> Data {
    let mut rng = Rng::new(seed);
    Data {
        x: random(&mut rng, shape.x_len(), 1.0),
        wg: random(&mut rng, shape.wg_len(), 0.5 * gate_scale),
        bg: random(&mut rng, shape.bg_len(), 0.5 * gate_scale),
        h: random(&mut rng, shape.h_len(), 1.0),
        dm: random(&mut rng, shape.m_len(), 1.0),
        dx_prior: random(&mut rng, shape.x_len(), 1.0),
    }
}

/// The logits `X · Wg_t + bg_t` in f64, `[gates, rows, experts]`.
pub fn logits(s: &GateMixShape, x: &[f64], wg: &[f64], bg: &[f64]) -> Vec<f64> {
    let mut z = vec![0.0; s.g_len()];
    for t in 0..s.gates {
        for b in 0..s.rows {
            for e in 0..s.experts {
                z[(t * s.rows + b) * s.experts + e] =
                    (0..s.inputs).fold(bg[t * s.experts + e], |z, i| {
                        let xi = s.x_offset(t) + b * s.inputs + i;
                        z + x[xi] * wg[(t * s.inputs + i) * s.experts + e]
                    });
            }
        }
    }
    z
}

/// The largest logit magnitude of the data.
pub fn max_logit(s: &GateMixShape, d: &Data) -> f64 {
    logits(s, &to_f64(&d.x), &to_f64(&d.wg), &to_f64(&d.bg))
        .iter()
        .fold(0.0f64, |m, z| m.max(z.abs()))
}

/// The bits of every output, in order.
pub fn output_bits(out: &[Vec<f32>]) -> Vec<u32> {
    out.iter().flatten().map(|v| v.to_bits()).collect()
}

/// What [`Buffers::read`] returns: G, M, dH, dz, dWg, dbg and dX.
pub type Outputs<T> = [Vec<T>; 7];

pub const NAMES: [&str; 7] = ["G", "M", "dH", "dz", "dWg", "dbg", "dX"];

/// One buffer per operand, inputs uploaded from `Data`, `dX` holding `dx_prior`.
pub struct Buffers {
    pub shape: GateMixShape,
    pub x: wgpu::Buffer,
    pub wg: wgpu::Buffer,
    pub bg: wgpu::Buffer,
    pub h: wgpu::Buffer,
    pub dm: wgpu::Buffer,
    pub g: wgpu::Buffer,
    pub m: wgpu::Buffer,
    pub dh: wgpu::Buffer,
    pub dz: wgpu::Buffer,
    pub dwg: wgpu::Buffer,
    pub dbg: wgpu::Buffer,
    pub dx: wgpu::Buffer,
}

impl Buffers {
    pub fn new(gpu: &Gpu, shape: GateMixShape, d: &Data) -> Buffers {
        let up = |v: &[f32]| gpu.upload("in", v).unwrap();
        let out = |len: usize| gpu.storage_buffer("out", 4 * len as u64).unwrap();
        Buffers {
            shape,
            x: up(&d.x),
            wg: up(&d.wg),
            bg: up(&d.bg),
            h: up(&d.h),
            dm: up(&d.dm),
            g: out(shape.g_len()),
            m: out(shape.m_len()),
            dh: out(shape.h_len()),
            dz: out(shape.g_len()),
            dwg: out(shape.wg_len()),
            dbg: out(shape.bg_len()),
            dx: up(&d.dx_prior),
        }
    }

    /// The dense gate's forward.
    pub fn forward(&self) -> GateMixForward<'_> {
        GateMixForward {
            precision: Precision::F32,
            shape: self.shape,
            x: (&self.x).into(),
            wg: (&self.wg).into(),
            bg: (&self.bg).into(),
            h: (&self.h).into(),
            g: (&self.g).into(),
            m: (&self.m).into(),
        }
    }

    /// The top-`k` gate's forward, each gate selecting for itself among all experts,
    /// gate and mix in one dispatch.
    pub fn topk_forward(&self, k: usize) -> (GateMixForward<'_>, GateMixTopK<'_>) {
        (self.forward(), GateMixTopK::new(k))
    }

    /// The backward both gates share, from whatever `G` the forward left.
    pub fn backward(&self, accumulate_dx: bool) -> GateMixBackward<'_> {
        GateMixBackward {
            precision: Precision::F32,
            shape: self.shape,
            x: (&self.x).into(),
            wg: (&self.wg).into(),
            h: (&self.h).into(),
            g: (&self.g).into(),
            dm: (&self.dm).into(),
            dh: (&self.dh).into(),
            dz: (&self.dz).into(),
            dwg: (&self.dwg).into(),
            dbg: (&self.dbg).into(),
            dx: Some((&self.dx).into()),
            accumulate_dx,
            relu_dh: false,
        }
    }

    pub fn read(&self, gpu: &Gpu) -> Outputs<f32> {
        let s = &self.shape;
        [
            read(gpu, &self.g, s.g_len()),
            read(gpu, &self.m, s.m_len()),
            read(gpu, &self.dh, s.h_len()),
            read(gpu, &self.dz, s.g_len()),
            read(gpu, &self.dwg, s.wg_len()),
            read(gpu, &self.dbg, s.bg_len()),
            read(gpu, &self.dx, s.x_len()),
        ]
    }
}

/// X, Wg, bg and H drawn uniform in [-1, 1), then the weights `R` of the loss
/// `Σ R ⊙ M` the gradient checks differentiate.
pub fn gradient_point(shape: &GateMixShape, rng: &mut Rng) -> ([Vec<f64>; 4], Vec<f64>) {
    let mut draw = |n: usize| -> Vec<f64> { (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect() };
    let p = [
        draw(shape.x_len()),
        draw(shape.wg_len()),
        draw(shape.bg_len()),
        draw(shape.h_len()),
    ];
    (p, draw(shape.m_len()))
}

/// The reference's gradients of `Σ R ⊙ M` with respect to X, Wg, bg and H (`p`, in
/// that order) against central differences of `loss`.
#[track_caller]
pub fn assert_gate_gradients(
    p: &[Vec<f64>; 4],
    (dx, dwg, dbg, dh): (&[f64], &[f64], &[f64], &[f64]),
    loss: impl Fn(&[Vec<f64>; 4]) -> f64,
) {
    let analytic = [("dX", dx), ("dWg", dwg), ("dbg", dbg), ("dH", dh)];
    assert_gradients_match_finite_differences("", p, analytic, 1e-7, loss);
}
