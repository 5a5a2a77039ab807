//! Grouped GEMM kernels against the CPU reference, on awkward shapes and every tiling
//! the adapter offers; the reference's gradients against finite differences; bad
//! input rejected with errors.

use crate::common::gemm::{SmallGemm, gradient_point, on_windows, window_run};
use crate::common::*;
use mmoe_wgpu::kernels::BufferView;
use mmoe_wgpu::kernels::Precision;
use mmoe_wgpu::kernels::grouped_gemm::{
    GroupedGemm, GroupedGemmBackwardInput, GroupedGemmBackwardWeights, GroupedGemmForward, Tiling,
};
use mmoe_wgpu::reference::grouped_gemm as reference;
use mmoe_wgpu::rng::Rng;
use mmoe_wgpu::shape::MAX_COLUMN_WINDOWS;
use mmoe_wgpu::{Activation, ColumnWindow, ColumnWindows, Error, GemmShape, Gpu, InputLayout};

const TOLERANCE: f64 = 1e-4;

/// Rows from the design's list; widths that are not tile multiples; 1, 2, 8, 16
/// groups; both input layouts, both activations, with and without bias. Rotating
/// through the lists keeps the run short while every value appears. Then the blocks
/// of an extraction level: shared and task groups, task groups only (the shared
/// block read by none: its dX is zero), shared groups only (the task blocks' dX
/// zero), one group of each.
fn cases() -> Vec<(GemmShape, Activation, bool)> {
    let rows = [1, 3, 17, 100, 257];
    let widths = [(1, 1), (5, 7), (13, 33), (100, 16), (64, 9), (37, 70)];
    let groups = [1, 2, 8, 16];
    let mut out = Vec::new();
    for (i, &r) in rows.iter().enumerate() {
        for j in 0..4 {
            let (inputs, outputs) = widths[(i + j) % widths.len()];
            let g = groups[(i + 3 * j) % groups.len()];
            let input = if j % 2 == 0 {
                InputLayout::Shared
            } else {
                InputLayout::PerGroup
            };
            let act = if (i + j) % 3 == 0 {
                Activation::Identity
            } else {
                Activation::Relu
            };
            let bias = (i + j) % 4 != 1;
            out.push((
                GemmShape {
                    groups: g,
                    rows: r,
                    inputs,
                    outputs,
                    input,
                },
                act,
                bias,
            ));
        }
    }
    let level = |tasks, shared, own| InputLayout::Level { tasks, shared, own };
    for (input, rows, (inputs, outputs), act, bias) in [
        (level(3, 2, 2), 17, (13, 33), Activation::Relu, true),
        (level(2, 0, 1), 100, (37, 70), Activation::Identity, false),
        (level(2, 3, 0), 257, (5, 7), Activation::Relu, true),
        (level(3, 1, 1), 3, (64, 9), Activation::Identity, true),
    ] {
        let InputLayout::Level { tasks, shared, own } = input else {
            unreachable!()
        };
        let shape = GemmShape {
            groups: shared + tasks * own,
            rows,
            inputs,
            outputs,
            input,
        };
        out.push((shape, act, bias));
    }
    for (columns, runs, rows, outputs, act, bias) in column_window_cases() {
        let shape = on_windows(columns, &runs, rows, outputs);
        out.push((shape, act, bias));
    }
    out
}

/// Column windows: disjoint halves, windows that coincide, partial overlaps of
/// different widths that are not tile multiples (leaving columns no group reads),
/// and the most windows a dispatch takes, one group each.
#[allow(clippy::type_complexity)]
fn column_window_cases() -> Vec<(usize, Vec<ColumnWindow>, usize, usize, Activation, bool)> {
    let eight = (0..MAX_COLUMN_WINDOWS)
        .map(|i| window_run(1, i, 1 + i % 3))
        .collect();
    vec![
        (
            20,
            vec![window_run(4, 0, 10), window_run(4, 10, 10)],
            17,
            33,
            Activation::Relu,
            true,
        ),
        (
            13,
            vec![window_run(2, 0, 13), window_run(3, 0, 13)],
            100,
            16,
            Activation::Relu,
            false,
        ),
        (
            40,
            vec![
                window_run(1, 3, 5),
                window_run(2, 0, 37),
                window_run(1, 30, 9),
            ],
            100,
            9,
            Activation::Identity,
            true,
        ),
        (11, eight, 3, 70, Activation::Relu, true),
    ]
}

struct Data {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
    dx_prior: Vec<f32>,
}

fn data(shape: &GemmShape, seed: u64) -> Data {
    let mut rng = Rng::new(seed);
    Data {
        x: random(&mut rng, shape.x_len(), 1.0),
        w: random(&mut rng, shape.w_len(), 0.5),
        b: random(&mut rng, shape.b_len(), 0.5),
        dy: random(&mut rng, shape.y_len(), 1.0),
        dx_prior: random(&mut rng, shape.x_len(), 1.0),
    }
}

#[test]
fn every_tiling_matches_the_reference_and_each_other_bitwise() {
    every_tiling_matches_the_reference_and_each_other_bitwise_on(gpu());
}

pub(crate) fn every_tiling_matches_the_reference_and_each_other_bitwise_on(gpu: &Gpu) {
    let gemm = GroupedGemm::new(gpu);
    let tilings = gemm.tilings();
    eprintln!("tilings: {tilings:?}");
    for (n, (shape, act, with_bias)) in cases().into_iter().enumerate() {
        let what = format!("{shape:?} {act:?} bias={with_bias}");
        let d = data(&shape, n as u64);
        let bias = with_bias.then_some(&d.b[..]);
        let b64 = bias.map(to_f64);
        let want_y =
            reference::forward(&shape, act, &to_f64(&d.x), &to_f64(&d.w), b64.as_deref()).unwrap();
        let want_y32: Vec<f32> = want_y.iter().map(|&v| v as f32).collect();
        let want = reference::backward(
            &shape,
            act,
            &to_f64(&d.x),
            &to_f64(&d.w),
            &to_f64(&want_y32),
            &to_f64(&d.dy),
        )
        .unwrap();

        let x = gpu.upload("x", &d.x).unwrap();
        let w = gpu.upload("w", &d.w).unwrap();
        let b = gpu.upload("b", &d.b).unwrap();
        let dy = gpu.upload("dy", &d.dy).unwrap();
        let y = gpu.storage_buffer("y", 4 * shape.y_len() as u64).unwrap();
        let dx = gpu.storage_buffer("dx", 4 * shape.x_len() as u64).unwrap();
        let dw = gpu.storage_buffer("dw", 4 * shape.w_len() as u64).unwrap();
        let db = gpu.storage_buffer("db", 4 * shape.b_len() as u64).unwrap();

        let mut first: Option<[Vec<f32>; 4]> = None;
        for &tiling in &tilings {
            let fwd = GroupedGemmForward {
                precision: Precision::F32,
                shape,
                activation: act,
                x: (&x).into(),
                w: (&w).into(),
                bias: with_bias.then_some(BufferView::new(&b)),
                y: (&y).into(),
            };
            let bi = GroupedGemmBackwardInput {
                precision: Precision::F32,
                shape,
                activation: act,
                dy: (&dy).into(),
                y: Some((&y).into()),
                w: (&w).into(),
                dx: (&dx).into(),
                accumulate: false,
            };
            let bw = GroupedGemmBackwardWeights {
                precision: Precision::F32,
                shape,
                activation: act,
                x: (&x).into(),
                dy: (&dy).into(),
                y: Some((&y).into()),
                dw: (&dw).into(),
                db: with_bias.then_some(BufferView::new(&db)),
            };
            let f = gemm.forward_with(&fwd, tiling).unwrap();
            let i = gemm.backward_input_with(&bi, tiling).unwrap();
            let wt = gemm.backward_weights_with(&bw, tiling).unwrap();
            run(gpu, |e| {
                f.encode(e);
                i.encode(e);
                wt.encode(e);
            });
            let got_y = read(gpu, &y, shape.y_len());
            let got_dx = read(gpu, &dx, shape.x_len());
            let got_dw = read(gpu, &dw, shape.w_len());
            let got_db = read(gpu, &db, shape.b_len());
            assert_close(&format!("Y {tiling:?} {what}"), &got_y, &want_y, TOLERANCE);
            assert_close(
                &format!("dX {tiling:?} {what}"),
                &got_dx,
                &want.dx,
                TOLERANCE,
            );
            assert_close(
                &format!("dW {tiling:?} {what}"),
                &got_dw,
                &want.dw,
                TOLERANCE,
            );
            if with_bias {
                assert_close(
                    &format!("db {tiling:?} {what}"),
                    &got_db,
                    &want.db,
                    TOLERANCE,
                );
            }
            let outs = [got_y, got_dx, got_dw, got_db];
            match &first {
                None => first = Some(outs),
                Some(first) => {
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    for (name, (a, b)) in
                        ["Y", "dX", "dW", "db"].iter().zip(first.iter().zip(&outs))
                    {
                        assert_eq!(
                            bits(a),
                            bits(b),
                            "{name} bits differ under {tiling:?} for {what}"
                        );
                    }
                }
            }
        }
    }
    gpu.check().unwrap();
}

#[test]
fn backward_input_accumulates_into_dx() {
    backward_input_accumulates_into_dx_on(gpu());
}

pub(crate) fn backward_input_accumulates_into_dx_on(gpu: &Gpu) {
    let gemm = GroupedGemm::new(gpu);
    for input in [InputLayout::Shared, InputLayout::PerGroup] {
        let shape = GemmShape {
            groups: 3,
            rows: 19,
            inputs: 10,
            outputs: 6,
            input,
        };
        let d = data(&shape, 99);
        let y = reference::forward(&shape, Activation::Relu, &to_f64(&d.x), &to_f64(&d.w), None)
            .unwrap();
        let y32: Vec<f32> = y.iter().map(|&v| v as f32).collect();
        let want = reference::backward(
            &shape,
            Activation::Relu,
            &to_f64(&d.x),
            &to_f64(&d.w),
            &to_f64(&y32),
            &to_f64(&d.dy),
        )
        .unwrap();
        let want_dx: Vec<f64> = want
            .dx
            .iter()
            .zip(&d.dx_prior)
            .map(|(g, &p)| g + p as f64)
            .collect();
        let (w, dy, yb) = (
            gpu.upload("w", &d.w).unwrap(),
            gpu.upload("dy", &d.dy).unwrap(),
            gpu.upload("y", &y32).unwrap(),
        );
        let dx = gpu.upload("dx", &d.dx_prior).unwrap();
        for tiling in gemm.tilings() {
            gpu.write(&dx, 0, &d.dx_prior).unwrap();
            let args = GroupedGemmBackwardInput {
                precision: Precision::F32,
                shape,
                activation: Activation::Relu,
                dy: (&dy).into(),
                y: Some((&yb).into()),
                w: (&w).into(),
                dx: (&dx).into(),
                accumulate: true,
            };
            let dispatch = gemm.backward_input_with(&args, tiling).unwrap();
            run(gpu, |e| dispatch.encode(e));
            assert_close(
                &format!("accumulated dX {input:?} {tiling:?}"),
                &read(gpu, &dx, shape.x_len()),
                &want_dx,
                TOLERANCE,
            );
        }
    }
}

#[test]
fn operands_at_unaligned_offsets_inside_shared_buffers() {
    let gpu = gpu();
    let gemm = GroupedGemm::new(gpu);
    let shape = GemmShape {
        groups: 2,
        rows: 5,
        inputs: 7,
        outputs: 3,
        input: InputLayout::PerGroup,
    };
    let d = data(&shape, 5);
    // All inputs in one buffer at 4-byte-aligned offsets that are not binding-aligned.
    let (xo, wo, bo) = (
        3usize,
        3 + shape.x_len() + 1,
        3 + shape.x_len() + 1 + shape.w_len() + 5,
    );
    let mut packed = vec![f32::NAN; bo + shape.b_len() + 2];
    packed[xo..xo + shape.x_len()].copy_from_slice(&d.x);
    packed[wo..wo + shape.w_len()].copy_from_slice(&d.w);
    packed[bo..bo + shape.b_len()].copy_from_slice(&d.b);
    let inputs = gpu.upload("packed inputs", &packed).unwrap();
    let out = gpu
        .upload("outputs", &vec![-7.0f32; 9 + shape.y_len() + 4])
        .unwrap();
    let args = GroupedGemmForward {
        precision: Precision::F32,
        shape,
        activation: Activation::Relu,
        x: BufferView::at(&inputs, 4 * xo as u64),
        w: BufferView::at(&inputs, 4 * wo as u64),
        bias: Some(BufferView::at(&inputs, 4 * bo as u64)),
        y: BufferView::at(&out, 36),
    };
    let want = reference::forward(
        &shape,
        Activation::Relu,
        &to_f64(&d.x),
        &to_f64(&d.w),
        Some(&to_f64(&d.b)),
    )
    .unwrap();
    for tiling in gemm.tilings() {
        let dispatch = gemm.forward_with(&args, tiling).unwrap();
        run(gpu, |e| dispatch.encode(e));
        let all = read(gpu, &out, 9 + shape.y_len() + 4);
        assert_close(
            &format!("Y at offset {tiling:?}"),
            &all[9..9 + shape.y_len()],
            &want,
            TOLERANCE,
        );
        assert!(
            all[..9]
                .iter()
                .chain(&all[9 + shape.y_len()..])
                .all(|&v| v == -7.0),
            "wrote outside Y: {all:?}"
        );
    }
}

#[test]
fn reference_gradients_match_finite_differences() {
    let mut rng = Rng::new(11);
    let level = InputLayout::Level {
        tasks: 2,
        shared: 1,
        own: 1,
    };
    // Two groups on columns 1..6, one on 4..7 of 8: overlapping, column 0 and 7 unread,
    // the narrow window's last rows of W padding.
    let windows = ColumnWindows::new(8, &[window_run(2, 1, 5), window_run(1, 4, 3)]).unwrap();
    for (input, act) in [
        (InputLayout::Shared, Activation::Relu),
        (InputLayout::PerGroup, Activation::Identity),
        (InputLayout::PerGroup, Activation::Relu),
        (level, Activation::Relu),
        (InputLayout::Columns(windows), Activation::Relu),
        (InputLayout::Columns(windows), Activation::Identity),
    ] {
        let shape = GemmShape {
            groups: 3,
            rows: 4,
            inputs: 5,
            outputs: 6,
            input,
        };
        let (p, r) = gradient_point(&shape, &mut rng);
        // Loss = Σ r ⊙ Y, so dL/dY = r.
        let loss = |p: &[Vec<f64>; 3]| -> f64 {
            let y = reference::forward(&shape, act, &p[0], &p[1], Some(&p[2])).unwrap();
            y.iter().zip(&r).map(|(a, b)| a * b).sum()
        };
        let y = reference::forward(&shape, act, &p[0], &p[1], Some(&p[2])).unwrap();
        let grads = reference::backward(&shape, act, &p[0], &p[1], &y, &r).unwrap();
        let analytic = [("dX", &grads.dx[..]), ("dW", &grads.dw), ("db", &grads.db)];
        let what = format!("{input:?} {act:?}");
        assert_gradients_match_finite_differences(&what, &p, analytic, 1e-6, loss);
    }
}

/// Lavapipe ends an invocation's loops silently after 65,535 iterations, and the
/// weight gradient loops over the rows: just under that it must be whole, past it an
/// error on a CPU adapter (a real GPU computes it).
#[test]
fn weight_gradients_over_many_rows_are_whole_or_an_error() {
    weight_gradients_over_many_rows_are_whole_or_an_error_on(gpu());
}

pub(crate) fn weight_gradients_over_many_rows_are_whole_or_an_error_on(gpu: &Gpu) {
    let gemm = GroupedGemm::new(gpu);
    let on_cpu = gpu.adapter().device_type == wgpu::DeviceType::Cpu;
    for rows in [60_000, 66_000] {
        let shape = GemmShape {
            groups: 2,
            rows,
            inputs: 3,
            outputs: 5,
            input: InputLayout::Shared,
        };
        let d = data(&shape, 5);
        let (x, dy) = (
            gpu.upload("x", &d.x).unwrap(),
            gpu.upload("dy", &d.dy).unwrap(),
        );
        let dw = gpu.storage_buffer("dw", 4 * shape.w_len() as u64).unwrap();
        let db = gpu.storage_buffer("db", 4 * shape.b_len() as u64).unwrap();
        let args = GroupedGemmBackwardWeights {
            precision: Precision::F32,
            shape,
            activation: Activation::Identity,
            x: (&x).into(),
            dy: (&dy).into(),
            y: None,
            dw: (&dw).into(),
            db: Some(BufferView::new(&db)),
        };
        if rows > 65_535 && on_cpu {
            expect_err(gemm.backward_weights(&args), &["loop iterations"]);
            continue;
        }
        let y = vec![0.0; shape.y_len()];
        let want = reference::backward(
            &shape,
            Activation::Identity,
            &to_f64(&d.x),
            &to_f64(&d.w),
            &y,
            &to_f64(&d.dy),
        )
        .unwrap();
        for tiling in [
            gemm.default_tiling(&shape),
            Tiling::Naive { wg: 8, wg_rows: 8 },
        ] {
            let dispatch = gemm.backward_weights_with(&args, tiling).unwrap();
            run(gpu, |e| dispatch.encode(e));
            assert_close(
                &format!("dW over {rows} rows, {tiling}"),
                &read(gpu, &dw, shape.w_len()),
                &want.dw,
                TOLERANCE,
            );
            assert_close(
                &format!("db over {rows} rows, {tiling}"),
                &read(gpu, &db, shape.b_len()),
                &want.db,
                TOLERANCE,
            );
        }
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let gpu = gpu();
    let gemm = GroupedGemm::new(gpu);
    let setup = SmallGemm::new(gpu);
    let SmallGemm { shape, x, w, y, dw } = &setup;
    let shape = *shape;
    let small = gpu
        .storage_buffer("small", 4 * (shape.y_len() - 1) as u64)
        .unwrap();
    let fwd = setup.forward();

    expect_err(
        gemm.forward(&GroupedGemmForward {
            shape: GemmShape { groups: 0, ..shape },
            ..fwd
        }),
        &["groups"],
    );
    expect_err(
        gemm.forward(&GroupedGemmForward {
            shape: GemmShape { rows: 0, ..shape },
            ..fwd
        }),
        &["rows"],
    );
    // Too small: the message names the operand and both sizes.
    let e = gemm
        .forward(&GroupedGemmForward {
            y: (&small).into(),
            ..fwd
        })
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, Error::Shape { .. })
            && msg.contains("`y`")
            && msg.contains("160 bytes")
            && msg.contains("156 bytes"),
        "{msg}"
    );
    expect_err(
        gemm.forward(&GroupedGemmForward {
            x: BufferView::at(x, 8),
            ..fwd
        }),
        &["`x`"],
    );
    expect_err(
        gemm.forward(&GroupedGemmForward {
            x: BufferView::at(x, 2),
            ..fwd
        }),
        &["multiple of 4"],
    );
    expect_err(
        gemm.forward(&GroupedGemmForward {
            y: y.into(),
            x: y.into(),
            shape: GemmShape {
                inputs: 5,
                outputs: 5,
                groups: 1,
                ..shape
            },
            ..fwd
        }),
        &["distinct buffers"],
    );
    let mappable = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 256,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    expect_err(
        gemm.forward(&GroupedGemmForward {
            x: (&mappable).into(),
            ..fwd
        }),
        &["STORAGE"],
    );
    expect_err(
        gemm.forward_with(&fwd, Tiling::Naive { wg: 0, wg_rows: 8 }),
        &["tiling"],
    );
    expect_err(
        gemm.forward_with(
            &fwd,
            Tiling::Naive {
                wg: 4096,
                wg_rows: 4096,
            },
        ),
        &["tiling"],
    );
    if gpu.capabilities().subgroups {
        expect_err(
            gemm.forward_with(
                &fwd,
                Tiling::Subgroup {
                    wg: 12,
                    row_blocks: 1,
                    col_groups: 1,
                },
            ),
            &["multiple of 8"],
        );
        expect_err(
            gemm.forward_with(
                &fwd,
                Tiling::Subgroup {
                    wg: 8,
                    row_blocks: 9,
                    col_groups: 1,
                },
            ),
            &["row_blocks"],
        );
    }
    let bi = GroupedGemmBackwardInput {
        precision: Precision::F32,
        shape,
        activation: Activation::Relu,
        dy: y.into(),
        y: None,
        w: w.into(),
        dx: x.into(),
        accumulate: false,
    };
    expect_err(gemm.backward_input(&bi), &["forward output"]);
    let bw = GroupedGemmBackwardWeights {
        dw: BufferView::at(dw, 4),
        ..setup.backward_weights(Activation::Identity)
    };
    expect_err(gemm.backward_weights(&bw), &["`dw`"]);
    let db_overlap = GroupedGemmBackwardWeights {
        db: Some(BufferView::at(dw, 8)),
        dw: dw.into(),
        ..bw
    };
    expect_err(gemm.backward_weights(&db_overlap), &["overlaps"]);
    // None of the above reached the device as a validation error.
    gpu.check().unwrap();
}

#[test]
fn a_missing_adapter_says_how_to_get_one() {
    let options = mmoe_wgpu::GpuOptions {
        adapter_name: Some("no adapter is called this".into()),
        ..Default::default()
    };
    let e = mmoe_wgpu::Gpu::with_options(&options).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::NoAdapter { .. }), "{msg}");
    assert!(
        msg.contains("mesa-vulkan-drivers") && msg.contains("no adapter is called this"),
        "{msg}"
    );
}

/// Windows that cannot be read are errors that say which window and why, before
/// anything is bound; so is a shape whose groups or inputs disagree with its windows.
#[test]
fn bad_column_windows_are_errors() {
    let message = |r: mmoe_wgpu::Result<ColumnWindows>| match r {
        Err(e) => e.to_string(),
        Ok(w) => panic!("accepted {w:?}"),
    };
    let outside = message(ColumnWindows::new(
        10,
        &[window_run(1, 0, 4), window_run(2, 8, 3)],
    ));
    assert!(
        outside.contains("window 1") && outside.contains("8..11"),
        "{outside}"
    );
    let empty = message(ColumnWindows::new(10, &[window_run(1, 2, 0)]));
    assert!(empty.contains("window 0 is empty"), "{empty}");
    let nobody = message(ColumnWindows::new(10, &[window_run(0, 2, 3)]));
    assert!(nobody.contains("no groups"), "{nobody}");
    let none = message(ColumnWindows::new(10, &[]));
    assert!(none.contains("0 windows"), "{none}");
    let many = vec![window_run(1, 0, 1); MAX_COLUMN_WINDOWS + 1];
    let many = message(ColumnWindows::new(10, &many));
    assert!(
        many.contains(&format!("{} windows", MAX_COLUMN_WINDOWS + 1)),
        "{many}"
    );
    let huge = message(ColumnWindows::new(10, &[window_run(1, usize::MAX, 2)]));
    assert!(huge.contains("outside"), "{huge}");

    let windows = ColumnWindows::new(10, &[window_run(2, 0, 6), window_run(1, 4, 6)]).unwrap();
    for (groups, inputs) in [(2, 6), (3, 5)] {
        let shape = GemmShape {
            groups,
            rows: 4,
            inputs,
            outputs: 3,
            input: InputLayout::Columns(windows),
        };
        let err = shape.validate("layer").unwrap_err().to_string();
        assert!(
            err.contains("column windows for 3 groups up to 6 wide"),
            "{err}"
        );
    }
}
