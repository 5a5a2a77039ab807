//! The parts of the API a web build relies on, checked natively: opening a device,
//! waiting and reading back without blocking the thread (driven here by
//! `pollster`, in a browser by its event loop), and the device report.

use crate::common::{expect_err, gpu, gpu_without_subgroups};
use mmoe_wgpu::kernels::grouped_gemm::{GroupedGemm, GroupedGemmForward};
use mmoe_wgpu::kernels::{BufferView, Precision};
use mmoe_wgpu::{Activation, GemmShape, Gpu, GpuOptions, InputLayout};

#[test]
fn a_device_opens_without_blocking() {
    let gpu = pollster::block_on(Gpu::with_options_async(&GpuOptions {
        tune_cache: None,
        ..GpuOptions::from_env()
    }))
    .unwrap_or_else(|e| panic!("the tests need a GPU adapter: {e}"));
    assert_eq!(gpu.adapter().name, crate::common::gpu().adapter().name);
}

/// Kernels recorded into the caller's encoder, then waited for and read back with the
/// async forms: the same numbers as the blocking ones, at any offset and element size.
#[test]
fn read_async_gives_what_read_gives() {
    let gpu = gpu();
    let shape = GemmShape {
        groups: 2,
        rows: 3,
        inputs: 2,
        outputs: 2,
        input: InputLayout::Shared,
    };
    let x = gpu.upload("x", &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let w = gpu
        .upload("w", &[1.0f32, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0, -1.0])
        .unwrap();
    let y = gpu.storage_buffer("y", 4 * shape.y_len() as u64).unwrap();
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    GroupedGemm::new(gpu)
        .encode_forward(
            &mut encoder,
            &GroupedGemmForward {
                shape,
                activation: Activation::Identity,
                precision: Precision::F32,
                x: BufferView::new(&x),
                w: BufferView::new(&w),
                bias: None,
                y: BufferView::new(&y),
            },
        )
        .unwrap();
    gpu.queue().submit([encoder.finish()]);
    pollster::block_on(gpu.wait_async()).unwrap();
    let got: Vec<f32> = pollster::block_on(gpu.read_async(&y, 0, shape.y_len())).unwrap();
    assert_eq!(got, gpu.read::<f32>(&y, 0, shape.y_len()).unwrap());
    assert_eq!(
        got,
        [
            1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0
        ]
    );
    // Half-words from the middle of a word, and an empty read.
    let halves: Vec<u16> = (0..9).collect();
    let h = gpu.upload("halves", &halves).unwrap();
    let tail: Vec<u16> = pollster::block_on(gpu.read_async(&h, 2, 7)).unwrap();
    assert_eq!(tail, &halves[1..8]);
    let none: Vec<f32> = pollster::block_on(gpu.read_async(&y, 8, 0)).unwrap();
    assert!(none.is_empty());
    expect_err(
        pollster::block_on(gpu.read_async::<f32>(&y, 4, shape.y_len())),
        &["Gpu::read", "cannot give"],
    );
}

/// What a benchmark prints: the adapter, the optional features on and withheld, the
/// limits the tilings depend on.
#[test]
fn the_device_report_says_what_runs() {
    let report = gpu_without_subgroups().report();
    assert!(report.withheld.contains(&"SUBGROUP"));
    assert!(!report.features.contains(&"SUBGROUP"));
    let text = report.to_string();
    for needle in [
        report.adapter.name.as_str(),
        "withheld: SUBGROUP",
        "bytes of workgroup memory",
        "workgroup memory;",
        "subgroup sizes",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
    }
}
