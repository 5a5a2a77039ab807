//! The ceiling probe: the FMA kernel's output against the CPU reference (every
//! invocation ran its chains and wrote once, at an offset, with a partial last
//! workgroup), the copy exact through the grid-stride loop at offsets, the measured
//! ceilings positive, and bad operands rejected.

use crate::common::*;
use mmoe_wgpu::kernels::BufferView;
use mmoe_wgpu::kernels::ceiling_probe::{CeilingProbe, CopyProbe, FmaProbe};
use mmoe_wgpu::reference::ceiling_probe as reference;
use mmoe_wgpu::rng::Rng;

#[test]
fn fma_chains_match_the_reference() {
    let gpu = gpu();
    // 100 invocations: the second workgroup of 64 is partial; 16 bytes of other
    // values before the output and after it, which must stay untouched.
    let invocations = 100;
    let fill = vec![7.5f32; 4 * invocations + 8];
    let out = gpu.upload("out", &fill).unwrap();
    for (iterations, scale, offset) in [(0, 0.5, 0.25), (5, 0.75, 0.125), (300, 0.999, 0.001)] {
        let dispatch = CeilingProbe::new(gpu)
            .fma(&FmaProbe {
                invocations,
                iterations,
                scale,
                offset,
                out: BufferView::at(&out, 16),
            })
            .unwrap();
        run(gpu, |e| dispatch.encode(e));
        let got = read(gpu, &out, fill.len());
        let want = reference::fma_chains(invocations, iterations, scale.into(), offset.into());
        assert_close(
            &format!("fma_chains, {iterations} iterations"),
            &got[4..4 + 4 * invocations],
            &want,
            1e-5,
        );
        assert_eq!(&got[..4], &fill[..4], "values before the output changed");
        assert_eq!(
            &got[4 + 4 * invocations..],
            &fill[..4],
            "values after changed"
        );
    }
}

#[test]
fn stream_copy_is_exact_through_the_grid_stride_loop() {
    let gpu = gpu();
    let vec4s = 1000;
    let values = random(&mut Rng::new(3), 4 * vec4s + 4, 1.0);
    let src = gpu.upload("src", &values).unwrap();
    let dst = gpu.upload("dst", &vec![-1.0f32; 4 * vec4s + 8]).unwrap();
    // 3 workgroups of 64: each invocation copies 5 or 6 vec4s.
    let dispatch = CeilingProbe::new(gpu)
        .copy(&CopyProbe {
            vec4s,
            workgroups: 3,
            src: BufferView::at(&src, 16),
            dst: BufferView::at(&dst, 16),
        })
        .unwrap();
    run(gpu, |e| dispatch.encode(e));
    let got = read(gpu, &dst, 4 * vec4s + 8);
    assert_eq!(bits(&got[4..4 + 4 * vec4s]), bits(&values[4..]));
    assert_eq!(&got[..4], &[-1.0; 4]);
    assert_eq!(&got[4 + 4 * vec4s..], &[-1.0; 4]);
}

#[test]
fn measured_ceilings_are_positive_and_fractions_scale() {
    let ceiling = CeilingProbe::new(gpu()).measure().unwrap();
    assert!(ceiling.fma_gflops.is_finite() && ceiling.fma_gflops > 0.0);
    assert!(ceiling.copy_gbps.is_finite() && ceiling.copy_gbps > 0.0);
    assert!(ceiling.copy_bytes >= 1 << 20);
    let half = ceiling.of_flops(ceiling.fma_gflops * 0.5e9);
    assert!((half - 0.5).abs() < 1e-12, "{half}");
    let quarter = ceiling.of_bandwidth(ceiling.copy_gbps * 0.25e9);
    assert!((quarter - 0.25).abs() < 1e-12, "{quarter}");
    assert!(ceiling.to_string().contains("GFLOP/s"));
}

#[test]
fn bad_operands_are_errors() {
    let gpu = gpu();
    let probe = CeilingProbe::new(gpu);
    let small = gpu.storage_buffer("small", 64).unwrap();
    let other = gpu.storage_buffer("other", 64).unwrap();
    let fma = |invocations, iterations, offset| {
        probe.fma(&FmaProbe {
            invocations,
            iterations,
            scale: 0.5,
            offset: 0.5,
            out: BufferView::at(&small, offset),
        })
    };
    expect_err(fma(0, 1, 0), &["ceiling_probe fma", "invocations"]);
    expect_err(fma(5, 1, 0), &["ceiling_probe fma", "out", "80 bytes"]);
    expect_err(
        fma(1, 1, 4),
        &["ceiling_probe fma", "out", "multiple of 16"],
    );
    expect_err(fma(1, 70_000, 0), &["ceiling_probe fma", "loop iterations"]);
    let copy = |vec4s, workgroups, dst: &wgpu::Buffer| {
        probe.copy(&CopyProbe {
            vec4s,
            workgroups,
            src: BufferView::new(&small),
            dst: BufferView::new(dst),
        })
    };
    expect_err(copy(4, 0, &other), &["ceiling_probe copy", "workgroups"]);
    expect_err(copy(5, 1, &other), &["ceiling_probe copy", "src"]);
    expect_err(
        copy(4, 1, &small),
        &["ceiling_probe copy", "distinct buffers"],
    );
}
