//! Runs the expert layer's grouped GEMM (forward and backward) on the GPU at a
//! standard shape, checks it against the CPU reference and prints GFLOP/s next to
//! the naive one-invocation-per-output kernel.
//!
//! ```text
//! cargo run --release --example grouped_gemm -- [paper|census|large]
//! ```

use std::process::ExitCode;

use mmoe_wgpu::kernels::Precision;
use mmoe_wgpu::kernels::grouped_gemm::{
    GroupedGemm, GroupedGemmBackwardInput, GroupedGemmBackwardWeights, GroupedGemmForward, Tiling,
};
use mmoe_wgpu::kernels::{BufferView, Dispatch};
use mmoe_wgpu::reference::grouped_gemm as reference;
use mmoe_wgpu::rng::Rng;
use mmoe_wgpu::{Activation, GemmShape, Gpu, StandardShape};

fn main() -> ExitCode {
    let name = std::env::args().nth(1).unwrap_or_else(|| "census".into());
    let Some(standard) = StandardShape::named(&name) else {
        eprintln!("usage: grouped_gemm [paper|census|large]  (unknown shape `{name}`)");
        return ExitCode::from(2);
    };
    match run(standard) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn random(rng: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-scale, scale) as f32).collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Largest absolute difference over the largest magnitude of the reference.
fn relative_error(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .fold(0.0f64, |m, (&g, &w)| m.max((g as f64 - w).abs()))
        / scale
}

fn run(standard: StandardShape) -> mmoe_wgpu::Result<bool> {
    let gpu = Gpu::new()?;
    println!("adapter: {}", gpu.adapter());
    let shape = standard.expert_gemm();
    println!(
        "shape {}: {} experts, X [{}, {}] -> H [{}, {}, {}], ReLU",
        standard.name,
        shape.groups,
        shape.rows,
        shape.inputs,
        shape.groups,
        shape.rows,
        shape.outputs
    );
    let mut rng = Rng::new(1);
    let x = random(&mut rng, shape.x_len(), 1.0);
    let w = random(&mut rng, shape.w_len(), (1.0 / shape.inputs as f64).sqrt());
    let b = random(&mut rng, shape.b_len(), 0.1);
    let dy = random(&mut rng, shape.y_len(), 1.0);

    let gemm = GroupedGemm::new(&gpu);
    let (xb, wb, bb, dyb) = (
        gpu.upload("x", &x)?,
        gpu.upload("w", &w)?,
        gpu.upload("b", &b)?,
        gpu.upload("dy", &dy)?,
    );
    let yb = gpu.storage_buffer("y", 4 * shape.y_len() as u64)?;
    let dxb = gpu.storage_buffer("dx", 4 * shape.x_len() as u64)?;
    let dwb = gpu.storage_buffer("dw", 4 * shape.w_len() as u64)?;
    let dbb = gpu.storage_buffer("db", 4 * shape.b_len() as u64)?;
    let act = Activation::Relu;
    let forward = GroupedGemmForward {
        precision: Precision::F32,
        shape,
        activation: act,
        x: (&xb).into(),
        w: (&wb).into(),
        bias: Some((&bb).into()),
        y: (&yb).into(),
    };
    let backward_input = GroupedGemmBackwardInput {
        precision: Precision::F32,
        shape,
        activation: act,
        dy: (&dyb).into(),
        y: Some((&yb).into()),
        w: (&wb).into(),
        dx: (&dxb).into(),
        accumulate: false,
    };
    let backward_weights = GroupedGemmBackwardWeights {
        precision: Precision::F32,
        shape,
        activation: act,
        x: (&xb).into(),
        dy: (&dyb).into(),
        y: Some((&yb).into()),
        dw: (&dwb).into(),
        db: Some(BufferView::new(&dbb)),
    };

    let tiled = [
        gemm.forward(&forward)?,
        gemm.backward_input(&backward_input)?,
        gemm.backward_weights(&backward_weights)?,
    ];
    let naive_tiling = Tiling::Naive { wg: 8, wg_rows: 8 };
    let naive = [
        gemm.forward_with(&forward, naive_tiling)?,
        gemm.backward_input_with(&backward_input, naive_tiling)?,
        gemm.backward_weights_with(&backward_weights, naive_tiling)?,
    ];

    // Agreement: the whole output for the small shapes, the first rows for `large`.
    let check_rows = if shape.rows * shape.inputs * shape.outputs * shape.groups > 1 << 29 {
        64
    } else {
        shape.rows
    };
    let mut encoder = gpu
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
    for d in &tiled {
        d.encode(&mut encoder);
    }
    gpu.queue().submit([encoder.finish()]);
    let got_y = gpu.read::<f32>(&yb, 0, shape.y_len())?;
    let got_dx = gpu.read::<f32>(&dxb, 0, shape.x_len())?;
    let sub = GemmShape {
        rows: check_rows,
        ..shape
    };
    let want_y = reference::forward(
        &sub,
        act,
        &f64s(&x[..sub.x_len()]),
        &f64s(&w),
        Some(&f64s(&b)),
    )?;
    let y_rows: Vec<f32> = (0..shape.groups)
        .flat_map(|g| {
            got_y[g * shape.rows * shape.outputs..][..check_rows * shape.outputs].to_vec()
        })
        .collect();
    let dy_rows: Vec<f64> = (0..shape.groups)
        .flat_map(|g| f64s(&dy[g * shape.rows * shape.outputs..][..check_rows * shape.outputs]))
        .collect();
    let want_grads = reference::backward(
        &sub,
        act,
        &f64s(&x[..sub.x_len()]),
        &f64s(&w),
        &f64s(&y_rows),
        &dy_rows,
    )?;
    let err_y = relative_error(&y_rows, &want_y);
    let err_dx = relative_error(&got_dx[..sub.x_len()], &want_grads.dx);
    let mut errors = vec![("Y", err_y), ("dX", err_dx)];
    if check_rows == shape.rows {
        errors.push((
            "dW",
            relative_error(&gpu.read::<f32>(&dwb, 0, shape.w_len())?, &want_grads.dw),
        ));
        errors.push((
            "db",
            relative_error(&gpu.read::<f32>(&dbb, 0, shape.b_len())?, &want_grads.db),
        ));
    }
    let rows_note = if check_rows == shape.rows {
        "all rows".to_string()
    } else {
        format!("first {check_rows} rows")
    };
    println!("agreement with the CPU reference ({rows_note}), relative error:");
    let mut ok = true;
    for (what, err) in &errors {
        let pass = *err <= 1e-4;
        ok &= pass;
        println!(
            "  {what:<3} {err:.2e}  {}",
            if pass { "ok" } else { "FAIL (> 1e-4)" }
        );
    }

    let flops = shape.forward_flops();
    println!("throughput ({}):", gpu.time_source());
    println!(
        "  {:<17} {:>12} {:>12} {:>8}",
        "pass", "tiled GF/s", "naive GF/s", "ratio"
    );
    for (i, pass) in ["forward", "backward input", "backward weights"]
        .iter()
        .enumerate()
    {
        let t = gflops(&gpu, &tiled[i], flops)?;
        let n = gflops(&gpu, &naive[i], flops)?;
        println!("  {pass:<17} {t:>12.2} {n:>12.2} {:>7.1}x", t / n);
    }
    Ok(ok)
}

fn gflops(gpu: &Gpu, dispatch: &Dispatch, flops: f64) -> mmoe_wgpu::Result<f64> {
    // The first run also faults in memory; a run that takes over a second (the naive
    // kernel at `large`) is long enough to stand as the measurement itself.
    let first = gpu
        .time_pass(1, |p| dispatch.record(p))?
        .total
        .as_secs_f64();
    if first > 1.0 {
        return Ok(flops / first / 1e9);
    }
    let reps = 3;
    let t = gpu.time_pass(reps, |p| dispatch.record(p))?;
    Ok(flops * reps as f64 / t.total.as_secs_f64() / 1e9)
}
