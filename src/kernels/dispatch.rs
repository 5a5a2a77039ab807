//! A checked, ready-to-record dispatch.

use wgpu::util::DeviceExt;

use super::binding::BoundOperand;
use crate::gpu::Gpu;
use crate::{Error, Result};

/// One kernel launch with its pipeline and bind group built: record it into any
/// number of passes. It keeps its buffers alive; it does not check them again.
#[derive(Clone, Debug)]
pub struct Dispatch {
    label: &'static str,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
    /// Buffers the kernel made for this dispatch (see [`Dispatch::build_with_buffers`]).
    _owned: Vec<wgpu::Buffer>,
}

impl Dispatch {
    /// Builds the uniform block and bind group for `pipeline`.
    pub(crate) fn build(
        gpu: &Gpu,
        label: &'static str,
        pipeline: wgpu::ComputePipeline,
        layout: &wgpu::BindGroupLayout,
        params: &[u8],
        operands: &[BoundOperand<'_>],
        workgroups: [u32; 3],
    ) -> Result<Dispatch> {
        Self::build_with_buffers(
            gpu,
            label,
            pipeline,
            layout,
            params,
            operands,
            &[],
            workgroups,
        )
    }

    /// [`build`](Self::build), also binding whole buffers the kernel made itself at
    /// the given slots: a uniform the host rewrites every step with
    /// `Queue::write_buffer`, or a small table uploaded from host data. The dispatch
    /// holds a handle to each, so they live as long as it does.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build_with_buffers(
        gpu: &Gpu,
        label: &'static str,
        pipeline: wgpu::ComputePipeline,
        layout: &wgpu::BindGroupLayout,
        params: &[u8],
        operands: &[BoundOperand<'_>],
        buffers: &[(u32, &wgpu::Buffer)],
        workgroups: [u32; 3],
    ) -> Result<Dispatch> {
        let max = gpu.limits().max_compute_workgroups_per_dimension;
        for (axis, &n) in ["x", "y", "z"].iter().zip(&workgroups) {
            if n > max {
                return Err(Error::Limit {
                    context: label.into(),
                    what: format!("workgroup count along {axis}"),
                    value: n as u64,
                    limit: max as u64,
                });
            }
        }
        let bind_group = gpu.scoped(&format!("binding `{label}`"), || {
            let uniform = gpu
                .device()
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: params,
                    usage: wgpu::BufferUsages::UNIFORM,
                });
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: uniform.as_entire_binding(),
            }];
            entries.extend(operands.iter().map(|op| wgpu::BindGroupEntry {
                binding: op.slot,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: op.buffer,
                    offset: op.bind_offset,
                    size: wgpu::BufferSize::new(op.bind_size),
                }),
            }));
            entries.extend(buffers.iter().map(|&(slot, buffer)| wgpu::BindGroupEntry {
                binding: slot,
                resource: buffer.as_entire_binding(),
            }));
            gpu.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(label),
                layout,
                entries: &entries,
            })
        })?;
        Ok(Dispatch {
            label,
            pipeline,
            bind_group,
            workgroups,
            _owned: buffers.iter().map(|&(_, b)| b.clone()).collect(),
        })
    }

    /// Records the dispatch into an open compute pass.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }

    /// Records the dispatch in a compute pass of its own.
    pub fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(self.label),
            timestamp_writes: None,
        });
        self.record(&mut pass);
    }

    /// The kernel's name.
    pub fn label(&self) -> &'static str {
        self.label
    }

    /// Workgroups launched along x, y and z.
    pub fn workgroups(&self) -> [u32; 3] {
        self.workgroups
    }
}
