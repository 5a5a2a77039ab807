//! One full MMoE training step (forward, backward, Adam) at the standard shapes, and
//! the cold start: a fresh device, pipeline compilation included, to the end of the
//! first step.
//!
//! ```text
//! cargo bench --bench train_step [-- census]
//! ```

use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use mmoe_wgpu::model::{ModelConfig, TaskConfig, TaskKind, Trainer};
use mmoe_wgpu::rng::Rng;
use mmoe_wgpu::{Gpu, StandardShape};

fn config(shape: &StandardShape) -> ModelConfig {
    let tasks = (0..shape.tasks)
        .map(|t| TaskConfig::new(format!("task{t}"), TaskKind::BinaryClassification))
        .collect();
    ModelConfig::mmoe(
        shape.inputs,
        shape.experts,
        shape.expert_width,
        shape.tower_width,
        tasks,
    )
}

fn batch(shape: &StandardShape) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(3);
    let x = (0..shape.batch * shape.inputs)
        .map(|_| rng.normal() as f32)
        .collect();
    let y = (0..shape.batch * shape.tasks)
        .map(|_| (rng.unit() < 0.5) as u8 as f32)
        .collect();
    (x, y)
}

/// A new device and trainer, then one step and a wait: what a fresh process pays.
fn cold_first_step(shape: &StandardShape) -> (Duration, Duration) {
    let (x, y) = batch(shape);
    let start = Instant::now();
    let gpu = Gpu::new().unwrap_or_else(|e| panic!("{e}"));
    let mut trainer =
        Trainer::new(&gpu, config(shape), shape.batch).unwrap_or_else(|e| panic!("{e}"));
    trainer.step(&x, &y).unwrap_or_else(|e| panic!("{e}"));
    trainer.loss().unwrap_or_else(|e| panic!("{e}"));
    let first = start.elapsed();
    let steady = Instant::now();
    for _ in 0..3 {
        trainer.step(&x, &y).unwrap_or_else(|e| panic!("{e}"));
    }
    trainer.loss().unwrap_or_else(|e| panic!("{e}"));
    (first, steady.elapsed() / 3)
}

fn train_step(c: &mut Criterion) {
    let gpu = Gpu::new().unwrap_or_else(|e| panic!("{e}"));
    println!("adapter: {}", gpu.adapter());
    println!("time: wall clock per step, each step waited for (loss read back)");
    for shape in StandardShape::ALL {
        let (first, steady) = cold_first_step(&shape);
        println!(
            "train_step/{}: cold first step {:.2} s (device, pipelines, first step), then {:.1} ms per step",
            shape.name,
            first.as_secs_f64(),
            steady.as_secs_f64() * 1e3
        );
        let (x, y) = batch(&shape);
        let mut trainer =
            Trainer::new(&gpu, config(&shape), shape.batch).unwrap_or_else(|e| panic!("{e}"));
        trainer.step(&x, &y).unwrap_or_else(|e| panic!("{e}"));
        let profile = trainer
            .profile_step(&x, &y)
            .unwrap_or_else(|e| panic!("{e}"));
        for (label, time) in &profile {
            println!("  {label:<40} {:>9.3} ms", time.as_secs_f64() * 1e3);
        }
        let mut group = c.benchmark_group("train_step");
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        group.bench_function(shape.name, |bencher| {
            bencher.iter_custom(|iterations| {
                let start = Instant::now();
                for _ in 0..iterations {
                    trainer.step(&x, &y).unwrap_or_else(|e| panic!("{e}"));
                }
                trainer.loss().unwrap_or_else(|e| panic!("{e}"));
                start.elapsed()
            })
        });
        group.finish();
    }
}

criterion_group!(benches, train_step);
criterion_main!(benches);
