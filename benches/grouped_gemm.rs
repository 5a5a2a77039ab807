//! GFLOP/s of the expert grouped GEMM, forward and both backward passes, at the
//! standard shapes. Criterion's `elem/s` column counts floating-point operations,
//! so `Gelem/s` reads as GFLOP/s.
//!
//! ```text
//! cargo bench --bench grouped_gemm [-- census]
//! ```

use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use mmoe_wgpu::kernels::Dispatch;
use mmoe_wgpu::kernels::grouped_gemm::{
    GemmBackwardInput, GemmBackwardWeights, GemmForward, GroupedGemm,
};
use mmoe_wgpu::rng::Rng;
use mmoe_wgpu::{Activation, Gpu, StandardShape};

/// The three passes of one shape, recorded once and replayed by every iteration.
struct Passes {
    forward: Dispatch,
    backward_input: Dispatch,
    backward_weights: Dispatch,
    /// Kept alive for the dispatches' bind groups.
    _buffers: Vec<wgpu::Buffer>,
}

fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect()
}

fn passes(gpu: &Gpu, gemm: &GroupedGemm, standard: StandardShape) -> mmoe_wgpu::Result<Passes> {
    let shape = standard.expert_gemm();
    let mut rng = Rng::new(7);
    let x = gpu.upload("x", &random(&mut rng, shape.x_len()))?;
    let w = gpu.upload("w", &random(&mut rng, shape.w_len()))?;
    let b = gpu.upload("b", &random(&mut rng, shape.b_len()))?;
    let dy = gpu.upload("dy", &random(&mut rng, shape.y_len()))?;
    let y = gpu.storage_buffer("y", 4 * shape.y_len() as u64)?;
    let dx = gpu.storage_buffer("dx", 4 * shape.x_len() as u64)?;
    let dw = gpu.storage_buffer("dw", 4 * shape.w_len() as u64)?;
    let db = gpu.storage_buffer("db", 4 * shape.b_len() as u64)?;
    let activation = Activation::Relu;
    let forward = gemm.forward(&GemmForward {
        shape,
        activation,
        x: (&x).into(),
        w: (&w).into(),
        bias: Some((&b).into()),
        y: (&y).into(),
    })?;
    let backward_input = gemm.backward_input(&GemmBackwardInput {
        shape,
        activation,
        dy: (&dy).into(),
        y: Some((&y).into()),
        w: (&w).into(),
        dx: (&dx).into(),
        accumulate: false,
    })?;
    let backward_weights = gemm.backward_weights(&GemmBackwardWeights {
        shape,
        activation,
        x: (&x).into(),
        dy: (&dy).into(),
        y: Some((&y).into()),
        dw: (&dw).into(),
        db: Some((&db).into()),
    })?;
    Ok(Passes {
        forward,
        backward_input,
        backward_weights,
        _buffers: vec![x, w, b, dy, y, dx, dw, db],
    })
}

fn grouped_gemm(c: &mut Criterion) {
    let gpu = Gpu::new().unwrap_or_else(|e| panic!("{e}"));
    println!("adapter: {}", gpu.adapter());
    println!("time source: {}", gpu.time_source());
    let gemm = GroupedGemm::new(&gpu);
    for standard in StandardShape::ALL {
        let shape = standard.expert_gemm();
        let passes = passes(&gpu, &gemm, standard).unwrap_or_else(|e| panic!("{e}"));
        let mut group = c.benchmark_group(format!("grouped_gemm/{}", standard.name));
        // Each iteration is a whole GPU pass (up to seconds on lavapipe at `large`):
        // flat sampling with few samples keeps the run in minutes.
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3))
            .throughput(Throughput::Elements(shape.forward_flops() as u64));
        for (name, dispatch) in [
            ("forward", &passes.forward),
            ("backward_input", &passes.backward_input),
            ("backward_weights", &passes.backward_weights),
        ] {
            group.bench_function(name, |bencher| {
                bencher.iter_custom(|iterations| {
                    let reps = u32::try_from(iterations).unwrap_or(u32::MAX);
                    gpu.time_pass(reps, |pass| dispatch.record(pass))
                        .unwrap_or_else(|e| panic!("{e}"))
                        .total
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, grouped_gemm);
criterion_main!(benches);
