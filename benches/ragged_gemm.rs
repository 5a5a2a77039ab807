//! Sparse experts at the large shape (B 2048, d 1024, E 16, h 256, T 4): the expert
//! layer's forward pass and weight gradients on only the rows top-2 gates route to
//! each expert (gate kernel, routing kernel, ragged grouped GEMM), against the dense
//! path.
//!
//! ```text
//! cargo bench --bench ragged_gemm
//! ```
//!
//! Prints, for three kinds of gates, the routed (row, expert) pairs, the FLOPs of both
//! paths and the GPU time of each pass:
//!
//! - each task its own top-2 (random Glorot gate weights per task): a row needs the
//!   union of four choices, up to 8 experts;
//! - the tasks agreeing (one gate's weights for all four): 2 experts per row;
//! - one shared selection ([`Selection::Shared`], weights per task as in the first):
//!   2 experts per row by construction, each task its own weights over them.
//!
//! On the model's input an expert layer's backward pass is the weight gradients
//! alone; above a shared layer (or as an expert's second layer) it also needs the
//! input gradient, so the bench times that too, dense against ragged (through the
//! compact scratch and the per-row reduce), and gives both totals. The gate values
//! come from the GPU gate kernel; its time is the same on both paths and left out.
//!
//! Every GFLOP/s is also given as a fraction of the FMA-only probe measured first in
//! the same run (see `mmoe_wgpu::kernels::ceiling_probe`).
//!
//! Last, whole training steps of the one-layer MMoE at this shape (gate, routing,
//! experts, mixing, towers, losses, backward, Adam), with dense softmax gates and
//! with top-2 gates of both selections.

use mmoe_wgpu::kernels::gate_mix::{
    ForwardStages, GateMix, GateMixForward, GateMixShape, GateMixTopK, Selection,
};
use mmoe_wgpu::kernels::grouped_gemm::{
    GroupedGemm, GroupedGemmBackwardInput, GroupedGemmBackwardWeights, GroupedGemmForward, RowMap,
    SlotScratch, ragged_flops, read_counts,
};
use mmoe_wgpu::kernels::routing::{Routing, RoutingForward, RoutingShape};
use mmoe_wgpu::kernels::{Dispatch, Precision};
use mmoe_wgpu::model::{Architecture, Gate, ModelConfig, TaskConfig, TaskKind, Trainer};
use mmoe_wgpu::rng::Rng;
use mmoe_wgpu::{Activation, GemmShape, Gpu, StandardShape};

mod common;
use common::{best_seconds, ceiling, fresh_gpu, gflops, print_decisions};

const TOP_K: usize = 2;

fn random(rng: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-scale, scale) as f32).collect()
}

fn expect<T>(result: mmoe_wgpu::Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// Forward and weight-gradient dispatches, dense (`rows` None) or ragged.
fn passes(
    gemm: &GroupedGemm,
    shape: GemmShape,
    bufs: &Buffers,
    y: &wgpu::Buffer,
    rows: Option<RowMap<'_>>,
) -> [Dispatch; 2] {
    let forward = GroupedGemmForward {
        shape,
        activation: Activation::Relu,
        precision: Precision::F32,
        x: (&bufs.x).into(),
        w: (&bufs.w).into(),
        bias: Some((&bufs.b).into()),
        y: y.into(),
    };
    let weights = GroupedGemmBackwardWeights {
        shape,
        activation: Activation::Relu,
        precision: Precision::F32,
        x: (&bufs.x).into(),
        dy: (&bufs.dy).into(),
        y: Some(y.into()),
        dw: (&bufs.dw).into(),
        db: Some((&bufs.db).into()),
    };
    expect(match rows {
        None => gemm
            .forward(&forward)
            .and_then(|f| Ok([f, gemm.backward_weights(&weights)?])),
        Some(map) => gemm
            .forward_ragged(&forward, map)
            .and_then(|f| Ok([f, gemm.backward_weights_ragged(&weights, map)?])),
    })
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
    run_all_and_time(gpu, std::slice::from_ref(d))
}

/// [`run_and_time`] of dispatches recorded one after another.
fn run_all_and_time(gpu: &Gpu, ds: &[Dispatch]) -> f64 {
    best_seconds(gpu, 3, |pass| ds.iter().for_each(|d| d.record(pass)))
}

/// The input gradient's dispatches: dense, or ragged on `rows` into `scratch`.
fn input_gradient(
    gemm: &GroupedGemm,
    shape: GemmShape,
    (bufs, y, dx): (&Buffers, &wgpu::Buffer, &wgpu::Buffer),
    ragged: Option<(RowMap<'_>, SlotScratch<'_>)>,
) -> Vec<Dispatch> {
    let args = GroupedGemmBackwardInput {
        shape,
        activation: Activation::Relu,
        precision: Precision::F32,
        dy: (&bufs.dy).into(),
        y: Some(y.into()),
        w: (&bufs.w).into(),
        dx: dx.into(),
        accumulate: false,
    };
    expect(match ragged {
        None => gemm.backward_input(&args).map(|d| vec![d]),
        Some((map, scratch)) => gemm.backward_input_ragged(&args, map, Some(scratch)),
    })
}

/// The top-2 gate values `G: [tasks, rows, experts]` of gate weights `wg` (no bias)
/// on `x`, from the GPU gate kernel.
fn gate_values(
    gpu: &Gpu,
    shape: GateMixShape,
    selection: Selection,
    (x, wg, h): (&wgpu::Buffer, &[f32], &wgpu::Buffer),
) -> wgpu::Buffer {
    let empty = |name: &str, n: usize| expect(gpu.storage_buffer(name, 4 * n as u64));
    let wg = expect(gpu.upload("wg", wg));
    let bg = empty("bg", shape.bg_len());
    let (g, m) = (empty("g", shape.g_len()), empty("m", shape.m_len()));
    let forward = GateMixForward {
        shape,
        precision: Precision::F32,
        x: x.into(),
        wg: (&wg).into(),
        bg: (&bg).into(),
        h: h.into(),
        g: (&g).into(),
        m: (&m).into(),
    };
    let top_k = GateMixTopK {
        selection,
        stages: ForwardStages::GateOnly,
        ..GateMixTopK::new(TOP_K)
    };
    let gate = expect(GateMix::new(gpu).forward_top_k(&forward, &top_k));
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    gate.encode(&mut encoder);
    gpu.queue().submit([encoder.finish()]);
    g
}

/// Wall time of one training step of the one-layer MMoE at `s` with `gate`, best of
/// three after a first step (compilation, tuning), and the experts it computes per row.
fn training_step(gpu: &Gpu, s: &StandardShape, gate: Gate) -> (f64, f64) {
    let tasks = (0..s.tasks)
        .map(|t| TaskConfig::new(format!("task{t}"), TaskKind::BinaryClassification))
        .collect();
    let mut config = ModelConfig::mmoe(s.inputs, s.experts, s.expert_width, s.tower_width, tasks);
    config.architecture = Architecture::Mmoe {
        experts: s.experts,
        expert_layers: vec![s.expert_width],
        gate,
        task_experts: 0,
    };
    let mut rng = Rng::new(5);
    let x = random(&mut rng, s.batch * s.inputs, 1.0);
    let y: Vec<f32> = (0..s.batch * s.tasks)
        .map(|_| (rng.unit() < 0.5) as u8 as f32)
        .collect();
    let mut trainer = expect(Trainer::new(gpu, config, s.batch));
    let mut step = || {
        let start = std::time::Instant::now();
        expect(trainer.step(&x, &y));
        expect(trainer.loss());
        start.elapsed().as_secs_f64()
    };
    step();
    let best = (0..3).map(|_| step()).fold(f64::INFINITY, f64::min);
    let routed: f64 = expect(trainer.gate_report(&x)).routed.iter().sum();
    (best, routed)
}

fn main() {
    let gpu = fresh_gpu();
    let ceiling = ceiling(&gpu);
    let s = StandardShape::LARGE;
    let shape = s.expert_gemm();
    println!(
        "shape: B {}, d {}, E {}, h {}, T {}; top-{TOP_K} gates; ReLU experts with bias",
        s.batch, s.inputs, s.experts, s.expert_width, s.tasks
    );
    let mut rng = Rng::new(8);
    let x = random(&mut rng, shape.x_len(), 1.0);
    let upload = |name: &str, v: &[f32]| expect(gpu.upload(name, v));
    let empty = |name: &str, n: usize| expect(gpu.storage_buffer(name, 4 * n as u64));
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
    let dense = passes(&gemm, shape, &bufs, &y_dense, None).map(|d| run_and_time(&gpu, &d));
    let dx = empty("dx", shape.x_len());
    let dense_dx = run_all_and_time(
        &gpu,
        &input_gradient(&gemm, shape, (&bufs, &y_dense, &dx), None),
    );
    let dense_flops = shape.forward_flops();
    let time_dense = dense[0] + dense[1];
    println!(
        "dense: forward {:.3} s, backward dW+db {:.3} s, dX {dense_dx:.3} s \
         ({}; {}; {}); {:.2} GFLOP each",
        dense[0],
        dense[1],
        gflops(&ceiling, dense_flops, dense[0]),
        gflops(&ceiling, dense_flops, dense[1]),
        gflops(&ceiling, dense_flops, dense_dx),
        dense_flops / 1e9
    );

    let gate_shape = GateMixShape {
        gates: s.tasks,
        experts: s.experts,
        rows: s.batch,
        inputs: s.inputs,
        width: s.expert_width,
        input: mmoe_wgpu::InputLayout::Shared,
    };
    let routing_shape = RoutingShape {
        gates: s.tasks,
        rows: s.batch,
        experts: s.experts,
    };
    let gate_scale = (6.0 / (s.inputs + s.experts) as f64).sqrt();
    let own = random(&mut rng, gate_shape.wg_len(), gate_scale);
    let one = random(&mut rng, s.inputs * s.experts, gate_scale);
    let agreeing: Vec<f32> = (0..s.tasks).flat_map(|_| one.iter().copied()).collect();
    for (name, wg, selection) in [
        ("each task its own top-2", &own, Selection::PerGate),
        (
            "tasks agreeing (same gate weights)",
            &agreeing,
            Selection::PerGate,
        ),
        (
            "one shared selection (own gate weights)",
            &own,
            Selection::Shared,
        ),
    ] {
        let g = gate_values(&gpu, gate_shape, selection, (&bufs.x, wg, &y_dense));
        let routes = empty("routes", routing_shape.routes_len());
        let route = expect(Routing::new(&gpu).forward(&RoutingForward {
            shape: routing_shape,
            precision: Precision::F32,
            g: (&g).into(),
            routes: (&routes).into(),
        }));
        let route_time = run_and_time(&gpu, &route);
        let map = RowMap::new(&routes);
        let counts = expect(read_counts(&gpu, map, s.experts));
        let pairs: u64 = counts.iter().map(|&c| u64::from(c)).sum();
        let flops = expect(ragged_flops(&shape, &counts));
        let y = empty("y ragged", shape.y_len());
        let ragged = passes(&gemm, shape, &bufs, &y, Some(map)).map(|d| run_and_time(&gpu, &d));
        // Each row reaches at most k experts per task, or k in all when shared.
        let routes_per_row = match selection {
            Selection::PerGate => TOP_K * s.tasks,
            Selection::Shared => TOP_K,
        };
        let scratch_buffer = empty("dx slots", SlotScratch::elements(&shape, routes_per_row));
        let scratch = SlotScratch::new((&scratch_buffer).into(), routes_per_row);
        let ragged_dx = run_all_and_time(
            &gpu,
            &input_gradient(&gemm, shape, (&bufs, &y, &dx), Some((map, scratch))),
        );
        let fraction = flops / dense_flops;
        let time_ragged = ragged[0] + ragged[1] + route_time;
        println!("{name}:");
        println!(
            "  routed (row, expert) pairs: {pairs} of {}, {:.2} experts per row; \
             per expert {counts:?}",
            s.batch * s.experts,
            pairs as f64 / s.batch as f64
        );
        println!(
            "  FLOPs, forward + backward (dW, db): ragged {:.2} G, dense {:.2} G: \
             {fraction:.3} of dense",
            2.0 * flops / 1e9,
            2.0 * dense_flops / 1e9,
        );
        println!(
            "  time: routing {:.2} ms; forward {:.3} s ({}), backward dW+db {:.3} s ({})",
            route_time * 1e3,
            ragged[0],
            gflops(&ceiling, flops, ragged[0]),
            ragged[1],
            gflops(&ceiling, flops, ragged[1])
        );
        println!(
            "  forward + backward: ragged (with routing) {time_ragged:.3} s vs dense \
             {time_dense:.3} s = {:.3}, {:.3} s saved",
            time_ragged / time_dense,
            time_dense - time_ragged
        );
        // The reduce adds one addition per compact value: 1/(2h) of the products.
        let dx_flops = flops + flops / (2.0 * shape.outputs as f64);
        println!(
            "  with the input gradient: dX ragged {ragged_dx:.3} s vs dense {dense_dx:.3} s; \
             FLOPs forward + backward {:.3} of dense, time {:.3} s vs {:.3} s = {:.3}",
            (2.0 * flops + dx_flops) / (3.0 * dense_flops),
            time_ragged + ragged_dx,
            time_dense + dense_dx,
            (time_ragged + ragged_dx) / (time_dense + dense_dx)
        );
    }

    println!("whole training steps, one-layer MMoE (wall time, best of 3):");
    let (dense_step, _) = training_step(&gpu, &s, Gate::SOFTMAX);
    println!(
        "  dense softmax gates: {dense_step:.3} s ({}, counting a step as 3x the forward \
         FLOPs)",
        gflops(&ceiling, 3.0 * s.model_forward_flops(), dense_step)
    );
    for (name, gate) in [
        ("top-2, each task its own", Gate::top_k(TOP_K)),
        (
            "top-2, one shared selection",
            Gate::top_k(TOP_K).shared_selection(),
        ),
    ] {
        let (time, routed) = training_step(&gpu, &s, gate);
        println!(
            "  {name}: {time:.3} s = {:.3} of dense ({routed:.2} experts per row)",
            time / dense_step
        );
    }
    print_decisions("every kernel", &gpu, 0);
}
