//! ESMM's product-of-probabilities loss in the loss kernel: against the reference on
//! awkward shapes beside other tasks, at extreme logits where the product of the two
//! probabilities rounds to 0 or 1, the reference's loss against independent forms
//! and its gradient against finite differences, bitwise reproducibility, and pairs
//! that do not pair up rejected.

use super::loss::{
    Buffers, assert_reference_gradient_matches_finite_differences, data, reference_tasks,
};
use crate::common::*;
use mmoe_wgpu::kernels::loss::{Loss, LossKind, TaskLoss};
use mmoe_wgpu::reference::loss as reference;
use mmoe_wgpu::rng::Rng;

/// MSE, the CVR task of a pair whose CTR task comes after it, a BCE task, the CTR
/// task: the pair is not adjacent and in reverse order.
fn mixed_tasks() -> Vec<TaskLoss> {
    vec![
        TaskLoss {
            kind: LossKind::MeanSquaredError,
            weight: 0.5,
        },
        TaskLoss {
            kind: LossKind::EsmmCtcvr { ctr: 3 },
            weight: 2.0,
        },
        TaskLoss {
            kind: LossKind::BinaryCrossEntropy,
            weight: 1.0,
        },
        TaskLoss {
            kind: LossKind::EsmmCtr { cvr: 1 },
            weight: 0.75,
        },
    ]
}

/// Two tasks: the CTR task, then its CVR task.
fn pair(ctr_weight: f32, cvr_weight: f32) -> [TaskLoss; 2] {
    [
        TaskLoss {
            kind: LossKind::EsmmCtr { cvr: 1 },
            weight: ctr_weight,
        },
        TaskLoss {
            kind: LossKind::EsmmCtcvr { ctr: 0 },
            weight: cvr_weight,
        },
    ]
}

#[test]
fn esmm_pairs_match_the_reference_beside_other_tasks() {
    let gpu = gpu();
    let kernels = [
        Loss::new(gpu),
        Loss::with_workgroup_size(gpu, 1).unwrap(),
        Loss::with_workgroup_size(gpu, 256).unwrap(),
    ];
    let tasks = mixed_tasks();
    let mut rng = Rng::new(21);
    for rows in [1usize, 3, 17, 100, 257] {
        let (p, y) = data(&tasks, rows, &mut rng);
        let (want_loss, want_grad) =
            reference::forward(&reference_tasks(&tasks), rows, &to_f64(&p), &to_f64(&y)).unwrap();
        let buffers = Buffers::new(&p, &y, tasks.len());
        for kernel in &kernels {
            let what = format!("rows {rows}, wg {}", kernel.workgroup_size());
            let (loss, grad) = buffers.run(kernel, rows, &tasks);
            assert!(loss.iter().chain(&grad).all(|v| v.is_finite()), "{what}");
            for t in 0..tasks.len() {
                assert_close(
                    &format!("loss of task {t}, {what}"),
                    &loss[t..t + 1],
                    &want_loss[t..t + 1],
                    1e-5,
                );
                assert_close(
                    &format!("grad of task {t}, {what}"),
                    &grad[t * rows..(t + 1) * rows],
                    &want_grad[t * rows..(t + 1) * rows],
                    1e-5,
                );
            }
        }
    }
    gpu.check().unwrap();
}

/// Every combination of the logits in `LOGITS` and 0/1 click and conversion labels,
/// as rows of one pair: `(a, b, click, conversion)`.
fn extreme_rows() -> Vec<(f64, f64, f64, f64)> {
    const LOGITS: [f64; 9] = [-40.0, -25.0, -8.0, -0.5, 0.0, 3.0, 17.0, 30.0, 40.0];
    let mut rows = Vec::new();
    for a in LOGITS {
        for b in LOGITS {
            for (click, conversion) in [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)] {
                rows.push((a, b, click, conversion));
            }
        }
    }
    rows
}

#[test]
fn extreme_logits_give_the_reference_gradient_element_by_element() {
    let gpu = gpu();
    let kernel = Loss::new(gpu);
    let rows = extreme_rows();
    let n = rows.len();
    let column = |f: fn(&(f64, f64, f64, f64)) -> f64| rows.iter().map(f).collect::<Vec<_>>();
    let p: Vec<f32> = [column(|r| r.0), column(|r| r.1)]
        .concat()
        .iter()
        .map(|&v| v as f32)
        .collect();
    let y: Vec<f32> = [column(|r| r.2), column(|r| r.3)]
        .concat()
        .iter()
        .map(|&v| v as f32)
        .collect();
    let tasks = pair(1.0, 1.0);
    let (loss, grad) = Buffers::new(&p, &y, 2).run(&kernel, n, &tasks);
    let (want_loss, want_grad) =
        reference::forward(&reference_tasks(&tasks), n, &to_f64(&p), &to_f64(&y)).unwrap();
    assert!(loss.iter().chain(&grad).all(|v| v.is_finite()), "{loss:?}");
    assert_close("loss", &loss, &want_loss, 1e-5);
    // Each gradient element on its own scale: a tiny gradient next to a large one
    // must be right too, down to where f32 itself ends. The CTR row adds two
    // derivatives that can cancel (its own BCE's and the CTCVR loss's): its error
    // is then bounded by theirs.
    for (i, (&g, &w)) in grad.iter().zip(&want_grad).enumerate() {
        let (a, b, click, conversion) = rows[i % n];
        let (_, da, db) = reference::ctcvr_loss_and_derivatives(a, b, click * conversion);
        let sigmoid_a = 1.0 / (1.0 + (-a).exp());
        let terms = match i / n {
            0 => (sigmoid_a - click).abs() + da.abs(),
            _ => db.abs(),
        } / n as f64;
        assert!(
            (g as f64 - w).abs() <= 1e-4 * w.abs() + 1e-6 * terms + 1e-36,
            "grad[{i}] (task {}, a {a}, b {b}, click {click}, conversion {conversion}): \
             {g:e}, reference {w:e}",
            i / n
        );
    }
    gpu.check().unwrap();
}

#[test]
fn the_ctcvr_loss_matches_independent_forms_where_they_are_exact() {
    let naive = |a: f64, b: f64, y: f64| {
        let p = 1.0 / (1.0 + (-a).exp()) / (1.0 + (-b).exp());
        -y * p.ln() - (1.0 - y) * (1.0 - p).ln()
    };
    // log(1 − e^x) for x < 0 in the form accurate on both sides of −ln 2.
    let log1mexp = |x: f64| {
        if x > -std::f64::consts::LN_2 {
            (-x.exp_m1()).ln()
        } else {
            (-x.exp()).ln_1p()
        }
    };
    let softplus = |x: f64| x.max(0.0) + (-x.abs()).exp().ln_1p();
    for (a, b, click, conversion) in extreme_rows() {
        let y = click * conversion;
        let (l, _, _) = reference::ctcvr_loss_and_derivatives(a, b, y);
        let log_p = -softplus(-a) - softplus(-b);
        let want = -y * log_p - (1.0 - y) * log1mexp(log_p);
        assert!(
            (l - want).abs() <= 1e-12 * want.abs(),
            "a {a}, b {b}, y {y}: {l:e} vs {want:e}"
        );
        // The naive form loses digits as p or 1 − p shrinks: compare where both are
        // at least e^-8 or so, to what it keeps.
        if a.abs() <= 8.0 && b.abs() <= 8.0 {
            let n = naive(a, b, y);
            assert!(
                (l - n).abs() <= 1e-8 * n.abs(),
                "a {a}, b {b}: {l} vs naive {n}"
            );
        }
    }
    // Where the product rounds to 1, the naive form fails and this one does not.
    assert!(naive(40.0, 40.0, 0.0).is_infinite());
    let (l, da, db) = reference::ctcvr_loss_and_derivatives(40.0, 40.0, 0.0);
    assert!((l - (40.0 - std::f64::consts::LN_2)).abs() < 1e-12, "{l}");
    assert!(
        (da - 0.5).abs() < 1e-12 && (db - 0.5).abs() < 1e-12,
        "{da} {db}"
    );
}

#[test]
fn ctcvr_derivatives_match_finite_differences_up_to_extreme_logits() {
    let loss = |a: f64, b: f64, y: f64| reference::ctcvr_loss_and_derivatives(a, b, y).0;
    let h = 1e-5;
    let mut checked_tight = 0;
    for (a, b, click, conversion) in extreme_rows() {
        for y in [click * conversion, 0.3] {
            let (_, da, db) = reference::ctcvr_loss_and_derivatives(a, b, y);
            for (which, analytic, up, down) in [
                ("a", da, loss(a + h, b, y), loss(a - h, b, y)),
                ("b", db, loss(a, b + h, y), loss(a, b - h, y)),
            ] {
                let numeric = (up - down) / (2.0 * h);
                // What the difference can resolve: the loss's own rounding over h
                // (relative ε·|log p|, log p being exponentiated on the way).
                let rounding = 4.0 * f64::EPSILON * (1.0 + a.abs() + b.abs());
                let resolution = rounding * up.abs().max(down.abs()) / h;
                checked_tight += (resolution < 1e-6 * analytic.abs()) as usize;
                assert!(
                    (numeric - analytic).abs() <= 1e-6 * analytic.abs() + resolution,
                    "∂ℓ/∂{which} at a {a}, b {b}, y {y}: finite difference {numeric:e}, \
                     analytic {analytic:e}"
                );
            }
        }
    }
    // Most derivatives, tiny ones included, were checked to 1e-6 of themselves.
    assert!(checked_tight > 900, "{checked_tight}");
}

#[test]
fn reference_gradient_with_pairs_matches_finite_differences() {
    let tasks: Vec<(LossKind, f64)> = reference_tasks(&mixed_tasks());
    let rows = 7;
    let mut rng = Rng::new(5);
    let p: Vec<f64> = (0..tasks.len() * rows)
        .map(|_| rng.uniform(-6.0, 6.0))
        .collect();
    let y: Vec<f64> = (0..tasks.len() * rows)
        .map(|i| match i / rows {
            0 => rng.uniform(-1.0, 1.0),
            _ => (rng.unit() < 0.5) as u8 as f64,
        })
        .collect();
    assert_reference_gradient_matches_finite_differences(&tasks, rows, &p, &y);
}

#[test]
fn esmm_results_are_bitwise_reproducible() {
    let gpu = gpu();
    let kernel = Loss::new(gpu);
    let tasks = mixed_tasks();
    let rows = 1000;
    let (p, y) = data(&tasks, rows, &mut Rng::new(8));
    let buffers = Buffers::new(&p, &y, tasks.len());
    let bits = |(l, g): (Vec<f32>, Vec<f32>)| {
        let v: Vec<u32> = l.iter().chain(&g).map(|x| x.to_bits()).collect();
        v
    };
    let first = bits(buffers.run(&kernel, rows, &tasks));
    for _ in 0..2 {
        assert_eq!(first, bits(buffers.run(&kernel, rows, &tasks)));
    }
}

#[test]
fn pairs_that_do_not_pair_up_are_errors() {
    let gpu = gpu();
    let kernel = Loss::new(gpu);
    let rows = 4;
    let bce = TaskLoss {
        kind: LossKind::BinaryCrossEntropy,
        weight: 1.0,
    };
    let cases: [(&str, Vec<TaskLoss>); 4] = [
        (
            "partner is not ESMM",
            vec![
                TaskLoss {
                    kind: LossKind::EsmmCtr { cvr: 1 },
                    weight: 1.0,
                },
                bce,
            ],
        ),
        (
            "partner out of range",
            vec![
                bce,
                TaskLoss {
                    kind: LossKind::EsmmCtcvr { ctr: 5 },
                    weight: 1.0,
                },
            ],
        ),
        (
            "its own partner",
            vec![TaskLoss {
                kind: LossKind::EsmmCtr { cvr: 0 },
                weight: 1.0,
            }],
        ),
        (
            "two CTR tasks",
            vec![
                TaskLoss {
                    kind: LossKind::EsmmCtr { cvr: 1 },
                    weight: 1.0,
                },
                TaskLoss {
                    kind: LossKind::EsmmCtr { cvr: 0 },
                    weight: 1.0,
                },
            ],
        ),
    ];
    for (what, tasks) in cases {
        let (p, y) = data(&tasks, rows, &mut Rng::new(1));
        let buffers = Buffers::new(&p, &y, tasks.len());
        let e = expect_err(kernel.forward(&buffers.args(rows, &tasks)), &["ESMM pair"]);
        assert!(matches!(e, mmoe_wgpu::Error::Invalid { .. }), "{what}: {e}");
        expect_err(
            reference::forward(&reference_tasks(&tasks), rows, &to_f64(&p), &to_f64(&y)),
            &["ESMM pair"],
        );
    }
    gpu.check().unwrap();
}
