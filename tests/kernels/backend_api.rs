//! The kernel backend as an outside crate uses it: every kernel driven through the
//! public API only (`kernels`, `Gpu`, `reference`), in f32 and, where the adapter has
//! SHADER_F16, in f16, each result held to a bound derived from how the kernel rounds.
//! The rest of the backend's contract (errors, caching, passes): `backend_checks.rs`.
//!
//! # Tolerances
//!
//! Inputs are rounded to the storage type on the host, and the reference gets exactly
//! those values, so the only errors are the kernel's own:
//! - each stored result is rounded once: f16 has a unit roundoff of 2^-11, but WGSL
//!   (and Vulkan) let an f32 → f16 conversion round either way, so up to one f16 ulp,
//!   `STORE = 2^-10` relative (below 2^-14, subnormals: 2^-24 absolute);
//! - a reduction of `k` terms accumulates in f32, one rounding per fma, so at most
//!   `k · 2^-24 · Σ|terms|`;
//! - f16 × f16 products are exact in f32 (11 + 11 significand bits ≤ 24).
//!
//! So a plain GEMM output gets `tol = STORE·|ref| + (k + 2)·2^-24·Σ|terms| + floor`;
//! for the gate, rounding the logits perturbs the softmax by at most twice the largest
//! logit error, and the backward GEMMs on the rounded `dz` carry its bound through
//! (see each test). The same bounds with f32's rounding (`STORE = 2^-24`) check the f32
//! path.

use crate::common;

use crate::common::{gpu, random};
use half::f16;
use mmoe_wgpu::kernels::gate_mix::{GateMix, GateMixBackward, GateMixForward, GateMixShape};
use mmoe_wgpu::kernels::grouped_gemm::{
    GroupedGemm, GroupedGemmBackwardInput, GroupedGemmBackwardWeights, GroupedGemmForward,
};
use mmoe_wgpu::kernels::loss::{Loss, LossForward, LossKind, TaskLoss};
use mmoe_wgpu::kernels::optimizer::{Optimizer, OptimizerConfig, OptimizerUpdate};
use mmoe_wgpu::kernels::{BufferView, Precision};
use mmoe_wgpu::reference;
use mmoe_wgpu::rng::Rng;
use mmoe_wgpu::{Activation, GemmShape, Gpu, InputLayout};

/// One f32 rounding (fma chains, sums).
const ARITH: f64 = 1.0 / (1u64 << 24) as f64;

/// The precisions this adapter runs.
fn precisions(gpu: &Gpu) -> Vec<Precision> {
    let all = [Precision::F32, Precision::F16];
    let out: Vec<Precision> = all.into_iter().filter(|p| p.is_supported(gpu)).collect();
    if out.len() < all.len() {
        eprintln!(
            "note: {} has no SHADER_F16; f16 is checked to fail",
            gpu.adapter()
        );
    }
    out
}

/// How a precision rounds a stored value: `store` relative, `floor` absolute.
fn rounding(p: Precision) -> (f64, f64) {
    match p {
        Precision::F32 => (ARITH, f32::MIN_POSITIVE as f64),
        Precision::F16 => (1.0 / 1024.0, ARITH),
    }
}

/// Host data stored at a precision: the buffer and the exact values it holds.
struct Stored {
    buffer: wgpu::Buffer,
    values: Vec<f64>,
}

fn store(gpu: &Gpu, p: Precision, name: &str, data: &[f32]) -> Stored {
    let (buffer, values) = match p {
        Precision::F32 => (
            gpu.upload(name, data),
            data.iter().map(|&v| v as f64).collect(),
        ),
        Precision::F16 => {
            let half: Vec<f16> = data.iter().map(|&v| f16::from_f32(v)).collect();
            (
                gpu.upload(name, &half),
                half.iter().map(|v| v.to_f64()).collect(),
            )
        }
    };
    Stored {
        buffer: buffer.expect("upload"),
        values,
    }
}

fn output(gpu: &Gpu, p: Precision, name: &str, n: usize) -> wgpu::Buffer {
    gpu.storage_buffer(name, p.element_size() * n as u64)
        .expect("allocation")
}

fn read(gpu: &Gpu, p: Precision, buffer: &wgpu::Buffer, n: usize) -> Vec<f64> {
    match p {
        Precision::F32 => gpu
            .read::<f32>(buffer, 0, n)
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect(),
        Precision::F16 => gpu
            .read::<f16>(buffer, 0, n)
            .unwrap()
            .iter()
            .map(|v| v.to_f64())
            .collect(),
    }
}

fn abs(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| x.abs()).collect()
}

/// Asserts `|got − want| ≤ tol` everywhere; prints the largest error relative to the
/// largest reference magnitude, and the largest fraction of the bound used.
#[track_caller]
fn check(what: &str, got: &[f64], want: &[f64], tol: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    // All-zero references (a one-expert softmax) report absolute errors.
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let scale = if scale > 0.0 { scale } else { 1.0 };
    let (mut err, mut used) = (0.0f64, 0.0f64);
    for (i, ((&g, &w), &t)) in got.iter().zip(want).zip(tol).enumerate() {
        let e = (g - w).abs();
        assert!(
            e <= t,
            "{what}[{i}]: got {g}, want {w}: error {e:.3e} over the bound {t:.3e}"
        );
        err = err.max(e);
        used = used.max(e / t);
    }
    eprintln!(
        "{what}: max error {:.2e} of the largest value, {:.0}% of the bound",
        err / scale,
        100.0 * used
    );
}

/// `store·|want| + arith + floor`, the bound of one stored, accumulated result.
fn bound(p: Precision, want: &[f64], arith: impl Fn(usize) -> f64) -> Vec<f64> {
    let (store, floor) = rounding(p);
    want.iter()
        .enumerate()
        .map(|(i, w)| store * w.abs() + arith(i) + floor)
        .collect()
}

// ------------------------------------------------------------------ grouped GEMM

fn gemm_case(gpu: &Gpu, p: Precision, shape: GemmShape, act: Activation, bias: bool, seed: u64) {
    let what = |pass: &str| format!("{p:?} grouped_gemm {pass} {shape:?} {act:?}");
    let mut rng = Rng::new(seed);
    let x = store(gpu, p, "x", &random(&mut rng, shape.x_len(), 1.0));
    let w_scale = (1.0 / shape.inputs as f64).sqrt();
    let w = store(gpu, p, "w", &random(&mut rng, shape.w_len(), w_scale));
    let b = store(gpu, p, "b", &random(&mut rng, shape.b_len(), 0.1));
    let dy = store(gpu, p, "dy", &random(&mut rng, shape.y_len(), 1.0));
    let y = output(gpu, p, "y", shape.y_len());
    let (dx, dw) = (
        output(gpu, p, "dx", shape.x_len()),
        output(gpu, p, "dw", shape.w_len()),
    );
    let db = output(gpu, p, "db", shape.b_len());
    let gemm = GroupedGemm::new(gpu);
    let bias_view = bias.then(|| BufferView::new(&b.buffer));

    // Forward through a CommandEncoder.
    common::run(gpu, |encoder| {
        let args = GroupedGemmForward {
            shape,
            activation: act,
            precision: p,
            x: BufferView::new(&x.buffer),
            w: BufferView::new(&w.buffer),
            bias: bias_view,
            y: BufferView::new(&y),
        };
        gemm.encode_forward(encoder, &args).expect("forward");
    });
    let b_ref = bias.then_some(b.values.as_slice());
    let want = reference::grouped_gemm::forward(&shape, act, &x.values, &w.values, b_ref).unwrap();
    let sums = reference::grouped_gemm::forward(
        &shape,
        Activation::Identity,
        &abs(&x.values),
        &abs(&w.values),
        b_ref.map(abs).as_deref(),
    )
    .unwrap();
    let got_y = read(gpu, p, &y, shape.y_len());
    let k = shape.inputs as f64 + 2.0;
    check(
        &what("forward"),
        &got_y,
        &want,
        &bound(p, &want, |i| k * ARITH * sums[i]),
    );

    // Backward into one compute pass, on the stored Y (the mask reads what is stored).
    let y_stored = Stored {
        buffer: y,
        values: got_y,
    };
    common::run(gpu, |encoder| {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        let input = GroupedGemmBackwardInput {
            shape,
            activation: act,
            precision: p,
            dy: BufferView::new(&dy.buffer),
            y: Some(BufferView::new(&y_stored.buffer)),
            w: BufferView::new(&w.buffer),
            dx: BufferView::new(&dx),
            accumulate: false,
        };
        gemm.encode_backward_input(&mut pass, &input)
            .expect("backward input");
        let weights = GroupedGemmBackwardWeights {
            shape,
            activation: act,
            precision: p,
            x: BufferView::new(&x.buffer),
            dy: BufferView::new(&dy.buffer),
            y: Some(BufferView::new(&y_stored.buffer)),
            dw: BufferView::new(&dw),
            db: bias.then(|| BufferView::new(&db)),
        };
        gemm.encode_backward_weights(&mut pass, &weights)
            .expect("backward weights");
    });
    let grads = reference::grouped_gemm::backward(
        &shape,
        act,
        &x.values,
        &w.values,
        &y_stored.values,
        &dy.values,
    )
    .unwrap();
    let sums = reference::grouped_gemm::backward(
        &shape,
        act,
        &abs(&x.values),
        &abs(&w.values),
        &y_stored.values,
        &abs(&dy.values),
    )
    .unwrap();
    let k_dx = (shape.outputs * (shape.groups / shape.x_groups())) as f64 + 2.0;
    let got = read(gpu, p, &dx, shape.x_len());
    let tol = bound(p, &grads.dx, |i| k_dx * ARITH * sums.dx[i]);
    check(&what("dX"), &got, &grads.dx, &tol);
    let k_dw = shape.rows as f64 + 2.0;
    let got = read(gpu, p, &dw, shape.w_len());
    check(
        &what("dW"),
        &got,
        &grads.dw,
        &bound(p, &grads.dw, |i| k_dw * ARITH * sums.dw[i]),
    );
    if bias {
        let got = read(gpu, p, &db, shape.b_len());
        check(
            &what("db"),
            &got,
            &grads.db,
            &bound(p, &grads.db, |i| k_dw * ARITH * sums.db[i]),
        );
    }
}

#[test]
fn grouped_gemm_forward_and_backward_match_the_reference_in_f32_and_f16() {
    grouped_gemm_forward_and_backward_match_the_reference_in_f32_and_f16_on(gpu());
}

pub(crate) fn grouped_gemm_forward_and_backward_match_the_reference_in_f32_and_f16_on(gpu: &Gpu) {
    let shape = |groups, rows, inputs, outputs, input| GemmShape {
        groups,
        rows,
        inputs,
        outputs,
        input,
    };
    for p in precisions(gpu) {
        gemm_case(
            gpu,
            p,
            shape(3, 17, 13, 10, InputLayout::Shared),
            Activation::Relu,
            true,
            1,
        );
        gemm_case(
            gpu,
            p,
            shape(2, 5, 33, 7, InputLayout::PerGroup),
            Activation::Identity,
            false,
            2,
        );
        gemm_case(
            gpu,
            p,
            shape(8, 64, 100, 16, InputLayout::Shared),
            Activation::Relu,
            true,
            3,
        );
        gemm_case(
            gpu,
            p,
            shape(1, 1, 1, 1, InputLayout::Shared),
            Activation::Relu,
            true,
            4,
        );
    }
}

#[test]
fn f16_gemm_is_the_same_for_every_tiling() {
    f16_gemm_is_the_same_for_every_tiling_on(gpu());
}

pub(crate) fn f16_gemm_is_the_same_for_every_tiling_on(gpu: &Gpu) {
    if !Precision::F16.is_supported(gpu) {
        return;
    }
    let shape = GemmShape {
        groups: 3,
        rows: 19,
        inputs: 21,
        outputs: 12,
        input: InputLayout::Shared,
    };
    let mut rng = Rng::new(9);
    let x = store(
        gpu,
        Precision::F16,
        "x",
        &random(&mut rng, shape.x_len(), 1.0),
    );
    let w = store(
        gpu,
        Precision::F16,
        "w",
        &random(&mut rng, shape.w_len(), 0.3),
    );
    let gemm = GroupedGemm::new(gpu);
    let mut first: Option<Vec<u16>> = None;
    for tiling in gemm.tilings() {
        let y = output(gpu, Precision::F16, "y", shape.y_len());
        let args = GroupedGemmForward {
            shape,
            activation: Activation::Relu,
            precision: Precision::F16,
            x: BufferView::new(&x.buffer),
            w: BufferView::new(&w.buffer),
            bias: None,
            y: BufferView::new(&y),
        };
        let dispatch = gemm.forward_with(&args, tiling).expect("forward");
        common::run(gpu, |encoder| dispatch.encode(encoder));
        let bits: Vec<u16> = gpu
            .read::<f16>(&y, 0, shape.y_len())
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect();
        match &first {
            None => first = Some(bits),
            Some(want) => assert_eq!(&bits, want, "{tiling:?} differs"),
        }
    }
}

// ------------------------------------------------------------------ gate + mix

fn gate_mix_case(gpu: &Gpu, p: Precision, s: GateMixShape, seed: u64) {
    let what = |pass: &str| format!("{p:?} gate_mix {pass} {s:?}");
    let (store_err, floor) = rounding(p);
    let mut rng = Rng::new(seed);
    let x = store(gpu, p, "x", &random(&mut rng, s.x_len(), 1.0));
    let wg = store(gpu, p, "wg", &random(&mut rng, s.wg_len(), 1.0));
    let bg = store(gpu, p, "bg", &random(&mut rng, s.bg_len(), 0.5));
    let h = store(gpu, p, "h", &random(&mut rng, s.h_len(), 1.0));
    let (g, m) = (
        output(gpu, p, "g", s.g_len()),
        output(gpu, p, "m", s.m_len()),
    );
    let kernels = GateMix::new(gpu);
    common::run(gpu, |encoder| {
        let args = GateMixForward {
            shape: s,
            precision: p,
            x: BufferView::new(&x.buffer),
            wg: BufferView::new(&wg.buffer),
            bg: BufferView::new(&bg.buffer),
            h: BufferView::new(&h.buffer),
            g: BufferView::new(&g),
            m: BufferView::new(&m),
        };
        kernels.encode_forward(encoder, &args).expect("forward");
    });
    let (want_g, want_m) =
        reference::gate_mix::forward(&s, &x.values, &wg.values, &bg.values, &h.values).unwrap();

    // The logits, and the f32 bound on each before it is stored: a grouped GEMM.
    let logits = s.logits_gemm();
    let id = Activation::Identity;
    let z = reference::grouped_gemm::forward(&logits, id, &x.values, &wg.values, Some(&bg.values));
    let z_sums = reference::grouped_gemm::forward(
        &logits,
        id,
        &abs(&x.values),
        &abs(&wg.values),
        Some(&abs(&bg.values)),
    );
    let (z, z_sums) = (z.unwrap(), z_sums.unwrap());
    // Per (gate, row): the largest logit error δ (rounding z to storage, then to f32
    // arithmetic) and the logits' spread, which bounds |z − max z| inside exp. A
    // softmax moves by at most 2·G·δ, and exp, the sum and the division add f32 errors
    // (WGSL's exp is good to 3 + 2|x| ulp) and two stores (exp, then the quotient).
    let e = s.experts;
    let mut tol_g = vec![0.0; s.g_len()];
    for (row, tol) in tol_g.chunks_mut(e).enumerate() {
        let zr = &z[row * e..][..e];
        let delta = (0..e)
            .map(|i| {
                store_err * zr[i].abs() + (s.inputs as f64 + 2.0) * ARITH * z_sums[row * e + i]
            })
            .fold(0.0, f64::max);
        let spread =
            zr.iter().fold(f64::MIN, |a, &b| a.max(b)) - zr.iter().fold(f64::MAX, |a, &b| a.min(b));
        for (i, t) in tol.iter_mut().enumerate() {
            let gi = want_g[row * e + i];
            *t = gi * (2.0 * delta + 3.0 * store_err + (8.0 + 2.0 * spread + e as f64) * ARITH)
                + floor;
        }
    }
    let got_g = read(gpu, p, &g, s.g_len());
    check(&what("G"), &got_g, &want_g, &tol_g);
    // M_t = Σ_e G_t[e]·H_e: the error of each G scaled by |H|, its own f32 sum of E
    // terms, and one store.
    let mut tol_m = vec![0.0; s.m_len()];
    for t in 0..s.gates {
        for b in 0..s.rows {
            for j in 0..s.width {
                let (mut carried, mut sum) = (0.0, 0.0);
                for ex in 0..e {
                    let gi = (t * s.rows + b) * e + ex;
                    let hv = h.values[(ex * s.rows + b) * s.width + j].abs();
                    carried += tol_g[gi] * hv;
                    sum += want_g[gi] * hv;
                }
                let i = (t * s.rows + b) * s.width + j;
                tol_m[i] =
                    store_err * want_m[i].abs() + carried + (e as f64 + 2.0) * ARITH * sum + floor;
            }
        }
    }
    check(&what("M"), &read(gpu, p, &m, s.m_len()), &want_m, &tol_m);

    // Backward, from the stored G and a random dM, recorded into one compute pass.
    let g_stored = store(
        gpu,
        p,
        "g saved",
        &want_g.iter().map(|&v| v as f32).collect::<Vec<_>>(),
    );
    let dm = store(gpu, p, "dm", &random(&mut rng, s.m_len(), 1.0));
    let (dh, dz) = (
        output(gpu, p, "dh", s.h_len()),
        output(gpu, p, "dz", s.g_len()),
    );
    let (dwg, dbg) = (
        output(gpu, p, "dwg", s.wg_len()),
        output(gpu, p, "dbg", s.bg_len()),
    );
    let dx = output(gpu, p, "dx", s.x_len());
    common::run(gpu, |encoder| {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        let args = GateMixBackward {
            shape: s,
            precision: p,
            x: BufferView::new(&x.buffer),
            wg: BufferView::new(&wg.buffer),
            h: BufferView::new(&h.buffer),
            g: BufferView::new(&g_stored.buffer),
            dm: BufferView::new(&dm.buffer),
            dh: BufferView::new(&dh),
            dz: BufferView::new(&dz),
            dwg: BufferView::new(&dwg),
            dbg: BufferView::new(&dbg),
            dx: Some(BufferView::new(&dx)),
            accumulate_dx: false,
            relu_dh: false,
        };
        kernels.encode_backward(&mut pass, &args).expect("backward");
    });
    let gv = &g_stored.values;
    let grads = reference::gate_mix::backward(&s, &x.values, &wg.values, &h.values, gv, &dm.values)
        .unwrap();

    // dH_e = Σ_t G_t[e]·dM_t: T terms.
    let mut tol_dh = vec![0.0; s.h_len()];
    for ex in 0..e {
        for b in 0..s.rows {
            for j in 0..s.width {
                let sum: f64 = (0..s.gates)
                    .map(|t| {
                        (gv[(t * s.rows + b) * e + ex] * dm.values[(t * s.rows + b) * s.width + j])
                            .abs()
                    })
                    .sum();
                let i = (ex * s.rows + b) * s.width + j;
                tol_dh[i] =
                    store_err * grads.dh[i].abs() + (s.gates as f64 + 2.0) * ARITH * sum + floor;
            }
        }
    }
    check(
        &what("dH"),
        &read(gpu, p, &dh, s.h_len()),
        &grads.dh,
        &tol_dh,
    );

    // dz = G ⊙ (dg − ⟨G, dg⟩), dg_t[e] = ⟨dM_t, H_e⟩ over the width: dg is summed in
    // f32 and stored once, ⟨G, dg⟩ summed in f32 from the stored dg, then dz stored.
    // With A_e = Σ|dM||H_e| bounding |dg_e| and S = Σ_e G_e·A_e bounding the dot:
    let (mut want_dz, mut tol_dz) = (vec![0.0; s.g_len()], vec![0.0; s.g_len()]);
    for t in 0..s.gates {
        for b in 0..s.rows {
            let (mut dg, mut a) = (vec![0.0; e], vec![0.0; e]);
            for ex in 0..e {
                for j in 0..s.width {
                    let (d, hv) = (
                        dm.values[(t * s.rows + b) * s.width + j],
                        h.values[(ex * s.rows + b) * s.width + j],
                    );
                    dg[ex] += d * hv;
                    a[ex] += (d * hv).abs();
                }
            }
            let row = (t * s.rows + b) * e;
            let dot: f64 = (0..e).map(|ex| gv[row + ex] * dg[ex]).sum();
            let dot_bound: f64 = (0..e).map(|ex| gv[row + ex] * a[ex]).sum();
            for ex in 0..e {
                let gi = gv[row + ex];
                want_dz[row + ex] = gi * (dg[ex] - dot);
                let inner = (store_err + (s.width + e + 3) as f64 * ARITH) * (a[ex] + dot_bound);
                tol_dz[row + ex] = store_err * want_dz[row + ex].abs() + gi * inner + floor;
            }
        }
    }
    check(
        &what("dz"),
        &read(gpu, p, &dz, s.g_len()),
        &want_dz,
        &tol_dz,
    );

    // dWg, dbg, dX: grouped GEMMs on the stored dz, so dz's bound carries through
    // (a GEMM of |operand| with the bound), plus their own sums and store.
    let zeros = vec![0.0; s.g_len()];
    let ax = abs(&x.values);
    let aw = abs(&wg.values);
    let carried =
        reference::grouped_gemm::backward(&logits, id, &ax, &aw, &zeros, &tol_dz).unwrap();
    let sums =
        reference::grouped_gemm::backward(&logits, id, &ax, &aw, &zeros, &abs(&want_dz)).unwrap();
    let k_rows = s.rows as f64 + 2.0;
    let k_dx = (s.gates * e) as f64 + 2.0;
    let tol = bound(p, &grads.dwg, |i| {
        carried.dw[i] + k_rows * ARITH * sums.dw[i]
    });
    check(
        &what("dWg"),
        &read(gpu, p, &dwg, s.wg_len()),
        &grads.dwg,
        &tol,
    );
    let tol = bound(p, &grads.dbg, |i| {
        carried.db[i] + k_rows * ARITH * sums.db[i]
    });
    check(
        &what("dbg"),
        &read(gpu, p, &dbg, s.bg_len()),
        &grads.dbg,
        &tol,
    );
    let tol = bound(p, &grads.dx, |i| carried.dx[i] + k_dx * ARITH * sums.dx[i]);
    check(&what("dX"), &read(gpu, p, &dx, s.x_len()), &grads.dx, &tol);
}

#[test]
fn gate_mix_forward_and_backward_match_the_reference_in_f32_and_f16() {
    gate_mix_forward_and_backward_match_the_reference_in_f32_and_f16_on(gpu());
}

pub(crate) fn gate_mix_forward_and_backward_match_the_reference_in_f32_and_f16_on(gpu: &Gpu) {
    let shape = |gates, experts, rows, inputs, width| GateMixShape {
        gates,
        experts,
        rows,
        inputs,
        width,
        input: mmoe_wgpu::InputLayout::Shared,
    };
    for p in precisions(gpu) {
        gate_mix_case(gpu, p, shape(2, 8, 33, 17, 16), 11);
        gate_mix_case(gpu, p, shape(3, 5, 9, 40, 7), 12);
        gate_mix_case(gpu, p, shape(1, 1, 1, 1, 1), 13);
    }
}

// ------------------------------------------------------------------ loss, optimizer

#[test]
fn loss_matches_the_reference_in_f32_and_f16() {
    let gpu = gpu();
    let tasks = [
        TaskLoss {
            kind: LossKind::MeanSquaredError,
            weight: 1.0,
        },
        TaskLoss {
            kind: LossKind::BinaryCrossEntropy,
            weight: 0.5,
        },
    ];
    let rows = 37;
    let mut rng = Rng::new(21);
    let logits = random(&mut rng, 2 * rows, 4.0);
    let targets: Vec<f32> = (0..2 * rows)
        .map(|i| {
            if i < rows {
                logits[i] + rng.uniform(-1.0, 1.0) as f32
            } else {
                (i % 2) as f32
            }
        })
        .collect();
    for p in precisions(gpu) {
        let predictions = store(gpu, p, "predictions", &logits);
        let target = store(gpu, p, "targets", &targets);
        // The loss values are f32 whatever the precision.
        let loss = output(gpu, Precision::F32, "loss", tasks.len());
        let grad = output(gpu, p, "grad", 2 * rows);
        common::run(gpu, |encoder| {
            let args = LossForward {
                rows,
                tasks: &tasks,
                precision: p,
                predictions: BufferView::new(&predictions.buffer),
                targets: BufferView::new(&target.buffer),
                loss: BufferView::new(&loss),
                grad: BufferView::new(&grad),
            };
            Loss::new(gpu).encode_forward(encoder, &args).expect("loss");
        });
        let kinds: Vec<(LossKind, f64)> = tasks.iter().map(|t| (t.kind, t.weight as f64)).collect();
        let (want_loss, want_grad) =
            reference::loss::forward(&kinds, rows, &predictions.values, &target.values).unwrap();
        // Sums of `rows` f32 terms, each a few roundings from exact, all of one sign.
        let tol: Vec<f64> = want_loss
            .iter()
            .map(|l| (rows as f64 + 16.0) * ARITH * l.abs())
            .collect();
        check(
            &format!("{p:?} loss"),
            &read(gpu, Precision::F32, &loss, 2),
            &want_loss,
            &tol,
        );
        // ℓ' is a difference of O(1) values, so a few f32 roundings of absolute size,
        // scaled by λ/B, then one store.
        let tol = bound(p, &want_grad, |i| {
            let (weight, v) = (tasks[i / rows].weight as f64, predictions.values[i].abs());
            weight / rows as f64 * (8.0 + v) * ARITH
        });
        check(
            &format!("{p:?} loss grad"),
            &read(gpu, p, &grad, 2 * rows),
            &want_grad,
            &tol,
        );
    }
}

#[test]
fn adam_takes_gradients_at_each_precision_and_writes_the_working_copy() {
    let gpu = gpu();
    let len = 301;
    let optimizer = OptimizerConfig::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let mut rng = Rng::new(31);
    let params = random(&mut rng, len, 1.0);
    let grads = random(&mut rng, len, 0.1);
    for p in precisions(gpu) {
        let master = gpu.upload("params", &params).unwrap();
        let g = store(gpu, p, "grads", &grads);
        let m = output(gpu, Precision::F32, "m", len);
        let v = output(gpu, Precision::F32, "v", len);
        let copy = output(gpu, p, "params copy", len);
        let step = Optimizer::new(gpu)
            .update(&OptimizerUpdate {
                config: optimizer,
                len,
                precision: p,
                params: BufferView::new(&master),
                grads: BufferView::new(&g.buffer),
                m: BufferView::new(&m),
                v: Some(BufferView::new(&v)),
                loss: None,
                status: None,
                tasks: 0,
                params_copy: Some(BufferView::new(&copy)),
            })
            .expect("prepare");
        step.set_step(gpu.queue(), 1, 1e-2);
        common::run(gpu, |encoder| step.encode(encoder));

        let mut want: Vec<f64> = params.iter().map(|&v| v as f64).collect();
        let (mut wm, mut wv) = (vec![0.0; len], vec![0.0; len]);
        reference::optimizer::step(
            optimizer,
            1,
            1e-2,
            &mut want,
            &g.values,
            &mut wm,
            Some(&mut wv),
        )
        .unwrap();
        // The master weights are f32: the tolerance of the f32 optimizer tests.
        let tol: Vec<f64> = want.iter().map(|w| 1e-6 * (1.0 + w.abs())).collect();
        check(
            &format!("{p:?} adamw params"),
            &read(gpu, Precision::F32, &master, len),
            &want,
            &tol,
        );
        // The copy: the same values, stored once more.
        let tol = bound(p, &want, |i| 1e-6 * (1.0 + want[i].abs()));
        check(
            &format!("{p:?} adamw params copy"),
            &read(gpu, p, &copy, len),
            &want,
            &tol,
        );
    }
}

#[test]
fn f16_operands_may_start_at_any_even_byte_offset() {
    let gpu = gpu();
    if !Precision::F16.is_supported(gpu) {
        return;
    }
    let shape = GemmShape {
        groups: 2,
        rows: 5,
        inputs: 7,
        outputs: 3,
        input: InputLayout::Shared,
    };
    let mut rng = Rng::new(41);
    let x: Vec<f16> = random(&mut rng, shape.x_len(), 1.0)
        .iter()
        .map(|&v| f16::from_f32(v))
        .collect();
    let w: Vec<f16> = random(&mut rng, shape.w_len(), 0.5)
        .iter()
        .map(|&v| f16::from_f32(v))
        .collect();
    // X three elements (6 bytes) and Y one element (2 bytes) into their buffers.
    let mut shifted = vec![f16::ZERO; 3];
    shifted.extend(&x);
    let (xb, xs) = (
        gpu.upload("x", &x).unwrap(),
        gpu.upload("x shifted", &shifted).unwrap(),
    );
    let wb = gpu.upload("w", &w).unwrap();
    let y = output(gpu, Precision::F16, "y", shape.y_len());
    let ys = output(gpu, Precision::F16, "y shifted", shape.y_len() + 1);
    let gemm = GroupedGemm::new(gpu);
    common::run(gpu, |encoder| {
        for (x, y) in [
            (BufferView::new(&xb), BufferView::new(&y)),
            (BufferView::at(&xs, 6), BufferView::at(&ys, 2)),
        ] {
            let args = GroupedGemmForward {
                shape,
                activation: Activation::Relu,
                precision: Precision::F16,
                x,
                w: BufferView::new(&wb),
                bias: None,
                y,
            };
            gemm.encode_forward(encoder, &args).expect("forward");
        }
    });
    let plain: Vec<u16> = gpu
        .read::<f16>(&y, 0, shape.y_len())
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    let moved: Vec<u16> = gpu
        .read::<f16>(&ys, 2, shape.y_len())
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    assert_eq!(plain, moved);
    assert_eq!(
        gpu.read::<f16>(&ys, 0, 1).unwrap()[0],
        f16::ZERO,
        "the element before Y is untouched"
    );
}
