//! Balance loss against the CPU reference on awkward shapes, dense and top-k gates;
//! w = 0 and unselected experts leave dz bitwise alone; zero mean and one expert give
//! a zero loss; operands at unaligned offsets; more rows than the workgroup limit;
//! bitwise reproducibility; f16 storage; the reference's dz update against finite
//! differences of the loss through the dense and the top-k gate; bad input rejected
//! with errors. The same for the load (Switch) loss, on task-specific experts too.

use crate::common::*;
use half::f16;
use mmoe_wgpu::Error;
use mmoe_wgpu::kernels::balance::{
    Balance, BalanceBackward, BalanceForward, BalanceLoad, BalanceShape, BalanceStats, LOOP_BUDGET,
};
use mmoe_wgpu::kernels::gate_mix::{ExpertAccess, GateMixShape};
use mmoe_wgpu::kernels::{BufferView, Precision};
use mmoe_wgpu::reference::balance as reference;
use mmoe_wgpu::reference::gate_topk::top_k;
use mmoe_wgpu::reference::{gate_mix, gate_topk};
use mmoe_wgpu::rng::Rng;

fn shape(gates: usize, rows: usize, experts: usize) -> BalanceShape {
    BalanceShape {
        gates,
        rows,
        experts,
    }
}

/// Gate values `[gates, rows, experts]`: per row, the softmax of the `k` largest
/// logits (`k = experts`: the dense gate), zero elsewhere. Each (gate, expert) has a
/// bias of its own, so that the importances are uneven and CV² is not tiny.
fn gate_values(s: &BalanceShape, k: usize, rng: &mut Rng) -> Vec<f32> {
    let n = s.experts;
    let bias: Vec<f64> = (0..s.gates * n).map(|_| rng.uniform(-1.5, 1.5)).collect();
    let mut g = vec![0.0f32; s.g_len()];
    for (r, row) in g.chunks_mut(n).enumerate() {
        let t = r / s.rows;
        let z: Vec<f64> = (0..n)
            .map(|e| bias[t * n + e] + rng.uniform(-2.0, 2.0))
            .collect();
        let selected = top_k(&z, k);
        let top = z[selected[0]];
        let sum: f64 = selected.iter().map(|&e| (z[e] - top).exp()).sum();
        for &e in &selected {
            row[e] = ((z[e] - top).exp() / sum) as f32;
        }
    }
    g
}

/// The reference's stats and dz after the backward, on exactly the f32 inputs.
fn expected(s: &BalanceShape, weight: f32, g: &[f32], dz: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let g = to_f64(g);
    let stats = reference::forward(s, weight as f64, &g).unwrap();
    let mut dz = to_f64(dz);
    reference::backward(s, &g, &stats.coefficients, &mut dz).unwrap();
    (stats.concat(), dz)
}

/// Forward then backward in one submit on fresh buffers: `(stats, dz)`.
fn run_both(
    kernel: &Balance,
    s: &BalanceShape,
    weight: f32,
    g: &[f32],
    dz: &[f32],
) -> [Vec<f32>; 2] {
    run_forward_backward(kernel, s, (weight, g), None, dz)
}

/// The forward, of the load loss where `load` gives its `(k, seen, p)`, then the
/// backward (the load loss's with p in G's place), in one submit on fresh buffers:
/// `(stats, dz)`.
fn run_forward_backward(
    kernel: &Balance,
    s: &BalanceShape,
    (weight, g): (f32, &[f32]),
    load: Option<(usize, usize, &[f32])>,
    dz: &[f32],
) -> [Vec<f32>; 2] {
    let gpu = gpu();
    let g_buffer = gpu.upload("g", g).unwrap();
    let p_buffer = load.map(|(_, _, p)| gpu.upload("p", p).unwrap());
    let dz_buffer = gpu.upload("dz", dz).unwrap();
    // NaN wherever the forward fails to write.
    let stats = gpu.upload("stats", &vec![f32::NAN; s.stats_len()]).unwrap();
    let args = BalanceForward {
        shape: *s,
        weight,
        precision: Precision::F32,
        g: (&g_buffer).into(),
        stats: (&stats).into(),
    };
    let forward = match (load, &p_buffer) {
        (Some((k, seen, _)), Some(p)) => kernel.forward_load(
            &args,
            &BalanceLoad {
                k,
                seen,
                p: p.into(),
            },
        ),
        _ => kernel.forward(&args),
    }
    .unwrap();
    let backward = kernel
        .backward(&BalanceBackward {
            shape: *s,
            precision: Precision::F32,
            g: p_buffer.as_ref().unwrap_or(&g_buffer).into(),
            stats: (&stats).into(),
            dz: (&dz_buffer).into(),
        })
        .unwrap();
    run(gpu, |e| {
        forward.encode(e);
        backward.encode(e);
    });
    [
        read(gpu, &stats, s.stats_len()),
        read(gpu, &dz_buffer, s.g_len()),
    ]
}

/// Checks the GPU's stats and dz, from `weight`, `g` and the prior `dz`, against the
/// reference's, section by section and gate by gate (a small gate next to a large one
/// must not hide its error).
#[track_caller]
fn assert_matches(
    what: &str,
    s: &BalanceShape,
    (weight, g, dz): (f32, &[f32], &[f32]),
    got: &[Vec<f32>; 2],
) {
    let want = expected(s, weight, g, dz);
    let [stats, dz] = got;
    assert!(
        stats.iter().chain(dz).all(|v| v.is_finite()),
        "{what}: non-finite output"
    );
    let (got, want_stats) = (
        BalanceStats::split(s, stats).unwrap(),
        BalanceStats::split(s, &want.0).unwrap(),
    );
    let n = s.experts;
    // Strided sums of rows / WG values, then a tree: the error grows with the rows.
    let sum_tolerance = 1e-6 * (1.0 + s.rows as f64 / 64.0);
    for t in 0..s.gates {
        let e = t * n..(t + 1) * n;
        let what = format!("{what}, gate {t}");
        assert_close(
            &format!("importance {what}"),
            &got.importance[e.clone()],
            &want_stats.importance[e.clone()],
            sum_tolerance,
        );
        assert_eq!(
            got.load[e.clone()],
            want_stats.load[e.clone()]
                .iter()
                .map(|&l| l as f32)
                .collect::<Vec<_>>(),
            "load {what}"
        );
        // I_e − μ cancels where the experts are nearly balanced: a few more ulps.
        assert_close(
            &format!("coefficients {what}"),
            &got.coefficients[e.clone()],
            &want_stats.coefficients[e],
            20.0 * sum_tolerance,
        );
        // CV² = var/μ² loses to cancellation as the importances even out: its error
        // goes with √CV², not CV².
        let (a, b) = (got.aux[t] as f64, want_stats.aux[t]);
        assert!(
            (a - b).abs() <= 20.0 * sum_tolerance * (b.abs() + (weight as f64 * b.abs()).sqrt()),
            "aux {what}: {a} vs {b}"
        );
    }
    assert_close(&format!("dz {what}"), dz, &want.1, 20.0 * sum_tolerance);
}

/// A dz before the update, on the scale of the update so that errors in either show.
fn prior_dz(s: &BalanceShape, weight: f32, g: &[f32], rng: &mut Rng) -> Vec<f32> {
    let (_, update) = expected(s, weight, g, &vec![0.0; s.g_len()]);
    let scale = update.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    random(rng, s.g_len(), if scale > 0.0 { scale } else { 1.0 })
}

#[test]
fn matches_the_reference_on_awkward_shapes() {
    let kernel = Balance::new(gpu());
    let mut rng = Rng::new(1);
    let weights = [0.01f32, 1.0, 0.3, 7.0];
    let mut case = 0;
    for rows in [1, 3, 17, 100, 257] {
        for experts in [1, 2, 5, 16] {
            for gates in 1..=4 {
                let s = shape(gates, rows, experts);
                // The dense gate, and a top-k one (k = 1 or 2).
                let sparse = if experts > 1 { 1 + case % 2 } else { 1 };
                for k in [experts, sparse] {
                    case += 1;
                    let weight = weights[case % weights.len()];
                    let g = gate_values(&s, k, &mut rng);
                    let dz = prior_dz(&s, weight, &g, &mut rng);
                    let got = run_both(&kernel, &s, weight, &g, &dz);
                    let what = format!("{s:?} k={k} w={weight}");
                    assert_matches(&what, &s, (weight, &g, &dz), &got);
                    // Where G is zero (top-k), dz keeps its bits.
                    for (i, (&p, (&after, &before))) in
                        g.iter().zip(got[1].iter().zip(&dz)).enumerate()
                    {
                        if p == 0.0 {
                            assert_eq!(after.to_bits(), before.to_bits(), "{what}: dz[{i}]");
                        }
                    }
                }
            }
        }
    }
    gpu().check().unwrap();
}

#[test]
fn every_workgroup_size_matches_the_reference() {
    let gpu = gpu();
    let mut rng = Rng::new(2);
    for wg in [1, 2, 8, 256] {
        let kernel = Balance::with_workgroup_size(gpu, wg).unwrap();
        assert_eq!(kernel.workgroup_size(), wg);
        for (s, k) in [
            (shape(3, 257, 5), 2),
            (shape(2, 100, 16), 16),
            (shape(1, 3, 2), 1),
        ] {
            let g = gate_values(&s, k, &mut rng);
            let dz = prior_dz(&s, 0.5, &g, &mut rng);
            let got = run_both(&kernel, &s, 0.5, &g, &dz);
            let what = format!("wg {wg}, {s:?} k={k}");
            assert_matches(&what, &s, (0.5, &g, &dz), &got);
        }
    }
}

#[test]
fn a_hand_computed_example() {
    // Importances [3, 1]: μ = 2, var = 1, CV² = 1/4; with CV² = E·Σ I²/(Σ I)² − 1,
    // ∂CV²/∂I = 4·I/16 − 4·10/64 = [1/8, −3/8].
    let s = shape(1, 4, 2);
    let g = [1.0f32, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0];
    let weight = 2.0;
    let want = BalanceStats {
        importance: vec![3.0, 1.0],
        load: vec![3.0, 1.0],
        coefficients: vec![0.25, -0.75],
        aux: vec![0.5],
    };
    assert_eq!(
        reference::forward(&s, weight as f64, &to_f64(&g)).unwrap(),
        want
    );
    let [stats, dz] = run_both(&Balance::new(gpu()), &s, weight, &g, &[0.0; 8]);
    assert_eq!(BalanceStats::split(&s, &stats).unwrap(), {
        let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect();
        BalanceStats {
            importance: f(&want.importance),
            load: f(&want.load),
            coefficients: f(&want.coefficients),
            aux: f(&want.aux),
        }
    });
    // One-hot rows: a − ⟨g, a⟩ is zero on the selected expert, G zero elsewhere.
    assert!(dz.iter().all(|&d| d == 0.0), "{dz:?}");
}

#[test]
fn zero_weight_leaves_dz_bitwise_unchanged() {
    let kernel = Balance::new(gpu());
    let mut rng = Rng::new(3);
    for (s, k) in [
        (shape(3, 100, 5), 5),
        (shape(2, 17, 16), 2),
        (shape(1, 1, 1), 1),
    ] {
        let g = gate_values(&s, k, &mut rng);
        let mut dz = random(&mut rng, s.g_len(), 1.0);
        // Negative zeros, which an added +0 would turn positive.
        for d in dz.iter_mut().step_by(3) {
            *d = -0.0;
        }
        let [stats, after] = run_both(&kernel, &s, 0.0, &g, &dz);
        assert_eq!(bits(&after), bits(&dz), "{s:?} k={k}");
        let got = BalanceStats::split(&s, &stats).unwrap();
        let want = reference::forward(&s, 0.0, &to_f64(&g)).unwrap();
        assert!(got.aux.iter().chain(&got.coefficients).all(|&v| v == 0.0));
        assert!(want.aux.iter().chain(&want.coefficients).all(|&v| v == 0.0));
        // The importance and load are still reported.
        assert_close(
            "importance at w = 0",
            &got.importance,
            &want.importance,
            1e-5,
        );
        // −0 is a valid weight too.
        let [_, after] = run_both(&kernel, &s, -0.0, &g, &dz);
        assert_eq!(bits(&after), bits(&dz), "{s:?} k={k} w=-0");
    }
}

#[test]
fn zero_mean_and_one_expert_give_a_zero_loss() {
    let kernel = Balance::new(gpu());
    let mut rng = Rng::new(4);
    // All-zero G: the mean importance is 0 and CV² undefined.
    let zero = shape(2, 17, 4);
    // One expert: the variance is 0 whatever G holds.
    let one = shape(3, 5, 1);
    let one_g = random(&mut rng, one.g_len(), 1.0);
    for (s, g) in [(zero, vec![0.0; zero.g_len()]), (one, one_g)] {
        let dz = random(&mut rng, s.g_len(), 1.0);
        let [stats, after] = run_both(&kernel, &s, 3.0, &g, &dz);
        let got = BalanceStats::split(&s, &stats).unwrap();
        let want = reference::forward(&s, 3.0, &to_f64(&g)).unwrap();
        for (name, values) in [("aux", &got.aux), ("coefficients", &got.coefficients)] {
            assert!(values.iter().all(|&v| v == 0.0), "{s:?}: {name} {values:?}");
        }
        assert!(want.aux.iter().chain(&want.coefficients).all(|&v| v == 0.0));
        assert_eq!(bits(&after), bits(&dz), "{s:?}: dz changed");
    }
}

#[test]
fn results_are_bitwise_reproducible() {
    let gpu = gpu();
    let kernel = Balance::new(gpu);
    let s = shape(3, 1000, 16);
    let mut rng = Rng::new(5);
    let g = gate_values(&s, 2, &mut rng);
    let dz = random(&mut rng, s.g_len(), 1e-3);
    let first = run_both(&kernel, &s, 0.1, &g, &dz);
    for _ in 0..2 {
        let again = run_both(&kernel, &s, 0.1, &g, &dz);
        assert_eq!(bits(&first[0]), bits(&again[0]), "stats bits differ");
        assert_eq!(bits(&first[1]), bits(&again[1]), "dz bits differ");
    }
}

#[test]
fn operands_at_unaligned_offsets_inside_shared_buffers() {
    let gpu = gpu();
    let kernel = Balance::new(gpu);
    let s = shape(2, 37, 5);
    let mut rng = Rng::new(6);
    let g = gate_values(&s, 2, &mut rng);
    let dz = random(&mut rng, s.g_len(), 1e-2);
    let (go, so, zo) = (5usize, 3usize, 7usize);
    let mut packed = vec![f32::NAN; go + s.g_len() + 2];
    packed[go..go + s.g_len()].copy_from_slice(&g);
    let inputs = gpu.upload("packed g", &packed).unwrap();
    let stats = gpu
        .upload("stats", &vec![-7.0f32; so + s.stats_len() + 4])
        .unwrap();
    let mut dz_packed = vec![-7.0f32; zo + s.g_len() + 3];
    dz_packed[zo..zo + s.g_len()].copy_from_slice(&dz);
    let dz_buffer = gpu.upload("dz", &dz_packed).unwrap();
    run(gpu, |e| {
        kernel
            .encode_forward(
                e,
                &BalanceForward {
                    shape: s,
                    weight: 0.4,
                    precision: Precision::F32,
                    g: BufferView::at(&inputs, 4 * go as u64),
                    stats: BufferView::at(&stats, 4 * so as u64),
                },
            )
            .unwrap();
        kernel
            .encode_backward(
                e,
                &BalanceBackward {
                    shape: s,
                    precision: Precision::F32,
                    g: BufferView::at(&inputs, 4 * go as u64),
                    stats: BufferView::at(&stats, 4 * so as u64),
                    dz: BufferView::at(&dz_buffer, 4 * zo as u64),
                },
            )
            .unwrap();
    });
    let all_stats = read(gpu, &stats, so + s.stats_len() + 4);
    let all_dz = read(gpu, &dz_buffer, dz_packed.len());
    let got = [
        all_stats[so..so + s.stats_len()].to_vec(),
        all_dz[zo..zo + s.g_len()].to_vec(),
    ];
    assert_matches("at offsets", &s, (0.4, &g, &dz), &got);
    for (name, all, range) in [
        ("stats", &all_stats, so..so + s.stats_len()),
        ("dz", &all_dz, zo..zo + s.g_len()),
    ] {
        for (i, &v) in all.iter().enumerate() {
            if !range.contains(&i) {
                assert_eq!(v, -7.0, "wrote outside {name} at {i}");
            }
        }
    }
}

#[test]
fn the_backward_strides_past_the_workgroup_count_limit() {
    let gpu = gpu();
    // One invocation per workgroup, so that a modest batch needs more workgroups
    // than the device allows and the shader's stride loop does the rest.
    let kernel = Balance::with_workgroup_size(gpu, 1).unwrap();
    let max = gpu.limits().max_compute_workgroups_per_dimension as usize;
    let s = shape(2, max / 2 + 1000, 2);
    let mut rng = Rng::new(7);
    let g = gate_values(&s, 1, &mut rng);
    let dz = prior_dz(&s, 1.0, &g, &mut rng);
    let backward = kernel
        .backward(&BalanceBackward {
            shape: s,
            precision: Precision::F32,
            g: (&gpu.upload("g", &g).unwrap()).into(),
            stats: (&gpu.storage_buffer("stats", s.stats_bytes()).unwrap()).into(),
            dz: (&gpu.upload("dz", &dz).unwrap()).into(),
        })
        .unwrap();
    assert_eq!(backward.workgroups(), [max as u32, 1, 1]);
    let got = run_both(&kernel, &s, 1.0, &g, &dz);
    assert_matches("strided", &s, (1.0, &g, &dz), &got);
}

#[test]
fn shapes_up_to_the_loop_budget_run_and_larger_ones_are_errors() {
    let gpu = gpu();
    // One invocation per workgroup and two experts: the forward's invocation loops
    // over every row twice, a quarter of them per iteration.
    let kernel = Balance::with_workgroup_size(gpu, 1).unwrap();
    let experts = 2;
    let capacity = 4 * LOOP_BUDGET as usize;
    let g_buffer = gpu
        .storage_buffer("g", 4 * (capacity * experts) as u64)
        .unwrap();
    let stats = gpu.storage_buffer("stats", 4 * 16).unwrap();
    let forward = |rows| {
        kernel.forward(&BalanceForward {
            shape: shape(1, rows, experts),
            weight: 1.0,
            precision: Precision::F32,
            g: (&g_buffer).into(),
            stats: (&stats).into(),
        })
    };
    let (mut fits, mut over) = (1, capacity);
    while over - fits > 1 {
        let mid = (fits + over) / 2;
        if forward(mid).is_ok() {
            fits = mid;
        } else {
            over = mid;
        }
    }
    // Close to the 131,032 rows that run correctly on lavapipe (measured).
    assert!(fits > 130_900, "only {fits} rows fit");
    let e = expect_err(
        forward(fits + 1),
        &["balance forward", "loop iterations", "65535"],
    );
    assert!(matches!(e, Error::Limit { .. }), "{e}");

    // The largest accepted shape still runs every loop to its end.
    let s = shape(1, fits, experts);
    let mut rng = Rng::new(10);
    let g = gate_values(&s, 1, &mut rng);
    let dz = prior_dz(&s, 1.0, &g, &mut rng);
    let got = run_both(&kernel, &s, 1.0, &g, &dz);
    assert_matches("at the loop budget", &s, (1.0, &g, &dz), &got);

    // The backward loops twice over the experts of a row.
    let s = shape(1, 1, LOOP_BUDGET as usize / 2);
    let wide = gpu.storage_buffer("wide", 4 * s.g_len() as u64).unwrap();
    let wide_dz = gpu.storage_buffer("wide dz", 4 * s.g_len() as u64).unwrap();
    let wide_stats = gpu.storage_buffer("wide stats", s.stats_bytes()).unwrap();
    let e = expect_err(
        kernel.backward(&BalanceBackward {
            shape: s,
            precision: Precision::F32,
            g: (&wide).into(),
            stats: (&wide_stats).into(),
            dz: (&wide_dz).into(),
        }),
        &["balance backward", "loop iterations"],
    );
    assert!(matches!(e, Error::Limit { .. }), "{e}");
}

#[test]
fn f16_storage_matches_the_reference() {
    let gpu = gpu();
    let kernel = Balance::new(gpu);
    let s = shape(2, 100, 5);
    let mut rng = Rng::new(8);
    // Rounded to f16 on the host, so the reference sees exactly the stored values.
    let half = |v: &[f32]| -> Vec<f16> { v.iter().map(|&x| f16::from_f32(x)).collect() };
    let g = half(&gate_values(&s, 2, &mut rng));
    let g32: Vec<f32> = g.iter().map(|x| x.to_f32()).collect();
    let dz = half(&prior_dz(&s, 1.0, &g32, &mut rng));
    let dz32: Vec<f32> = dz.iter().map(|x| x.to_f32()).collect();
    let (g_buffer, dz_buffer) = (gpu.upload("g", &g).unwrap(), gpu.upload("dz", &dz).unwrap());
    let stats = gpu.storage_buffer("stats", s.stats_bytes()).unwrap();
    let forward = BalanceForward {
        shape: s,
        weight: 1.0,
        precision: Precision::F16,
        g: (&g_buffer).into(),
        stats: (&stats).into(),
    };
    if f16_is_missing(gpu, "balance forward", || kernel.forward(&forward)) {
        return;
    }
    run(gpu, |e| {
        kernel.encode_forward(e, &forward).unwrap();
        kernel
            .encode_backward(
                e,
                &BalanceBackward {
                    shape: s,
                    precision: Precision::F16,
                    g: (&g_buffer).into(),
                    stats: (&stats).into(),
                    dz: (&dz_buffer).into(),
                },
            )
            .unwrap();
    });
    let got_stats = read(gpu, &stats, s.stats_len());
    let got_dz: Vec<f32> = gpu
        .read::<f16>(&dz_buffer, 0, s.g_len())
        .unwrap()
        .iter()
        .map(|x| x.to_f32())
        .collect();
    let want = expected(&s, 1.0, &g32, &dz32);
    // The stats are f32 sums of exact f16 values; dz is rounded to f16 once.
    assert_close("f16 stats", &got_stats, &want.0, 1e-5);
    assert_close("f16 dz", &got_dz, &want.1, 2e-3);
}

/// `Σ_t aux[t]` for gate values `g`.
fn total_aux(s: &BalanceShape, weight: f64, g: &[f64]) -> f64 {
    reference::forward(s, weight, g).unwrap().aux.iter().sum()
}

/// The gate values of logits `z: [gates, rows, experts]`, through the dense (`k =
/// None`) or top-k reference gate: with `X` the identity, `Wg_t` holds the logits.
fn gate_of_logits(s: &BalanceShape, k: Option<usize>, z: &[f64]) -> Vec<f64> {
    let gs = GateMixShape {
        gates: s.gates,
        experts: s.experts,
        rows: s.rows,
        inputs: s.rows,
        width: 1,
        input: mmoe_wgpu::InputLayout::Shared,
    };
    let x: Vec<f64> = (0..s.rows * s.rows)
        .map(|i| if i % (s.rows + 1) == 0 { 1.0 } else { 0.0 })
        .collect();
    let (bg, h) = (vec![0.0; gs.bg_len()], vec![0.0; gs.h_len()]);
    match k {
        None => gate_mix::forward(&gs, &x, z, &bg, &h).unwrap().0,
        Some(k) => gate_topk::forward(&gs, k, &x, z, &bg, &h).unwrap().0,
    }
}

/// Whether gate values `plus` and `minus`, of logits a step either side, select the
/// experts `g` does: a finite difference across a change of selection means nothing.
fn keeps_the_selection(plus: &[f64], minus: &[f64], g: &[f64]) -> bool {
    let selected = |v: f64| v != 0.0;
    plus.iter()
        .zip(minus)
        .zip(g)
        .all(|((&p, &m), &g)| selected(p) == selected(g) && selected(m) == selected(g))
}

#[test]
fn reference_dz_update_is_the_gradient_of_the_loss_through_the_gate() {
    let mut rng = Rng::new(9);
    let cases = [
        (shape(2, 7, 5), None, 0.7),
        (shape(3, 4, 2), None, 2.0),
        (shape(1, 3, 1), None, 1.0),
        (shape(2, 9, 5), Some(1), 0.5),
        (shape(2, 9, 5), Some(2), 1.5),
        (shape(1, 6, 4), Some(4), 1.0),
    ];
    for (s, k, weight) in cases {
        let bias: Vec<f64> = (0..s.experts).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let z: Vec<f64> = (0..s.g_len())
            .map(|i| bias[i % s.experts] + rng.uniform(-2.0, 2.0))
            .collect();
        let g = gate_of_logits(&s, k, &z);
        let stats = reference::forward(&s, weight, &g).unwrap();
        let mut dz = vec![0.0; s.g_len()];
        reference::backward(&s, &g, &stats.coefficients, &mut dz).unwrap();
        let eps = 1e-6;
        for i in 0..z.len() {
            let (mut zp, mut zm) = (z.clone(), z.clone());
            zp[i] += eps;
            zm[i] -= eps;
            let (gp, gm) = (gate_of_logits(&s, k, &zp), gate_of_logits(&s, k, &zm));
            // The top-k selection must not move within ±eps.
            assert!(
                keeps_the_selection(&gp, &gm, &g),
                "{s:?} k={k:?}: the selection moved at logit {i}"
            );
            let fd = (total_aux(&s, weight, &gp) - total_aux(&s, weight, &gm)) / (2.0 * eps);
            assert!(
                (fd - dz[i]).abs() <= 1e-9 + 1e-6 * fd.abs(),
                "{s:?} k={k:?} w={weight}: dz[{i}] = {} but finite difference {fd}",
                dz[i]
            );
            if g[i] == 0.0 {
                assert_eq!(
                    dz[i], 0.0,
                    "{s:?} k={k:?}: unselected logit {i} got a gradient"
                );
            }
        }
        // Not vacuous: the loss has a gradient, except with one expert or a top-1 gate,
        // whose single weight is 1 whatever the logits.
        if s.experts > 1 && k != Some(1) {
            assert!(
                dz.iter().any(|&d| d.abs() > 1e-6),
                "{s:?} k={k:?}: dz is all zero"
            );
        }
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let gpu = gpu();
    let kernel = Balance::new(gpu);
    let s = shape(2, 10, 3);
    let buffer = |name: &str, n: usize| gpu.storage_buffer(name, 4 * n as u64).unwrap();
    let (g, dz, stats) = (
        buffer("g", 60),
        buffer("dz", 60),
        buffer("stats", s.stats_len()),
    );
    let small = buffer("small", 59);
    let forward = BalanceForward {
        shape: s,
        weight: 1.0,
        precision: Precision::F32,
        g: (&g).into(),
        stats: (&stats).into(),
    };
    let backward = BalanceBackward {
        shape: s,
        precision: Precision::F32,
        g: (&g).into(),
        stats: (&stats).into(),
        dz: (&dz).into(),
    };
    kernel.forward(&forward).unwrap();
    kernel.backward(&backward).unwrap();

    for weight in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let e = expect_err(
            kernel.forward(&BalanceForward { weight, ..forward }),
            &["balance forward", "loss weight"],
        );
        assert!(matches!(e, Error::NonFinite { .. }), "{e}");
    }
    let e = expect_err(
        kernel.forward(&BalanceForward {
            weight: -0.5,
            ..forward
        }),
        &["balance forward weight", "-0.5", "≥ 0"],
    );
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    for (name, zero) in [
        ("`gates`", shape(0, 10, 3)),
        ("`rows`", shape(2, 0, 3)),
        ("`experts`", shape(2, 10, 0)),
    ] {
        expect_err(
            kernel.forward(&BalanceForward {
                shape: zero,
                ..forward
            }),
            &[name],
        );
        expect_err(
            kernel.backward(&BalanceBackward {
                shape: zero,
                ..backward
            }),
            &[name],
        );
    }
    // Too short, each operand in turn: the message names the pass and the operand.
    let short_stats = BufferView::at(&stats, 4);
    for (needles, result) in [
        (
            ["balance forward", "`g`"],
            kernel.forward(&BalanceForward {
                g: (&small).into(),
                ..forward
            }),
        ),
        (
            ["balance forward", "`stats`"],
            kernel.forward(&BalanceForward {
                stats: short_stats,
                ..forward
            }),
        ),
        (
            ["balance backward", "`g`"],
            kernel.backward(&BalanceBackward {
                g: (&small).into(),
                ..backward
            }),
        ),
        (
            ["balance backward", "`stats`"],
            kernel.backward(&BalanceBackward {
                stats: short_stats,
                ..backward
            }),
        ),
        (
            ["balance backward", "`dz`"],
            kernel.backward(&BalanceBackward {
                dz: (&small).into(),
                ..backward
            }),
        ),
    ] {
        let e = expect_err(result, &needles);
        assert!(matches!(e, Error::Shape { .. }), "{e}");
    }
    // More rows than the buffers hold.
    expect_err(
        kernel.forward(&BalanceForward {
            shape: shape(2, 11, 3),
            ..forward
        }),
        &["`g`", "264 bytes"],
    );
    // An input that is also an output.
    expect_err(
        kernel.forward(&BalanceForward {
            stats: BufferView::at(&g, 0),
            ..forward
        }),
        &["distinct buffers"],
    );
    let both = buffer("stats and dz", 60);
    expect_err(
        kernel.backward(&BalanceBackward {
            stats: (&both).into(),
            dz: (&both).into(),
            ..backward
        }),
        &["balance backward", "`stats`", "distinct buffers"],
    );
    expect_err(
        kernel.forward(&BalanceForward {
            g: BufferView::at(&g, 2),
            ..forward
        }),
        &["multiple of 4"],
    );
    for wg in [0, 3, 100, 1 << 20] {
        expect_err(
            Balance::with_workgroup_size(gpu, wg),
            &["balance workgroup size"],
        );
    }

    // The reference and the stats splitter check too.
    let r = vec![0.0; 59];
    expect_err(
        reference::forward(&s, 1.0, &r),
        &["reference balance forward", "`g`"],
    );
    expect_err(reference::forward(&s, -1.0, &[0.0; 60]), &["weight", "≥ 0"]);
    expect_err(
        reference::forward(&s, f64::NAN, &[0.0; 60]),
        &["loss weight"],
    );
    let mut dz = vec![0.0; 60];
    expect_err(
        reference::backward(&s, &[0.0; 60], &[0.0; 5], &mut dz),
        &["reference balance backward", "`coefficients`"],
    );
    expect_err(
        BalanceStats::split(&s, &[0.0f32; 3]),
        &["`stats`", "20 values"],
    );
    gpu.check().unwrap();
}

// ---------------------------------------------------------------- the load loss

/// Logits with a bias per (gate, expert) (so that the gates are unbalanced), and
/// from them the top-`k` gate values and the full softmax over the experts each gate
/// sees, through the reference gate: `(z, G, p)`.
fn load_inputs(
    s: &BalanceShape,
    k: usize,
    access: ExpertAccess,
    rng: &mut Rng,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let n = s.experts;
    let bias: Vec<f64> = (0..s.gates * n).map(|_| rng.uniform(-1.5, 1.5)).collect();
    let z: Vec<f64> = (0..s.g_len())
        .map(|i| bias[i / (s.rows * n) * n + i % n] + rng.uniform(-2.0, 2.0))
        .collect();
    let (g, p) = load_gate(s, k, access, &z);
    (z, g, p)
}

/// `(G, p)` of logits `z` through the reference top-k gate and full softmax.
fn load_gate(s: &BalanceShape, k: usize, access: ExpertAccess, z: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let gs = GateMixShape {
        gates: s.gates,
        experts: s.experts,
        rows: s.rows,
        inputs: 1,
        width: 1,
        input: mmoe_wgpu::InputLayout::Shared,
    };
    let h = vec![0.0; gs.h_len()];
    let (g, _) = gate_topk::forward_logits(&gs, k, access, z, &h).unwrap();
    let p = gate_topk::full_softmax(&gs, access, z).unwrap();
    (g, p)
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// The load loss's operands besides the shape.
#[derive(Clone, Copy)]
struct Load<'a> {
    weight: f32,
    k: usize,
    seen: usize,
    g: &'a [f32],
    p: &'a [f32],
}

/// The reference's stats and dz after the backward, on exactly the f32 inputs.
fn expected_load(s: &BalanceShape, l: Load<'_>, dz: &[f32]) -> (BalanceStats<f64>, Vec<f64>) {
    let (g, p) = (to_f64(l.g), to_f64(l.p));
    let stats = reference::forward_load(s, l.weight as f64, l.k, l.seen, &g, &p).unwrap();
    let mut dz = to_f64(dz);
    reference::backward(s, &p, &stats.coefficients, &mut dz).unwrap();
    (stats, dz)
}

/// The load forward, then the backward with p in G's place: `(stats, dz)`.
fn run_load(kernel: &Balance, s: &BalanceShape, l: Load<'_>, dz: &[f32]) -> [Vec<f32>; 2] {
    run_forward_backward(kernel, s, (l.weight, l.g), Some((l.k, l.seen, l.p)), dz)
}

/// Checks the GPU's load-loss stats and dz against the reference's, gate by gate.
#[track_caller]
fn assert_load_matches(what: &str, s: &BalanceShape, l: Load<'_>, dz: &[f32], got: &[Vec<f32>; 2]) {
    let (want, want_dz) = expected_load(s, l, dz);
    let [stats, got_dz] = got;
    assert!(
        stats.iter().chain(got_dz).all(|v| v.is_finite()),
        "{what}: non-finite output"
    );
    let got = BalanceStats::split(s, stats).unwrap();
    let n = s.experts;
    let sum_tolerance = 1e-6 * (1.0 + s.rows as f64 / 64.0);
    for t in 0..s.gates {
        let e = t * n..(t + 1) * n;
        let what = format!("{what}, gate {t}");
        assert_close(
            &format!("Σ p {what}"),
            &got.importance[e.clone()],
            &want.importance[e.clone()],
            sum_tolerance,
        );
        assert_eq!(
            got.load[e.clone()],
            f32s(&want.load[e.clone()]),
            "load {what}"
        );
        // a = w · E · L / (k · B²): a few roundings, no sum.
        assert_close(
            &format!("coefficients {what}"),
            &got.coefficients[e.clone()],
            &want.coefficients[e],
            1e-6,
        );
        let (a, b) = (got.aux[t] as f64, want.aux[t]);
        assert!(
            (a - b).abs() <= 4.0 * sum_tolerance * b.abs(),
            "aux {what}: {a} vs {b}"
        );
    }
    assert_close(
        &format!("dz {what}"),
        got_dz,
        &want_dz,
        20.0 * sum_tolerance,
    );
}

/// A dz before the update on the scale of the coefficients `a`: the update
/// `p · (a − ⟨a, p⟩)` cancels to far below them (to 0 for a dense gate), but its
/// rounding error is on their scale.
fn load_prior_dz(s: &BalanceShape, l: Load<'_>, rng: &mut Rng) -> Vec<f32> {
    let (stats, _) = expected_load(s, l, &vec![0.0; s.g_len()]);
    let scale = stats
        .coefficients
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()));
    random(rng, s.g_len(), if scale > 0.0 { scale } else { 1.0 })
}

#[test]
fn load_loss_matches_the_reference_on_awkward_shapes() {
    let kernel = Balance::new(gpu());
    let mut rng = Rng::new(21);
    let weights = [0.01f32, 1.0, 0.3, 7.0];
    let mut case = 0;
    let mut unselected_moved = false;
    for rows in [1, 3, 17, 100, 257] {
        for experts in [1, 2, 5, 16] {
            for gates in 1..=3 {
                let s = shape(gates, rows, experts);
                for k in [experts, 1, 2.min(experts)] {
                    case += 1;
                    let weight = weights[case % weights.len()];
                    let (_, g, p) = load_inputs(&s, k, ExpertAccess::All, &mut rng);
                    let (g, p) = (f32s(&g), f32s(&p));
                    let l = Load {
                        weight,
                        k,
                        seen: experts,
                        g: &g,
                        p: &p,
                    };
                    let dz = load_prior_dz(&s, l, &mut rng);
                    let got = run_load(&kernel, &s, l, &dz);
                    assert_load_matches(&format!("{s:?} k={k} w={weight}"), &s, l, &dz, &got);
                    // The point of the loss: unselected logits get a gradient too.
                    unselected_moved |= g
                        .iter()
                        .zip(got[1].iter().zip(&dz))
                        .any(|(&g, (&after, &before))| g == 0.0 && after != before);
                }
            }
        }
    }
    assert!(unselected_moved, "no unselected logit got a gradient");
    gpu().check().unwrap();
}

#[test]
fn load_loss_with_task_specific_experts_and_every_workgroup_size() {
    let gpu = gpu();
    let mut rng = Rng::new(22);
    // (gates, shared, own): experts = shared + gates · own.
    for (gates, shared, own) in [(2, 1, 2), (3, 0, 1), (2, 3, 1)] {
        let access = ExpertAccess::SharedAndOwn { shared, own };
        let seen = shared + own;
        for rows in [1, 17, 100] {
            let s = shape(gates, rows, shared + gates * own);
            for k in 1..=seen {
                let (_, g, p) = load_inputs(&s, k, access, &mut rng);
                let (g, p) = (f32s(&g), f32s(&p));
                let l = Load {
                    weight: 0.5,
                    k,
                    seen,
                    g: &g,
                    p: &p,
                };
                let dz = load_prior_dz(&s, l, &mut rng);
                for wg in [1, 8, 64, 256] {
                    let kernel = Balance::with_workgroup_size(gpu, wg).unwrap();
                    let got = run_load(&kernel, &s, l, &dz);
                    let what = format!("{s:?} shared {shared} own {own} k={k} wg {wg}");
                    assert_load_matches(&what, &s, l, &dz, &got);
                    // Experts a gate does not see: no load, no softmax, dz untouched.
                    for (i, (&after, &before)) in got[1].iter().zip(&dz).enumerate() {
                        let (t, e) = (i / (rows * s.experts), i % s.experts);
                        if !access.sees(t, e) {
                            assert_eq!(after.to_bits(), before.to_bits(), "{what}: dz[{i}]");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn load_loss_hand_computed_example() {
    // Two rows, both with p = [1/4, 3/4] and top-1 G = [0, 1]: f = [0, 1],
    // P = [1/4, 3/4], aux = w · 2 · 3/4 = 3 at w = 2; a = w · E · f / B = [0, 2];
    // dz = p · (a − ⟨a, p⟩) = [1/4 · −3/2, 3/4 · 1/2] on each row.
    let s = shape(1, 2, 2);
    let g = [0.0f32, 1.0, 0.0, 1.0];
    let p = [0.25f32, 0.75, 0.25, 0.75];
    let l = Load {
        weight: 2.0,
        k: 1,
        seen: 2,
        g: &g,
        p: &p,
    };
    let want = BalanceStats {
        importance: vec![0.5, 1.5],
        load: vec![0.0, 2.0],
        coefficients: vec![0.0, 2.0],
        aux: vec![3.0],
    };
    assert_eq!(
        reference::forward_load(&s, 2.0, 1, 2, &to_f64(&g), &to_f64(&p)).unwrap(),
        want
    );
    let [stats, dz] = run_load(&Balance::new(gpu()), &s, l, &[0.0; 4]);
    assert_eq!(stats, f32s(&want.concat()));
    assert_eq!(dz, [-0.375, 0.375, -0.375, 0.375]);
}

#[test]
fn load_loss_with_zero_weight_or_a_dense_gate_leaves_dz_alone() {
    let kernel = Balance::new(gpu());
    let mut rng = Rng::new(23);
    for (s, k, weight) in [
        (shape(3, 100, 5), 2, 0.0f32),
        (shape(2, 17, 16), 1, -0.0),
        (shape(2, 33, 4), 4, 0.0),
    ] {
        let (_, g, p) = load_inputs(&s, k, ExpertAccess::All, &mut rng);
        let (g, p) = (f32s(&g), f32s(&p));
        let mut dz = random(&mut rng, s.g_len(), 1.0);
        for d in dz.iter_mut().step_by(3) {
            *d = -0.0;
        }
        let l = Load {
            weight,
            k,
            seen: s.experts,
            g: &g,
            p: &p,
        };
        let [stats, after] = run_load(&kernel, &s, l, &dz);
        assert_eq!(bits(&after), bits(&dz), "{s:?} k={k}");
        let got = BalanceStats::split(&s, &stats).unwrap();
        assert!(got.aux.iter().chain(&got.coefficients).all(|&v| v == 0.0));
        // The sums of p and the loads are still reported.
        assert!(got.load.iter().sum::<f32>() == (s.gates * s.rows * k) as f32);
    }
    // A dense gate (k = E): f = 1/E, the loss is w and its gradient ~0.
    let s = shape(2, 40, 4);
    let (_, g, p) = load_inputs(&s, 4, ExpertAccess::All, &mut rng);
    let (g, p) = (f32s(&g), f32s(&p));
    let l = Load {
        weight: 0.3,
        k: 4,
        seen: 4,
        g: &g,
        p: &p,
    };
    let [stats, dz] = run_load(&kernel, &s, l, &vec![0.0; s.g_len()]);
    let got = BalanceStats::split(&s, &stats).unwrap();
    for aux in got.aux {
        assert!((aux - 0.3).abs() < 1e-6, "dense aux {aux}");
    }
    assert!(dz.iter().all(|d| d.abs() < 1e-7), "dense dz {dz:?}");
}

#[test]
fn load_loss_is_bitwise_reproducible() {
    let kernel = Balance::new(gpu());
    let s = shape(3, 1000, 16);
    let mut rng = Rng::new(24);
    let (_, g, p) = load_inputs(&s, 2, ExpertAccess::All, &mut rng);
    let (g, p) = (f32s(&g), f32s(&p));
    let l = Load {
        weight: 0.1,
        k: 2,
        seen: 16,
        g: &g,
        p: &p,
    };
    let dz = random(&mut rng, s.g_len(), 1e-3);
    let first = run_load(&kernel, &s, l, &dz);
    for _ in 0..2 {
        let again = run_load(&kernel, &s, l, &dz);
        assert_eq!(bits(&first[0]), bits(&again[0]), "stats bits differ");
        assert_eq!(bits(&first[1]), bits(&again[1]), "dz bits differ");
    }
}

#[test]
fn reference_load_gradient_matches_finite_differences() {
    let mut rng = Rng::new(25);
    let all = ExpertAccess::All;
    let cases = [
        (shape(2, 7, 5), 1, all, 0.7),
        (shape(2, 9, 5), 2, all, 1.5),
        (shape(1, 6, 4), 4, all, 1.0),
        (shape(3, 5, 8), 3, all, 0.2),
        (
            shape(2, 6, 5),
            2,
            ExpertAccess::SharedAndOwn { shared: 1, own: 2 },
            0.9,
        ),
    ];
    for (s, k, access, weight) in cases {
        let seen = match access {
            ExpertAccess::All => s.experts,
            ExpertAccess::SharedAndOwn { shared, own }
            | ExpertAccess::SharedGate { shared, own, .. } => shared + own,
        };
        let (z, g, p) = load_inputs(&s, k, access, &mut rng);
        let total = |g: &[f64], p: &[f64]| -> f64 {
            let stats = reference::forward_load(&s, weight, k, seen, g, p).unwrap();
            stats.aux.iter().sum()
        };
        let stats = reference::forward_load(&s, weight, k, seen, &g, &p).unwrap();
        let mut dz = vec![0.0; s.g_len()];
        reference::backward(&s, &p, &stats.coefficients, &mut dz).unwrap();
        let eps = 1e-6;
        let mut unselected = 0;
        for i in 0..z.len() {
            let (mut zp, mut zm) = (z.clone(), z.clone());
            zp[i] += eps;
            zm[i] -= eps;
            let ((gp, pp), (gm, pm)) =
                (load_gate(&s, k, access, &zp), load_gate(&s, k, access, &zm));
            // f is a constant: the selection must not move within ±eps.
            assert!(
                keeps_the_selection(&gp, &gm, &g),
                "{s:?} k={k}: the selection moved at logit {i}"
            );
            let fd = (total(&gp, &pp) - total(&gm, &pm)) / (2.0 * eps);
            assert!(
                (fd - dz[i]).abs() <= 1e-9 + 1e-6 * fd.abs(),
                "{s:?} k={k} w={weight}: dz[{i}] = {} but finite difference {fd}",
                dz[i]
            );
            if g[i] == 0.0 && dz[i].abs() > 1e-6 {
                unselected += 1;
            }
        }
        // The load loss reaches the logits the top-k cut dropped (unless k = E, where
        // the gradient is zero).
        if k < seen {
            assert!(
                unselected > 0,
                "{s:?} k={k}: no unselected logit got a gradient"
            );
        } else {
            assert!(
                dz.iter().all(|d| d.abs() < 1e-12),
                "{s:?} k={k}: dense dz {dz:?}"
            );
        }
    }
}

#[test]
fn load_loss_bad_input_is_an_error_not_a_panic() {
    let gpu = gpu();
    let kernel = Balance::new(gpu);
    let s = shape(2, 10, 3);
    let buffer = |name: &str, n: usize| gpu.storage_buffer(name, 4 * n as u64).unwrap();
    let (g, p, stats) = (
        buffer("g", 60),
        buffer("p", 60),
        buffer("stats", s.stats_len()),
    );
    let small = buffer("small", 59);
    let forward = BalanceForward {
        shape: s,
        weight: 1.0,
        precision: Precision::F32,
        g: (&g).into(),
        stats: (&stats).into(),
    };
    let load = BalanceLoad {
        k: 2,
        seen: 3,
        p: (&p).into(),
    };
    kernel.forward_load(&forward, &load).unwrap();
    // p may share G's buffer (both are read).
    kernel
        .forward_load(
            &forward,
            &BalanceLoad {
                p: (&g).into(),
                ..load
            },
        )
        .unwrap();
    for (k, seen, needles) in [
        (0, 3, ["balance load forward k", "k = 0"]),
        (3, 2, ["balance load forward k", "k = 3"]),
        (1, 0, ["balance load forward seen", "0 experts seen"]),
        (1, 4, ["balance load forward seen", "4 experts seen"]),
    ] {
        let e = expect_err(
            kernel.forward_load(&forward, &BalanceLoad { k, seen, ..load }),
            &needles,
        );
        assert!(matches!(e, Error::Invalid { .. }), "{e}");
    }
    let e = expect_err(
        kernel.forward_load(
            &BalanceForward {
                weight: f32::NAN,
                ..forward
            },
            &load,
        ),
        &["balance load forward", "loss weight"],
    );
    assert!(matches!(e, Error::NonFinite { .. }), "{e}");
    expect_err(
        kernel.forward_load(
            &BalanceForward {
                weight: -1.0,
                ..forward
            },
            &load,
        ),
        &["balance load forward weight", "≥ 0"],
    );
    expect_err(
        kernel.forward_load(
            &forward,
            &BalanceLoad {
                p: (&small).into(),
                ..load
            },
        ),
        &["balance load forward", "`p`"],
    );
    expect_err(
        kernel.forward_load(
            &BalanceForward {
                stats: (&p).into(),
                ..forward
            },
            &load,
        ),
        &["balance load forward", "`p`", "same buffer"],
    );
    expect_err(
        kernel.forward_load(
            &BalanceForward {
                shape: shape(2, 0, 3),
                ..forward
            },
            &load,
        ),
        &["`rows`"],
    );
    // The reference checks the same.
    let (gv, pv) = (vec![0.0; 60], vec![0.0; 60]);
    expect_err(reference::forward_load(&s, 1.0, 4, 3, &gv, &pv), &["k = 4"]);
    expect_err(reference::forward_load(&s, -1.0, 1, 3, &gv, &pv), &["≥ 0"]);
    expect_err(
        reference::forward_load(&s, 1.0, 1, 3, &gv, &pv[1..]),
        &["`p`"],
    );
    gpu.check().unwrap();
}

#[test]
fn load_loss_f16_storage_matches_the_reference() {
    let gpu = gpu();
    let kernel = Balance::new(gpu);
    let s = shape(2, 100, 5);
    let mut rng = Rng::new(26);
    // Rounded to f16 on the host, so the reference sees exactly the stored values.
    let half = |v: &[f64]| -> Vec<f16> { v.iter().map(|&x| f16::from_f64(x)).collect() };
    let back = |v: &[f16]| -> Vec<f32> { v.iter().map(|x| x.to_f32()).collect() };
    let (_, g, p) = load_inputs(&s, 2, ExpertAccess::All, &mut rng);
    let (g, p) = (half(&g), half(&p));
    let (g32, p32) = (back(&g), back(&p));
    let l = Load {
        weight: 1.0,
        k: 2,
        seen: 5,
        g: &g32,
        p: &p32,
    };
    let dz = half(&to_f64(&load_prior_dz(&s, l, &mut rng)));
    let dz32 = back(&dz);
    let up = |name: &str, v: &[f16]| gpu.upload(name, v).unwrap();
    let (g_buffer, p_buffer, dz_buffer) = (up("g", &g), up("p", &p), up("dz", &dz));
    let stats = gpu.storage_buffer("stats", s.stats_bytes()).unwrap();
    let forward = BalanceForward {
        shape: s,
        weight: 1.0,
        precision: Precision::F16,
        g: (&g_buffer).into(),
        stats: (&stats).into(),
    };
    let load = BalanceLoad {
        k: 2,
        seen: 5,
        p: (&p_buffer).into(),
    };
    if f16_is_missing(gpu, "balance load forward", || {
        kernel.forward_load(&forward, &load)
    }) {
        return;
    }
    run(gpu, |e| {
        kernel.encode_forward_load(e, &forward, &load).unwrap();
        kernel
            .encode_backward(
                e,
                &BalanceBackward {
                    shape: s,
                    precision: Precision::F16,
                    g: (&p_buffer).into(),
                    stats: (&stats).into(),
                    dz: (&dz_buffer).into(),
                },
            )
            .unwrap();
    });
    let got_stats = read(gpu, &stats, s.stats_len());
    let got_dz = back(&gpu.read::<f16>(&dz_buffer, 0, s.g_len()).unwrap());
    let (want, want_dz) = expected_load(&s, l, &dz32);
    // The stats are f32 sums of exact f16 values; dz is rounded to f16 once.
    assert_close("f16 stats", &got_stats, &want.concat(), 1e-5);
    assert_close("f16 dz", &got_dz, &want_dz, 2e-3);
}
