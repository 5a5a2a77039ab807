//! Gate noise against the CPU reference on awkward shapes and extreme noise logits;
//! operands at unaligned offsets; more workgroups than one dimension allows; f16
//! storage; the reference's gradient against finite differences; bad input rejected
//! with errors.

use crate::common::*;
use half::f16;
use mmoe_wgpu::Error;
use mmoe_wgpu::kernels::noise::{Noise, NoiseBackward, NoiseForward, NoiseShape};
use mmoe_wgpu::kernels::{BufferView, Precision};
use mmoe_wgpu::reference::noise as reference;
use mmoe_wgpu::rng::Rng;

fn shape(gates: usize, rows: usize, experts: usize) -> NoiseShape {
    NoiseShape {
        gates,
        rows,
        experts,
    }
}

/// Every combination of rows {1, 3, 37}, experts {2, 5, 16} and gates {1, 3}.
fn shapes() -> Vec<NoiseShape> {
    let mut out = Vec::new();
    for rows in [1, 3, 37] {
        for experts in [2, 5, 16] {
            for gates in [1, 3] {
                out.push(shape(gates, rows, experts));
            }
        }
    }
    out
}

/// Noise logits `n` (mostly in ±4, some far out, where softplus and sigmoid must not
/// overflow or round away), draws `ε` and a logit gradient `dz`.
fn data(s: &NoiseShape, rng: &mut Rng) -> [Vec<f32>; 3] {
    // Not below −87: exp(n) would be an f32 subnormal, which devices may flush to 0.
    let extremes = [-80.0f32, -30.0, -17.0, 17.0, 30.0, 80.0, 0.0, -0.0];
    let n = (0..s.len())
        .map(|i| match i % 7 {
            3 => extremes[(i / 7) % extremes.len()],
            _ => rng.uniform(-4.0, 4.0) as f32,
        })
        .collect();
    let eps = (0..s.len()).map(|_| rng.normal() as f32).collect();
    [n, eps, random(rng, s.len(), 1.0)]
}

/// Every element within `tolerance` of the reference, relative to its own size (so
/// the tiny offsets of very negative `n` are checked too, not hidden by large ones).
#[track_caller]
fn assert_elementwise(what: &str, got: &[f32], want: &[f64], tolerance: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= tolerance * w.abs() + 1e-30,
            "{what}[{i}]: {g:e}, reference {w:e}, relative error {:.2e}",
            err / w.abs()
        );
    }
}

/// The GPU's offset and dn at f32.
fn run_gpu(s: &NoiseShape, [n, eps, dz]: &[Vec<f32>; 3]) -> (Vec<f32>, Vec<f32>) {
    let gpu = gpu();
    let kernel = Noise::new(gpu);
    let up = |name: &str, v: &[f32]| gpu.upload(name, v).unwrap();
    let (n, eps, dz) = (up("n", n), up("eps", eps), up("dz", dz));
    let offset = gpu.storage_buffer("offset", 4 * s.len() as u64).unwrap();
    let dn = gpu.storage_buffer("dn", 4 * s.len() as u64).unwrap();
    run(gpu, |e| {
        kernel
            .encode_forward(
                e,
                &NoiseForward {
                    shape: *s,
                    precision: Precision::F32,
                    n: (&n).into(),
                    eps: (&eps).into(),
                    offset: (&offset).into(),
                },
            )
            .unwrap();
        kernel
            .encode_backward(
                e,
                &NoiseBackward {
                    shape: *s,
                    precision: Precision::F32,
                    n: (&n).into(),
                    eps: (&eps).into(),
                    dz: (&dz).into(),
                    dn: (&dn).into(),
                },
            )
            .unwrap();
    });
    (read(gpu, &offset, s.len()), read(gpu, &dn, s.len()))
}

fn expected(s: &NoiseShape, [n, eps, dz]: &[Vec<f32>; 3]) -> (Vec<f64>, Vec<f64>) {
    let (n, eps, dz) = (to_f64(n), to_f64(eps), to_f64(dz));
    (
        reference::forward(s, &n, &eps).unwrap(),
        reference::backward(s, &n, &eps, &dz).unwrap(),
    )
}

#[test]
fn matches_the_reference_on_awkward_shapes_and_extreme_logits() {
    let mut rng = Rng::new(1);
    for s in shapes() {
        let d = data(&s, &mut rng);
        let (offset, dn) = run_gpu(&s, &d);
        let (want_offset, want_dn) = expected(&s, &d);
        // exp and log on the device are within a few ulps; the products add a few.
        assert_elementwise(&format!("{s:?} offset"), &offset, &want_offset, 2e-6);
        assert_elementwise(&format!("{s:?} dn"), &dn, &want_dn, 2e-6);
    }
}

#[test]
fn softplus_of_zero_is_ln_2_and_large_logits_stay_finite() {
    let s = shape(1, 1, 6);
    let n = vec![0.0f32, 1e30, -1e30, 88.0, 89.0, -104.0];
    let d = [n, vec![1.0; 6], vec![1.0; 6]];
    let (offset, dn) = run_gpu(&s, &d);
    assert!(
        (offset[0] - std::f32::consts::LN_2).abs() <= 1e-7,
        "{offset:?}"
    );
    assert_eq!(offset[1], 1e30, "softplus(v) = v for large v");
    assert_eq!(offset[2], 0.0);
    assert!(offset.iter().all(|v| v.is_finite()), "{offset:?}");
    assert_eq!(dn[..3], [0.5, 1.0, 0.0]);
    assert!(dn.iter().all(|v| v.is_finite()), "{dn:?}");
}

#[test]
fn zero_draws_give_an_exactly_zero_offset_and_gradient() {
    let s = shape(3, 37, 5);
    let mut rng = Rng::new(2);
    let [n, _, dz] = data(&s, &mut rng);
    let (offset, dn) = run_gpu(&s, &[n, vec![0.0; s.len()], dz]);
    assert!(offset.iter().chain(&dn).all(|&v| v == 0.0));
}

#[test]
fn operands_at_unaligned_offsets_inside_shared_buffers() {
    let gpu = gpu();
    let kernel = Noise::new(gpu);
    let s = shape(3, 37, 5);
    let mut rng = Rng::new(3);
    let d = data(&s, &mut rng);
    // n, ε and dz packed in one input buffer at odd offsets; both outputs in one.
    let (no, eo, zo) = (3usize, 3 + s.len() + 5, 3 + 2 * s.len() + 11);
    let mut packed = vec![f32::NAN; zo + s.len() + 2];
    for (at, v) in [(no, &d[0]), (eo, &d[1]), (zo, &d[2])] {
        packed[at..at + s.len()].copy_from_slice(v);
    }
    let inputs = gpu.upload("packed inputs", &packed).unwrap();
    let (oo, dno) = (1usize, 1 + s.len() + 6);
    let outputs = gpu
        .upload("packed outputs", &vec![-7.0f32; dno + s.len() + 3])
        .unwrap();
    let at = |b, e: usize| BufferView::at(b, 4 * e as u64);
    run(gpu, |e| {
        kernel
            .encode_forward(
                e,
                &NoiseForward {
                    shape: s,
                    precision: Precision::F32,
                    n: at(&inputs, no),
                    eps: at(&inputs, eo),
                    offset: at(&outputs, oo),
                },
            )
            .unwrap();
        kernel
            .encode_backward(
                e,
                &NoiseBackward {
                    shape: s,
                    precision: Precision::F32,
                    n: at(&inputs, no),
                    eps: at(&inputs, eo),
                    dz: at(&inputs, zo),
                    dn: at(&outputs, dno),
                },
            )
            .unwrap();
    });
    let all = read(gpu, &outputs, dno + s.len() + 3);
    let (want_offset, want_dn) = expected(&s, &d);
    assert_elementwise("offset", &all[oo..oo + s.len()], &want_offset, 2e-6);
    assert_elementwise("dn", &all[dno..dno + s.len()], &want_dn, 2e-6);
    for (i, &v) in all.iter().enumerate() {
        if !(oo..oo + s.len()).contains(&i) && !(dno..dno + s.len()).contains(&i) {
            assert_eq!(v, -7.0, "wrote outside the outputs at {i}");
        }
    }
}

#[test]
fn more_elements_than_one_dimension_of_workgroups_covers() {
    // 64 invocations per workgroup: past 64 × the per-dimension limit, the
    // workgroups spill into y, and the last partial row of them must stop in bounds.
    let max = gpu().limits().max_compute_workgroups_per_dimension as usize;
    let s = shape(1, 64 * max / 7 + 5, 7);
    let mut rng = Rng::new(4);
    let n: Vec<f32> = (0..s.len()).map(|i| (i % 13) as f32 - 6.0).collect();
    let eps: Vec<f32> = (0..s.len()).map(|i| ((i % 5) as f32 - 2.0) * 0.5).collect();
    let dz = random(&mut rng, s.len(), 1.0);
    let d = [n, eps, dz];
    let (offset, dn) = run_gpu(&s, &d);
    let (want_offset, want_dn) = expected(&s, &d);
    assert_elementwise("offset", &offset, &want_offset, 2e-6);
    assert_elementwise("dn", &dn, &want_dn, 2e-6);
}

#[test]
fn f16_storage_matches_the_reference() {
    let gpu = gpu();
    let kernel = Noise::new(gpu);
    let s = shape(3, 37, 5);
    let mut rng = Rng::new(5);
    let half = |v: &[f32]| -> Vec<f16> { v.iter().map(|&x| f16::from_f32(x)).collect() };
    let n: Vec<f32> = random(&mut rng, s.len(), 4.0);
    let eps: Vec<f32> = (0..s.len()).map(|_| rng.normal() as f32).collect();
    let dz = random(&mut rng, s.len(), 1.0);
    let (n16, eps16, dz16) = (half(&n), half(&eps), half(&dz));
    let up = |name: &str, v: &[f16]| gpu.upload(name, v).unwrap();
    let (nb, eb, zb) = (up("n", &n16), up("eps", &eps16), up("dz", &dz16));
    let offset = gpu
        .storage_buffer("offset", 2 * s.len() as u64 + 2)
        .unwrap();
    let dn = gpu.storage_buffer("dn", 2 * s.len() as u64 + 2).unwrap();
    let forward = NoiseForward {
        shape: s,
        precision: Precision::F16,
        n: (&nb).into(),
        eps: (&eb).into(),
        offset: (&offset).into(),
    };
    if f16_is_missing(gpu, "noise forward", || kernel.forward(&forward)) {
        return;
    }
    run(gpu, |e| {
        kernel.encode_forward(e, &forward).unwrap();
        kernel
            .encode_backward(
                e,
                &NoiseBackward {
                    shape: s,
                    precision: Precision::F16,
                    n: (&nb).into(),
                    eps: (&eb).into(),
                    dz: (&zb).into(),
                    dn: (&dn).into(),
                },
            )
            .unwrap();
    });
    let widen = |v: Vec<f16>| -> Vec<f32> { v.iter().map(|x| x.to_f32()).collect() };
    let got_offset = widen(gpu.read::<f16>(&offset, 0, s.len()).unwrap());
    let got_dn = widen(gpu.read::<f16>(&dn, 0, s.len()).unwrap());
    let exact = |v: &[f16]| -> Vec<f32> { v.iter().map(|x| x.to_f32()).collect() };
    let d = [exact(&n16), exact(&eps16), exact(&dz16)];
    let (want_offset, want_dn) = expected(&s, &d);
    // Each output is rounded to f16 once.
    assert_close("f16 offset", &got_offset, &want_offset, 1e-3);
    assert_close("f16 dn", &got_dn, &want_dn, 1e-3);
}

#[test]
fn reference_gradient_matches_finite_differences() {
    // L = Σ dz ⊙ offset(n), so ∂L/∂n is the backward's dn.
    let s = shape(3, 5, 4);
    let mut rng = Rng::new(6);
    let n: Vec<f64> = (0..s.len()).map(|_| rng.uniform(-6.0, 6.0)).collect();
    let eps: Vec<f64> = (0..s.len()).map(|_| rng.normal()).collect();
    let dz: Vec<f64> = (0..s.len()).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let loss = |n: &[f64]| -> f64 {
        let offset = reference::forward(&s, n, &eps).unwrap();
        offset.iter().zip(&dz).map(|(o, d)| o * d).sum()
    };
    let analytic = reference::backward(&s, &n, &eps, &dz).unwrap();
    let h = 1e-6;
    let mut worst: f64 = 0.0;
    for i in 0..s.len() {
        let mut up = n.clone();
        up[i] += h;
        let mut down = n.clone();
        down[i] -= h;
        let numeric = (loss(&up) - loss(&down)) / (2.0 * h);
        worst = worst.max((numeric - analytic[i]).abs());
    }
    assert!(worst < 1e-8, "finite differences differ by {worst:.2e}");
    // And the functions themselves, at points with known values.
    assert!((reference::softplus(0.0) - std::f64::consts::LN_2).abs() < 1e-15);
    assert_eq!(reference::softplus(1000.0), 1000.0);
    assert!((reference::softplus(-50.0) / (-50.0f64).exp() - 1.0).abs() < 1e-12);
    assert_eq!(reference::sigmoid(0.0), 0.5);
    assert_eq!(reference::sigmoid(-1000.0), 0.0);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let gpu = gpu();
    let kernel = Noise::new(gpu);
    let s = shape(2, 10, 3);
    let buffer = |name: &str, n: usize| gpu.storage_buffer(name, 4 * n as u64).unwrap();
    let (n, eps, offset, dz, dn) = (
        buffer("n", 60),
        buffer("eps", 60),
        buffer("offset", 60),
        buffer("dz", 60),
        buffer("dn", 60),
    );
    let small = buffer("small", 59);
    let forward = NoiseForward {
        shape: s,
        precision: Precision::F32,
        n: (&n).into(),
        eps: (&eps).into(),
        offset: (&offset).into(),
    };
    let backward = NoiseBackward {
        shape: s,
        precision: Precision::F32,
        n: (&n).into(),
        eps: (&eps).into(),
        dz: (&dz).into(),
        dn: (&dn).into(),
    };
    kernel.forward(&forward).unwrap();
    kernel.backward(&backward).unwrap();

    for (name, zero) in [
        ("`gates`", shape(0, 10, 3)),
        ("`rows`", shape(2, 0, 3)),
        ("`experts`", shape(2, 10, 0)),
    ] {
        expect_err(
            kernel.forward(&NoiseForward {
                shape: zero,
                ..forward
            }),
            &["noise forward", name],
        );
        expect_err(
            kernel.backward(&NoiseBackward {
                shape: zero,
                ..backward
            }),
            &["noise backward", name],
        );
    }
    // Too short, each operand in turn: the message names the pass and the operand.
    let short = || BufferView::new(&small);
    for (needles, result) in [
        (
            ["noise forward", "`n`"],
            kernel.forward(&NoiseForward {
                n: short(),
                ..forward
            }),
        ),
        (
            ["noise forward", "`eps`"],
            kernel.forward(&NoiseForward {
                eps: short(),
                ..forward
            }),
        ),
        (
            ["noise forward", "`offset`"],
            kernel.forward(&NoiseForward {
                offset: short(),
                ..forward
            }),
        ),
        (
            ["noise backward", "`dz`"],
            kernel.backward(&NoiseBackward {
                dz: short(),
                ..backward
            }),
        ),
        (
            ["noise backward", "`dn`"],
            kernel.backward(&NoiseBackward {
                dn: short(),
                ..backward
            }),
        ),
    ] {
        let e = expect_err(result, &needles);
        assert!(matches!(e, Error::Shape { .. }), "{e}");
    }
    // An input that is also the output.
    expect_err(
        kernel.forward(&NoiseForward {
            offset: (&n).into(),
            ..forward
        }),
        &["noise forward", "distinct buffers"],
    );
    expect_err(
        kernel.backward(&NoiseBackward {
            dn: (&dz).into(),
            ..backward
        }),
        &["noise backward", "distinct buffers"],
    );
    expect_err(
        kernel.forward(&NoiseForward {
            n: BufferView::at(&n, 2),
            ..forward
        }),
        &["multiple of 4"],
    );
    let huge = shape(1 << 16, 1 << 16, 2);
    let e = expect_err(
        kernel.forward(&NoiseForward {
            shape: huge,
            ..forward
        }),
        &["noise forward", "element count"],
    );
    assert!(matches!(e, Error::Limit { .. }), "{e}");

    // The reference checks too.
    let r = vec![0.0; 59];
    expect_err(
        reference::forward(&s, &r, &[0.0; 60]),
        &["reference noise forward", "`n`"],
    );
    expect_err(
        reference::backward(&s, &[0.0; 60], &[0.0; 60], &r),
        &["reference noise backward", "`dz`"],
    );
    expect_err(
        reference::forward(&shape(0, 1, 1), &[], &[]),
        &["reference noise forward", "`gates`"],
    );
    gpu.check().unwrap();
}
