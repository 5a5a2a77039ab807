//! The kernel backend's contract beyond the numbers, through the public API only:
//! asking for f16 on a device without SHADER_F16, operand checks that fail before
//! anything is recorded, the per-device bind group cache, kernels recorded into a
//! compute pass next to the caller's own, and the README's sample being the crate's
//! doc test. The numbers themselves: `backend_api.rs`.

use crate::common;

use crate::common::gemm::SmallGemm;
use crate::common::{expect_err, gpu, random};
use mmoe_wgpu::kernels::gate_mix::{GateMix, GateMixBackward, GateMixForward, GateMixShape};
use mmoe_wgpu::kernels::grouped_gemm::{
    GroupedGemm, GroupedGemmBackwardInput, GroupedGemmBackwardWeights, GroupedGemmForward, Tiling,
};
use mmoe_wgpu::kernels::loss::{Loss, LossForward, LossKind, TaskLoss};
use mmoe_wgpu::kernels::optimizer::{Optimizer, OptimizerConfig, OptimizerUpdate};
use mmoe_wgpu::kernels::{BufferView, Precision};
use mmoe_wgpu::reference;
use mmoe_wgpu::rng::Rng;
use mmoe_wgpu::{Activation, Error, GemmShape, Gpu, InputLayout};

// ------------------------------------------------------------------ checks

/// A device of the test's own, opened without SHADER_F16 whatever the adapter has.
fn device_without_f16() -> Gpu {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("an adapter");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: wgpu::Features::empty(),
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .expect("a device");
    Gpu::from_device(device, queue)
}

#[track_caller]
#[test]
fn f16_without_shader_f16_is_an_error_that_says_so() {
    let gpu = device_without_f16();
    assert!(!gpu.capabilities().f16);
    assert_eq!(Precision::best(&gpu), Precision::F32);
    let shape = GemmShape {
        groups: 2,
        rows: 3,
        inputs: 4,
        outputs: 5,
        input: InputLayout::Shared,
    };
    let buffer = gpu.storage_buffer("any", 1 << 12).unwrap();
    let out = gpu.storage_buffer("out", 1 << 12).unwrap();
    let (v, o) = (BufferView::new(&buffer), BufferView::new(&out));
    let f16 = Precision::F16;
    let gemm = GroupedGemm::new(&gpu);
    let forward = GroupedGemmForward {
        shape,
        activation: Activation::Relu,
        precision: f16,
        x: v,
        w: v,
        bias: None,
        y: o,
    };
    let e = expect_err(
        gemm.forward(&forward),
        &["grouped_gemm forward", "F16", "SHADER_F16"],
    );
    assert!(matches!(e, Error::MissingFeature { .. }), "{e:?}");
    // The f32 path is the fallback, on the same buffers.
    let f32_args = GroupedGemmForward {
        precision: Precision::F32,
        ..forward
    };
    gemm.forward(&f32_args)
        .expect("the f32 path runs everywhere");
    let backward_input = GroupedGemmBackwardInput {
        shape,
        activation: Activation::Identity,
        precision: f16,
        dy: v,
        y: None,
        w: v,
        dx: o,
        accumulate: false,
    };
    expect_err(
        gemm.backward_input(&backward_input),
        &["backward_input", "SHADER_F16"],
    );
    let backward_weights = GroupedGemmBackwardWeights {
        shape,
        activation: Activation::Identity,
        precision: f16,
        x: v,
        dy: v,
        y: None,
        dw: o,
        db: None,
    };
    expect_err(
        gemm.backward_weights(&backward_weights),
        &["backward_weights", "SHADER_F16"],
    );
    let s = GateMixShape {
        gates: 2,
        experts: 3,
        rows: 4,
        inputs: 5,
        width: 6,
        input: mmoe_wgpu::InputLayout::Shared,
    };
    let mix = GateMix::new(&gpu);
    let fwd = GateMixForward {
        shape: s,
        precision: f16,
        x: v,
        wg: v,
        bg: v,
        h: v,
        g: o,
        m: BufferView::at(&out, 1024),
    };
    expect_err(mix.forward(&fwd), &["gate_mix forward", "SHADER_F16"]);
    let outs = gpu.storage_buffer("outs", 1 << 14).unwrap();
    let bwd = GateMixBackward {
        shape: s,
        precision: f16,
        x: v,
        wg: v,
        h: v,
        g: v,
        dm: v,
        dh: BufferView::at(&outs, 0),
        dz: BufferView::at(&outs, 1024),
        dwg: BufferView::at(&outs, 2048),
        dbg: BufferView::at(&outs, 3072),
        dx: None,
        accumulate_dx: false,
        relu_dh: false,
    };
    expect_err(mix.backward(&bwd), &["gate_mix backward", "SHADER_F16"]);
    let tasks = [TaskLoss {
        kind: LossKind::MeanSquaredError,
        weight: 1.0,
    }];
    let loss = LossForward {
        rows: 3,
        tasks: &tasks,
        precision: f16,
        predictions: v,
        targets: v,
        loss: o,
        grad: BufferView::at(&out, 256),
    };
    expect_err(Loss::new(&gpu).forward(&loss), &["loss", "SHADER_F16"]);
    let opt = OptimizerUpdate {
        config: OptimizerConfig::Sgd { momentum: 0.0 },
        len: 3,
        precision: f16,
        params: o,
        grads: v,
        m: BufferView::at(&out, 256),
        v: None,
        loss: None,
        status: None,
        tasks: 0,
        params_copy: None,
    };
    expect_err(
        Optimizer::new(&gpu).update(&opt),
        &["optimizer", "SHADER_F16"],
    );
    gpu.check().expect("no error reached the device");
}

#[test]
fn operand_checks_fail_before_anything_is_recorded() {
    let gpu = gpu();
    let shape = GemmShape {
        groups: 1,
        rows: 1,
        inputs: 3,
        outputs: 1,
        input: InputLayout::Shared,
    };
    let ones = gpu.upload("ones", &[1.0f32; 16]).unwrap();
    let y = gpu.storage_buffer("y", 64).unwrap();
    let args = GroupedGemmForward {
        shape,
        activation: Activation::Identity,
        precision: Precision::F32,
        x: BufferView::new(&ones),
        w: BufferView::new(&ones),
        bias: None,
        y: BufferView::new(&y),
    };
    let gemm = GroupedGemm::new(gpu);
    let uniform = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("uniform"),
        size: 64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let tiny = gpu.storage_buffer("tiny", 8).unwrap();
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    let bad: Vec<(GroupedGemmForward<'_>, &[&str])> = vec![
        (
            GroupedGemmForward {
                x: BufferView::new(&uniform),
                ..args
            },
            &["`x`", "STORAGE"],
        ),
        (
            GroupedGemmForward {
                w: BufferView::at(&ones, 2),
                ..args
            },
            &["`w`", "multiple of 4"],
        ),
        (
            GroupedGemmForward {
                w: BufferView::new(&tiny),
                ..args
            },
            &["`w`", "12 bytes"],
        ),
        (
            GroupedGemmForward {
                y: BufferView::at(&y, 62),
                ..args
            },
            &["`y`", "multiple of 4"],
        ),
        (
            GroupedGemmForward {
                y: BufferView::new(&ones),
                ..args
            },
            &["`x`", "output `y`"],
        ),
        (
            GroupedGemmForward {
                shape: GemmShape { rows: 0, ..shape },
                ..args
            },
            &["rows"],
        ),
    ];
    for (a, needles) in bad {
        expect_err(gemm.encode_forward(&mut encoder, &a), needles);
    }
    if Precision::F16.is_supported(gpu) {
        let f16 = GroupedGemmForward {
            precision: Precision::F16,
            ..args
        };
        expect_err(
            gemm.encode_forward(
                &mut encoder,
                &GroupedGemmForward {
                    x: BufferView::at(&ones, 1),
                    ..f16
                },
            ),
            &["`x`", "multiple of 2"],
        );
        // 3 f16 fill 6 bytes, but a storage binding is whole words: 8.
        let six = gpu.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("six bytes"),
            size: 6,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        expect_err(
            gemm.encode_forward(
                &mut encoder,
                &GroupedGemmForward {
                    x: BufferView::new(&six),
                    ..f16
                },
            ),
            &["`x`", "8 bytes", "4-byte word"],
        );
    }
    // Nothing was recorded: the encoder is still valid and leaves y untouched.
    gpu.queue().submit([encoder.finish()]);
    gpu.wait().expect("no GPU error");
    assert_eq!(gpu.read::<f32>(&y, 0, 16).unwrap(), [0.0; 16]);
}

// ------------------------------------------------------------------ caching, passes

#[test]
fn rebuilding_a_dispatch_over_the_same_buffers_reuses_its_bind_group() {
    // A device of its own: other tests clearing or filling the cache cannot interfere.
    let gpu = Gpu::new().expect("a GPU adapter");
    let shape = SmallGemm::SHAPE;
    let x = gpu.upload("x", &[0.5f32; 12]).unwrap();
    let w = gpu.upload("w", &[0.25f32; 30]).unwrap();
    let y = gpu.storage_buffer("y", 4096).unwrap();
    let args = GroupedGemmForward {
        shape,
        activation: Activation::Relu,
        precision: Precision::F32,
        x: BufferView::new(&x),
        w: BufferView::new(&w),
        bias: None,
        y: BufferView::new(&y),
    };
    let tiling = Tiling::Naive { wg: 8, wg_rows: 8 };
    let gemm = GroupedGemm::new(&gpu);
    let first = gemm.forward_with(&args, tiling).unwrap();
    let again = GroupedGemm::new(&gpu).forward_with(&args, tiling).unwrap();
    assert_eq!(first.bind_group(), again.bind_group());
    assert_eq!(first.pipeline(), again.pipeline());
    let entries = gpu.cached_bind_groups();
    assert!(entries >= 1);
    // Another place in the same buffer, or another activation: another bind group.
    let moved = gemm
        .forward_with(
            &GroupedGemmForward {
                y: BufferView::at(&y, 1024),
                ..args
            },
            tiling,
        )
        .unwrap();
    assert_ne!(first.bind_group(), moved.bind_group());
    let identity = GroupedGemmForward {
        activation: Activation::Identity,
        ..args
    };
    assert_ne!(
        first.bind_group(),
        gemm.forward_with(&identity, tiling).unwrap().bind_group()
    );
    assert_eq!(gpu.cached_bind_groups(), entries + 2);
    gpu.clear_bind_group_cache();
    assert_eq!(gpu.cached_bind_groups(), 0);
    let rebuilt = gemm.forward_with(&args, tiling).unwrap();
    assert_ne!(first.bind_group(), rebuilt.bind_group());
    // Dispatches built before the clear still run.
    common::run(&gpu, |encoder| first.encode(encoder));
    let out = gpu.read::<f32>(&y, 0, shape.y_len()).unwrap();
    assert!(out.iter().all(|&v| v == 0.375), "{out:?}");
}

const SCALE_WGSL: &str = "
@group(0) @binding(0) var<storage, read_write> data: array<f32>;

@compute @workgroup_size(64)
fn scale(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < arrayLength(&data)) {
        data[id.x] = 3.0 * data[id.x];
    }
}
";

#[test]
fn kernels_join_an_open_compute_pass_next_to_the_callers_own() {
    let gpu = gpu();
    let device = gpu.device();
    let shape = GemmShape {
        groups: 3,
        rows: 6,
        inputs: 5,
        outputs: 4,
        input: InputLayout::Shared,
    };
    let mut rng = Rng::new(51);
    let x = random(&mut rng, shape.x_len(), 1.0);
    let w = random(&mut rng, shape.w_len(), 0.5);
    let (xb, wb) = (gpu.upload("x", &x).unwrap(), gpu.upload("w", &w).unwrap());
    let y = gpu.storage_buffer("y", 4 * shape.y_len() as u64).unwrap();
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("scale"),
        source: wgpu::ShaderSource::Wgsl(SCALE_WGSL.into()),
    });
    let scale = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("scale"),
        layout: None,
        module: &module,
        entry_point: Some("scale"),
        compilation_options: Default::default(),
        cache: None,
    });
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("scale"),
        layout: &scale.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: y.as_entire_binding(),
        }],
    });
    common::run(gpu, |encoder| {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        let args = GroupedGemmForward {
            shape,
            activation: Activation::Relu,
            precision: Precision::F32,
            x: BufferView::new(&xb),
            w: BufferView::new(&wb),
            bias: None,
            y: BufferView::new(&y),
        };
        GroupedGemm::new(gpu)
            .encode_forward(&mut pass, &args)
            .expect("forward");
        pass.set_pipeline(&scale);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(shape.y_len().div_ceil(64) as u32, 1, 1);
    });
    let (x64, w64) = (common::to_f64(&x), common::to_f64(&w));
    let want: Vec<f64> =
        reference::grouped_gemm::forward(&shape, Activation::Relu, &x64, &w64, None)
            .unwrap()
            .iter()
            .map(|v| 3.0 * v)
            .collect();
    common::assert_close(
        "gemm then scale",
        &common::read(gpu, &y, shape.y_len()),
        &want,
        1e-6,
    );
}

#[test]
fn the_readme_backend_sample_is_the_crate_doc_test() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let lib = std::fs::read_to_string(format!("{root}/src/lib.rs")).unwrap();
    let section = readme
        .split("## Use as a kernel backend")
        .nth(1)
        .expect("README has a `## Use as a kernel backend` section");
    let sample: Vec<&str> = section
        .split("```rust\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("the section has a ```rust block")
        .lines()
        .collect();
    // The doc test as rustdoc shows it: `//! ` stripped, hidden `# ` lines dropped.
    let doc: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .skip_while(|l| *l != "# Use as a kernel backend")
        .skip_while(|l| *l != "```")
        .skip(1)
        .take_while(|l| *l != "```")
        .filter(|l| !l.starts_with("# "))
        .collect();
    assert!(!doc.is_empty(), "src/lib.rs has the backend doc test");
    assert_eq!(
        sample, doc,
        "README's sample must be the crate root's doc test"
    );
}
