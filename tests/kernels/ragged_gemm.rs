//! Ragged grouped GEMM (each group on the rows a row map routes to it) against the CPU
//! reference, on awkward shapes and row maps from the routing kernel, for every tiling:
//! all tilings bitwise equal, unrouted rows exactly zero, routed rows bitwise equal to
//! the dense kernels', the dense input gradient right on ragged outputs, the ragged
//! input gradient (per-group and shared X, with and without accumulating); the ragged
//! reference against finite differences; bad input rejected with errors.

use crate::common::gemm::{SmallGemm, gradient_point, on_windows, window_run};
use crate::common::routing::top_k_gates;
use crate::common::*;
use half::f16;
use mmoe_wgpu::kernels::grouped_gemm::{
    GroupedGemm, GroupedGemmBackwardInput, GroupedGemmBackwardWeights, GroupedGemmForward, RowMap,
    SlotScratch, Tiling, ragged_flops, read_counts,
};
use mmoe_wgpu::kernels::routing::{Routing, RoutingForward, RoutingShape};
use mmoe_wgpu::kernels::{BufferView, Precision};
use mmoe_wgpu::reference::grouped_gemm as reference;
use mmoe_wgpu::reference::routing::{route, routed_rows};
use mmoe_wgpu::rng::Rng;
use mmoe_wgpu::{Activation, GemmShape, Gpu, InputLayout};

const TOLERANCE: f64 = 1e-4;

/// `gates` gates routing the rows of `shape` to its groups.
fn routing_of(shape: &GemmShape, gates: usize) -> RoutingShape {
    RoutingShape {
        gates,
        rows: shape.rows,
        experts: shape.groups,
    }
}

/// The row map of `g` made on the device, checked against the reference's.
fn routes_on_gpu(gpu: &Gpu, shape: &RoutingShape, g: &[f32]) -> (wgpu::Buffer, Vec<u32>) {
    let input = gpu.upload("g", g).unwrap();
    let routes = gpu
        .storage_buffer("routes", 4 * shape.routes_len() as u64)
        .unwrap();
    let args = RoutingForward {
        shape: *shape,
        precision: Precision::F32,
        g: (&input).into(),
        routes: (&routes).into(),
    };
    run(gpu, |e| Routing::new(gpu).encode_forward(e, &args).unwrap());
    let map: Vec<u32> = gpu.read(&routes, 0, shape.routes_len()).unwrap();
    assert_eq!(
        map,
        route(shape, &to_f64(g)).unwrap(),
        "row map of {shape:?}"
    );
    (routes, map)
}

/// Rows 1..257 with groups 1, 3, 16, widths that are not tile multiples, both input
/// layouts and activations, with and without bias, 1 to 4 gates choosing 1, 2 or all
/// experts: rotating through the lists keeps the run short while every value appears.
fn cases() -> Vec<(GemmShape, Activation, bool, usize, usize)> {
    let rows = [1, 3, 17, 100, 257];
    let widths = [(5, 7), (13, 33), (37, 70), (64, 9), (1, 1), (100, 16)];
    let groups = [1, 3, 16];
    let mut out = Vec::new();
    for (i, &r) in rows.iter().enumerate() {
        for j in 0..3 {
            let (inputs, outputs) = widths[(i + 2 * j) % widths.len()];
            let g = groups[(i + j) % groups.len()];
            let input = if (i + j) % 2 == 0 {
                InputLayout::Shared
            } else {
                InputLayout::PerGroup
            };
            let act = if (i + 2 * j) % 3 == 0 {
                Activation::Identity
            } else {
                Activation::Relu
            };
            let k = [1, 2, g][j].min(g);
            out.push((
                GemmShape {
                    groups: g,
                    rows: r,
                    inputs,
                    outputs,
                    input,
                },
                act,
                (i + j) % 4 != 1,
                1 + (i + 3 * j) % 4,
                k,
            ));
        }
    }
    // Experts on feature subsets under a top-k gate: overlapping windows of
    // different widths, and disjoint ones.
    for (columns, runs, rows, outputs, act, k) in [
        (
            12,
            vec![window_run(2, 0, 7), window_run(1, 5, 7)],
            100,
            33,
            Activation::Relu,
            2,
        ),
        (
            10,
            vec![window_run(2, 0, 5), window_run(2, 5, 5)],
            17,
            9,
            Activation::Identity,
            1,
        ),
    ] {
        let shape = on_windows(columns, &runs, rows, outputs);
        out.push((shape, act, true, 2, k));
    }
    out
}

/// `dy` with the rows the map does not route set to zero.
fn masked(shape: &GemmShape, map: &[u32], dy: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; dy.len()];
    let n = shape.outputs;
    for (g, rows) in routed_rows(map, shape.groups, shape.rows)
        .unwrap()
        .iter()
        .enumerate()
    {
        for &r in rows.iter() {
            let at = (g * shape.rows + r as usize) * n;
            out[at..at + n].copy_from_slice(&dy[at..at + n]);
        }
    }
    out
}

#[test]
fn every_tiling_matches_the_reference_and_the_dense_kernels_bitwise() {
    every_tiling_matches_the_reference_and_the_dense_kernels_bitwise_on(gpu());
}

pub(crate) fn every_tiling_matches_the_reference_and_the_dense_kernels_bitwise_on(gpu: &Gpu) {
    let gemm = GroupedGemm::new(gpu);
    for (n, (shape, act, with_bias, gates, k)) in cases().into_iter().enumerate() {
        let what = format!("{shape:?} {act:?} bias={with_bias} gates={gates} k={k}");
        let mut rng = Rng::new(n as u64);
        let routing = routing_of(&shape, gates);
        let (routes, map) = routes_on_gpu(gpu, &routing, &top_k_gates(&mut rng, &routing, k));
        let (x, w) = (
            random(&mut rng, shape.x_len(), 1.0),
            random(&mut rng, shape.w_len(), 0.5),
        );
        let (b, dy) = (
            random(&mut rng, shape.b_len(), 0.5),
            random(&mut rng, shape.y_len(), 1.0),
        );
        let b64 = with_bias.then(|| to_f64(&b));
        let (x64, w64) = (to_f64(&x), to_f64(&w));
        let want_y =
            reference::forward_ragged(&shape, act, &x64, &w64, b64.as_deref(), &map).unwrap();
        let want_y32: Vec<f32> = want_y.iter().map(|&v| v as f32).collect();
        let want = reference::backward_ragged(
            &shape,
            act,
            &x64,
            &w64,
            &to_f64(&want_y32),
            &to_f64(&dy),
            &map,
        )
        .unwrap();
        let unrouted: Vec<bool> = {
            let mut live = vec![false; shape.y_len()];
            let routed = routed_rows(&map, shape.groups, shape.rows).unwrap();
            for (g, rows) in routed.iter().enumerate() {
                for &r in rows.iter() {
                    let at = (g * shape.rows + r as usize) * shape.outputs;
                    live[at..at + shape.outputs].fill(true);
                }
            }
            live.iter().map(|l| !l).collect()
        };
        // The dense input gradient is the ragged one when dZ is zero on unrouted rows:
        // ReLU makes it so on a ragged Y; the identity needs dY zero there.
        let dy_for_dx = match act {
            Activation::Relu => dy.clone(),
            Activation::Identity => masked(&shape, &map, &dy),
        };

        let up = |name: &str, v: &[f32]| gpu.upload(name, v).unwrap();
        let (xb, wb, bb, dy_dx) = (
            up("x", &x),
            up("w", &w),
            up("b", &b),
            up("dx dy", &dy_for_dx),
        );
        // [ragged, dense] of each: the dense weight gradients on dY masked.
        let dys = [up("dy", &dy), up("masked dy", &masked(&shape, &map, &dy))];
        let out = |name: &str, n: usize| gpu.storage_buffer(name, 4 * n as u64).unwrap();
        let ys = [out("y", shape.y_len()), out("y dense", shape.y_len())];
        let dws = [out("dw", shape.w_len()), out("dw dense", shape.w_len())];
        let dbs = [out("db", shape.b_len()), out("db dense", shape.b_len())];
        let dx = out("dx", shape.x_len());
        let (y, dw, db) = (&ys[0], &dws[0], &dbs[0]);

        let mut first: Option<[Vec<f32>; 4]> = None;
        for tiling in gemm.tilings() {
            let forward = |i: usize| GroupedGemmForward {
                shape,
                activation: act,
                precision: Precision::F32,
                x: (&xb).into(),
                w: (&wb).into(),
                bias: with_bias.then(|| (&bb).into()),
                y: (&ys[i]).into(),
            };
            // Both on the ragged Y.
            let weights = |i: usize| GroupedGemmBackwardWeights {
                shape,
                activation: act,
                precision: Precision::F32,
                x: (&xb).into(),
                dy: (&dys[i]).into(),
                y: Some(y.into()),
                dw: (&dws[i]).into(),
                db: with_bias.then(|| (&dbs[i]).into()),
            };
            let input = GroupedGemmBackwardInput {
                shape,
                activation: act,
                precision: Precision::F32,
                dy: (&dy_dx).into(),
                y: Some(y.into()),
                w: (&wb).into(),
                dx: (&dx).into(),
                accumulate: false,
            };
            let map_view = RowMap::new(&routes);
            let dispatches = [
                gemm.forward_ragged_with(&forward(0), map_view, tiling)
                    .unwrap(),
                gemm.forward_with(&forward(1), tiling).unwrap(),
                gemm.backward_weights_ragged_with(&weights(0), map_view, tiling)
                    .unwrap(),
                gemm.backward_weights_with(&weights(1), tiling).unwrap(),
                gemm.backward_input_with(&input, tiling).unwrap(),
            ];
            run(gpu, |e| dispatches.iter().for_each(|d| d.encode(e)));
            let got_y = read(gpu, y, shape.y_len());
            let got_dx = read(gpu, &dx, shape.x_len());
            let got_dw = read(gpu, dw, shape.w_len());
            let got_db = read(gpu, db, shape.b_len());
            let at = format!("{tiling:?} {what}");
            assert_close(&format!("Y {at}"), &got_y, &want_y, TOLERANCE);
            assert_close(&format!("dX {at}"), &got_dx, &want.dx, TOLERANCE);
            assert_close(&format!("dW {at}"), &got_dw, &want.dw, TOLERANCE);
            if with_bias {
                assert_close(&format!("db {at}"), &got_db, &want.db, TOLERANCE);
            }
            // Unrouted rows hold +0.0 exactly; routed rows the dense kernel's bits.
            let dense_y = read(gpu, &ys[1], shape.y_len());
            for (i, (&got, &dense)) in got_y.iter().zip(&dense_y).enumerate() {
                let want_bits = if unrouted[i] { 0 } else { dense.to_bits() };
                assert_eq!(got.to_bits(), want_bits, "Y[{i}] {at}");
            }
            // Skipping the unrouted rows is summing their zero dZ: the same bits.
            assert_eq!(
                bits(&got_dw),
                bits(&read(gpu, &dws[1], shape.w_len())),
                "dW {at}"
            );
            if with_bias {
                assert_eq!(
                    bits(&got_db),
                    bits(&read(gpu, &dbs[1], shape.b_len())),
                    "db {at}"
                );
            }
            let outs = [got_y, got_dx, got_dw, got_db];
            match &first {
                None => first = Some(outs),
                Some(first) => {
                    for (name, (a, b)) in
                        ["Y", "dX", "dW", "db"].iter().zip(first.iter().zip(&outs))
                    {
                        assert_eq!(bits(a), bits(b), "{name} bits differ under {at}");
                    }
                }
            }
        }
        let counts = read_counts(gpu, RowMap::new(&routes), shape.groups).unwrap();
        assert_eq!(counts, map[..shape.groups]);
        let routed_products: u64 = counts
            .iter()
            .enumerate()
            .map(|(g, &c)| u64::from(c) * shape.x_window(g).1 as u64)
            .sum();
        assert_eq!(
            ragged_flops(&shape, &counts).unwrap(),
            2.0 * routed_products as f64 * shape.outputs as f64
        );
    }
    gpu.check().unwrap();
}

#[test]
fn with_every_row_routed_ragged_equals_dense_bitwise() {
    with_every_row_routed_ragged_equals_dense_bitwise_on(gpu());
}

pub(crate) fn with_every_row_routed_ragged_equals_dense_bitwise_on(gpu: &Gpu) {
    let gemm = GroupedGemm::new(gpu);
    for (n, input) in [InputLayout::Shared, InputLayout::PerGroup]
        .into_iter()
        .enumerate()
    {
        let shape = GemmShape {
            groups: 3,
            rows: 37,
            inputs: 21,
            outputs: 10,
            input,
        };
        let routing = routing_of(&shape, 2);
        let (routes, map) = routes_on_gpu(gpu, &routing, &vec![0.5; routing.g_len()]);
        assert!(map[..3].iter().all(|&c| c == 37));
        let mut rng = Rng::new(40 + n as u64);
        let up = |name: &str, len: usize, scale: f64, rng: &mut Rng| {
            gpu.upload(name, &random(rng, len, scale)).unwrap()
        };
        let (x, w) = (
            up("x", shape.x_len(), 1.0, &mut rng),
            up("w", shape.w_len(), 0.5, &mut rng),
        );
        let (b, dy) = (
            up("b", shape.b_len(), 0.5, &mut rng),
            up("dy", shape.y_len(), 1.0, &mut rng),
        );
        let out = |name: &str, n: usize| gpu.storage_buffer(name, 4 * n as u64).unwrap();
        let ys = [
            out("y ragged", shape.y_len()),
            out("y dense", shape.y_len()),
        ];
        let dws = [
            out("dw ragged", shape.w_len()),
            out("dw dense", shape.w_len()),
        ];
        let dbs = [
            out("db ragged", shape.b_len()),
            out("db dense", shape.b_len()),
        ];
        for tiling in gemm.tilings() {
            let forward = |i: usize| GroupedGemmForward {
                shape,
                activation: Activation::Relu,
                precision: Precision::F32,
                x: (&x).into(),
                w: (&w).into(),
                bias: Some((&b).into()),
                y: (&ys[i]).into(),
            };
            let weights = |i: usize| GroupedGemmBackwardWeights {
                shape,
                activation: Activation::Relu,
                precision: Precision::F32,
                x: (&x).into(),
                dy: (&dy).into(),
                y: Some((&ys[i]).into()),
                dw: (&dws[i]).into(),
                db: Some((&dbs[i]).into()),
            };
            let map_view = RowMap::new(&routes);
            let dispatches = [
                gemm.forward_ragged_with(&forward(0), map_view, tiling)
                    .unwrap(),
                gemm.forward_with(&forward(1), tiling).unwrap(),
                gemm.backward_weights_ragged_with(&weights(0), map_view, tiling)
                    .unwrap(),
                gemm.backward_weights_with(&weights(1), tiling).unwrap(),
            ];
            run(gpu, |e| dispatches.iter().for_each(|d| d.encode(e)));
            for (name, pair, len) in [
                ("Y", &ys, shape.y_len()),
                ("dW", &dws, shape.w_len()),
                ("db", &dbs, shape.b_len()),
            ] {
                assert_eq!(
                    bits(&read(gpu, &pair[0], len)),
                    bits(&read(gpu, &pair[1], len)),
                    "{name} {input:?} {tiling:?}"
                );
            }
        }
    }
}

#[test]
fn f16_ragged_rows_match_the_f16_dense_kernel() {
    f16_ragged_rows_match_the_f16_dense_kernel_on(gpu());
}

pub(crate) fn f16_ragged_rows_match_the_f16_dense_kernel_on(gpu: &Gpu) {
    if !gpu.capabilities().f16 {
        eprintln!(
            "note: {} has no SHADER_F16; skipping the f16 comparison",
            gpu.adapter()
        );
        return;
    }
    let gemm = GroupedGemm::new(gpu);
    let shape = GemmShape {
        groups: 16,
        rows: 100,
        inputs: 37,
        outputs: 70,
        input: InputLayout::Shared,
    };
    let routing = routing_of(&shape, 3);
    let mut rng = Rng::new(77);
    let (routes, map) = routes_on_gpu(gpu, &routing, &top_k_gates(&mut rng, &routing, 2));
    let half = |n: usize, rng: &mut Rng| -> Vec<f16> {
        random(rng, n, 1.0)
            .iter()
            .map(|&v| f16::from_f32(v))
            .collect()
    };
    let x = gpu.upload("x", &half(shape.x_len(), &mut rng)).unwrap();
    let w = gpu.upload("w", &half(shape.w_len(), &mut rng)).unwrap();
    let ys = [
        gpu.storage_buffer("y ragged", 2 * shape.y_len() as u64)
            .unwrap(),
        gpu.storage_buffer("y dense", 2 * shape.y_len() as u64)
            .unwrap(),
    ];
    let forward = |i: usize| GroupedGemmForward {
        shape,
        activation: Activation::Relu,
        precision: Precision::F16,
        x: (&x).into(),
        w: (&w).into(),
        bias: None,
        y: (&ys[i]).into(),
    };
    let ragged = gemm
        .forward_ragged(&forward(0), RowMap::new(&routes))
        .unwrap();
    let dense = gemm.forward(&forward(1)).unwrap();
    run(gpu, |e| {
        ragged.encode(e);
        dense.encode(e);
    });
    let got: Vec<f16> = gpu.read(&ys[0], 0, shape.y_len()).unwrap();
    let want: Vec<f16> = gpu.read(&ys[1], 0, shape.y_len()).unwrap();
    let routed = routed_rows(&map, shape.groups, shape.rows).unwrap();
    for (g, routed) in routed.iter().enumerate() {
        for r in 0..shape.rows {
            let at = (g * shape.rows + r) * shape.outputs;
            let row = &got[at..at + shape.outputs];
            if routed.contains(&(r as u32)) {
                assert_eq!(row, &want[at..at + shape.outputs], "group {g} row {r}");
            } else {
                assert!(row.iter().all(|v| v.to_bits() == 0), "group {g} row {r}");
            }
        }
    }
}

#[test]
fn ragged_reference_gradients_match_finite_differences() {
    let mut rng = Rng::new(12);
    for (input, act) in [
        (InputLayout::Shared, Activation::Relu),
        (InputLayout::PerGroup, Activation::Identity),
        (InputLayout::Shared, Activation::Identity),
    ] {
        let shape = GemmShape {
            groups: 3,
            rows: 6,
            inputs: 4,
            outputs: 5,
            input,
        };
        let routing = routing_of(&shape, 2);
        let g = top_k_gates(&mut rng, &routing, 1);
        let map = route(&routing, &to_f64(&g)).unwrap();
        let (p, r) = gradient_point(&shape, &mut rng);
        // Loss = Σ r ⊙ Y, so dL/dY = r, also on the unrouted rows, where Y is constant.
        let loss = |p: &[Vec<f64>; 3]| -> f64 {
            let y =
                reference::forward_ragged(&shape, act, &p[0], &p[1], Some(&p[2]), &map).unwrap();
            y.iter().zip(&r).map(|(a, b)| a * b).sum()
        };
        let y = reference::forward_ragged(&shape, act, &p[0], &p[1], Some(&p[2]), &map).unwrap();
        let grads = reference::backward_ragged(&shape, act, &p[0], &p[1], &y, &r, &map).unwrap();
        let analytic = [("dX", &grads.dx[..]), ("dW", &grads.dw), ("db", &grads.db)];
        let what = format!("{input:?} {act:?}");
        assert_gradients_match_finite_differences(&what, &p, analytic, 1e-6, loss);
        // An expert with no row has no gradient.
        assert!(grads.dw[2 * 4 * 5..].iter().all(|&v| v == 0.0));
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let gpu = gpu();
    let gemm = GroupedGemm::new(gpu);
    let setup = SmallGemm::new(gpu);
    let SmallGemm { shape, y, dw, .. } = &setup;
    let shape = *shape;
    let routes_len = RowMap::elements(shape.groups, shape.rows);
    let routes = gpu.storage_buffer("routes", 4 * routes_len as u64).unwrap();
    let fwd = setup.forward();
    let map = RowMap::new(&routes);
    expect_err(
        gemm.forward_ragged(
            &GroupedGemmForward {
                shape: GemmShape { groups: 0, ..shape },
                ..fwd
            },
            map,
        ),
        &["groups"],
    );
    // A map too short for the shape: named, with both sizes.
    let e = gemm
        .forward_ragged(&fwd, RowMap::at(&routes, 4))
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("forward_ragged") && msg.contains("`routes`") && msg.contains("40 bytes"),
        "{msg}"
    );
    expect_err(
        gemm.forward_ragged(&fwd, RowMap::at(&routes, 2)),
        &["multiple of 4"],
    );
    expect_err(
        gemm.forward_ragged(&fwd, RowMap::new(y)),
        &["distinct buffers"],
    );
    expect_err(
        gemm.forward_ragged_with(&fwd, map, Tiling::Naive { wg: 0, wg_rows: 8 }),
        &["tiling"],
    );
    let bw = setup.backward_weights(Activation::Relu);
    expect_err(gemm.backward_weights_ragged(&bw, map), &["forward output"]);
    let with_y = GroupedGemmBackwardWeights {
        y: Some(y.into()),
        ..bw
    };
    expect_err(
        gemm.backward_weights_ragged(&with_y, RowMap::new(dw)),
        &["distinct buffers"],
    );
    expect_err(
        gemm.backward_weights_ragged(&with_y, RowMap::at(&routes, 8)),
        &["backward_weights_ragged"],
    );

    assert!(ragged_flops(&shape, &[1]).is_err());
    assert!(ragged_flops(&shape, &[1, 5]).is_err());
    assert_eq!(ragged_flops(&shape, &[1, 4]).unwrap(), 2.0 * 5.0 * 15.0);
    assert!(read_counts(gpu, RowMap::at(&routes, 2), 2).is_err());
    assert!(read_counts(gpu, RowMap::at(&routes, 4 * routes_len as u64), 2).is_err());
    gpu.check().unwrap();
}

// ------------------------------------------------------------ ragged input gradient

/// Whether row `r` of group `g` is routed, per `[groups, rows]`.
fn routed_mask(shape: &GemmShape, map: &[u32]) -> Vec<bool> {
    let mut live = vec![false; shape.groups * shape.rows];
    for (g, rows) in routed_rows(map, shape.groups, shape.rows)
        .unwrap()
        .iter()
        .enumerate()
    {
        for &r in rows.iter() {
            live[g * shape.rows + r as usize] = true;
        }
    }
    live
}

/// The most groups `gates` top-`k` gates route a row to.
fn max_routes(shape: &GemmShape, gates: usize, k: usize) -> usize {
    (gates * k).min(shape.groups)
}

/// Buffers of one ragged input gradient problem.
struct DxProblem {
    shape: GemmShape,
    activation: Activation,
    routes: wgpu::Buffer,
    map: Vec<u32>,
    w: wgpu::Buffer,
    y: wgpu::Buffer,
    dy: wgpu::Buffer,
    /// `dY` with the unrouted rows zeroed, for the dense kernel (identity: its dZ must
    /// be zero there to be the ragged gradient; ReLU: Y is zero there anyway).
    dy_masked: wgpu::Buffer,
    /// `[ragged, dense]` outputs.
    dx: [wgpu::Buffer; 2],
    scratch: wgpu::Buffer,
    max_routes: usize,
    /// The reference: ragged dX from the ragged forward's Y (rounded to f32).
    want: Vec<f64>,
    /// What dX holds before each run: garbage to be overwritten, or the values
    /// accumulated into.
    before: Vec<f32>,
}

impl DxProblem {
    fn new(
        gpu: &Gpu,
        shape: GemmShape,
        activation: Activation,
        gates: usize,
        k: usize,
        seed: u64,
    ) -> DxProblem {
        let mut rng = Rng::new(seed);
        let routing = routing_of(&shape, gates);
        let (routes, map) = routes_on_gpu(gpu, &routing, &top_k_gates(&mut rng, &routing, k));
        let (x, w, b) = (
            random(&mut rng, shape.x_len(), 1.0),
            random(&mut rng, shape.w_len(), 0.5),
            random(&mut rng, shape.b_len(), 0.5),
        );
        let dy = random(&mut rng, shape.y_len(), 1.0);
        let y = reference::forward_ragged(
            &shape,
            activation,
            &to_f64(&x),
            &to_f64(&w),
            Some(&to_f64(&b)),
            &map,
        )
        .unwrap();
        let y32: Vec<f32> = y.iter().map(|&v| v as f32).collect();
        let want = reference::backward_input_ragged(
            &shape,
            activation,
            &to_f64(&w),
            &to_f64(&y32),
            &to_f64(&dy),
            &map,
        )
        .unwrap();
        let max_routes = max_routes(&shape, gates, k);
        let up = |name: &str, v: &[f32]| gpu.upload(name, v).unwrap();
        // Garbage where the kernel must write, so a missed store shows.
        let scratch = up(
            "scratch",
            &vec![f32::NAN; SlotScratch::elements(&shape, max_routes)],
        );
        DxProblem {
            shape,
            activation,
            routes,
            w: up("w", &w),
            y: up("y", &y32),
            dy_masked: up("masked dy", &masked(&shape, &map, &dy)),
            dy: up("dy", &dy),
            dx: [
                up("dx", &vec![0.0; shape.x_len()]),
                up("dx dense", &vec![0.0; shape.x_len()]),
            ],
            scratch,
            map,
            max_routes,
            want,
            before: vec![0.0; shape.x_len()],
        }
    }

    fn args(&self, i: usize, accumulate: bool) -> GroupedGemmBackwardInput<'_> {
        GroupedGemmBackwardInput {
            shape: self.shape,
            activation: self.activation,
            precision: Precision::F32,
            dy: [&self.dy, &self.dy_masked][i].into(),
            y: (self.activation == Activation::Relu).then(|| (&self.y).into()),
            w: (&self.w).into(),
            dx: (&self.dx[i]).into(),
            accumulate,
        }
    }

    fn scratch(&self) -> Option<SlotScratch<'_>> {
        (self.shape.input == InputLayout::Shared)
            .then(|| SlotScratch::new((&self.scratch).into(), self.max_routes))
    }

    /// What dX holds before each run: NaN to be overwritten, or random values to add to.
    fn set_before(&mut self, accumulate: bool, rng: &mut Rng) {
        self.before = if accumulate {
            random(rng, self.shape.x_len(), 1.0)
        } else {
            vec![f32::NAN; self.shape.x_len()]
        };
    }

    /// The ragged dX under `tiling`, and the dense kernel's on the masked dY, both
    /// starting from `before`.
    fn run(&self, gpu: &Gpu, tiling: Tiling, accumulate: bool) -> [Vec<f32>; 2] {
        for dx in &self.dx {
            gpu.write(dx, 0, &self.before).unwrap();
        }
        let gemm = GroupedGemm::new(gpu);
        let ragged = gemm
            .backward_input_ragged_with(
                &self.args(0, accumulate),
                RowMap::new(&self.routes),
                self.scratch(),
                tiling,
            )
            .unwrap();
        let expected = match self.shape.input {
            InputLayout::PerGroup => 1,
            InputLayout::Shared => 2,
            InputLayout::Level { .. } | InputLayout::Columns(_) => {
                unreachable!("the ragged input gradient takes no level or windows")
            }
        };
        assert_eq!(ragged.len(), expected, "dispatches of {:?}", self.shape);
        let dense = gemm
            .backward_input_with(&self.args(1, accumulate), tiling)
            .unwrap();
        run(gpu, |e| {
            ragged.iter().for_each(|d| d.encode(e));
            dense.encode(e);
        });
        let len = self.shape.x_len();
        [read(gpu, &self.dx[0], len), read(gpu, &self.dx[1], len)]
    }

    /// The reference, plus what dX held when accumulating.
    fn want(&self, accumulate: bool) -> Vec<f64> {
        self.want
            .iter()
            .zip(&self.before)
            .map(|(&w, &b)| if accumulate { w + b as f64 } else { w })
            .collect()
    }

    /// Per row of dX (per group and row when X is per group): whether some group
    /// computes it.
    fn written_rows(&self) -> Vec<bool> {
        let live = routed_mask(&self.shape, &self.map);
        match self.shape.input {
            InputLayout::PerGroup => live,
            InputLayout::Level { .. } | InputLayout::Columns(_) => {
                unreachable!("the ragged input gradient takes no level or windows")
            }
            InputLayout::Shared => (0..self.shape.rows)
                .map(|r| (0..self.shape.groups).any(|g| live[g * self.shape.rows + r]))
                .collect(),
        }
    }
}

/// The ragged input gradient on every case and tiling, overwriting and accumulating:
/// against the reference; all tilings bitwise equal; rows no group computes exactly
/// +0 (or, accumulating, untouched); per-group X: every other row the dense kernel's
/// bits.
#[test]
fn ragged_input_gradient_matches_the_reference_and_the_dense_kernel() {
    ragged_input_gradient_matches_the_reference_and_the_dense_kernel_on(gpu());
}

pub(crate) fn ragged_input_gradient_matches_the_reference_and_the_dense_kernel_on(gpu: &Gpu) {
    let gemm = GroupedGemm::new(gpu);
    // Column windows take the dense input gradient (tested with the forward above).
    let cases = cases()
        .into_iter()
        .filter(|c| !matches!(c.0.input, InputLayout::Columns(_)));
    for (n, (shape, act, _, gates, k)) in cases.enumerate() {
        let mut problem = DxProblem::new(gpu, shape, act, gates, k, 500 + n as u64);
        let written = problem.written_rows();
        let mut rng = Rng::new(900 + n as u64);
        for accumulate in [false, true] {
            problem.set_before(accumulate, &mut rng);
            let what = format!("{shape:?} {act:?} gates={gates} k={k} accumulate={accumulate}");
            let mut first: Option<Vec<f32>> = None;
            for tiling in gemm.tilings() {
                let at = format!("{tiling:?} {what}");
                let [got, dense] = problem.run(gpu, tiling, accumulate);
                // assert_close passes over NaN, and NaN is what a missed store leaves.
                assert!(got.iter().all(|v| v.is_finite()), "non-finite dX {at}");
                assert_close(
                    &format!("dX {at}"),
                    &got,
                    &problem.want(accumulate),
                    TOLERANCE,
                );
                for (row, &live) in written.iter().enumerate() {
                    let span = row * shape.inputs..(row + 1) * shape.inputs;
                    if !live {
                        let want: Vec<u32> = if accumulate {
                            bits(&problem.before[span.clone()])
                        } else {
                            vec![0; shape.inputs]
                        };
                        assert_eq!(bits(&got[span]), want, "unrouted row {row} {at}");
                    } else if shape.input == InputLayout::PerGroup {
                        assert_eq!(
                            bits(&got[span.clone()]),
                            bits(&dense[span]),
                            "routed row {row} {at}"
                        );
                    }
                }
                match &first {
                    None => first = Some(got),
                    Some(first) => assert_eq!(bits(first), bits(&got), "bits {at}"),
                }
            }
        }
    }
    gpu.check().unwrap();
}

/// With every row routed to every group, the ragged input gradient is the dense one:
/// per-group X bit for bit, shared X within rounding (the dense kernel sums all
/// groups in one chain, the ragged one each group's chain, then the groups), and bit
/// for bit with one group.
#[test]
fn with_every_row_routed_the_ragged_input_gradient_is_the_dense_one() {
    with_every_row_routed_the_ragged_input_gradient_is_the_dense_one_on(gpu());
}

pub(crate) fn with_every_row_routed_the_ragged_input_gradient_is_the_dense_one_on(gpu: &Gpu) {
    let gemm = GroupedGemm::new(gpu);
    for (n, (groups, input)) in [
        (3, InputLayout::Shared),
        (3, InputLayout::PerGroup),
        (1, InputLayout::Shared),
    ]
    .into_iter()
    .enumerate()
    {
        let shape = GemmShape {
            groups,
            rows: 37,
            inputs: 21,
            outputs: 10,
            input,
        };
        // k = groups: every row goes to every group.
        let mut problem = DxProblem::new(gpu, shape, Activation::Relu, 2, groups, 60 + n as u64);
        let routing = routing_of(&shape, 2);
        // top_k_gates leaves every fifth row out; route them too.
        let (routes, map) = routes_on_gpu(gpu, &routing, &vec![0.5; routing.g_len()]);
        assert!(map[..groups].iter().all(|&c| c == 37));
        problem.routes = routes;
        problem.map = map;
        let mut rng = Rng::new(7);
        for accumulate in [false, true] {
            problem.set_before(accumulate, &mut rng);
            for tiling in gemm.tilings() {
                let at = format!("{shape:?} accumulate={accumulate} {tiling:?}");
                // Both on the full dY: every row is routed.
                let dense_args = GroupedGemmBackwardInput {
                    dy: (&problem.dy).into(),
                    ..problem.args(1, accumulate)
                };
                for dx in &problem.dx {
                    gpu.write(dx, 0, &problem.before).unwrap();
                }
                let ragged = gemm
                    .backward_input_ragged_with(
                        &problem.args(0, accumulate),
                        RowMap::new(&problem.routes),
                        problem.scratch(),
                        tiling,
                    )
                    .unwrap();
                let dense = gemm.backward_input_with(&dense_args, tiling).unwrap();
                run(gpu, |e| {
                    ragged.iter().for_each(|d| d.encode(e));
                    dense.encode(e);
                });
                let got = read(gpu, &problem.dx[0], shape.x_len());
                let want = read(gpu, &problem.dx[1], shape.x_len());
                if input == InputLayout::PerGroup || groups == 1 {
                    assert_eq!(bits(&got), bits(&want), "{at}");
                } else {
                    assert_close(&at, &got, &to_f64(&want), 1e-6);
                }
            }
        }
    }
}

/// A shared X over more groups than a reduce workgroup has invocations (its lookups
/// run in chunks), rows wider than one reduce workgroup covers, and more rows than a
/// dispatch has workgroups along one dimension (they spill into z).
#[test]
fn the_shared_input_reduce_covers_many_groups_wide_rows_and_many_rows() {
    let gpu = gpu();
    let gemm = GroupedGemm::new(gpu);
    for (n, (shape, gates, k)) in [
        (
            GemmShape {
                groups: 70,
                rows: 33,
                inputs: 1030,
                outputs: 5,
                input: InputLayout::Shared,
            },
            3,
            2,
        ),
        (
            GemmShape {
                groups: 2,
                rows: 70_001,
                inputs: 3,
                outputs: 2,
                input: InputLayout::Shared,
            },
            1,
            1,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut problem = DxProblem::new(gpu, shape, Activation::Relu, gates, k, 70 + n as u64);
        let mut rng = Rng::new(8);
        for accumulate in [false, true] {
            problem.set_before(accumulate, &mut rng);
            let at = format!("{shape:?} accumulate={accumulate}");
            for dx in &problem.dx {
                gpu.write(dx, 0, &problem.before).unwrap();
            }
            let args = problem.args(0, accumulate);
            let map = RowMap::new(&problem.routes);
            run(gpu, |e| {
                gemm.encode_backward_input_ragged(e, &args, map, problem.scratch())
                    .unwrap()
            });
            let got = read(gpu, &problem.dx[0], shape.x_len());
            assert!(got.iter().all(|v| v.is_finite()), "non-finite dX {at}");
            assert_close(&at, &got, &problem.want(accumulate), TOLERANCE);
            let written = problem.written_rows();
            for (row, _) in written.iter().enumerate().filter(|(_, live)| !**live) {
                let span = row * shape.inputs..(row + 1) * shape.inputs;
                let want = if accumulate {
                    bits(&problem.before[span.clone()])
                } else {
                    vec![0; shape.inputs]
                };
                assert_eq!(bits(&got[span]), want, "unrouted row {row} {at}");
            }
        }
    }
    gpu.check().unwrap();
}

/// f16 storage: a routed row of a per-group dX has the f16 dense kernel's bits, and
/// a shared dX is within an f16 rounding of the reference (its per-group rows are
/// kept in f32, so it is rounded once).
#[test]
fn f16_ragged_input_gradient() {
    f16_ragged_input_gradient_on(gpu());
}

pub(crate) fn f16_ragged_input_gradient_on(gpu: &Gpu) {
    let gemm = GroupedGemm::new(gpu);
    for (n, input) in [InputLayout::PerGroup, InputLayout::Shared]
        .into_iter()
        .enumerate()
    {
        let shape = GemmShape {
            groups: 5,
            rows: 100,
            inputs: 37,
            outputs: 70,
            input,
        };
        let routing = routing_of(&shape, 2);
        let mut rng = Rng::new(80 + n as u64);
        let (routes, map) = routes_on_gpu(gpu, &routing, &top_k_gates(&mut rng, &routing, 2));
        let half = |v: &[f32]| -> Vec<f16> { v.iter().map(|&x| f16::from_f32(x)).collect() };
        let w = half(&random(&mut rng, shape.w_len(), 0.5));
        let dy = half(&random(&mut rng, shape.y_len(), 1.0));
        // Identity: dY must be zero off the routes for the dense kernel to agree.
        let dy_masked = half(&masked(
            &shape,
            &map,
            &dy.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
        ));
        let up = |name: &str, v: &[f16]| gpu.upload(name, v).unwrap();
        let (wb, dyb, dymb) = (up("w", &w), up("dy", &dy), up("dy masked", &dy_masked));
        let dx = [
            up("dx", &vec![f16::NAN; shape.x_len()]),
            up("dx dense", &vec![f16::NAN; shape.x_len()]),
        ];
        let max_routes = max_routes(&shape, 2, 2);
        let scratch = gpu
            .storage_buffer(
                "scratch",
                4 * SlotScratch::elements(&shape, max_routes) as u64,
            )
            .unwrap();
        let args = |i: usize| GroupedGemmBackwardInput {
            shape,
            activation: Activation::Identity,
            precision: Precision::F16,
            dy: [&dyb, &dymb][i].into(),
            y: None,
            w: (&wb).into(),
            dx: (&dx[i]).into(),
            accumulate: false,
        };
        let scratch_view =
            (input == InputLayout::Shared).then(|| SlotScratch::new((&scratch).into(), max_routes));
        if f16_is_missing(gpu, "backward_input_ragged", || {
            gemm.backward_input_ragged(&args(0), RowMap::new(&routes), scratch_view)
        }) {
            return;
        }
        let ragged = gemm
            .backward_input_ragged(&args(0), RowMap::new(&routes), scratch_view)
            .unwrap();
        let dense = gemm.backward_input(&args(1)).unwrap();
        run(gpu, |e| {
            ragged.iter().for_each(|d| d.encode(e));
            dense.encode(e);
        });
        let got: Vec<f16> = gpu.read(&dx[0], 0, shape.x_len()).unwrap();
        let to64 = |v: &[f16]| -> Vec<f64> { v.iter().map(|x| x.to_f64()).collect() };
        let want = reference::backward_input_ragged(
            &shape,
            Activation::Identity,
            &to64(&w),
            &vec![0.0; shape.y_len()],
            &to64(&dy),
            &map,
        )
        .unwrap();
        let got32: Vec<f32> = got.iter().map(|v| v.to_f32()).collect();
        assert!(got32.iter().all(|v| v.is_finite()), "{input:?}");
        assert_close(&format!("f16 dX {input:?}"), &got32, &want, 2e-3);
        if input == InputLayout::PerGroup {
            let dense: Vec<f16> = gpu.read(&dx[1], 0, shape.x_len()).unwrap();
            let live = routed_mask(&shape, &map);
            for (row, &live) in live.iter().enumerate() {
                let span = row * shape.inputs..(row + 1) * shape.inputs;
                if live {
                    assert_eq!(got[span.clone()], dense[span], "row {row}");
                } else {
                    assert!(got[span].iter().all(|v| v.to_bits() == 0), "row {row}");
                }
            }
        }
    }
}

/// The reference's ragged input gradient against finite differences of the ragged
/// forward pass, both layouts and activations, and against `backward_ragged`'s dX.
#[test]
fn ragged_reference_input_gradient_matches_finite_differences() {
    let mut rng = Rng::new(31);
    for (input, act, k) in [
        (InputLayout::Shared, Activation::Relu, 2),
        (InputLayout::Shared, Activation::Identity, 1),
        (InputLayout::PerGroup, Activation::Relu, 1),
        (InputLayout::PerGroup, Activation::Identity, 2),
    ] {
        let shape = GemmShape {
            groups: 3,
            rows: 7,
            inputs: 4,
            outputs: 5,
            input,
        };
        let routing = routing_of(&shape, 2);
        let map = route(&routing, &to_f64(&top_k_gates(&mut rng, &routing, k))).unwrap();
        // dL/dY = r, on the unrouted rows too: the gradient must not see them.
        let ([x, w, b], r) = gradient_point(&shape, &mut rng);
        let loss = |x: &[Vec<f64>; 1]| -> f64 {
            let y = reference::forward_ragged(&shape, act, &x[0], &w, Some(&b), &map).unwrap();
            y.iter().zip(&r).map(|(a, b)| a * b).sum()
        };
        let y = reference::forward_ragged(&shape, act, &x, &w, Some(&b), &map).unwrap();
        let dx = reference::backward_input_ragged(&shape, act, &w, &y, &r, &map).unwrap();
        let all = reference::backward_ragged(&shape, act, &x, &w, &y, &r, &map).unwrap();
        let what = format!("{input:?} {act:?}");
        assert_gradients_match_finite_differences(&what, &[x], [("dX", &dx)], 1e-6, loss);
        for (a, b) in dx.iter().zip(&all.dx) {
            assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}

#[test]
fn bad_ragged_input_gradients_are_errors_not_panics() {
    let gpu = gpu();
    let gemm = GroupedGemm::new(gpu);
    let shape = GemmShape {
        groups: 3,
        rows: 4,
        inputs: 5,
        outputs: 2,
        input: InputLayout::Shared,
    };
    let per_group = GemmShape {
        input: InputLayout::PerGroup,
        ..shape
    };
    let buffer = |name: &str, n: usize| gpu.storage_buffer(name, 4 * n as u64).unwrap();
    let (w, dy, y) = (
        buffer("w", shape.w_len()),
        buffer("dy", shape.y_len()),
        buffer("y", shape.y_len()),
    );
    let dx = buffer("dx", per_group.x_len());
    let routes = buffer("routes", RowMap::elements(shape.groups, shape.rows));
    // Rows × 2 routes per row × inputs, and one value short of it.
    let scratch = buffer("scratch", SlotScratch::elements(&shape, 2));
    assert_eq!(SlotScratch::elements(&shape, 2), 4 * 2 * 5);
    assert_eq!(SlotScratch::slots(&shape, 9), 4 * 3, "capped at the groups");
    let short = buffer("short scratch", SlotScratch::elements(&shape, 2) - 1);
    let args = GroupedGemmBackwardInput {
        shape,
        activation: Activation::Relu,
        precision: Precision::F32,
        dy: (&dy).into(),
        y: Some((&y).into()),
        w: (&w).into(),
        dx: (&dx).into(),
        accumulate: false,
    };
    let map = RowMap::new(&routes);
    let fits = Some(SlotScratch::new((&scratch).into(), 2));
    assert_eq!(
        gemm.backward_input_ragged(&args, map, fits).unwrap().len(),
        2
    );

    // Shared X needs a scratch large enough for its bound.
    expect_err(
        gemm.backward_input_ragged(&args, map, None),
        &["backward_input_ragged", "`scratch`", "SlotScratch"],
    );
    expect_err(
        gemm.backward_input_ragged(&args, map, Some(SlotScratch::new((&short).into(), 2))),
        &[
            "backward_input_ragged",
            "`scratch`",
            "160 bytes",
            "156 bytes",
        ],
    );
    expect_err(
        gemm.backward_input_ragged(&args, map, Some(SlotScratch::new((&scratch).into(), 3))),
        &["`scratch`", "4 rows × 3 routes per row"],
    );
    expect_err(
        gemm.backward_input_ragged(
            &args,
            map,
            Some(SlotScratch::new(BufferView::at(&scratch, 4), 2)),
        ),
        &["`scratch`"],
    );
    expect_err(
        gemm.backward_input_ragged(&args, map, Some(SlotScratch::new((&scratch).into(), 0))),
        &["max_routes_per_row"],
    );
    // The scratch must not be an input of the product, nor dX of the reduce.
    expect_err(
        gemm.backward_input_ragged(&args, map, Some(SlotScratch::new((&dy).into(), 1))),
        &["distinct buffers"],
    );
    expect_err(
        gemm.backward_input_ragged(&args, map, Some(SlotScratch::new((&dx).into(), 1))),
        &["distinct buffers"],
    );
    // The map must fit the shape and not be an output.
    expect_err(
        gemm.backward_input_ragged(&args, RowMap::at(&routes, 4), fits),
        &["backward_input_ragged", "`routes`"],
    );
    expect_err(
        gemm.backward_input_ragged(&args, RowMap::new(&dx), fits),
        &["distinct buffers"],
    );
    // dX too small for the reduce (X is shared: rows × inputs).
    let small_dx = buffer("small dx", shape.x_len() - 1);
    expect_err(
        gemm.backward_input_ragged(
            &GroupedGemmBackwardInput {
                dx: (&small_dx).into(),
                ..args
            },
            map,
            fits,
        ),
        &["backward_input_ragged", "`dx`"],
    );
    // The forward output is needed for ReLU.
    expect_err(
        gemm.backward_input_ragged(&GroupedGemmBackwardInput { y: None, ..args }, map, fits),
        &["forward output"],
    );
    // Per-group X writes dX directly: a scratch is a mistake, and dX holds every group.
    let pg = GroupedGemmBackwardInput {
        shape: per_group,
        ..args
    };
    assert_eq!(gemm.backward_input_ragged(&pg, map, None).unwrap().len(), 1);
    expect_err(
        gemm.backward_input_ragged(&pg, map, fits),
        &["backward_input_ragged", "`scratch`", "per group"],
    );
    let shared_dx = buffer("shared dx", shape.x_len());
    expect_err(
        gemm.backward_input_ragged(
            &GroupedGemmBackwardInput {
                dx: (&shared_dx).into(),
                ..pg
            },
            map,
            None,
        ),
        &["`dx`"],
    );
    expect_err(
        gemm.backward_input_ragged(
            &GroupedGemmBackwardInput {
                shape: GemmShape { inputs: 0, ..shape },
                ..args
            },
            map,
            fits,
        ),
        &["inputs"],
    );
    expect_err(
        gemm.backward_input_ragged_with(&args, map, fits, Tiling::Naive { wg: 0, wg_rows: 1 }),
        &["tiling"],
    );
    // A failed check records nothing: the encoder still finishes and runs clean.
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    assert!(
        gemm.encode_backward_input_ragged(
            &mut encoder,
            &args,
            map,
            Some(SlotScratch::new((&short).into(), 2))
        )
        .is_err()
    );
    gpu.queue().submit([encoder.finish()]);
    gpu.wait().unwrap();
    gpu.check().unwrap();
}
