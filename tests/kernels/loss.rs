//! Loss kernel against the CPU reference on awkward shapes, mixed kinds and weights,
//! huge logits; operands at unaligned offsets; bitwise reproducibility; the
//! reference's gradient against finite differences; bad input rejected with errors.

use crate::common::*;
use mmoe_wgpu::Error;
use mmoe_wgpu::kernels::BufferView;
use mmoe_wgpu::kernels::Precision;
use mmoe_wgpu::kernels::loss::{Loss, LossForward, LossKind, TaskLoss};
use mmoe_wgpu::reference::loss as reference;
use mmoe_wgpu::rng::Rng;

const TOLERANCE: f64 = 1e-5;

/// Tasks alternate kinds, starting from a different kind per case, with weights
/// that are not all 1.
fn tasks(count: usize, shift: usize) -> Vec<TaskLoss> {
    let weights = [1.0, 0.25, 3.0, 0.7, 1.5];
    (0..count)
        .map(|t| TaskLoss {
            kind: if (t + shift).is_multiple_of(2) {
                LossKind::BinaryCrossEntropy
            } else {
                LossKind::MeanSquaredError
            },
            weight: weights[(t + shift) % weights.len()],
        })
        .collect()
}

/// Predictions and targets `[T, rows]`: regression values for MSE tasks; logits
/// with a few of ±100 and 0/1 labels (some soft) for BCE and ESMM tasks.
pub(crate) fn data(tasks: &[TaskLoss], rows: usize, rng: &mut Rng) -> (Vec<f32>, Vec<f32>) {
    let mut p = Vec::with_capacity(tasks.len() * rows);
    let mut y = Vec::with_capacity(tasks.len() * rows);
    for task in tasks {
        for _ in 0..rows {
            match task.kind {
                LossKind::MeanSquaredError => {
                    p.push(rng.uniform(-2.0, 2.0) as f32);
                    y.push(rng.uniform(-2.0, 2.0) as f32);
                }
                _ => {
                    let u = rng.unit();
                    p.push(if u < 0.05 {
                        100.0
                    } else if u < 0.1 {
                        -100.0
                    } else {
                        rng.uniform(-6.0, 6.0) as f32
                    });
                    let label = rng.unit();
                    y.push(if label < 0.1 {
                        rng.unit() as f32
                    } else if label < 0.55 {
                        1.0
                    } else {
                        0.0
                    });
                }
            }
        }
    }
    (p, y)
}

pub(crate) fn reference_tasks(tasks: &[TaskLoss]) -> Vec<(LossKind, f64)> {
    tasks.iter().map(|t| (t.kind, t.weight as f64)).collect()
}

pub(crate) struct Buffers {
    predictions: wgpu::Buffer,
    targets: wgpu::Buffer,
    loss: wgpu::Buffer,
    grad: wgpu::Buffer,
}

impl Buffers {
    pub(crate) fn new(p: &[f32], y: &[f32], tasks: usize) -> Buffers {
        let gpu = gpu();
        Buffers {
            predictions: gpu.upload("predictions", p).unwrap(),
            targets: gpu.upload("targets", y).unwrap(),
            loss: gpu.storage_buffer("loss", 4 * tasks as u64).unwrap(),
            grad: gpu.storage_buffer("grad", 4 * p.len() as u64).unwrap(),
        }
    }

    pub(crate) fn args<'a>(&'a self, rows: usize, tasks: &'a [TaskLoss]) -> LossForward<'a> {
        LossForward {
            precision: Precision::F32,
            rows,
            tasks,
            predictions: (&self.predictions).into(),
            targets: (&self.targets).into(),
            loss: (&self.loss).into(),
            grad: (&self.grad).into(),
        }
    }

    pub(crate) fn run(
        &self,
        kernel: &Loss,
        rows: usize,
        tasks: &[TaskLoss],
    ) -> (Vec<f32>, Vec<f32>) {
        let gpu = gpu();
        run(gpu, |e| {
            kernel.encode_forward(e, &self.args(rows, tasks)).unwrap()
        });
        (
            read(gpu, &self.loss, tasks.len()),
            read(gpu, &self.grad, tasks.len() * rows),
        )
    }
}

#[test]
fn matches_the_reference_on_awkward_shapes() {
    let gpu = gpu();
    let kernels = [
        Loss::new(gpu),
        Loss::with_workgroup_size(gpu, 1).unwrap(),
        Loss::with_workgroup_size(gpu, 256).unwrap(),
    ];
    let mut rng = Rng::new(1);
    for &rows in &[1usize, 3, 17, 100, 257, 1000] {
        for (shift, &count) in [1usize, 2, 5].iter().enumerate() {
            let tasks = tasks(count, shift + rows);
            let (p, y) = data(&tasks, rows, &mut rng);
            let (want_loss, want_grad) =
                reference::forward(&reference_tasks(&tasks), rows, &to_f64(&p), &to_f64(&y))
                    .unwrap();
            let buffers = Buffers::new(&p, &y, count);
            for kernel in &kernels {
                let what = format!(
                    "rows {rows}, {count} tasks, wg {}: {tasks:?}",
                    kernel.workgroup_size()
                );
                let (loss, grad) = buffers.run(kernel, rows, &tasks);
                assert!(
                    loss.iter().chain(&grad).all(|v| v.is_finite()),
                    "non-finite output for {what}"
                );
                assert_close(&format!("loss {what}"), &loss, &want_loss, TOLERANCE);
                assert_close(&format!("grad {what}"), &grad, &want_grad, TOLERANCE);
                // Each task on its own scale too: a small loss next to a large one
                // must not hide its error.
                for t in 0..count {
                    assert_close(
                        &format!("loss of task {t} {what}"),
                        &loss[t..t + 1],
                        &want_loss[t..t + 1],
                        TOLERANCE,
                    );
                    assert_close(
                        &format!("grad of task {t} {what}"),
                        &grad[t * rows..(t + 1) * rows],
                        &want_grad[t * rows..(t + 1) * rows],
                        TOLERANCE,
                    );
                }
            }
        }
    }
    gpu.check().unwrap();
}

#[test]
fn binary_cross_entropy_is_stable_for_huge_logits() {
    let gpu = gpu();
    let kernel = Loss::new(gpu);
    // Every combination of ±100 (and ±30, where 1 + e^-|p| rounds to 1 in f32) with
    // labels 0 and 1, correct and wrong.
    let logits = [100.0f32, -100.0, 30.0, -30.0, 88.0, -88.0, 17.0, -17.0];
    let mut p = Vec::new();
    let mut y = Vec::new();
    for &l in &logits {
        for label in [0.0f32, 1.0] {
            p.push(l);
            y.push(label);
        }
    }
    let rows = p.len();
    let tasks = [TaskLoss {
        kind: LossKind::BinaryCrossEntropy,
        weight: 1.0,
    }];
    let buffers = Buffers::new(&p, &y, 1);
    let (loss, grad) = buffers.run(&kernel, rows, &tasks);
    let (want_loss, want_grad) =
        reference::forward(&reference_tasks(&tasks), rows, &to_f64(&p), &to_f64(&y)).unwrap();
    assert!(
        loss.iter().chain(&grad).all(|v| v.is_finite()),
        "{loss:?} {grad:?}"
    );
    assert_close("huge-logit loss", &loss, &want_loss, TOLERANCE);
    assert_close("huge-logit grad", &grad, &want_grad, TOLERANCE);

    // Only confident, correct predictions: the loss is tiny but must not round to
    // zero relative to itself (log(1 + x) for small x).
    let p: Vec<f32> = vec![20.0, -20.0, 12.0, -9.0];
    let y: Vec<f32> = vec![1.0, 0.0, 1.0, 0.0];
    let buffers = Buffers::new(&p, &y, 1);
    let (loss, grad) = buffers.run(&kernel, 4, &tasks);
    let (want_loss, want_grad) =
        reference::forward(&reference_tasks(&tasks), 4, &to_f64(&p), &to_f64(&y)).unwrap();
    assert!(loss[0] > 0.0);
    assert_close("confident loss", &loss, &want_loss, TOLERANCE);
    assert_close("confident grad", &grad, &want_grad, TOLERANCE);
}

#[test]
fn operands_at_unaligned_offsets_inside_shared_buffers() {
    let gpu = gpu();
    let kernel = Loss::new(gpu);
    let (rows, count) = (37usize, 3usize);
    let tasks = tasks(count, 0);
    let (p, y) = data(&tasks, rows, &mut Rng::new(7));
    let len = rows * count;
    let (po, yo) = (5usize, 5 + len + 3);
    let mut packed = vec![f32::NAN; yo + len + 2];
    packed[po..po + len].copy_from_slice(&p);
    packed[yo..yo + len].copy_from_slice(&y);
    let inputs = gpu.upload("packed inputs", &packed).unwrap();
    // Loss and grad in one output buffer, neither at a binding-aligned offset.
    let (lo, go) = (3usize, 3 + count + 2);
    let total = go + len + 4;
    let out = gpu.upload("outputs", &vec![-7.0f32; total]).unwrap();
    let args = LossForward {
        precision: Precision::F32,
        rows,
        tasks: &tasks,
        predictions: BufferView::at(&inputs, 4 * po as u64),
        targets: BufferView::at(&inputs, 4 * yo as u64),
        loss: BufferView::at(&out, 4 * lo as u64),
        grad: BufferView::at(&out, 4 * go as u64),
    };
    let dispatch = kernel.forward(&args).unwrap();
    run(gpu, |e| dispatch.encode(e));
    let all = read(gpu, &out, total);
    let (want_loss, want_grad) =
        reference::forward(&reference_tasks(&tasks), rows, &to_f64(&p), &to_f64(&y)).unwrap();
    assert_close(
        "loss at offset",
        &all[lo..lo + count],
        &want_loss,
        TOLERANCE,
    );
    assert_close("grad at offset", &all[go..go + len], &want_grad, TOLERANCE);
    for (i, &v) in all.iter().enumerate() {
        if !(lo..lo + count).contains(&i) && !(go..go + len).contains(&i) {
            assert_eq!(v, -7.0, "wrote outside loss and grad at {i}");
        }
    }
}

#[test]
fn results_are_bitwise_reproducible() {
    let gpu = gpu();
    let kernel = Loss::new(gpu);
    let (rows, count) = (1000usize, 5usize);
    let tasks = tasks(count, 1);
    let (p, y) = data(&tasks, rows, &mut Rng::new(3));
    let buffers = Buffers::new(&p, &y, count);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let dispatch = kernel.forward(&buffers.args(rows, &tasks)).unwrap();
    let mut first = None;
    for _ in 0..3 {
        gpu.write(&buffers.loss, 0, &vec![0.0f32; count]).unwrap();
        gpu.write(&buffers.grad, 0, &vec![0.0f32; count * rows])
            .unwrap();
        run(gpu, |e| dispatch.encode(e));
        let out = (
            bits(&read(gpu, &buffers.loss, count)),
            bits(&read(gpu, &buffers.grad, count * rows)),
        );
        match &first {
            None => first = Some(out),
            Some(f) => assert_eq!(f, &out, "loss or grad bits differ between runs"),
        }
    }
    // A fresh dispatch (a new task table) gives the same bits as well.
    let (loss, grad) = buffers.run(&kernel, rows, &tasks);
    assert_eq!(first.unwrap(), (bits(&loss), bits(&grad)));
}

#[test]
fn the_dispatch_keeps_its_task_table() {
    let gpu = gpu();
    let kernel = Loss::new(gpu);
    let rows = 9;
    let (p, y) = data(&tasks(2, 0), rows, &mut Rng::new(4));
    let buffers = Buffers::new(&p, &y, 2);
    let dispatch = {
        // The task slice and the arguments go out of scope before the dispatch runs.
        let tasks = tasks(2, 0);
        kernel.forward(&buffers.args(rows, &tasks)).unwrap()
    };
    let other = {
        let tasks = tasks(2, 1);
        kernel.forward(&buffers.args(rows, &tasks)).unwrap()
    };
    drop(other);
    run(gpu, |e| dispatch.encode(e));
    let (want_loss, _) = reference::forward(
        &reference_tasks(&tasks(2, 0)),
        rows,
        &to_f64(&p),
        &to_f64(&y),
    )
    .unwrap();
    assert_close("loss", &read(gpu, &buffers.loss, 2), &want_loss, TOLERANCE);
}

#[test]
fn reference_gradient_matches_finite_differences() {
    let mut rng = Rng::new(9);
    let tasks = [
        (LossKind::MeanSquaredError, 0.5),
        (LossKind::BinaryCrossEntropy, 2.0),
        (LossKind::BinaryCrossEntropy, 1.0),
    ];
    let rows = 6;
    let p: Vec<f64> = (0..tasks.len() * rows)
        .map(|_| rng.uniform(-4.0, 4.0))
        .collect();
    let y: Vec<f64> = (0..tasks.len() * rows)
        .map(|i| {
            if i < rows {
                rng.uniform(-1.0, 1.0)
            } else {
                rng.unit()
            }
        })
        .collect();
    assert_reference_gradient_matches_finite_differences(&tasks, rows, &p, &y);
}

/// The reference's gradient of the summed loss of `tasks` at the logits `p` against
/// central finite differences, element by element.
pub(crate) fn assert_reference_gradient_matches_finite_differences(
    tasks: &[(LossKind, f64)],
    rows: usize,
    p: &[f64],
    y: &[f64],
) {
    let total = |p: &[f64]| -> f64 {
        reference::forward(tasks, rows, p, y)
            .unwrap()
            .0
            .iter()
            .sum()
    };
    let (_, grad) = reference::forward(tasks, rows, p, y).unwrap();
    let eps = 1e-6;
    for i in 0..p.len() {
        let (mut up, mut down) = (p.to_vec(), p.to_vec());
        up[i] += eps;
        down[i] -= eps;
        let numeric = (total(&up) - total(&down)) / (2.0 * eps);
        assert!(
            (numeric - grad[i]).abs() <= 1e-7 * (1.0 + numeric.abs()),
            "grad[{i}]: finite difference {numeric} vs analytic {}",
            grad[i]
        );
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let gpu = gpu();
    let kernel = Loss::new(gpu);
    let (rows, count) = (10usize, 2usize);
    let tasks = tasks(count, 0);
    let p = gpu.storage_buffer("p", 4 * 20).unwrap();
    let y = gpu.storage_buffer("y", 4 * 20).unwrap();
    let loss = gpu.storage_buffer("loss", 4 * 2).unwrap();
    let grad = gpu.storage_buffer("grad", 4 * 20).unwrap();
    let small = gpu.storage_buffer("small", 4 * 19).unwrap();
    let args = LossForward {
        precision: Precision::F32,
        rows,
        tasks: &tasks,
        predictions: (&p).into(),
        targets: (&y).into(),
        loss: (&loss).into(),
        grad: (&grad).into(),
    };
    kernel.forward(&args).unwrap();

    expect_err(kernel.forward(&LossForward { rows: 0, ..args }), &["rows"]);
    expect_err(
        kernel.forward(&LossForward { tasks: &[], ..args }),
        &["tasks"],
    );
    let nan_weight = [
        tasks[0],
        TaskLoss {
            weight: f32::NAN,
            ..tasks[1]
        },
    ];
    expect_err(
        kernel.forward(&LossForward {
            tasks: &nan_weight,
            ..args
        }),
        &["weights in `tasks`"],
    );
    // Too small, each operand in turn: the message names it.
    for (name, a) in [
        (
            "`predictions`",
            LossForward {
                predictions: (&small).into(),
                ..args
            },
        ),
        (
            "`targets`",
            LossForward {
                targets: BufferView::at(&y, 4),
                ..args
            },
        ),
        (
            "`grad`",
            LossForward {
                grad: (&small).into(),
                ..args
            },
        ),
        (
            "`loss`",
            LossForward {
                loss: BufferView::at(&loss, 4),
                ..args
            },
        ),
    ] {
        let e = kernel.forward(&a).unwrap_err();
        assert!(
            matches!(e, Error::Shape { .. }) && e.to_string().contains(name),
            "{e}"
        );
    }
    // More rows than the buffers hold.
    expect_err(
        kernel.forward(&LossForward { rows: 11, ..args }),
        &["`predictions`"],
    );
    // An input that is also an output.
    expect_err(
        kernel.forward(&LossForward {
            grad: (&p).into(),
            ..args
        }),
        &["distinct buffers"],
    );
    // Loss and grad overlapping in one buffer.
    let both = gpu.storage_buffer("both", 4 * 22).unwrap();
    expect_err(
        kernel.forward(&LossForward {
            loss: BufferView::at(&both, 4 * 19),
            grad: (&both).into(),
            ..args
        }),
        &["overlaps"],
    );
    // ...and not overlapping is fine.
    kernel
        .forward(&LossForward {
            loss: BufferView::at(&both, 4 * 20),
            grad: (&both).into(),
            ..args
        })
        .unwrap();
    expect_err(
        kernel.forward(&LossForward {
            targets: BufferView::at(&y, 2),
            ..args
        }),
        &["multiple of 4"],
    );
    for wg in [0, 3, 100, 1 << 20] {
        let e = Loss::with_workgroup_size(gpu, wg).unwrap_err();
        assert!(e.to_string().contains("workgroup size"), "{e}");
    }
    gpu.check().unwrap();
}
