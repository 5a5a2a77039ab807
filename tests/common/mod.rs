//! Helpers shared by the integration tests, one copy that each test binary includes.
//! Every GPU test runs on a real adapter (lavapipe in CI): a missing adapter fails
//! the test with the reason.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use mmoe_wgpu::Gpu;
use mmoe_wgpu::rng::Rng;

pub mod fields;
pub mod fuzz;
pub mod gate;
pub mod gemm;
pub mod models;
pub mod routing;

/// One device for the whole test binary, so pipelines compile once.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::new() {
        Ok(gpu) => {
            eprintln!("adapter: {}", gpu.adapter());
            gpu
        }
        Err(e) => panic!("the tests need a GPU adapter: {e}"),
    })
}

/// A second device for the whole test binary, on the same adapter opened without
/// `SUBGROUP` whatever the adapter has: the kernels as they run where there are no
/// subgroups (WebGPU in a browser, DX12 through FXC, older Vulkan drivers).
pub fn gpu_without_subgroups() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let options = mmoe_wgpu::GpuOptions {
            withheld_features: wgpu::Features::SUBGROUP,
            ..mmoe_wgpu::GpuOptions::from_env()
        };
        match Gpu::with_options(&options) {
            Ok(gpu) => {
                assert!(!gpu.capabilities().subgroups, "SUBGROUP was withheld");
                gpu
            }
            Err(e) => panic!("the tests need a GPU adapter: {e}"),
        }
    })
}

/// `n` values uniform in `[-scale, scale)`.
pub fn random(rng: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-scale, scale) as f32).collect()
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Relative error of `got` against `want`: the largest absolute difference over the
/// largest magnitude of `want` (norm-wise, so values that cancel to near zero do not
/// blow it up).
pub fn relative_error(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    let diff = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (&g, &w)| m.max((g as f64 - w).abs()));
    diff / scale
}

#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tolerance: f64) {
    let err = relative_error(got, want);
    assert!(
        err <= tolerance,
        "{what}: relative error {err:.3e} over tolerance {tolerance:.1e}"
    );
}

/// Runs `record` on a fresh encoder and waits for the GPU.
pub fn run(gpu: &Gpu, record: impl FnOnce(&mut wgpu::CommandEncoder)) {
    let mut encoder = gpu
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
    record(&mut encoder);
    gpu.queue().submit([encoder.finish()]);
    gpu.wait().expect("GPU work failed");
}

pub fn read(gpu: &Gpu, buffer: &wgpu::Buffer, len: usize) -> Vec<f32> {
    gpu.read(buffer, 0, len).expect("readback failed")
}

/// The bit patterns of `v`, for comparisons that must be exact (`-0.0 != 0.0`, NaN
/// equal to itself).
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `parts` one after another from a 4-byte-aligned offset that is not
/// binding-aligned, with `fill` around and between; returns each part's start too.
pub fn pack(parts: &[&[f32]], fill: f32) -> (Vec<f32>, Vec<usize>) {
    let mut all = vec![fill; 3];
    let mut at = Vec::new();
    for v in parts {
        at.push(all.len());
        all.extend_from_slice(v);
        all.extend([fill; 5]);
    }
    (all, at)
}

/// Checks each gradient of `analytic`, the one of `loss` with respect to the
/// parameter at the same place in `params`, against central differences of step
/// 1e-6: entry by entry within `tolerance · (1 + |difference|)`.
#[track_caller]
pub fn assert_gradients_match_finite_differences<const N: usize>(
    what: &str,
    params: &[Vec<f64>; N],
    analytic: [(&str, &[f64]); N],
    tolerance: f64,
    loss: impl Fn(&[Vec<f64>; N]) -> f64,
) {
    let eps = 1e-6;
    for (which, (name, analytic)) in analytic.into_iter().enumerate() {
        assert_eq!(analytic.len(), params[which].len(), "{name} {what}: length");
        for (i, &a) in analytic.iter().enumerate() {
            let (mut plus, mut minus) = (params.clone(), params.clone());
            plus[which][i] += eps;
            minus[which][i] -= eps;
            let fd = (loss(&plus) - loss(&minus)) / (2.0 * eps);
            assert!(
                (fd - a).abs() <= tolerance * (1.0 + fd.abs()),
                "{name}[{i}] {what}: finite difference {fd} vs analytic {a}"
            );
        }
    }
}

/// A fresh, empty directory for one test. Many test modules share each binary's
/// process, so the process id alone does not keep two tests apart: a counter does, and
/// the process id keeps concurrent runs of the suite apart.
pub fn scratch_dir(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mmoe-wgpu-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The example `name` as `cargo test` builds it, next to the test binaries:
/// `target/<profile>/examples/<name>`, found from this test's own path
/// `target/<profile>/deps/<test>-<hash>`. Missing is a failure, never a skip.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    let binary = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "the `{name}` example binary `{}` is missing: `cargo test` builds it unless the \
         run is restricted with --test; build it with `cargo build --release --example {name}`",
        binary.display()
    );
    binary
}

/// The error `result` must be, whose message mentions every one of `needles`.
pub fn expect_err<T>(result: Result<T, mmoe_wgpu::Error>, needles: &[&str]) -> mmoe_wgpu::Error {
    match result {
        Ok(_) => panic!("expected an error mentioning {needles:?}, got Ok"),
        Err(e) => {
            let msg = e.to_string();
            for needle in needles {
                assert!(
                    msg.contains(needle),
                    "error `{msg}` does not mention `{needle}`"
                );
            }
            e
        }
    }
}

/// Where the adapter has no `SHADER_F16`: says so, checks that `attempt` (an f16 call)
/// is a `MissingFeature` error naming `context` and the feature, and returns true, so
/// the caller's f16 comparison stops there. False where f16 runs.
pub fn f16_is_missing<T>(
    gpu: &Gpu,
    context: &str,
    attempt: impl FnOnce() -> Result<T, mmoe_wgpu::Error>,
) -> bool {
    if mmoe_wgpu::kernels::Precision::F16.is_supported(gpu) {
        return false;
    }
    eprintln!(
        "note: {} has no SHADER_F16; f16 is checked to fail",
        gpu.adapter().name
    );
    let e = expect_err(attempt(), &[context, "SHADER_F16"]);
    assert!(matches!(e, mmoe_wgpu::Error::MissingFeature { .. }), "{e}");
    true
}
