//! An application that uses mmoe-wgpu as a kernel backend: it opens its own wgpu
//! instance, adapter and device, owns every buffer (the weights packed into one),
//! records the expert layer's grouped GEMM, the gate + mix and a WGSL kernel of its
//! own into its own encoder, then checks the result against the CPU reference.
//!
//! ```text
//! cargo run --release --example custom_backend
//! ```
//!
//! Runs in f32, and in f16 too where the device has SHADER_F16. Exits non-zero when
//! the GPU disagrees with the reference.

use std::process::ExitCode;

use half::f16;
use mmoe_wgpu::kernels::gate_mix::{GateMix, GateMixForward, GateMixShape};
use mmoe_wgpu::kernels::grouped_gemm::{GroupedGemm, GroupedGemmForward};
use mmoe_wgpu::kernels::{BufferView, Precision};
use mmoe_wgpu::reference;
use mmoe_wgpu::rng::Rng;
use mmoe_wgpu::{Activation, GemmShape, Gpu, InputLayout};
use wgpu::util::DeviceExt;

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The application's own kernel, the next layer after the mixture: `out = 0.5·m − 0.25`.
/// `{enable}` and `{T}` make it f32 or f16 like the tensors it reads.
const NEXT_LAYER_WGSL: &str = "{enable}
@group(0) @binding(0) var<storage, read> m: array<{T}>;
@group(0) @binding(1) var<storage, read_write> out: array<{T}>;

@compute @workgroup_size(64)
fn next_layer(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < arrayLength(&out)) {
        out[id.x] = {T}(0.5 * f32(m[id.x]) - 0.25);
    }
}
";

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The application's device: its own instance and adapter, and the optional
/// features it wants where the adapter has them.
fn open_device() -> AnyResult<(wgpu::Device, wgpu::Queue)> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))?;
    let wanted = wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP;
    let device = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("custom backend application"),
        required_features: adapter.features() & wanted,
        required_limits: adapter.limits(),
        ..Default::default()
    }))?;
    Ok(device)
}

fn run() -> AnyResult<bool> {
    let (device, queue) = open_device()?;
    // The crate's view of the application's device: pipelines and bind groups are
    // cached on it; the application keeps its own handles.
    let gpu = Gpu::from_device(device.clone(), queue.clone());
    println!("adapter: {}", gpu.adapter());
    let mut ok = true;
    for precision in [Precision::F32, Precision::F16] {
        if !precision.is_supported(&gpu) {
            println!("{precision:?}: not supported by this device (no SHADER_F16), skipped");
            continue;
        }
        ok &= run_at(&gpu, &device, &queue, precision)?;
    }
    println!("{}", if ok { "PASS" } else { "FAIL" });
    Ok(ok)
}

/// Host values as stored at `precision` (f32 or f16 bytes), and the exact values.
fn encode(data: &[f32], precision: Precision) -> (Vec<u8>, Vec<f64>) {
    match precision {
        Precision::F32 => (
            bytemuck::cast_slice(data).to_vec(),
            data.iter().map(|&v| v as f64).collect(),
        ),
        Precision::F16 => {
            let half: Vec<f16> = data.iter().map(|&v| f16::from_f32(v)).collect();
            let mut bytes = bytemuck::cast_slice(&half).to_vec();
            bytes.resize(bytes.len().next_multiple_of(4), 0);
            (bytes, half.iter().map(|v| v.to_f64()).collect())
        }
    }
}

fn random(rng: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-scale, scale) as f32).collect()
}

fn run_at(
    gpu: &Gpu,
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    precision: Precision,
) -> AnyResult<bool> {
    // 64 rows of 32 features, 4 experts of 16 ReLU units, 2 tasks' gates.
    let (rows, inputs, experts, width, tasks) = (64, 32, 4, 16, 2);
    let experts_gemm = GemmShape {
        groups: experts,
        rows,
        inputs,
        outputs: width,
        input: InputLayout::Shared,
    };
    let gates = GateMixShape {
        gates: tasks,
        experts,
        rows,
        inputs,
        width,
        input: mmoe_wgpu::InputLayout::Shared,
    };
    let mut rng = Rng::new(7);
    let x = random(&mut rng, rows * inputs, 1.0);
    let w = random(&mut rng, experts_gemm.w_len(), (1.0 / inputs as f64).sqrt());
    let b = random(&mut rng, experts_gemm.b_len(), 0.1);
    let wg = random(&mut rng, gates.wg_len(), 0.5);
    let bg = random(&mut rng, gates.bg_len(), 0.1);

    // The application's buffers. All weights live in one buffer, back to back: W, b,
    // Wg, bg; the kernels take each at its byte offset.
    let size = precision.element_size();
    let mut packed = Vec::new();
    let mut offsets = Vec::new();
    let mut exact = Vec::new();
    for part in [&w, &b, &wg, &bg] {
        offsets.push(packed.len() as u64);
        let (bytes, values) = encode(part, precision);
        packed.extend_from_slice(&bytes[..part.len() * size as usize]);
        exact.push(values);
    }
    packed.resize(packed.len().next_multiple_of(4), 0);
    let init = |label: &str, contents: &[u8], usage: wgpu::BufferUsages| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: wgpu::BufferUsages::STORAGE | usage,
        })
    };
    let weights = init("weights", &packed, wgpu::BufferUsages::empty());
    let (x_bytes, x_exact) = encode(&x, precision);
    let x_buffer = init("x", &x_bytes, wgpu::BufferUsages::empty());
    let zeros = |n: usize| vec![0u8; (n as u64 * size).next_multiple_of(4) as usize];
    let readable = wgpu::BufferUsages::COPY_SRC;
    let h = init("h", &zeros(experts_gemm.y_len()), readable);
    let g = init("g", &zeros(gates.g_len()), readable);
    let m = init("m", &zeros(gates.m_len()), readable);
    let out = init("out", &zeros(gates.m_len()), readable);

    // The application's own kernel, in its own pipeline and bind group.
    let (enable, ty) = match precision {
        Precision::F32 => ("", "f32"),
        Precision::F16 => ("enable f16;", "f16"),
    };
    let source = NEXT_LAYER_WGSL
        .replace("{enable}", enable)
        .replace("{T}", ty);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("next layer"),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let next_layer = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("next layer"),
        layout: None,
        module: &module,
        entry_point: Some("next_layer"),
        compilation_options: Default::default(),
        cache: None,
    });
    let next_layer_binding = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("next layer"),
        layout: &next_layer.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: m.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: out.as_entire_binding(),
            },
        ],
    });

    // One encoder: the expert GEMM in a pass of its own, then one pass holding the
    // gate + mix and the application's kernel.
    let view = |i: usize| BufferView::at(&weights, offsets[i]);
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("application frame"),
    });
    GroupedGemm::new(gpu).encode_forward(
        &mut encoder,
        &GroupedGemmForward {
            shape: experts_gemm,
            activation: Activation::Relu,
            precision,
            x: BufferView::new(&x_buffer),
            w: view(0),
            bias: Some(view(1)),
            y: BufferView::new(&h),
        },
    )?;
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("gate, mix and next layer"),
            timestamp_writes: None,
        });
        GateMix::new(gpu).encode_forward(
            &mut pass,
            &GateMixForward {
                shape: gates,
                precision,
                x: BufferView::new(&x_buffer),
                wg: view(2),
                bg: view(3),
                h: BufferView::new(&h),
                g: BufferView::new(&g),
                m: BufferView::new(&m),
            },
        )?;
        pass.set_pipeline(&next_layer);
        pass.set_bind_group(0, &next_layer_binding, &[]);
        pass.dispatch_workgroups(gates.m_len().div_ceil(64) as u32, 1, 1);
    }
    queue.submit([encoder.finish()]);

    let read = |buffer: &wgpu::Buffer, n: usize| -> AnyResult<Vec<f64>> {
        Ok(match precision {
            Precision::F32 => gpu
                .read::<f32>(buffer, 0, n)?
                .iter()
                .map(|&v| v as f64)
                .collect(),
            Precision::F16 => gpu
                .read::<f16>(buffer, 0, n)?
                .iter()
                .map(|v| v.to_f64())
                .collect(),
        })
    };
    let got_h = read(&h, experts_gemm.y_len())?;
    let got_g = read(&g, gates.g_len())?;
    let got_out = read(&out, gates.m_len())?;

    // The reference, in f64 on the same (stored) inputs.
    let act = Activation::Relu;
    let want_h =
        reference::grouped_gemm::forward(&experts_gemm, act, &x_exact, &exact[0], Some(&exact[1]))?;
    let (want_g, want_m) =
        reference::gate_mix::forward(&gates, &x_exact, &exact[2], &exact[3], &want_h)?;
    let want_out: Vec<f64> = want_m.iter().map(|v| 0.5 * v - 0.25).collect();

    // f32: a few f32 roundings per reduction step. f16: every stored tensor is within
    // one f16 ulp (2^-10) of its f32 value and H, the logits, G, M and the output are
    // each stored once on the way, so 8 ulps of the largest value leave room.
    let tolerance = match precision {
        Precision::F32 => 1e-5,
        Precision::F16 => 8.0 / 1024.0,
    };
    println!("{precision:?}: max relative error against the CPU reference (of the largest value):");
    let mut ok = true;
    for (what, got, want) in [
        ("H (experts)", &got_h, &want_h),
        ("G (gates)", &got_g, &want_g),
        ("0.5·M − 0.25", &got_out, &want_out),
    ] {
        let err = relative_error(got, want);
        let pass = err <= tolerance;
        ok &= pass;
        println!(
            "  {what:<14} {err:.2e}  {}",
            if pass {
                "ok".to_string()
            } else {
                format!("FAIL (> {tolerance:.1e})")
            }
        );
    }
    Ok(ok)
}

/// Largest absolute difference over the largest magnitude of the reference.
fn relative_error(got: &[f64], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .fold(0.0f64, |m, (g, w)| m.max((g - w).abs()))
        / scale
}
