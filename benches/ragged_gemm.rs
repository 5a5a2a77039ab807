//! Sparse experts at the large shape (B 2048, d 1024, E 16, h 256, T 4): the expert
//! layer's forward pass and weight gradients on only the rows top-2 gates route to
//! each expert (routing kernel + ragged grouped GEMM), against the dense path.
//!
//! ```text
//! cargo bench --bench ragged_gemm
//! ```
//!
//! Prints the routed (row, expert) pairs, the FLOPs of both paths and the GPU time
//! of each pass, for two gates: four tasks with their own random (Glorot) gate
//! weights, whose top-2 choices differ, so each row reaches up to 8 experts; and four
//! tasks sharing one gate's weights, so each row reaches 2. The input gradient runs
//! the dense kernel on both paths (see `kernels::grouped_gemm`'s ragged mode), so it
//! is timed once and counted in both totals.

use mmoe_wgpu::kernels::grouped_gemm::{
    GemmBackwardInput, GemmBackwardWeights, GemmForward, GroupedGemm, RowMap, ragged_flops,
    read_counts,
};
use mmoe_wgpu::kernels::routing::{Routing, RoutingArgs, RoutingShape};
use mmoe_wgpu::kernels::{Dispatch, Precision};
use mmoe_wgpu::rng::Rng;
use mmoe_wgpu::{Activation, GemmShape, Gpu, StandardShape};

mod common;
use common::{best_seconds, fresh_gpu};

const TOP_K: usize = 2;

fn random(rng: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-scale, scale) as f32).collect()
}

/// `G: [tasks, rows, experts]` of top-k gates `softmax_top_k(X · Wg_t)` (no bias), each
/// softmax over the k largest logits (equal logits: the lower expert first).
fn top_k_gates(s: &StandardShape, x: &[f32], wg: &[f32]) -> Vec<f32> {
    let (b, d, e, t) = (s.batch, s.inputs, s.experts, s.tasks);
    let mut g = vec![0.0f32; t * b * e];
    for task in 0..t {
        let w = &wg[task * d * e..(task + 1) * d * e];
        for row in 0..b {
            let mut z = vec![0.0f64; e];
            for (k, &xv) in x[row * d..(row + 1) * d].iter().enumerate() {
                for (zj, &wv) in z.iter_mut().zip(&w[k * e..(k + 1) * e]) {
                    *zj += f64::from(xv) * f64::from(wv);
                }
            }
            let mut order: Vec<usize> = (0..e).collect();
            order.sort_by(|&i, &j| z[j].total_cmp(&z[i]).then(i.cmp(&j)));
            let chosen = &order[..TOP_K];
            let top = z[chosen[0]];
            let sum: f64 = chosen.iter().map(|&j| (z[j] - top).exp()).sum();
            for &j in chosen {
                g[(task * b + row) * e + j] = ((z[j] - top).exp() / sum) as f32;
            }
        }
    }
    g
}

/// Forward and weight-gradient dispatches, dense (`rows` None) or ragged.
fn passes(
    gemm: &GroupedGemm,
    shape: GemmShape,
    bufs: &Buffers,
    y: &wgpu::Buffer,
    rows: Option<RowMap<'_>>,
) -> (Dispatch, Dispatch) {
    let forward = GemmForward {
        shape,
        activation: Activation::Relu,
        precision: Precision::F32,
        x: (&bufs.x).into(),
        w: (&bufs.w).into(),
        bias: Some((&bufs.b).into()),
        y: y.into(),
    };
    let weights = GemmBackwardWeights {
        shape,
        activation: Activation::Relu,
        precision: Precision::F32,
        x: (&bufs.x).into(),
        dy: (&bufs.dy).into(),
        y: Some(y.into()),
        dw: (&bufs.dw).into(),
        db: Some((&bufs.db).into()),
    };
    let done = match rows {
        None => gemm
            .forward(&forward)
            .and_then(|f| Ok((f, gemm.backward_weights(&weights)?))),
        Some(map) => gemm
            .forward_ragged(&forward, map)
            .and_then(|f| Ok((f, gemm.backward_weights_ragged(&weights, map)?))),
    };
    done.unwrap_or_else(|e| panic!("{e}"))
}

struct Buffers {
    x: wgpu::Buffer,
    w: wgpu::Buffer,
    b: wgpu::Buffer,
    dy: wgpu::Buffer,
    dw: wgpu::Buffer,
    db: wgpu::Buffer,
}

/// Runs `d` once (its outputs feed later passes), then its best time in seconds of
/// four: the other work on a shared machine only ever adds time.
fn run_and_time(gpu: &Gpu, d: &Dispatch) -> f64 {
    best_seconds(gpu, 3, |pass| d.record(pass))
}

fn main() {
    let gpu = fresh_gpu();
    let s = StandardShape::LARGE;
    let shape = s.expert_gemm();
    println!(
        "shape: B {}, d {}, E {}, h {}, T {}; top-{TOP_K} gates; ReLU experts with bias",
        s.batch, s.inputs, s.experts, s.expert_width, s.tasks
    );
    let mut rng = Rng::new(8);
    let x = random(&mut rng, shape.x_len(), 1.0);
    let upload = |name: &str, v: &[f32]| gpu.upload(name, v).unwrap_or_else(|e| panic!("{e}"));
    let empty = |name: &str, n: usize| {
        gpu.storage_buffer(name, 4 * n as u64)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let glorot = (6.0 / (s.inputs + s.expert_width) as f64).sqrt();
    let bufs = Buffers {
        x: upload("x", &x),
        w: upload("w", &random(&mut rng, shape.w_len(), glorot)),
        b: upload("b", &random(&mut rng, shape.b_len(), 0.1)),
        dy: upload("dy", &random(&mut rng, shape.y_len(), 1.0)),
        dw: empty("dw", shape.w_len()),
        db: empty("db", shape.b_len()),
    };
    let gemm = GroupedGemm::new(&gpu);

    let y_dense = empty("y dense", shape.y_len());
    let (forward, weights) = passes(&gemm, shape, &bufs, &y_dense, None);
    let dense = [run_and_time(&gpu, &forward), run_and_time(&gpu, &weights)];
    let dx = empty("dx", shape.x_len());
    let input = gemm
        .backward_input(&GemmBackwardInput {
            shape,
            activation: Activation::Relu,
            precision: Precision::F32,
            dy: (&bufs.dy).into(),
            y: Some((&y_dense).into()),
            w: (&bufs.w).into(),
            dx: (&dx).into(),
            accumulate: false,
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let dx_time = run_and_time(&gpu, &input);
    let dense_flops = shape.forward_flops();
    println!(
        "dense: forward {:.3} s, backward dW+db {:.3} s ({:.2} + {:.2} GFLOP/s); \
         backward dX (dense on both paths) {:.3} s",
        dense[0],
        dense[1],
        dense_flops / dense[0] / 1e9,
        dense_flops / dense[1] / 1e9,
        dx_time
    );

    let routing_shape = RoutingShape {
        gates: s.tasks,
        rows: s.batch,
        experts: s.experts,
    };
    let gate_scale = (6.0 / (s.inputs + s.experts) as f64).sqrt();
    let own = random(&mut rng, s.tasks * s.inputs * s.experts, gate_scale);
    let one = random(&mut rng, s.inputs * s.experts, gate_scale);
    let shared: Vec<f32> = (0..s.tasks).flat_map(|_| one.iter().copied()).collect();
    for (name, wg) in [("tasks with own gates", own), ("tasks agreeing", shared)] {
        let g = upload("g", &top_k_gates(&s, &x, &wg));
        let routes = empty("routes", routing_shape.routes_len());
        let route = Routing::new(&gpu)
            .dispatch(&RoutingArgs {
                shape: routing_shape,
                precision: Precision::F32,
                g: (&g).into(),
                routes: (&routes).into(),
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let route_time = run_and_time(&gpu, &route);
        let map = RowMap::new(&routes);
        let counts = read_counts(&gpu, map, s.experts).unwrap_or_else(|e| panic!("{e}"));
        let pairs: u64 = counts.iter().map(|&c| u64::from(c)).sum();
        let flops = ragged_flops(&shape, &counts).unwrap_or_else(|e| panic!("{e}"));
        let y = empty("y ragged", shape.y_len());
        let (forward, weights) = passes(&gemm, shape, &bufs, &y, Some(map));
        let ragged = [run_and_time(&gpu, &forward), run_and_time(&gpu, &weights)];
        let fraction = flops / dense_flops;
        let (time_ragged, time_dense) = (ragged[0] + ragged[1], dense[0] + dense[1]);
        println!("{name}:");
        println!(
            "  routed (row, expert) pairs: {pairs} of {} ({:.1}%), {:.2} experts per row; \
             per expert {counts:?}",
            s.batch * s.experts,
            100.0 * fraction,
            pairs as f64 / s.batch as f64
        );
        println!(
            "  FLOPs, forward + backward dW: ragged {:.2} G, dense {:.2} G, fraction {fraction:.3}; \
             with the dense dX: {:.3}",
            2.0 * flops / 1e9,
            2.0 * dense_flops / 1e9,
            (2.0 * flops + dense_flops) / (3.0 * dense_flops)
        );
        println!(
            "  time: routing {:.2} ms; forward {:.3} s ({:.2} GFLOP/s), backward dW+db {:.3} s \
             ({:.2} GFLOP/s)",
            route_time * 1e3,
            ragged[0],
            flops / ragged[0] / 1e9,
            ragged[1],
            flops / ragged[1] / 1e9
        );
        println!(
            "  forward + backward dW: ragged (with routing) {:.3} s vs dense {time_dense:.3} s = {:.3}; \
             with dX on both: {:.3}",
            time_ragged + route_time,
            (time_ragged + route_time) / time_dense,
            (time_ragged + route_time + dx_time) / (time_dense + dx_time)
        );
    }
}
