//! Top-k gate + mix against the CPU reference on awkward shapes for k ∈ {1, 2, E} and
//! every tiling; k = E against the dense gate; ties; large logits; operands at
//! unaligned offsets; f16 storage; bitwise reproducibility; the reference's gradients
//! against finite differences; bad input rejected with errors.

use crate::common::gate::{
    Buffers, Data, NAMES, Outputs, assert_gate_gradients, data, gradient_point, logits, max_logit,
    output_bits, shape,
};
use crate::common::*;
use half::f16;
use mmoe_wgpu::kernels::gate_mix::{
    ExpertAccess, ForwardStages, GateMix, GateMixBackward, GateMixForward, GateMixShape,
    GateMixTiling, GateMixTopK, Selection,
};
use mmoe_wgpu::kernels::{BufferView, Precision};
use mmoe_wgpu::reference::gate_mix as dense_reference;
use mmoe_wgpu::reference::gate_topk as reference;
use mmoe_wgpu::rng::Rng;
use mmoe_wgpu::{Error, Gpu};

const TOLERANCE: f64 = 1e-4;

/// How far every row's k-th largest logit stays from the (k+1)-th in the GPU tests:
/// f32 logits differ from the reference's f64 ones by about 1e-6, so a closer pair
/// could be selected differently on the two sides.
pub(crate) const MARGIN: f64 = 1e-4;

/// Every combination of rows {1, 3, 37}, experts {2, 5, 16}, gates {1, 3} and
/// k ∈ {1, 2, E}, with input and expert widths rotated.
pub(crate) fn cases() -> Vec<(GateMixShape, usize)> {
    let mut out = Vec::new();
    for rows in [1, 3, 37] {
        for experts in [2, 5, 16] {
            for gates in [1, 3] {
                let mut ks = vec![1, 2, experts];
                ks.dedup();
                for k in ks {
                    let n = out.len();
                    let inputs = [1, 7, 33][n % 3];
                    let width = [1, 5, 16, 6][n % 4];
                    out.push((shape(gates, experts, rows, inputs, width), k));
                }
            }
        }
    }
    out
}

/// The smallest gap between a row's k-th and (k+1)-th largest logit (infinite for
/// k = E, where nothing is left out).
fn selection_margin(s: &GateMixShape, k: usize, z: &[f64]) -> f64 {
    if k == s.experts {
        return f64::INFINITY;
    }
    z.chunks(s.experts)
        .map(|row| {
            let mut sorted = row.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            sorted[k - 1] - sorted[k]
        })
        .fold(f64::INFINITY, f64::min)
}

/// The logits summed over the gates, `[rows, experts]`: what a shared selection
/// ranks.
fn summed_logits(s: &GateMixShape, z: &[f64]) -> Vec<f64> {
    let per_gate = s.rows * s.experts;
    (0..per_gate)
        .map(|i| (0..s.gates).map(|t| z[t * per_gate + i]).sum())
        .collect()
}

/// [`selection_margin`] of the experts `selection` ranks: each gate's logits, or
/// their sums.
fn margin_of(s: &GateMixShape, k: usize, selection: Selection, z: &[f64]) -> f64 {
    match selection {
        Selection::PerGate => selection_margin(s, k, z),
        Selection::Shared => selection_margin(s, k, &summed_logits(s, z)),
    }
}

fn data_margin_selecting(s: &GateMixShape, k: usize, selection: Selection, d: &Data) -> f64 {
    let z = logits(s, &to_f64(&d.x), &to_f64(&d.wg), &to_f64(&d.bg));
    margin_of(s, k, selection, &z)
}

/// The first data from `seed` on (deterministic) whose every row keeps `margin`
/// between selected and unselected logits.
pub(crate) fn data_away_from_ties(
    s: &GateMixShape,
    k: usize,
    seed: u64,
    gate_scale: f64,
    margin: f64,
) -> Data {
    data_away_from_ties_selecting(s, (k, Selection::PerGate), seed, gate_scale, margin)
}

/// [`data_away_from_ties`] for the experts `selection` ranks.
pub(crate) fn data_away_from_ties_selecting(
    s: &GateMixShape,
    (k, selection): (usize, Selection),
    seed: u64,
    gate_scale: f64,
    margin: f64,
) -> Data {
    (0..200)
        .map(|i| data(s, 1000 * seed + i, gate_scale))
        .find(|d| data_margin_selecting(s, k, selection, d) >= margin)
        .unwrap_or_else(|| {
            panic!("no data for {s:?} k={k} {selection:?} keeps a margin of {margin}")
        })
}

/// Forward (with `tiling`, or the default), then backward on the GPU's `G`.
pub(crate) fn run_gpu(
    gpu: &Gpu,
    shape: GateMixShape,
    k: usize,
    d: &Data,
    tiling: Option<GateMixTiling>,
    accumulate: bool,
) -> Outputs<f32> {
    run_gpu_selecting(gpu, (shape, k, Selection::PerGate), d, tiling, accumulate)
}

/// [`run_gpu`] with the gates selecting as `selection` says.
pub(crate) fn run_gpu_selecting(
    gpu: &Gpu,
    (shape, k, selection): (GateMixShape, usize, Selection),
    d: &Data,
    tiling: Option<GateMixTiling>,
    accumulate: bool,
) -> Outputs<f32> {
    let kernels = GateMix::new(gpu);
    let bufs = Buffers::new(gpu, shape, d);
    let fwd = (
        bufs.forward(),
        GateMixTopK {
            selection,
            ..GateMixTopK::new(k)
        },
    );
    let f = match tiling {
        Some(t) => kernels.forward_top_k_with(&fwd.0, &fwd.1, t),
        None => kernels.forward_top_k(&fwd.0, &fwd.1),
    }
    .unwrap();
    let b = kernels.backward(&bufs.backward(accumulate)).unwrap();
    assert_eq!(b.len(), 3, "backward with dX is three dispatches");
    run(gpu, |e| {
        f.encode(e);
        b.iter().for_each(|d| d.encode(e));
    });
    bufs.read(gpu)
}

fn reference_outputs(shape: &GateMixShape, k: usize, d: &Data, accumulate: bool) -> Outputs<f64> {
    reference_outputs_selecting(shape, (k, Selection::PerGate), d, accumulate)
}

/// [`reference_outputs`] with the gates selecting as `selection` says.
fn reference_outputs_selecting(
    shape: &GateMixShape,
    (k, selection): (usize, Selection),
    d: &Data,
    accumulate: bool,
) -> Outputs<f64> {
    let (x, wg, h) = (to_f64(&d.x), to_f64(&d.wg), to_f64(&d.h));
    let z = reference::logits(shape, &x, &wg, &to_f64(&d.bg)).unwrap();
    let (g, m) =
        reference::forward_logits_selecting(shape, k, ExpertAccess::All, selection, &z, &h)
            .unwrap();
    let grads = reference::backward(shape, &x, &wg, &h, &g, &to_f64(&d.dm)).unwrap();
    let dx = d.with_prior(grads.dx, accumulate);
    [g, m, grads.dh, grads.dz, grads.dwg, grads.dbg, dx]
}

/// Every output within the tolerance, and the selection exact: `G` and `dz` are zero
/// wherever the reference leaves an expert out.
fn assert_matches(what: &str, got: &Outputs<f32>, want: &Outputs<f64>) {
    for ((name, got), want) in NAMES.iter().zip(got).zip(want) {
        assert!(
            got.iter().all(|v| v.is_finite()),
            "{name} {what}: non-finite"
        );
        assert_close(&format!("{name} {what}"), got, want, TOLERANCE);
    }
    for (i, &p) in want[0].iter().enumerate() {
        if p == 0.0 {
            assert!(
                got[0][i] == 0.0 && got[3][i] == 0.0,
                "{what}: unselected entry {i} has G = {}, dz = {}",
                got[0][i],
                got[3][i]
            );
        }
    }
}

#[test]
fn every_case_matches_the_reference_and_every_tiling_bitwise() {
    every_case_matches_the_reference_and_every_tiling_bitwise_on(gpu());
}

pub(crate) fn every_case_matches_the_reference_and_every_tiling_bitwise_on(gpu: &Gpu) {
    let tilings = GateMix::new(gpu).tilings();
    for (n, (shape, k)) in cases().into_iter().enumerate() {
        let accumulate = n % 2 == 1;
        let d = data_away_from_ties(&shape, k, n as u64, 1.0, MARGIN);
        let want = reference_outputs(&shape, k, &d, accumulate);
        let default = run_gpu(gpu, shape, k, &d, None, accumulate);
        assert_matches(
            &format!("{shape:?} k={k} accumulate={accumulate}"),
            &default,
            &want,
        );
        for &tiling in &tilings {
            let got = run_gpu(gpu, shape, k, &d, Some(tiling), accumulate);
            assert!(
                output_bits(&got) == output_bits(&default),
                "{tiling:?} differs bitwise from the default tiling on {shape:?} k={k}"
            );
        }
    }
    gpu.check().unwrap();
}

#[test]
fn k_equal_to_experts_is_the_dense_gate() {
    let gpu = gpu();
    for (n, shape) in [
        shape(1, 2, 1, 7, 5),
        shape(3, 5, 37, 33, 16),
        shape(3, 16, 3, 1, 6),
    ]
    .into_iter()
    .enumerate()
    {
        let d = data(&shape, 50 + n as u64, 1.0);
        let (x, wg, bg, h) = (to_f64(&d.x), to_f64(&d.wg), to_f64(&d.bg), to_f64(&d.h));
        let dm = to_f64(&d.dm);
        let (g, m) = dense_reference::forward(&shape, &x, &wg, &bg, &h).unwrap();
        let dense = dense_reference::backward(&shape, &x, &wg, &h, &g, &dm).unwrap();

        // The two references agree to f64 rounding...
        let (tg, tm) = reference::forward(&shape, shape.experts, &x, &wg, &bg, &h).unwrap();
        let topk = reference::backward(&shape, &x, &wg, &h, &tg, &dm).unwrap();
        let pairs = [
            (&tg, &g),
            (&tm, &m),
            (&topk.dh, &dense.dh),
            (&topk.dwg, &dense.dwg),
            (&topk.dbg, &dense.dbg),
            (&topk.dx, &dense.dx),
        ];
        for (got, want) in pairs {
            let got: Vec<f32> = got.iter().map(|&v| v as f32).collect();
            assert_close(&format!("reference k=E {shape:?}"), &got, want, 1e-6);
        }

        // ...and the GPU's top-E gate is the dense gate's reference.
        let got = run_gpu(gpu, shape, shape.experts, &d, None, false);
        let want = [g, m, dense.dh, dense.dwg, dense.dbg, dense.dx];
        for ((name, got), want) in ["G", "M", "dH", "dWg", "dbg", "dX"]
            .iter()
            .zip([&got[0], &got[1], &got[2], &got[4], &got[5], &got[6]])
            .zip(&want)
        {
            assert_close(&format!("{name} k=E {shape:?}"), got, want, TOLERANCE);
        }

        // The same logits and mixture tiles as the dense kernel: the same bits.
        let bufs = Buffers::new(gpu, shape, &d);
        let mix = GateMix::new(gpu);
        let dispatch = mix
            .forward_with(&bufs.forward(), mix.default_tiling(&shape))
            .unwrap();
        run(gpu, |e| dispatch.encode(e));
        let dense_gpu = [
            read(gpu, &bufs.g, shape.g_len()),
            read(gpu, &bufs.m, shape.m_len()),
        ];
        assert!(
            output_bits(&dense_gpu) == output_bits(&got[..2]),
            "top-E differs bitwise from the dense gate on {shape:?}"
        );
    }
}

#[test]
fn equal_logits_go_to_the_lower_expert() {
    let gpu = gpu();
    let s = shape(1, 5, 3, 4, 2);
    let mut d = data(&s, 3, 1.0);
    // With Wg = 0 every row's logits are bg exactly.
    d.wg = vec![0.0; s.wg_len()];
    d.bg = vec![1.0, 3.0, 3.0, 2.0, 3.0];
    let third = 1.0 / 3.0;
    for (k, selected, weights) in [
        (1, vec![1usize], vec![0.0, 1.0, 0.0, 0.0, 0.0]),
        (2, vec![1, 2], vec![0.0, 0.5, 0.5, 0.0, 0.0]),
        (3, vec![1, 2, 4], vec![0.0, third, third, 0.0, third]),
    ] {
        assert_eq!(reference::top_k(&to_f64(&d.bg), k), selected);
        let want = reference_outputs(&s, k, &d, false);
        for (i, (&got, &w)) in want[0].iter().zip(weights.iter().cycle()).enumerate() {
            assert!(
                (got - w).abs() < 1e-15,
                "reference G[{i}] = {got}, want {w} (k={k})"
            );
        }
        let got = run_gpu(gpu, s, k, &d, None, false);
        assert_matches(&format!("ties k={k}"), &got, &want);
    }
    // 0 and −0 are equal logits too.
    assert_eq!(reference::top_k(&[-0.0, 0.0, -1.0], 1), [0]);
}

#[test]
fn large_logits_give_a_stable_softmax() {
    let gpu = gpu();
    for (n, (shape, k)) in [(shape(2, 8, 33, 37, 5), 2), (shape(3, 16, 37, 33, 16), 5)]
        .into_iter()
        .enumerate()
    {
        // f32 logits of this size are off by about 1e-4, so the margin grows with them.
        let d = data_away_from_ties(&shape, k, 100 + n as u64, 50.0, 50.0 * MARGIN);
        assert!(
            max_logit(&shape, &d) > 100.0,
            "the data should overflow exp"
        );
        let want = reference_outputs(&shape, k, &d, false);
        let got = run_gpu(gpu, shape, k, &d, None, false);
        assert_matches(&format!("{shape:?} k={k} ×50"), &got, &want);
    }
}

#[test]
fn two_runs_are_bitwise_identical() {
    let gpu = gpu();
    let shape = shape(3, 16, 257, 100, 33);
    let d = data(&shape, 7, 1.0);
    let a = run_gpu(gpu, shape, 2, &d, None, true);
    let b = run_gpu(gpu, shape, 2, &d, None, true);
    assert!(output_bits(&a) == output_bits(&b), "two runs differ");
}

#[test]
fn operands_at_unaligned_offsets_inside_shared_buffers() {
    let gpu = gpu();
    let (s, k) = (shape(2, 5, 9, 6, 7), 2);
    let d = data_away_from_ties(&s, k, 21, 1.0, MARGIN);
    let want = reference_outputs(&s, k, &d, false);
    let (ins, i) = pack(&[&d.x, &d.wg, &d.bg, &d.h], f32::NAN);
    let (outs, o) = pack(&[&vec![0.0f32; s.g_len()], &vec![0.0f32; s.m_len()]], -7.0);
    let inb = gpu.upload("packed inputs", &ins).unwrap();
    let outb = gpu.upload("packed outputs", &outs).unwrap();
    let view = |buf, at: &[usize], n: usize| BufferView::at(buf, 4 * at[n] as u64);
    let args = (
        GateMixForward {
            shape: s,
            precision: Precision::F32,
            x: view(&inb, &i, 0),
            wg: view(&inb, &i, 1),
            bg: view(&inb, &i, 2),
            h: view(&inb, &i, 3),
            g: view(&outb, &o, 0),
            m: view(&outb, &o, 1),
        },
        GateMixTopK {
            k,
            access: ExpertAccess::All,
            selection: Selection::PerGate,
            stages: ForwardStages::Both,
            logit_offset: None,
            full_softmax: None,
        },
    );
    let dispatch = GateMix::new(gpu).forward_top_k(&args.0, &args.1).unwrap();
    run(gpu, |e| dispatch.encode(e));
    let all = read(gpu, &outb, outs.len());
    let (g, m) = (&all[o[0]..o[0] + s.g_len()], &all[o[1]..o[1] + s.m_len()]);
    assert_close("G at offsets", g, &want[0], TOLERANCE);
    assert_close("M at offsets", m, &want[1], TOLERANCE);
    let inside = |j: usize| (0..2).any(|p| (o[p]..o[p] + [s.g_len(), s.m_len()][p]).contains(&j));
    for (j, &v) in all.iter().enumerate() {
        assert!(
            inside(j) || v == -7.0,
            "wrote outside the operands at {j}: {v}"
        );
    }
}

#[test]
fn f16_storage_selects_the_same_experts() {
    let gpu = gpu();
    let kernels = GateMix::new(gpu);
    let (s, k) = (shape(2, 5, 9, 7, 6), 2);
    let attempt = || {
        let bufs = Buffers::new(gpu, s, &data(&s, 1, 1.0));
        kernels.forward_top_k(
            &GateMixForward {
                precision: Precision::F16,
                ..bufs.forward()
            },
            &GateMixTopK::new(k),
        )
    };
    if f16_is_missing(gpu, "gate_mix forward_top_k", attempt) {
        return;
    }
    // Rounded to f16 on the host, so the reference sees exactly the stored inputs; the
    // logits are rounded to f16 once more on the GPU (about 1e-3 here), well inside
    // the margin.
    let d = data_away_from_ties(&s, k, 31, 1.0, 2e-2);
    let half = |v: &[f32]| -> Vec<f16> { v.iter().map(|&x| f16::from_f32(x)).collect() };
    let exact = |v: &[f16]| -> Vec<f64> { v.iter().map(|x| x.to_f64()).collect() };
    let (x, wg, bg, h) = (half(&d.x), half(&d.wg), half(&d.bg), half(&d.h));
    let z = logits(&s, &exact(&x), &exact(&wg), &exact(&bg));
    assert!(
        selection_margin(&s, k, &z) >= 1e-2,
        "f16 rounding moved a logit too close to a tie"
    );
    let (want_g, want_m) =
        reference::forward(&s, k, &exact(&x), &exact(&wg), &exact(&bg), &exact(&h)).unwrap();
    let up = |v: &[f16]| gpu.upload("f16 in", v).unwrap();
    let (xb, wgb, bgb, hb) = (up(&x), up(&wg), up(&bg), up(&h));
    let out = |n: usize| gpu.storage_buffer("f16 out", 2 * n as u64).unwrap();
    let (g, m) = (out(s.g_len()), out(s.m_len()));
    let args = (
        GateMixForward {
            shape: s,
            precision: Precision::F16,
            x: (&xb).into(),
            wg: (&wgb).into(),
            bg: (&bgb).into(),
            h: (&hb).into(),
            g: (&g).into(),
            m: (&m).into(),
        },
        GateMixTopK {
            k,
            access: ExpertAccess::All,
            selection: Selection::PerGate,
            stages: ForwardStages::Both,
            logit_offset: None,
            full_softmax: None,
        },
    );
    let dispatch = kernels.forward_top_k(&args.0, &args.1).unwrap();
    run(gpu, |e| dispatch.encode(e));
    let to_f32 = |v: Vec<f16>| -> Vec<f32> { v.iter().map(|x| x.to_f32()).collect() };
    let got_g = to_f32(gpu.read::<f16>(&g, 0, s.g_len()).unwrap());
    let got_m = to_f32(gpu.read::<f16>(&m, 0, s.m_len()).unwrap());
    // Logits below 2 in magnitude are off by at most 2^-9 in f16, which moves a weight
    // by at most twice that relative; the exponentials, weights and mixtures are each
    // stored once more (2^-10 each): under 1% of a weight, and of a mixture (Σ G = 1,
    // |H| ≤ 1). A wrong selection would be off by tenths.
    assert!(
        z.iter().all(|v| v.abs() < 2.0),
        "logits too large for the bound"
    );
    assert_close("f16 G", &got_g, &want_g, 2e-2);
    assert_close("f16 M", &got_m, &want_m, 2e-2);
    for (i, &p) in want_g.iter().enumerate() {
        assert_eq!(p == 0.0, got_g[i] == 0.0, "f16 selection differs at {i}");
    }
}

#[test]
fn reference_gradients_match_finite_differences() {
    check_reference_gradients(shape(2, 5, 4, 3, 2), 2, Selection::PerGate);
}

#[test]
fn reference_gradients_of_a_shared_selection_match_finite_differences() {
    check_reference_gradients(shape(3, 5, 4, 3, 2), 2, Selection::Shared);
}

/// The reference's gradients of `Σ R ⊙ M` against central differences, on data away
/// from the selection's boundaries.
fn check_reference_gradients(shape: GateMixShape, k: usize, selection: Selection) {
    let forward = |p: &[Vec<f64>; 4]| {
        let z = reference::logits(&shape, &p[0], &p[1], &p[2]).unwrap();
        reference::forward_logits_selecting(&shape, k, ExpertAccess::All, selection, &z, &p[3])
            .unwrap()
    };
    // Data whose selection no step of ±eps can change: gaps far above eps.
    let (p, r) = (0..200u64)
        .map(|seed| gradient_point(&shape, &mut Rng::new(seed)))
        .find(|(p, _)| {
            margin_of(&shape, k, selection, &logits(&shape, &p[0], &p[1], &p[2])) >= 1e-2
        })
        .expect("a seed away from selection boundaries");
    // Loss = Σ R ⊙ M, so dL/dM = R.
    let loss = |p: &[Vec<f64>; 4]| -> f64 {
        let (_, m) = forward(p);
        m.iter().zip(&r).map(|(a, b)| a * b).sum()
    };
    let (g, _) = forward(&p);
    for row in g.chunks(shape.experts) {
        assert_eq!(row.iter().filter(|&&v| v > 0.0).count(), k);
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
    let grads = reference::backward(&shape, &p[0], &p[1], &p[3], &g, &r).unwrap();
    assert_gate_gradients(&p, (&grads.dx, &grads.dwg, &grads.dbg, &grads.dh), loss);
    // No gradient reaches a logit left out of its row's selection.
    for (i, (&dz, &gv)) in grads.dz.iter().zip(&g).enumerate() {
        assert!(
            gv > 0.0 || dz == 0.0,
            "dz[{i}] = {dz} for an unselected expert"
        );
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let gpu = gpu();
    let kernels = GateMix::new(gpu);
    let shape = shape(2, 3, 4, 5, 6);
    let bufs = Buffers::new(gpu, shape, &data(&shape, 1, 1.0));
    let fwd = bufs.topk_forward(2);
    let forward =
        |args: (GateMixForward<'_>, GateMixTopK<'_>)| kernels.forward_top_k(&args.0, &args.1);

    for k in [0, 4] {
        let e = expect_err(
            forward((fwd.0, GateMixTopK { k, ..fwd.1 })),
            &["gate_mix forward_top_k k", &format!("k = {k}"), "1 ≤ k ≤ 3"],
        );
        assert!(matches!(e, Error::Invalid { .. }));
    }
    let zero = GateMixShape {
        experts: 0,
        ..shape
    };
    expect_err(
        forward((
            GateMixForward {
                shape: zero,
                ..fwd.0
            },
            fwd.1,
        )),
        &["`experts`"],
    );
    let small = gpu
        .storage_buffer("small", 4 * (shape.h_len() - 1) as u64)
        .unwrap();
    let e = expect_err(
        forward((
            GateMixForward {
                h: (&small).into(),
                ..fwd.0
            },
            fwd.1,
        )),
        &["gate_mix forward_top_k", "`h`", "288 bytes", "284 bytes"],
    );
    assert!(matches!(e, Error::Shape { .. }));
    expect_err(
        forward((
            GateMixForward {
                g: BufferView::at(&bufs.g, 4),
                ..fwd.0
            },
            fwd.1,
        )),
        &["`g`"],
    );
    expect_err(
        forward((
            GateMixForward {
                m: (&bufs.h).into(),
                ..fwd.0
            },
            fwd.1,
        )),
        &["distinct buffers"],
    );
    let tiling = GateMixTiling {
        wg: 0,
        row_blocks: 1,
        column_groups: 1,
    };
    expect_err(
        kernels.forward_top_k_with(&fwd.0, &fwd.1, tiling),
        &["gate_mix tiling"],
    );
    let huge = GateMixShape {
        rows: usize::MAX / 2,
        ..shape
    };
    expect_err(
        forward((
            GateMixForward {
                shape: huge,
                ..fwd.0
            },
            fwd.1,
        )),
        &["element count"],
    );

    let bwd = bufs.backward(false);
    expect_err(
        kernels.backward(&GateMixBackward {
            dbg: BufferView::at(&bufs.dbg, 4),
            ..bwd
        }),
        &["`dbg`"],
    );
    let short_g = gpu
        .storage_buffer("short g", 4 * (shape.g_len() - 1) as u64)
        .unwrap();
    expect_err(
        kernels.backward(&GateMixBackward {
            g: (&short_g).into(),
            ..bwd
        }),
        &["gate_mix backward", "`g`"],
    );

    let r = vec![0.0; 3];
    expect_err(reference::forward(&shape, 0, &r, &r, &r, &r), &["k = 0"]);
    expect_err(reference::forward(&shape, 4, &r, &r, &r, &r), &["k = 4"]);
    expect_err(reference::forward(&shape, 2, &r, &r, &r, &r), &["`x`"]);
    expect_err(
        reference::backward(&zero, &r, &r, &r, &r, &r),
        &["`experts`"],
    );
    expect_err(reference::backward(&shape, &r, &r, &r, &r, &r), &["`x`"]);
    gpu.check().unwrap();
}

#[test]
fn task_specific_experts_are_seen_by_their_gate_alone() {
    let gpu = gpu();
    let kernels = GateMix::new(gpu);
    // (gates, shared, own): experts = shared + gates · own.
    for (n, (gates, shared, own, rows)) in
        [(2, 1, 1, 3), (3, 2, 2, 37), (2, 0, 3, 17), (4, 3, 1, 5)]
            .into_iter()
            .enumerate()
    {
        let experts = shared + gates * own;
        let s = shape(gates, experts, rows, 9, 6);
        let access = ExpertAccess::SharedAndOwn { shared, own };
        for k in [1, 2, shared + own] {
            let d = data(&s, 300 + n as u64, 1.0);
            let bufs = Buffers::new(gpu, s, &d);
            let f = kernels
                .forward_top_k(
                    &bufs.forward(),
                    &GateMixTopK {
                        access,
                        ..GateMixTopK::new(k)
                    },
                )
                .unwrap();
            let b = kernels.backward(&bufs.backward(false)).unwrap();
            run(gpu, |e| {
                f.encode(e);
                b.iter().for_each(|d| d.encode(e));
            });
            let got = bufs.read(gpu);
            let (x, wg, h) = (to_f64(&d.x), to_f64(&d.wg), to_f64(&d.h));
            let (g, m) =
                reference::forward_with_access(&s, k, access, &x, &wg, &to_f64(&d.bg), &h).unwrap();
            let grads = reference::backward(&s, &x, &wg, &h, &g, &to_f64(&d.dm)).unwrap();
            let want = [g, m, grads.dh, grads.dz, grads.dwg, grads.dbg, grads.dx];
            let what = format!("{s:?} shared={shared} own={own} k={k}");
            assert_matches(&what, &got, &want);
            for t in 0..gates {
                for row in 0..rows {
                    for e in 0..experts {
                        let at = (t * rows + row) * experts + e;
                        if !access.sees(t, e) {
                            assert_eq!(got[0][at], 0.0, "{what}: gate {t} weighs unseen {e}");
                        }
                    }
                }
            }
        }
    }
    let s = shape(2, 5, 3, 4, 4);
    let d = data(&s, 1, 1.0);
    let bufs = Buffers::new(gpu, s, &d);
    let bad = ExpertAccess::SharedAndOwn { shared: 2, own: 2 };
    expect_err(
        kernels.forward_top_k(
            &bufs.forward(),
            &GateMixTopK {
                access: bad,
                ..GateMixTopK::new(1)
            },
        ),
        &["gate_mix forward_top_k access", "5 experts"],
    );
    let access = ExpertAccess::SharedAndOwn { shared: 1, own: 2 };
    expect_err(
        kernels.forward_top_k(
            &bufs.forward(),
            &GateMixTopK {
                access,
                ..GateMixTopK::new(4)
            },
        ),
        &["gate_mix forward_top_k k", "1 ≤ k ≤ 3"],
    );
    gpu.check().unwrap();
}

#[test]
fn gate_then_mix_in_two_dispatches_equals_one() {
    let gpu = gpu();
    let kernels = GateMix::new(gpu);
    let s = shape(3, 6, 37, 11, 10);
    for k in [2, 6] {
        let d = data(&s, 900 + k as u64, 1.0);
        let one = Buffers::new(gpu, s, &d);
        let f = kernels
            .forward_top_k(&one.forward(), &GateMixTopK::new(k))
            .unwrap();
        run(gpu, |e| f.encode(e));
        let two = Buffers::new(gpu, s, &d);
        let gate = kernels
            .forward_top_k(
                &two.forward(),
                &GateMixTopK {
                    stages: ForwardStages::GateOnly,
                    ..GateMixTopK::new(k)
                },
            )
            .unwrap();
        run(gpu, |e| gate.encode(e));
        let g = read(gpu, &two.g, s.g_len());
        let m_before = read(gpu, &two.m, s.m_len());
        assert!(m_before.iter().all(|&v| v == 0.0), "gate only wrote M");
        assert_eq!(
            output_bits(&[g]),
            output_bits(&[read(gpu, &one.g, s.g_len())])
        );
        let mix = kernels
            .forward_top_k(
                &two.forward(),
                &GateMixTopK {
                    stages: ForwardStages::MixOnly,
                    ..GateMixTopK::new(k)
                },
            )
            .unwrap();
        run(gpu, |e| mix.encode(e));
        assert_eq!(
            output_bits(&[read(gpu, &two.m, s.m_len())]),
            output_bits(&[read(gpu, &one.m, s.m_len())]),
            "k = {k}"
        );
    }
    gpu.check().unwrap();
}

/// A logit offset (a noisy gate's `ε ⊙ softplus(n)`) is added before the selection:
/// the GPU with an offset matches the reference on the offset logits, forward and
/// backward, in one dispatch or two; an all-zero offset gives the bits of none.
#[test]
fn a_logit_offset_moves_the_logits_before_the_selection() {
    let gpu = gpu();
    let kernels = GateMix::new(gpu);
    for (n, (s, k)) in [
        (shape(1, 5, 3, 7, 5), 2),
        (shape(3, 16, 37, 33, 6), 2),
        (shape(3, 2, 37, 1, 16), 1),
        (shape(2, 5, 17, 9, 4), 5),
    ]
    .into_iter()
    .enumerate()
    {
        let (d, offset, z) = (0..200)
            .map(|i| {
                let d = data(&s, 500 + 1000 * n as u64 + i, 1.0);
                let offset = random(&mut Rng::new(7000 + i), s.g_len(), 1.5);
                let x = to_f64(&d.x);
                let mut z = reference::logits(&s, &x, &to_f64(&d.wg), &to_f64(&d.bg)).unwrap();
                z.iter_mut().zip(&offset).for_each(|(z, &o)| *z += o as f64);
                (d, offset, z)
            })
            .find(|(_, _, z)| selection_margin(&s, k, z) >= MARGIN)
            .expect("data away from ties");
        let what = format!("{s:?} k={k} with an offset");
        let bufs = Buffers::new(gpu, s, &d);
        let offset_buffer = gpu.upload("offset", &offset).unwrap();
        let noisy = (
            bufs.forward(),
            GateMixTopK {
                logit_offset: Some((&offset_buffer).into()),
                ..GateMixTopK::new(k)
            },
        );
        let f = kernels.forward_top_k(&noisy.0, &noisy.1).unwrap();
        let b = kernels.backward(&bufs.backward(false)).unwrap();
        run(gpu, |e| {
            f.encode(e);
            b.iter().for_each(|d| d.encode(e));
        });
        let got = bufs.read(gpu);
        let (x, wg, h) = (to_f64(&d.x), to_f64(&d.wg), to_f64(&d.h));
        let (g, m) = reference::forward_logits(&s, k, ExpertAccess::All, &z, &h).unwrap();
        let grads = reference::backward(&s, &x, &wg, &h, &g, &to_f64(&d.dm)).unwrap();
        let want = [g, m, grads.dh, grads.dz, grads.dwg, grads.dbg, grads.dx];
        assert_matches(&what, &got, &want);

        // The control: without the offset the gate chooses otherwise somewhere.
        if k < s.experts {
            let (plain, _) = reference::forward(&s, k, &x, &wg, &to_f64(&d.bg), &h).unwrap();
            let chosen = |g: &[f64]| g.iter().map(|&p| p != 0.0).collect::<Vec<_>>();
            assert_ne!(chosen(&plain), chosen(&want[0]), "{what}: same selection");
        }

        // Gate, then mix, in two dispatches: the same bits.
        let two = Buffers::new(gpu, s, &d);
        for stages in [ForwardStages::GateOnly, ForwardStages::MixOnly] {
            let f = kernels
                .forward_top_k(
                    &two.forward(),
                    &GateMixTopK {
                        stages,
                        logit_offset: Some((&offset_buffer).into()),
                        ..GateMixTopK::new(k)
                    },
                )
                .unwrap();
            run(gpu, |e| f.encode(e));
        }
        let split = [read(gpu, &two.g, s.g_len()), read(gpu, &two.m, s.m_len())];
        assert!(
            output_bits(&split) == output_bits(&got[..2]),
            "{what}: two phases differ"
        );

        // A zero offset is no offset, to the bit.
        let zeros = gpu.upload("zero offset", &vec![0.0f32; s.g_len()]).unwrap();
        let with_zeros = Buffers::new(gpu, s, &d);
        let without = Buffers::new(gpu, s, &d);
        let f = kernels
            .forward_top_k(
                &with_zeros.forward(),
                &GateMixTopK {
                    logit_offset: Some((&zeros).into()),
                    ..GateMixTopK::new(k)
                },
            )
            .unwrap();
        let plain = kernels
            .forward_top_k(&without.forward(), &GateMixTopK::new(k))
            .unwrap();
        run(gpu, |e| {
            f.encode(e);
            plain.encode(e);
        });
        assert!(
            output_bits(&with_zeros.read(gpu)[..2]) == output_bits(&without.read(gpu)[..2]),
            "{what}: a zero offset changed the bits"
        );
    }
    // The offset is checked like every operand.
    let s = shape(2, 3, 4, 5, 6);
    let bufs = Buffers::new(gpu, s, &data(&s, 1, 1.0));
    let short = gpu
        .storage_buffer("short offset", 4 * (s.g_len() - 1) as u64)
        .unwrap();
    expect_err(
        kernels.forward_top_k(
            &bufs.forward(),
            &GateMixTopK {
                logit_offset: Some((&short).into()),
                ..GateMixTopK::new(2)
            },
        ),
        &["gate_mix forward_top_k", "`logit_offset`"],
    );
    expect_err(
        kernels.forward_top_k(
            &bufs.forward(),
            &GateMixTopK {
                logit_offset: Some((&bufs.g).into()),
                ..GateMixTopK::new(2)
            },
        ),
        &[
            "gate_mix forward_top_k",
            "`logit_offset`",
            "distinct buffers",
        ],
    );
    let e = expect_err(
        reference::forward_logits(&s, 2, ExpertAccess::All, &[0.0; 3], &[0.0; 72]),
        &["reference gate_topk forward", "`z`"],
    );
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    gpu.check().unwrap();
}

/// The full softmax output (for the load-balancing loss): on every case and tiling it
/// matches the reference softmax over all the experts a gate sees, every other output
/// keeps the bits it has without it, and every tiling gives the same p bits; with an
/// offset and task-specific experts too. p overlapping another output is an error.
#[test]
fn the_full_softmax_output_matches_the_reference_and_changes_nothing_else() {
    let gpu = gpu();
    let kernels = GateMix::new(gpu);
    let mut rng = Rng::new(77);
    let mut extra = vec![
        (
            shape(2, 5, 17, 9, 4),
            2,
            ExpertAccess::SharedAndOwn { shared: 1, own: 2 },
            true,
        ),
        (
            shape(3, 3, 37, 7, 5),
            1,
            ExpertAccess::SharedAndOwn { shared: 0, own: 1 },
            false,
        ),
        (shape(3, 16, 37, 33, 6), 2, ExpertAccess::All, true),
    ];
    let mut all: Vec<_> = cases()
        .into_iter()
        .map(|(s, k)| (s, k, ExpertAccess::All, false))
        .collect();
    all.append(&mut extra);
    for (n, (s, k, access, with_offset)) in all.into_iter().enumerate() {
        let d = data(&s, 900 + n as u64, 2.0);
        let offset = random(&mut rng, s.g_len(), 1.5);
        let offset_buffer = gpu.upload("offset", &offset).unwrap();
        let mut z = reference::logits(&s, &to_f64(&d.x), &to_f64(&d.wg), &to_f64(&d.bg)).unwrap();
        if with_offset {
            z.iter_mut().zip(&offset).for_each(|(z, &o)| *z += o as f64);
        }
        let want = reference::full_softmax(&s, access, &z).unwrap();
        let what = format!("{s:?} k={k} {access:?} offset {with_offset}");
        let mut first_p: Option<Vec<f32>> = None;
        for tiling in kernels.tilings() {
            let (plain, keeping) = (Buffers::new(gpu, s, &d), Buffers::new(gpu, s, &d));
            let p = gpu.upload("p", &vec![f32::NAN; s.g_len()]).unwrap();
            let offset_view = with_offset.then(|| (&offset_buffer).into());
            let top_k = GateMixTopK {
                access,
                logit_offset: offset_view,
                ..GateMixTopK::new(k)
            };
            let keep_p = GateMixTopK {
                full_softmax: Some((&p).into()),
                ..top_k
            };
            let f0 = kernels
                .forward_top_k_with(&plain.forward(), &top_k, tiling)
                .unwrap();
            let f1 = kernels
                .forward_top_k_with(&keeping.forward(), &keep_p, tiling)
                .unwrap();
            let b0 = kernels.backward(&plain.backward(false)).unwrap();
            let b1 = kernels.backward(&keeping.backward(false)).unwrap();
            run(gpu, |e| {
                f0.encode(e);
                f1.encode(e);
                b0.iter().chain(&b1).for_each(|d| d.encode(e));
            });
            assert_eq!(
                output_bits(&plain.read(gpu)),
                output_bits(&keeping.read(gpu)),
                "{what} {tiling:?}: writing p changed another output"
            );
            let got = read(gpu, &p, s.g_len());
            assert_close(&format!("p {what} {tiling:?}"), &got, &want, 1e-5);
            for (i, &v) in got.iter().enumerate() {
                let (t, e) = (i / (s.rows * s.experts), i % s.experts);
                if !access.sees(t, e) {
                    assert_eq!(v.to_bits(), 0, "{what}: p[{i}] of an unseen expert");
                }
            }
            match &first_p {
                None => first_p = Some(got),
                Some(first) => assert_eq!(
                    first.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{what}: p differs between tilings"
                ),
            }
        }
    }
    // p must not overlap another output.
    let s = shape(1, 4, 3, 2, 2);
    let d = data(&s, 1, 1.0);
    let bufs = Buffers::new(gpu, s, &d);
    expect_err(
        kernels.forward_top_k(
            &bufs.forward(),
            &GateMixTopK {
                full_softmax: Some((&bufs.g).into()),
                ..GateMixTopK::new(2)
            },
        ),
        &["gate_mix forward_top_k", "`p`"],
    );
    gpu.check().unwrap();
}

/// Every gate of every row keeps the same `k` experts in `g` (`[gates, rows,
/// experts]`).
fn assert_one_selection_per_row(what: &str, s: &GateMixShape, k: usize, g: &[f32]) {
    let chosen = |t: usize, b: usize| -> Vec<bool> {
        let row = (t * s.rows + b) * s.experts;
        g[row..row + s.experts].iter().map(|&v| v != 0.0).collect()
    };
    for b in 0..s.rows {
        let first = chosen(0, b);
        assert_eq!(
            first.iter().filter(|&&c| c).count(),
            k,
            "{what}: row {b} keeps {first:?}"
        );
        for t in 1..s.gates {
            assert_eq!(chosen(t, b), first, "{what}: gate {t} of row {b}");
        }
    }
}

#[test]
fn a_shared_selection_matches_the_reference_and_every_tiling_bitwise() {
    a_shared_selection_matches_the_reference_and_every_tiling_bitwise_on(gpu());
}

pub(crate) fn a_shared_selection_matches_the_reference_and_every_tiling_bitwise_on(gpu: &Gpu) {
    let tilings = GateMix::new(gpu).tilings();
    let several_gates = cases().into_iter().filter(|(s, _)| s.gates > 1);
    for (n, (shape, k)) in several_gates.enumerate() {
        let accumulate = n % 2 == 0;
        let pick = (k, Selection::Shared);
        let d = data_away_from_ties_selecting(&shape, pick, 500 + n as u64, 1.0, MARGIN);
        let want = reference_outputs_selecting(&shape, pick, &d, accumulate);
        let what = format!("shared {shape:?} k={k} accumulate={accumulate}");
        let default = run_gpu_selecting(gpu, (shape, k, Selection::Shared), &d, None, accumulate);
        assert_matches(&what, &default, &want);
        assert_one_selection_per_row(&what, &shape, k, &default[0]);
        for &tiling in &tilings {
            let got = run_gpu_selecting(
                gpu,
                (shape, k, Selection::Shared),
                &d,
                Some(tiling),
                accumulate,
            );
            assert!(
                output_bits(&got) == output_bits(&default),
                "{tiling:?} differs bitwise from the default tiling: {what}"
            );
        }
    }
    gpu.check().unwrap();
}

#[test]
fn with_one_gate_a_shared_selection_is_the_gates_own() {
    let gpu = gpu();
    for (n, (shape, k)) in cases()
        .into_iter()
        .filter(|(s, _)| s.gates == 1)
        .enumerate()
    {
        let d = data(&shape, 600 + n as u64, 1.0);
        let own = run_gpu(gpu, shape, k, &d, None, false);
        let shared = run_gpu_selecting(gpu, (shape, k, Selection::Shared), &d, None, false);
        assert!(output_bits(&own) == output_bits(&shared), "{shape:?} k={k}");
    }
}

#[test]
fn a_shared_selection_softmaxes_each_gate_over_its_selected_logits() {
    let gpu = gpu();
    let s = shape(2, 3, 2, 4, 5);
    let mut d = data(&s, 9, 1.0);
    // Wg = 0: every row's logits are bg. Summed: [-120, 2, 1], so expert 0, gate 0's
    // largest logit by far, is never selected; softmaxes relative to that logit would
    // underflow to 0 / 0.
    d.wg = vec![0.0; s.wg_len()];
    d.bg = vec![120.0, 0.0, 1.0, -240.0, 2.0, 0.0];
    for k in [1, 2] {
        let pick = (k, Selection::Shared);
        let want = reference_outputs_selecting(&s, pick, &d, false);
        let got = run_gpu_selecting(gpu, (s, k, Selection::Shared), &d, None, false);
        assert_matches(&format!("far logits k={k}"), &got, &want);
        assert_one_selection_per_row(&format!("far logits k={k}"), &s, k, &got[0]);
        let gate0_row0 = &want[0][..3];
        let expect = if k == 1 {
            [0.0, 1.0, 0.0]
        } else {
            let e = (-1.0f64).exp();
            [0.0, e / (1.0 + e), 1.0 / (1.0 + e)]
        };
        for (w, x) in gate0_row0.iter().zip(expect) {
            assert!((w - x).abs() < 1e-12, "gate 0 k={k}: {gate0_row0:?}");
        }
    }
}

#[test]
fn a_shared_selection_it_cannot_make_is_an_error() {
    let gpu = gpu();
    let kernels = GateMix::new(gpu);
    let s = shape(2, 5, 3, 4, 2);
    let bufs = Buffers::new(gpu, s, &data(&s, 2, 1.0));
    let shared = (
        bufs.forward(),
        GateMixTopK {
            selection: Selection::Shared,
            ..GateMixTopK::new(2)
        },
    );
    let e = expect_err(
        kernels.forward_top_k(
            &shared.0,
            &GateMixTopK {
                access: ExpertAccess::SharedAndOwn { shared: 1, own: 2 },
                ..shared.1
            },
        ),
        &[
            "gate_mix forward_top_k selection",
            "every gate to see every expert",
        ],
    );
    assert!(matches!(e, Error::Invalid { .. }));
    let wide = shape(2, 257, 3, 4, 2);
    let wide_bufs = Buffers::new(gpu, wide, &data(&wide, 3, 1.0));
    let e = expect_err(
        kernels.forward_top_k(
            &wide_bufs.forward(),
            &GateMixTopK {
                selection: Selection::Shared,
                ..GateMixTopK::new(2)
            },
        ),
        &[
            "gate_mix forward_top_k",
            "experts of a shared selection",
            "257",
            "256",
        ],
    );
    assert!(matches!(e, Error::Limit { .. }));
    let r = vec![0.0; wide.g_len()];
    expect_err(
        reference::forward_logits_selecting(
            &wide,
            2,
            ExpertAccess::All,
            Selection::Shared,
            &r,
            &vec![0.0; wide.h_len()],
        ),
        &["experts of a shared selection"],
    );
    gpu.check().unwrap();
}
