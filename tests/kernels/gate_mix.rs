//! Gate + mix kernels against the CPU reference on awkward shapes, every tiling and
//! large logits; operands at unaligned offsets; bitwise reproducibility; the
//! reference's gradients against finite differences; bad input rejected with errors.

use crate::common::gate::{
    Buffers, Data, assert_gate_gradients, data, gradient_point, max_logit, output_bits, shape,
};
use crate::common::*;
use mmoe_wgpu::kernels::BufferView;
use mmoe_wgpu::kernels::Precision;
use mmoe_wgpu::kernels::gate_mix::{
    GateMix, GateMixBackward, GateMixForward, GateMixShape, GateMixTiling,
};
use mmoe_wgpu::reference::gate_mix as reference;
use mmoe_wgpu::rng::Rng;
use mmoe_wgpu::{Error, Gpu};

const TOLERANCE: f64 = 1e-4;

/// Rows from the design's list, with expert counts, gate counts, widths and inputs
/// rotated so that every value appears while the run stays short.
pub(crate) fn cases() -> Vec<GateMixShape> {
    let rows = [1, 3, 17, 100, 257];
    let experts = [1, 2, 3, 8, 16];
    let gates = [1, 2, 4];
    let widths = [1, 5, 16, 33];
    let inputs = [1, 7, 100];
    let mut out = Vec::new();
    for (i, &r) in rows.iter().enumerate() {
        for j in 0..3 {
            out.push(shape(
                gates[(i + j) % gates.len()],
                experts[(i + 2 * j) % experts.len()],
                r,
                inputs[(i + 2 * j) % inputs.len()],
                widths[(2 * i + j) % widths.len()],
            ));
        }
    }
    out
}

const NAMES: [&str; 6] = ["G", "M", "dH", "dWg", "dbg", "dX"];

/// The GPU's or the reference's G, M, dH, dWg, dbg and dX.
type Outputs<T> = [Vec<T>; 6];

/// Forward, then backward on the GPU's `G` (dX accumulated into `dx_prior` or not).
pub(crate) fn run_gpu(
    gpu: &Gpu,
    shape: GateMixShape,
    d: &Data,
    tiling: Option<GateMixTiling>,
    accumulate: bool,
) -> Outputs<f32> {
    let kernels = GateMix::new(gpu);
    let bufs = Buffers::new(gpu, shape, d);
    let (fwd, bwd) = (bufs.forward(), bufs.backward(accumulate));
    let (f, b) = match tiling {
        Some(t) => (
            kernels.forward_with(&fwd, t),
            kernels.backward_with(&bwd, t),
        ),
        None => (kernels.forward(&fwd), kernels.backward(&bwd)),
    };
    let (f, b) = (f.unwrap(), b.unwrap());
    assert_eq!(b.len(), 3, "backward with dX is three dispatches");
    run(gpu, |e| {
        f.encode(e);
        b.iter().for_each(|d| d.encode(e));
    });
    let [g, m, dh, _, dwg, dbg, dx] = bufs.read(gpu);
    [g, m, dh, dwg, dbg, dx]
}

fn reference_outputs(shape: &GateMixShape, d: &Data, accumulate: bool) -> Outputs<f64> {
    let (x, wg, h) = (to_f64(&d.x), to_f64(&d.wg), to_f64(&d.h));
    let (g, m) = reference::forward(shape, &x, &wg, &to_f64(&d.bg), &h).unwrap();
    let grads = reference::backward(shape, &x, &wg, &h, &g, &to_f64(&d.dm)).unwrap();
    let dx = d.with_prior(grads.dx, accumulate);
    [g, m, grads.dh, grads.dwg, grads.dbg, dx]
}

fn assert_matches(what: &str, got: &Outputs<f32>, want: &Outputs<f64>) {
    for ((name, got), want) in NAMES.iter().zip(got).zip(want) {
        assert!(
            got.iter().all(|v| v.is_finite()),
            "{name} {what}: non-finite"
        );
        assert_close(&format!("{name} {what}"), got, want, TOLERANCE);
    }
}

#[test]
fn every_tiling_matches_the_reference_and_each_other_bitwise() {
    every_tiling_matches_the_reference_and_each_other_bitwise_on(gpu());
}

pub(crate) fn every_tiling_matches_the_reference_and_each_other_bitwise_on(gpu: &Gpu) {
    let tilings = GateMix::new(gpu).tilings();
    for (n, shape) in cases().into_iter().enumerate() {
        let accumulate = n % 2 == 1;
        let d = data(&shape, n as u64, 1.0);
        let want = reference_outputs(&shape, &d, accumulate);
        let default = run_gpu(gpu, shape, &d, None, accumulate);
        assert_matches(
            &format!("{shape:?} accumulate={accumulate}"),
            &default,
            &want,
        );
        for &tiling in &tilings {
            let got = run_gpu(gpu, shape, &d, Some(tiling), accumulate);
            assert!(
                output_bits(&got) == output_bits(&default),
                "{tiling:?} differs bitwise from the default tiling on {shape:?}"
            );
        }
    }
    gpu.check().unwrap();
}

#[test]
fn large_logits_give_a_stable_softmax() {
    let gpu = gpu();
    for (n, shape) in [shape(2, 8, 33, 37, 5), shape(1, 3, 17, 100, 16)]
        .into_iter()
        .enumerate()
    {
        let d = data(&shape, 100 + n as u64, 50.0);
        // exp of the logits overflows f32 unless the row maximum is subtracted first.
        assert!(
            max_logit(&shape, &d) > 100.0,
            "the data should overflow exp"
        );
        let want = reference_outputs(&shape, &d, false);
        let got = run_gpu(gpu, shape, &d, None, false);
        assert_matches(&format!("{shape:?} ×50"), &got, &want);
    }
}

#[test]
fn two_runs_are_bitwise_identical() {
    let gpu = gpu();
    let shape = shape(4, 16, 257, 100, 33);
    let d = data(&shape, 7, 1.0);
    let a = run_gpu(gpu, shape, &d, None, true);
    let b = run_gpu(gpu, shape, &d, None, true);
    assert!(output_bits(&a) == output_bits(&b), "two runs differ");
}

/// Splits `all` into the parts starting at `at` with lengths `lens`, and checks
/// everything else still holds `fill`.
fn unpack(all: &[f32], at: &[usize], lens: &[usize], fill: f32) -> Vec<Vec<f32>> {
    let mut inside = vec![false; all.len()];
    for (&a, &n) in at.iter().zip(lens) {
        inside[a..a + n].fill(true);
    }
    for (i, (&v, &ins)) in all.iter().zip(&inside).enumerate() {
        assert!(ins || v == fill, "wrote outside the operands at {i}: {v}");
    }
    at.iter()
        .zip(lens)
        .map(|(&a, &n)| all[a..a + n].to_vec())
        .collect()
}

#[test]
fn operands_at_unaligned_offsets_inside_shared_buffers() {
    let gpu = gpu();
    let kernels = GateMix::new(gpu);
    let s = shape(2, 3, 9, 5, 6);
    let d = data(&s, 21, 1.0);
    let want = reference_outputs(&s, &d, true);
    // Inputs, forward outputs and backward outputs packed in one buffer each; the
    // backward reads G from the forward's. dz is read next to the backward's other
    // outputs, so it needs a buffer of its own.
    let (ins, i) = pack(&[&d.x, &d.wg, &d.bg, &d.h, &d.dm], f32::NAN);
    let fwd_lens = [s.g_len(), s.m_len()];
    let bwd_lens = [s.h_len(), s.wg_len(), s.bg_len(), s.x_len()];
    let z = |n: usize| vec![0.0f32; n];
    let (fwd_out, f) = pack(&[&z(fwd_lens[0]), &z(fwd_lens[1])], -7.0);
    let (bwd_out, b) = pack(
        &[
            &z(bwd_lens[0]),
            &z(bwd_lens[1]),
            &z(bwd_lens[2]),
            &d.dx_prior,
        ],
        -7.0,
    );
    let inb = gpu.upload("packed inputs", &ins).unwrap();
    let fb = gpu.upload("packed forward outputs", &fwd_out).unwrap();
    let bb = gpu.upload("packed backward outputs", &bwd_out).unwrap();
    let dz = gpu.storage_buffer("dz", 4 * s.g_len() as u64).unwrap();
    let view = |buf, at: &[usize], k: usize| BufferView::at(buf, 4 * at[k] as u64);
    let fwd = GateMixForward {
        precision: Precision::F32,
        shape: s,
        x: view(&inb, &i, 0),
        wg: view(&inb, &i, 1),
        bg: view(&inb, &i, 2),
        h: view(&inb, &i, 3),
        g: view(&fb, &f, 0),
        m: view(&fb, &f, 1),
    };
    let bwd = GateMixBackward {
        precision: Precision::F32,
        shape: s,
        x: fwd.x,
        wg: fwd.wg,
        h: fwd.h,
        g: fwd.g,
        dm: view(&inb, &i, 4),
        dh: view(&bb, &b, 0),
        dz: (&dz).into(),
        dwg: view(&bb, &b, 1),
        dbg: view(&bb, &b, 2),
        dx: Some(view(&bb, &b, 3)),
        accumulate_dx: true,
        relu_dh: false,
    };
    let (fd, bd) = (
        kernels.forward(&fwd).unwrap(),
        kernels.backward(&bwd).unwrap(),
    );
    run(gpu, |e| {
        fd.encode(e);
        bd.iter().for_each(|d| d.encode(e));
    });
    let mut got = unpack(&read(gpu, &fb, fwd_out.len()), &f, &fwd_lens, -7.0);
    got.extend(unpack(&read(gpu, &bb, bwd_out.len()), &b, &bwd_lens, -7.0));
    assert_matches("at offsets", &got.try_into().unwrap(), &want);
}

#[test]
fn reference_gradients_match_finite_differences() {
    let shape = shape(2, 3, 4, 3, 2);
    let (p, r) = gradient_point(&shape, &mut Rng::new(13));
    // Loss = Σ R ⊙ M, so dL/dM = R.
    let loss = |p: &[Vec<f64>; 4]| -> f64 {
        let (_, m) = reference::forward(&shape, &p[0], &p[1], &p[2], &p[3]).unwrap();
        m.iter().zip(&r).map(|(a, b)| a * b).sum()
    };
    let (g, _) = reference::forward(&shape, &p[0], &p[1], &p[2], &p[3]).unwrap();
    let grads = reference::backward(&shape, &p[0], &p[1], &p[3], &g, &r).unwrap();
    assert_gate_gradients(&p, (&grads.dx, &grads.dwg, &grads.dbg, &grads.dh), loss);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let gpu = gpu();
    let kernels = GateMix::new(gpu);
    let shape = shape(2, 3, 4, 5, 6);
    let bufs = Buffers::new(gpu, shape, &data(&shape, 1, 1.0));
    let (fwd, bwd) = (bufs.forward(), bufs.backward(false));
    let zero = GateMixShape {
        experts: 0,
        ..shape
    };
    let small = gpu
        .storage_buffer("small", 4 * (shape.h_len() - 1) as u64)
        .unwrap();
    let big = gpu
        .storage_buffer("big", 4 * (shape.wg_len() + shape.g_len()) as u64)
        .unwrap();
    let forward = |args: GateMixForward<'_>| kernels.forward(&args);
    let backward = |args: GateMixBackward<'_>| kernels.backward(&args);

    expect_err(
        forward(GateMixForward { shape: zero, ..fwd }),
        &["`experts`"],
    );
    let e = expect_err(
        forward(GateMixForward {
            h: (&small).into(),
            ..fwd
        }),
        &["`h`", "288 bytes", "284 bytes"],
    );
    assert!(matches!(e, Error::Shape { .. }));
    expect_err(
        forward(GateMixForward {
            m: BufferView::at(&bufs.m, 4),
            ..fwd
        }),
        &["`m`"],
    );
    expect_err(
        forward(GateMixForward {
            m: (&bufs.h).into(),
            ..fwd
        }),
        &["distinct buffers"],
    );
    let tiling = GateMixTiling {
        wg: 0,
        row_blocks: 1,
        column_groups: 1,
    };
    expect_err(kernels.forward_with(&fwd, tiling), &["tiling"]);

    assert_eq!(
        backward(GateMixBackward { dx: None, ..bwd }).unwrap().len(),
        2
    );
    expect_err(
        backward(GateMixBackward { shape: zero, ..bwd }),
        &["`experts`"],
    );
    expect_err(
        backward(GateMixBackward {
            dbg: BufferView::at(&bufs.dbg, 4),
            ..bwd
        }),
        &["`dbg`"],
    );
    expect_err(
        backward(GateMixBackward {
            dwg: (&bufs.dbg).into(),
            ..bwd
        }),
        &["`dwg`"],
    );
    // An output of a later dispatch may not clobber an input of an earlier one, and
    // dz, written by the first, is read next to the outputs of the others.
    let dx_on_h = GateMixBackward {
        dx: Some((&bufs.h).into()),
        ..bwd
    };
    expect_err(backward(dx_on_h), &["`h`", "distinct buffers"]);
    expect_err(
        backward(GateMixBackward {
            dbg: BufferView::at(&bufs.dz, 4),
            ..bwd
        }),
        &["overlaps"],
    );
    let dz_beside_dwg = GateMixBackward {
        dz: BufferView::at(&big, 4 * shape.wg_len() as u64),
        dwg: (&big).into(),
        ..bwd
    };
    expect_err(backward(dz_beside_dwg), &["`dz`", "`dwg`"]);

    let huge = GateMixShape {
        rows: usize::MAX / 2,
        ..shape
    };
    expect_err(
        forward(GateMixForward { shape: huge, ..fwd }),
        &["element count"],
    );
    let r = vec![0.0; 3];
    expect_err(reference::forward(&shape, &r, &r, &r, &r), &["`x`"]);
    expect_err(
        reference::backward(&zero, &r, &r, &r, &r, &r),
        &["`experts`"],
    );
    gpu.check().unwrap();
}

/// With `relu_dh` the backward stores `dH ⊙ [H > 0]`, bit for bit the plain `dH`
/// where `H > 0` and +0 elsewhere, on every tiling; the other outputs are unchanged.
#[test]
fn relu_dh_stores_the_gradient_at_the_relu_input() {
    let gpu = gpu();
    let kernels = GateMix::new(gpu);
    let shape = gate::shape(3, 5, 37, 6, 11);
    let d = gate::data(&shape, 41, 1.0);
    for tiling in kernels.tilings() {
        let mut out = Vec::new();
        for relu_dh in [false, true] {
            let bufs = Buffers::new(gpu, shape, &d);
            let fwd = kernels.forward_with(&bufs.forward(), tiling).unwrap();
            let args = GateMixBackward {
                relu_dh,
                ..bufs.backward(false)
            };
            let bwd = kernels.backward_with(&args, tiling).unwrap();
            run(gpu, |e| {
                fwd.encode(e);
                bwd.iter().for_each(|b| b.encode(e));
            });
            out.push(bufs.read(gpu));
        }
        let (plain, masked) = (&out[0], &out[1]);
        let want: Vec<u32> = plain[2]
            .iter()
            .zip(&d.h)
            .map(|(&dh, &h)| if h > 0.0 { dh.to_bits() } else { 0 })
            .collect();
        let got: Vec<u32> = masked[2].iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want, "dH under {tiling:?}");
        assert!(d.h.iter().any(|&h| h <= 0.0) && d.h.iter().any(|&h| h > 0.0));
        for k in [0, 1, 3, 4, 5, 6] {
            assert_eq!(
                gate::output_bits(&plain[k..k + 1]),
                gate::output_bits(&masked[k..k + 1]),
                "{} under {tiling:?}",
                gate::NAMES[k]
            );
        }
    }
}
