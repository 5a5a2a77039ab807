//! Optimizer kernel against the CPU reference for every rule, over lengths that do
//! and do not fill workgroups and one that needs the grid-stride loop; the learning
//! rate changed between steps without rebuilding; the non-finite-loss guard;
//! unaligned offsets; bitwise reproducibility; bad input rejected with errors.

use crate::common::*;
use mmoe_wgpu::Error;
use mmoe_wgpu::kernels::BufferView;
use mmoe_wgpu::kernels::Precision;
use mmoe_wgpu::kernels::optimizer::{
    ELEMENTS_PER_INVOCATION, Optimizer, OptimizerConfig, OptimizerStep, OptimizerUpdate,
};
use mmoe_wgpu::reference::optimizer as reference;
use mmoe_wgpu::rng::Rng;

const TOLERANCE: f64 = 1e-5;
/// A different learning rate for each of the three steps.
const LEARNING_RATES: [f32; 3] = [0.01, 0.003, 0.05];

pub(crate) fn optimizers() -> Vec<OptimizerConfig> {
    vec![
        OptimizerConfig::Sgd { momentum: 0.0 },
        OptimizerConfig::Sgd { momentum: 0.9 },
        OptimizerConfig::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
        OptimizerConfig::Adam {
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-6,
            weight_decay: 0.05,
        },
        OptimizerConfig::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        },
    ]
}

/// Host-side state of one run: parameters, moments and one gradient per step.
struct State {
    params: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    grads: Vec<Vec<f32>>,
}

fn state(len: usize, steps: usize, seed: u64) -> State {
    let mut rng = Rng::new(seed);
    State {
        params: random(&mut rng, len, 1.0),
        // Non-zero moments, as in the middle of training.
        m: random(&mut rng, len, 0.1),
        v: random(&mut rng, len, 0.01)
            .iter()
            .map(|x| x.abs())
            .collect(),
        grads: (0..steps).map(|_| random(&mut rng, len, 1.0)).collect(),
    }
}

/// The reference after `steps` steps: (params, m, v).
fn reference_run(opt: OptimizerConfig, s: &State, steps: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut p, mut m, mut v) = (to_f64(&s.params), to_f64(&s.m), to_f64(&s.v));
    for (t, g) in s.grads.iter().take(steps).enumerate() {
        let v = opt.needs_second_moment().then_some(&mut v[..]);
        reference::step(
            opt,
            t as u32 + 1,
            LEARNING_RATES[t % 3] as f64,
            &mut p,
            &to_f64(g),
            &mut m,
            v,
        )
        .unwrap();
    }
    (p, m, v)
}

struct Buffers {
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    m: wgpu::Buffer,
    v: wgpu::Buffer,
}

impl Buffers {
    fn new(s: &State) -> Buffers {
        let gpu = gpu();
        Buffers {
            params: gpu.upload("params", &s.params).unwrap(),
            grads: gpu.upload("grads", &s.grads[0]).unwrap(),
            m: gpu.upload("m", &s.m).unwrap(),
            v: gpu.upload("v", &s.v).unwrap(),
        }
    }

    fn args(&self, optimizer: OptimizerConfig, len: usize) -> OptimizerUpdate<'_> {
        OptimizerUpdate {
            params_copy: None,
            precision: Precision::F32,
            config: optimizer,
            len,
            params: (&self.params).into(),
            grads: (&self.grads).into(),
            m: (&self.m).into(),
            v: Some((&self.v).into()),
            loss: None,
            status: None,
            tasks: 0,
        }
    }
}

/// Runs `steps` steps through one prepared `step`, writing each step's gradient and
/// learning rate in between.
fn gpu_run(step: &OptimizerStep, b: &Buffers, s: &State, steps: usize) {
    let gpu = gpu();
    for (t, g) in s.grads.iter().take(steps).enumerate() {
        gpu.write(&b.grads, 0, g).unwrap();
        step.set_step(gpu.queue(), t as u32 + 1, LEARNING_RATES[t % 3]);
        run(gpu, |e| step.dispatch().encode(e));
    }
}

fn check(opt: OptimizerConfig, b: &Buffers, s: &State, steps: usize, what: &str) {
    let gpu = gpu();
    let len = s.params.len();
    let (want_p, want_m, want_v) = reference_run(opt, s, steps);
    assert_close(
        &format!("params {what}"),
        &read(gpu, &b.params, len),
        &want_p,
        TOLERANCE,
    );
    assert_close(
        &format!("m {what}"),
        &read(gpu, &b.m, len),
        &want_m,
        TOLERANCE,
    );
    let got_v = read(gpu, &b.v, len);
    if opt.needs_second_moment() {
        assert_close(&format!("v {what}"), &got_v, &want_v, TOLERANCE);
    } else {
        assert_eq!(got_v, s.v, "SGD touched v ({what})");
    }
}

#[test]
fn every_rule_matches_the_reference_over_three_steps() {
    let gpu = gpu();
    let kernel = Optimizer::new(gpu);
    for (n, &len) in [1usize, 3, 1000, 70_000].iter().enumerate() {
        for (k, opt) in optimizers().into_iter().enumerate() {
            let s = state(len, 3, (10 * n + k) as u64);
            let b = Buffers::new(&s);
            let step = kernel.update(&b.args(opt, len)).unwrap();
            gpu_run(&step, &b, &s, 3);
            check(opt, &b, &s, 3, &format!("len {len} {opt:?}"));
        }
    }
    gpu.check().unwrap();
}

#[test]
fn lengths_beyond_one_workgroup_per_element_use_the_grid_stride_loop() {
    let gpu = gpu();
    let max = gpu.limits().max_compute_workgroups_per_dimension as usize;
    // Each invocation updates ELEMENTS_PER_INVOCATION elements unless the workgroups
    // would be too many: a workgroup of one makes "more elements than max workgroups ×
    // workgroup size × elements per invocation" cheap to test; the default size gets
    // the same length, each invocation looping over its elements.
    for wg in [1u32, Optimizer::new(gpu).workgroup_size()] {
        let kernel = Optimizer::with_workgroup_size(gpu, wg).unwrap();
        let len = max * ELEMENTS_PER_INVOCATION + 1001;
        let opt = OptimizerConfig::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let s = state(len, 2, 77);
        let b = Buffers::new(&s);
        let step = kernel.update(&b.args(opt, len)).unwrap();
        let workgroups = len.div_ceil(wg as usize * ELEMENTS_PER_INVOCATION).min(max);
        assert_eq!(step.dispatch().workgroups(), [workgroups as u32, 1, 1]);
        gpu_run(&step, &b, &s, 2);
        check(opt, &b, &s, 2, &format!("len {len} wg {wg}"));
    }
}

#[test]
fn the_learning_rate_changes_without_rebuilding() {
    let gpu = gpu();
    let kernel = Optimizer::new(gpu);
    let len = 257;
    let opt = OptimizerConfig::Sgd { momentum: 0.0 };
    let s = state(len, 1, 5);
    let b = Buffers::new(&s);
    let step = kernel.update(&b.args(opt, len)).unwrap();
    // Plain SGD with the same gradient: p_k = p_0 − (Σ lr) · g, whatever the steps.
    let mut p = to_f64(&s.params);
    for (t, lr) in [0.5f32, 0.0, 0.125, 2.0].into_iter().enumerate() {
        step.set_step(gpu.queue(), t as u32 + 1, lr);
        run(gpu, |e| step.encode(e));
        for (p, g) in p.iter_mut().zip(&s.grads[0]) {
            *p -= lr as f64 * *g as f64;
        }
        assert_close(
            &format!("params after lr {lr}"),
            &read(gpu, &b.params, len),
            &p,
            TOLERANCE,
        );
    }
}

#[test]
fn step_zero_is_a_no_op() {
    let gpu = gpu();
    let kernel = Optimizer::new(gpu);
    let len = 100;
    for opt in optimizers() {
        let s = state(len, 1, 6);
        let b = Buffers::new(&s);
        let step = kernel.update(&b.args(opt, len)).unwrap();
        // Before any set_step, and after set_step(0, ..).
        run(gpu, |e| step.encode(e));
        step.set_step(gpu.queue(), 0, 1.0);
        run(gpu, |e| step.encode(e));
        assert_eq!(read(gpu, &b.params, len), s.params, "{opt:?}");
        assert_eq!(read(gpu, &b.m, len), s.m, "{opt:?}");
        assert_eq!(read(gpu, &b.v, len), s.v, "{opt:?}");
    }
}

#[test]
fn a_non_finite_loss_skips_the_step_and_is_recorded() {
    let gpu = gpu();
    let kernel = Optimizer::new(gpu);
    let len = 1000;
    let tasks = 3;
    for opt in [
        OptimizerConfig::Sgd { momentum: 0.9 },
        OptimizerConfig::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        },
    ] {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let s = state(len, 4, 8);
            let b = Buffers::new(&s);
            let loss = gpu.upload("loss", &[0.5f32, 0.25, 1.0]).unwrap();
            let status = gpu.upload("status", &[0u32; 4]).unwrap();
            let args = OptimizerUpdate {
                loss: Some((&loss).into()),
                status: Some((&status).into()),
                tasks,
                ..b.args(opt, len)
            };
            let step = kernel.update(&args).unwrap();
            let what = format!("{opt:?} loss {bad}");

            // Step 1: finite loss, a normal update.
            gpu_run(&step, &b, &s, 1);
            check(opt, &b, &s, 1, &what);
            let status_words = |gpu: &mmoe_wgpu::Gpu| gpu.read::<u32>(&status, 0, 4).unwrap();
            assert_eq!(status_words(gpu), [0; 4], "{what}");
            let after_one = (
                read(gpu, &b.params, len),
                read(gpu, &b.m, len),
                read(gpu, &b.v, len),
            );

            // Step 2: task 1's loss is non-finite: nothing moves, status records it.
            let losses = [0.5f32, bad, 1.0];
            gpu.write(&loss, 0, &losses).unwrap();
            gpu.write(&b.grads, 0, &s.grads[1]).unwrap();
            step.set_step(gpu.queue(), 2, 0.01);
            run(gpu, |e| step.encode(e));
            let frozen = (
                read(gpu, &b.params, len),
                read(gpu, &b.m, len),
                read(gpu, &b.v, len),
            );
            assert!(frozen == after_one, "step 2 changed state ({what})");
            let want_status = [2, losses[0].to_bits(), bad.to_bits(), losses[2].to_bits()];
            assert_eq!(status_words(gpu), want_status, "{what}");

            // Steps 3 and 4: finite losses again, but the guard has tripped. A
            // different non-finite loss at step 4 does not overwrite the record.
            for (t, l) in [(3u32, [0.1f32, 0.2, 0.3]), (4, [f32::NAN; 3])] {
                gpu.write(&loss, 0, &l).unwrap();
                gpu.write(&b.grads, 0, &s.grads[t as usize - 1]).unwrap();
                step.set_step(gpu.queue(), t, 0.01);
                run(gpu, |e| step.encode(e));
            }
            let still = (
                read(gpu, &b.params, len),
                read(gpu, &b.m, len),
                read(gpu, &b.v, len),
            );
            assert!(still == after_one, "a later step changed state ({what})");
            assert_eq!(status_words(gpu), want_status, "{what}");
        }
    }
    gpu.check().unwrap();
}

#[test]
fn the_guard_stays_silent_while_losses_are_finite() {
    let gpu = gpu();
    let kernel = Optimizer::new(gpu);
    let len = 70_000;
    let opt = optimizers()[4];
    let s = state(len, 3, 12);
    let b = Buffers::new(&s);
    // Loss and status at unaligned offsets inside larger buffers; huge but finite
    // losses.
    let loss = gpu
        .upload("loss", &[f32::NAN, f32::MAX, -f32::MAX, f32::NAN])
        .unwrap();
    let status = gpu.upload("status", &[9u32, 0, 0, 0, 9]).unwrap();
    let args = OptimizerUpdate {
        loss: Some(BufferView::at(&loss, 4)),
        status: Some(BufferView::at(&status, 4)),
        tasks: 2,
        ..b.args(opt, len)
    };
    let step = kernel.update(&args).unwrap();
    gpu_run(&step, &b, &s, 3);
    check(opt, &b, &s, 3, "guarded AdamW");
    assert_eq!(gpu.read::<u32>(&status, 0, 5).unwrap(), [9, 0, 0, 0, 9]);
}

#[test]
fn operands_at_unaligned_offsets_inside_shared_buffers() {
    let gpu = gpu();
    let kernel = Optimizer::new(gpu);
    let len = 1001;
    let opt = optimizers()[3];
    let s = state(len, 3, 13);
    // params, m and v in one buffer, none at a binding-aligned offset.
    let (po, mo, vo) = (3usize, 3 + len + 1, 3 + 2 * (len + 1) + 5);
    let total = vo + len + 7;
    let mut packed = vec![-7.0f32; total];
    packed[po..po + len].copy_from_slice(&s.params);
    packed[mo..mo + len].copy_from_slice(&s.m);
    packed[vo..vo + len].copy_from_slice(&s.v);
    let state_buf = gpu.upload("state", &packed).unwrap();
    let go = 11usize;
    let grads = gpu.storage_buffer("grads", 4 * (go + len) as u64).unwrap();
    let args = OptimizerUpdate {
        params_copy: None,
        precision: Precision::F32,
        config: opt,
        len,
        params: BufferView::at(&state_buf, 4 * po as u64),
        grads: BufferView::at(&grads, 4 * go as u64),
        m: BufferView::at(&state_buf, 4 * mo as u64),
        v: Some(BufferView::at(&state_buf, 4 * vo as u64)),
        loss: None,
        status: None,
        tasks: 0,
    };
    let step = kernel.update(&args).unwrap();
    for (t, g) in s.grads.iter().enumerate() {
        gpu.write(&grads, 4 * go as u64, g).unwrap();
        step.set_step(gpu.queue(), t as u32 + 1, LEARNING_RATES[t]);
        run(gpu, |e| step.encode(e));
    }
    let all = read(gpu, &state_buf, total);
    let (want_p, want_m, want_v) = reference_run(opt, &s, 3);
    assert_close("params at offset", &all[po..po + len], &want_p, TOLERANCE);
    assert_close("m at offset", &all[mo..mo + len], &want_m, TOLERANCE);
    assert_close("v at offset", &all[vo..vo + len], &want_v, TOLERANCE);
    for (i, &x) in all.iter().enumerate() {
        let inside = [po, mo, vo].iter().any(|&o| (o..o + len).contains(&i));
        if !inside {
            assert_eq!(x, -7.0, "wrote outside the operands at {i}");
        }
    }
}

#[test]
fn results_are_bitwise_reproducible() {
    let gpu = gpu();
    for opt in optimizers() {
        let len = 70_000;
        let s = state(len, 3, 21);
        let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let mut first = None;
        // Two runs, the second with another workgroup size (element-wise, so the
        // mapping of elements to invocations must not matter).
        for wg in [64, 24] {
            let kernel = Optimizer::with_workgroup_size(gpu, wg).unwrap();
            let b = Buffers::new(&s);
            let step = kernel.update(&b.args(opt, len)).unwrap();
            gpu_run(&step, &b, &s, 3);
            let out = (
                bits(read(gpu, &b.params, len)),
                bits(read(gpu, &b.m, len)),
                bits(read(gpu, &b.v, len)),
            );
            match &first {
                None => first = Some(out),
                Some(f) => assert!(f == &out, "bits differ between runs for {opt:?}"),
            }
        }
    }
}

#[test]
fn reference_rules_on_hand_computed_values() {
    // One element, step 1: Adam's bias-corrected first step is lr · g / (|g| + eps').
    let (mut p, mut m, mut v) = ([1.0], [0.0], [0.0]);
    let adam = OptimizerConfig::Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    reference::step(adam, 1, 0.1, &mut p, &[0.5], &mut m, Some(&mut v)).unwrap();
    assert!(
        (p[0] - (1.0 - 0.1 * 0.5 / (0.5 + 1e-8))).abs() < 1e-6,
        "{p:?}"
    );
    // AdamW decays the parameter by lr · wd · p besides the Adam step.
    let (mut p, mut m, mut v) = ([2.0], [0.0], [0.0]);
    let adamw = OptimizerConfig::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.5,
    };
    reference::step(adamw, 1, 0.1, &mut p, &[0.0], &mut m, Some(&mut v)).unwrap();
    assert!((p[0] - 1.9).abs() < 1e-12, "{p:?}");
    // SGD with momentum.
    let (mut p, mut m) = ([1.0], [1.0]);
    reference::step(
        OptimizerConfig::Sgd { momentum: 0.5 },
        3,
        0.1,
        &mut p,
        &[2.0],
        &mut m,
        None,
    )
    .unwrap();
    assert_eq!((p[0], m[0]), (1.0 - 0.1 * 2.5, 2.5));
    // Bad calls.
    assert!(reference::step(adam, 1, 0.1, &mut [0.0], &[0.0], &mut [0.0], None).is_err());
    assert!(
        reference::step(
            adam,
            0,
            0.1,
            &mut [0.0],
            &[0.0],
            &mut [0.0],
            Some(&mut [0.0])
        )
        .is_err()
    );
    assert!(
        reference::step(
            adam,
            1,
            0.1,
            &mut [0.0],
            &[0.0, 1.0],
            &mut [0.0],
            Some(&mut [0.0])
        )
        .is_err()
    );
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let gpu = gpu();
    let kernel = Optimizer::new(gpu);
    let len = 10;
    let s = state(len, 1, 2);
    let b = Buffers::new(&s);
    let adam = optimizers()[2];
    let args = b.args(adam, len);
    kernel.update(&args).unwrap();
    let small = gpu.storage_buffer("small", 4 * 9).unwrap();
    let loss = gpu.storage_buffer("loss", 8).unwrap();
    let status = gpu.storage_buffer("status", 12).unwrap();

    expect_err(kernel.update(&OptimizerUpdate { len: 0, ..args }), &["len"]);
    expect_err(
        kernel.update(&OptimizerUpdate { len: 11, ..args }),
        &["`params`"],
    );
    expect_err(
        kernel.update(&OptimizerUpdate { v: None, ..args }),
        &["`v`"],
    );
    // SGD needs no v.
    kernel
        .update(&OptimizerUpdate {
            config: OptimizerConfig::Sgd { momentum: 0.5 },
            v: None,
            ..args
        })
        .unwrap();
    for (name, a) in [
        (
            "`params`",
            OptimizerUpdate {
                params: (&small).into(),
                ..args
            },
        ),
        (
            "`grads`",
            OptimizerUpdate {
                grads: BufferView::at(&b.grads, 4),
                ..args
            },
        ),
        (
            "`m`",
            OptimizerUpdate {
                m: (&small).into(),
                ..args
            },
        ),
        (
            "`v`",
            OptimizerUpdate {
                v: Some((&small).into()),
                ..args
            },
        ),
    ] {
        let e = kernel.update(&a).unwrap_err();
        assert!(
            matches!(e, Error::Shape { .. }) && e.to_string().contains(name),
            "{e}"
        );
    }
    // The gradient is also the parameters: an input that is an output.
    expect_err(
        kernel.update(&OptimizerUpdate {
            grads: (&b.params).into(),
            ..args
        }),
        &["distinct buffers"],
    );
    // m overlapping params.
    expect_err(
        kernel.update(&OptimizerUpdate {
            m: (&b.params).into(),
            ..args
        }),
        &["overlaps"],
    );
    // The guard: both buffers or neither, T ≥ 1, sizes 4·T and 4·(1 + T).
    expect_err(
        kernel.update(&OptimizerUpdate {
            loss: Some((&loss).into()),
            tasks: 2,
            ..args
        }),
        &["`status`"],
    );
    expect_err(
        kernel.update(&OptimizerUpdate {
            status: Some((&status).into()),
            tasks: 2,
            ..args
        }),
        &["`loss`"],
    );
    let guarded = OptimizerUpdate {
        loss: Some((&loss).into()),
        status: Some((&status).into()),
        tasks: 2,
        ..args
    };
    kernel.update(&guarded).unwrap();
    expect_err(
        kernel.update(&OptimizerUpdate {
            tasks: 0,
            ..guarded
        }),
        &["tasks"],
    );
    expect_err(
        kernel.update(&OptimizerUpdate {
            tasks: 3,
            ..guarded
        }),
        &["`loss`"],
    );
    expect_err(
        kernel.update(&OptimizerUpdate {
            status: Some(BufferView::at(&status, 4)),
            ..guarded
        }),
        &["`status`"],
    );
    expect_err(
        kernel.update(&OptimizerUpdate {
            status: Some(BufferView::at(&loss, 0)),
            loss: Some(BufferView::at(&status, 0)),
            ..guarded
        }),
        &["`status`"],
    );
    // Hyperparameters out of range.
    for (opt, needle) in [
        (OptimizerConfig::Sgd { momentum: 1.0 }, "momentum"),
        (OptimizerConfig::Sgd { momentum: f32::NAN }, "momentum"),
        (
            OptimizerConfig::Adam {
                beta1: 1.0,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
            },
            "beta1",
        ),
        (
            OptimizerConfig::AdamW {
                beta1: 0.9,
                beta2: -0.1,
                eps: 1e-8,
                weight_decay: 0.0,
            },
            "beta2",
        ),
        (
            OptimizerConfig::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 0.0,
                weight_decay: 0.0,
            },
            "eps",
        ),
        (
            OptimizerConfig::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: -1.0,
            },
            "weight_decay",
        ),
    ] {
        expect_err(
            kernel.update(&OptimizerUpdate {
                config: opt,
                ..args
            }),
            &[needle],
        );
    }
    expect_err(
        kernel.update(&OptimizerUpdate {
            params: BufferView::at(&b.params, 2),
            ..args
        }),
        &["multiple of 4"],
    );
    for wg in [0, 1 << 20] {
        let e = Optimizer::with_workgroup_size(gpu, wg).unwrap_err();
        assert!(e.to_string().contains("workgroup size"), "{e}");
    }
    gpu.check().unwrap();
}
