//! The optimizer's vec4 and scalar kernels give the same bits: every rule, with the
//! guard and an updated-parameter copy, f32 and f16 gradients, lengths with every
//! size of partial last unit; the vec4 kernels never write past an operand's end.

use crate::common::*;
use crate::optimizer::optimizers;
use mmoe_wgpu::half::f16;
use mmoe_wgpu::kernels::optimizer::{Optimizer, OptimizerConfig, OptimizerUpdate};
use mmoe_wgpu::kernels::{BufferView, Precision};
use mmoe_wgpu::rng::Rng;

/// Written after (and, for the scalar run, before) each operand: must stay as it is.
const SENTINEL: f32 = 1234.5;
const STEPS: usize = 3;

/// One run's buffers: each operand at `shift` elements from its buffer's start, with
/// room for whole units of four after it, filled with [`SENTINEL`] around it.
struct Run {
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    m: wgpu::Buffer,
    v: wgpu::Buffer,
    copy: wgpu::Buffer,
    loss: wgpu::Buffer,
    status: wgpu::Buffer,
    shift: usize,
    len: usize,
    precision: Precision,
}

/// Bits of an f32 slice stored at `precision`, padded as [`Run`] lays it out.
fn stored(values: &[f32], shift: usize, precision: Precision) -> Vec<u8> {
    let len = values.len();
    let mut all = vec![SENTINEL; shift];
    all.extend_from_slice(values);
    all.resize(shift + len.next_multiple_of(4) + 4, SENTINEL);
    match precision {
        Precision::F32 => bytemuck::cast_slice(&all).to_vec(),
        Precision::F16 => {
            let mut halves: Vec<u16> = all.iter().map(|&x| f16::from_f32(x).to_bits()).collect();
            halves.resize(halves.len().next_multiple_of(2), 0);
            bytemuck::cast_slice(&halves).to_vec()
        }
    }
}

impl Run {
    fn new(init: &[Vec<f32>; 4], shift: usize, precision: Precision) -> Run {
        let gpu = gpu();
        let up = |name: &str, bytes: Vec<u8>| {
            let words: &[u32] = &bytemuck::pod_collect_to_vec::<u8, u32>(&bytes);
            gpu.upload(name, words).unwrap()
        };
        let len = init[0].len();
        Run {
            params: up("params", stored(&init[0], shift, Precision::F32)),
            grads: up("grads", stored(&init[1], shift, precision)),
            m: up("m", stored(&init[2], shift, Precision::F32)),
            v: up("v", stored(&init[3], shift, Precision::F32)),
            copy: up("copy", stored(&vec![0.0; len], shift, precision)),
            loss: gpu.upload("loss", &[0.25f32, 0.5]).unwrap(),
            status: gpu.storage_buffer("status", 12).unwrap(),
            shift,
            len,
            precision,
        }
    }

    fn args(&self, config: OptimizerConfig) -> OptimizerUpdate<'_> {
        let f32_at = |b| BufferView::at(b, 4 * self.shift as u64);
        let elem_at = |b| BufferView::at(b, self.precision.element_size() * self.shift as u64);
        OptimizerUpdate {
            config,
            len: self.len,
            precision: self.precision,
            params: f32_at(&self.params),
            grads: elem_at(&self.grads),
            m: f32_at(&self.m),
            v: Some(f32_at(&self.v)),
            loss: Some(BufferView::new(&self.loss)),
            status: Some(BufferView::new(&self.status)),
            tasks: 2,
            params_copy: Some(elem_at(&self.copy)),
        }
    }

    /// Every operand's whole buffer, element by element (the bits; an f16 widened).
    fn elements(&self) -> Vec<Vec<u32>> {
        let f32s =
            |b: &wgpu::Buffer| -> Vec<u32> { gpu().read(b, 0, (b.size() / 4) as usize).unwrap() };
        let elems = |b: &wgpu::Buffer| -> Vec<u32> {
            match self.precision {
                Precision::F32 => f32s(b),
                Precision::F16 => {
                    let halves: Vec<u16> = bytemuck::cast_slice(&f32s(b)).to_vec();
                    halves.into_iter().map(u32::from).collect()
                }
            }
        };
        vec![
            f32s(&self.params),
            elems(&self.grads),
            f32s(&self.m),
            f32s(&self.v),
            elems(&self.copy),
        ]
    }
}

#[test]
fn vec4_and_scalar_kernels_give_the_same_bits() {
    let gpu = gpu();
    let kernel = Optimizer::new(gpu);
    let precisions: Vec<Precision> = [Precision::F32, Precision::F16]
        .into_iter()
        .filter(|p| p.is_supported(gpu))
        .collect();
    let mut rng = Rng::new(41);
    for len in [1, 2, 3, 4, 5, 6, 7, 130, 1001] {
        let init = [
            random(&mut rng, len, 1.0),
            random(&mut rng, len, 1.0),
            random(&mut rng, len, 0.1),
            random(&mut rng, len, 0.01)
                .iter()
                .map(|x| x.abs())
                .collect(),
        ];
        for &precision in &precisions {
            for config in optimizers() {
                let what = format!("len {len}, {precision:?}, {config:?}");
                // At the buffer's start (whole units) and one element in (not).
                let vec4 = Run::new(&init, 0, precision);
                let scalar = Run::new(&init, 1, precision);
                let before = vec4.elements();
                let mut results = Vec::new();
                for (buffers, vectorized) in [(&vec4, true), (&scalar, false)] {
                    let step = kernel.update(&buffers.args(config)).unwrap();
                    assert_eq!(step.vectorized(), vectorized, "{what}");
                    for t in 0..STEPS {
                        step.set_step(gpu.queue(), t as u32 + 1, 0.01 * (t + 1) as f32);
                        run(gpu, |e| step.encode(e));
                    }
                    results.push(buffers.elements());
                }
                let names = ["params", "grads", "m", "v", "params_copy"];
                for (k, name) in names.iter().enumerate() {
                    // The scalar run's operands sit one element further in.
                    assert_eq!(
                        results[0][k][..len],
                        results[1][k][1..1 + len],
                        "{name}, {what}"
                    );
                    // Nothing past the operands' ends changed in the vec4 run.
                    assert_eq!(
                        results[0][k][len..],
                        before[k][len..],
                        "{name} past its end, {what}"
                    );
                }
            }
        }
    }
}
