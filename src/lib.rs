//! # mmoe-wgpu
//!
//! Hand-written WGSL compute kernels for Multi-gate Mixture-of-Experts (MMoE) models
//! (Ma et al., KDD 2018), run through wgpu on Vulkan, Metal or DX12 and checked
//! against a CPU reference.
//!
//! Layers, bottom up:
//! - [`gpu`]: adapter and device, limits, features, buffers, error capture;
//! - [`kernels`]: each kernel family checks its operands and records dispatches into
//!   the caller's encoder over the caller's buffers (the kernel backend);
//! - [`reference`](mod@reference): the same operations on the CPU in `f64`;
//! - [`graph`]: tensors, ops, backward, buffer plan, GPU and CPU executors;
//! - [`model`]: MMoE, OMoE and shared-bottom as graphs, and the [`model::Trainer`];
//! - [`data`] and [`metrics`]: the paper's synthetic data, the census loader, AUC.
//!
//! # Use as a kernel backend
//!
//! The [`kernels`] record into your [`wgpu::CommandEncoder`] (or an open
//! [`wgpu::ComputePass`]) over your buffers, on your device: wrap the device once with
//! [`Gpu::from_device`], which caches compiled pipelines and bind groups on it. Every
//! kernel takes a typed argument struct (shape, [`BufferView`](kernels::BufferView)s
//! with byte offsets, activation, [`Precision`]) and checks shapes, sizes, offset
//! alignment, usage flags and aliasing before recording anything, returning an
//! [`Error`] that names the kernel and operand.
//!
//! ```
//! use mmoe_wgpu::kernels::grouped_gemm::{GroupedGemm, GroupedGemmForward};
//! use mmoe_wgpu::kernels::{BufferView, Precision};
//! use mmoe_wgpu::wgpu::{self, util::DeviceExt};
//! use mmoe_wgpu::{Activation, GemmShape, Gpu, InputLayout};
//!
//! # fn main() -> mmoe_wgpu::Result<()> {
//! # let app = Gpu::new()?; // stands in for the application's own device and queue
//! # let (device, queue) = (app.device().clone(), app.queue().clone());
//! // The application's device and queue, wrapped once.
//! let gpu = Gpu::from_device(device.clone(), queue.clone());
//!
//! // The application's buffers: 4 experts of 8 units on a shared input of 2 rows × 3.
//! let shape = GemmShape { groups: 4, rows: 2, inputs: 3, outputs: 8, input: InputLayout::Shared };
//! let x: Vec<f32> = vec![0.5, -1.0, 2.0, 1.5, 0.0, -0.5];
//! let w: Vec<f32> = (0..shape.w_len()).map(|i| (i % 5) as f32 - 2.0).collect();
//! let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
//! let upload = |data: &[f32]| {
//!     device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
//!         label: None,
//!         contents: bytemuck::cast_slice(data),
//!         usage,
//!     })
//! };
//! let (x_buffer, w_buffer) = (upload(&x), upload(&w));
//! // The output lives 256 bytes into a larger buffer of the application's.
//! let arena = upload(&vec![0.0; 64 + shape.y_len()]);
//!
//! let mut encoder = device.create_command_encoder(&Default::default());
//! // ... the application's own passes ...
//! GroupedGemm::new(&gpu).encode_forward(
//!     &mut encoder,
//!     &GroupedGemmForward {
//!         shape,
//!         activation: Activation::Relu,
//!         precision: Precision::F32,
//!         x: BufferView::new(&x_buffer),
//!         w: BufferView::new(&w_buffer),
//!         bias: None,
//!         y: BufferView::at(&arena, 256),
//!     },
//! )?;
//! queue.submit([encoder.finish()]);
//!
//! let y: Vec<f32> = gpu.read(&arena, 256, shape.y_len())?;
//! # let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
//! # let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
//! # use mmoe_wgpu::reference::grouped_gemm as reference;
//! # let want = reference::forward(&shape, Activation::Relu, &x64, &w64, None)?;
//! # assert!(y.iter().zip(&want).all(|(&got, &want)| (got as f64 - want).abs() < 1e-5));
//! # Ok(())
//! # }
//! ```
//!
//! [`Precision::F16`] stores weights and activations as f16 ([`half::f16`] on the
//! host) with f32 accumulation, where the adapter has `SHADER_F16`; elsewhere asking
//! for it is an [`Error::MissingFeature`]. The [`model::Trainer`] always trains in
//! f32.

#![deny(unsafe_code)]
#![deny(missing_docs)]

mod atomic_file;
pub mod data;
#[cfg(all(feature = "mpi", not(target_arch = "wasm32")))]
pub mod distributed;
mod error;
pub mod gpu;
pub mod graph;
pub mod kernels;
pub mod metrics;
pub mod model;
pub mod reference;
pub mod rng;
pub mod shape;

pub use error::{Error, Result};
pub use gpu::{AdapterReport, Capabilities, Gpu, GpuOptions};
/// The `half` crate, whose [`half::f16`] is the host type of f16 tensors.
pub use half;
pub use kernels::Precision;
pub use shape::{Activation, ColumnWindow, ColumnWindows, GemmShape, InputLayout, StandardShape};
/// The `wgpu` this crate is built against: the application's device, buffers and
/// encoders must come from this version.
pub use wgpu;
