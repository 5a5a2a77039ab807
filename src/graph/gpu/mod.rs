//! The GPU executor: allocates the plan's buffers once, builds every dispatch (and
//! its bind group) once per batch size, and records a whole training step into one
//! command encoder with no host round trip inside it.
//!
//! Embedding tables live in row-chunked buffers of their own (not the flat
//! parameters); a training step looks up every field, runs the backward pass down to
//! each table's compact gradient, and updates the tables after the dense optimizer,
//! guarded by its non-finite-loss status, all in the same pass. The host writes each
//! step's IDs ([`GpuExecutor::write_lookups`]) with the dense batch before it submits.
//!
//! Training passes ([`GpuExecutor::gradients`], [`GpuExecutor::train_step`]) add
//! noisy gates' noise from the draws last written with [`GpuExecutor::write_noise`];
//! [`GpuExecutor::forward`] is the inference pass, which skips the noise altogether.

use std::collections::HashMap;

use super::plan::{ScratchKind, moment_buffers};
use super::{Graph, MemoryReport, Op, Plan, Role, TensorId};
use crate::Result;
use crate::error::check_len;
use crate::gpu::Gpu;
use crate::kernels::optimizer::{OptimizerStep, OptimizerUpdate};
use crate::kernels::{
    Balance, BufferView, Dispatch, GateMix, GroupedGemm, Loss, Noise, Optimizer, Precision, Routing,
};
use crate::shape::OptimizerConfig;

/// The parts of a training step, as [`GpuExecutor::profile_step_phases`] groups its
/// dispatches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepPhase {
    /// The forward pass, embedding lookups included.
    Forward,
    /// The losses and their gradients.
    Loss,
    /// The backward pass, the tables' gradients included.
    Backward,
    /// The flat parameters' optimizer (and, trained densely, the tables').
    Optimizer,
    /// The tables' sparse updates (none for dense table training).
    TableUpdate,
}

/// Each phase of a step with its dispatches' labels and times, in step order.
pub type PhaseTimes = Vec<(StepPhase, Vec<(&'static str, std::time::Duration)>)>;

mod record;
mod tables;
mod transfer;

use record::Recorded;

/// A graph's buffers and dispatches on one device.
pub struct GpuExecutor {
    gpu: Gpu,
    graph: Graph,
    plan: Plan,
    gemm: GroupedGemm,
    gate_mix: GateMix,
    balance: Balance,
    noise: Noise,
    routing: Routing,
    loss_kernel: Loss,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    moments: Vec<wgpu::Buffer>,
    buffers: Vec<Option<wgpu::Buffer>>,
    grad_buffers: Vec<Option<wgpu::Buffer>>,
    scratch: Vec<Vec<(ScratchKind, wgpu::Buffer)>>,
    status: wgpu::Buffer,
    loss_tensor: Option<TensorId>,
    optimizer: OptimizerStep,
    recorded: HashMap<usize, Recorded>,
    tables: tables::Tables,
}

impl Drop for GpuExecutor {
    /// The device's bind group cache must not keep this executor's buffers alive.
    fn drop(&mut self) {
        let mut owned: Vec<&wgpu::Buffer> = vec![&self.params, &self.grads, &self.status];
        owned.extend(&self.moments);
        for list in [&self.buffers, &self.grad_buffers] {
            owned.extend(list.iter().flatten());
        }
        owned.extend(self.scratch.iter().flatten().map(|(_, b)| b));
        owned.extend(self.tables.buffers());
        self.gpu.forget_bind_groups_of(&owned);
    }
}

impl GpuExecutor {
    /// Allocates every buffer of `plan` on `gpu` and uploads the flat `params`.
    pub fn new(
        gpu: &Gpu,
        graph: Graph,
        plan: Plan,
        optimizer: OptimizerConfig,
        params: &[f32],
    ) -> Result<Self> {
        check_len("GpuExecutor::new", "params", params, plan.param_len)?;
        let bytes = |n: usize| 4 * n as u64;
        // Padded to whole units of four: the optimizer's vec4 kernels.
        let flat_bytes = bytes(plan.flat_buffer_len());
        let params_buffer = gpu.storage_buffer("parameters", flat_bytes)?;
        gpu.write(&params_buffer, 0, params)?;
        let grads = gpu.storage_buffer("gradients", flat_bytes)?;
        let moments = (0..moment_buffers(&optimizer))
            .map(|i| gpu.storage_buffer(&format!("optimizer moment {}", i + 1), flat_bytes))
            .collect::<Result<Vec<_>>>()?;
        let mut buffers = Vec::new();
        let mut grad_buffers = Vec::new();
        for (tensor, &has_grad) in graph.tensors().iter().zip(&plan.has_grad) {
            let own = tensor.role != Role::Parameter;
            buffers.push(
                own.then(|| gpu.storage_buffer(&tensor.name, bytes(tensor.len())))
                    .transpose()?,
            );
            grad_buffers.push(
                has_grad
                    .then(|| gpu.storage_buffer(&format!("d {}", tensor.name), bytes(tensor.len())))
                    .transpose()?,
            );
        }
        let scratch = plan
            .scratch
            .iter()
            .map(|own| {
                own.iter()
                    .map(|s| {
                        let name = format!("scratch {:?}", s.kind);
                        Ok((s.kind, gpu.storage_buffer(&name, bytes(s.len))?))
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let loss_tensor = graph.nodes().iter().find_map(|op| match op {
            Op::Loss { loss, .. } => Some(*loss),
            _ => None,
        });
        let tasks = loss_tensor.map_or(0, |l| graph.tensor(l).len());
        let status = gpu.storage_buffer("non-finite loss status", bytes(1 + tasks))?;
        let loss_view =
            loss_tensor.map(|l| BufferView::new(buffers[l.0].as_ref().expect("loss buffer")));
        let optimizer = Optimizer::new(gpu).update(&OptimizerUpdate {
            params_copy: None,
            precision: Precision::F32,
            config: optimizer,
            len: plan.param_len,
            params: BufferView::new(&params_buffer),
            grads: BufferView::new(&grads),
            m: BufferView::new(&moments[0]),
            v: moments.get(1).map(BufferView::new),
            loss: loss_view,
            status: loss_view.map(|_| BufferView::new(&status)),
            tasks,
        })?;
        let tables = tables::Tables::new(
            gpu,
            &graph,
            optimizer.config(),
            (loss_view, BufferView::new(&status), tasks),
        )?;
        Ok(GpuExecutor {
            tables,
            gemm: GroupedGemm::new(gpu),
            gate_mix: GateMix::new(gpu),
            balance: Balance::new(gpu),
            noise: Noise::new(gpu),
            routing: Routing::new(gpu),
            loss_kernel: Loss::new(gpu),
            gpu: gpu.clone(),
            graph,
            plan,
            params: params_buffer,
            grads,
            moments,
            buffers,
            grad_buffers,
            scratch,
            status,
            loss_tensor,
            optimizer,
            recorded: HashMap::new(),
        })
    }

    /// The graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The buffer layout.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The device.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Bytes allocated on the device, by kind.
    pub fn memory(&self) -> MemoryReport {
        let size = |b: &wgpu::Buffer| b.size();
        let sum = |bufs: &[Option<wgpu::Buffer>], role: &dyn Fn(Role) -> bool| -> u64 {
            bufs.iter()
                .zip(self.graph.tensors())
                .filter(|(_, t)| role(t.role))
                .filter_map(|(b, _)| b.as_ref().map(size))
                .sum()
        };
        let (tables, lookups) = self.tables.bytes();
        MemoryReport {
            tables,
            parameters: size(&self.params),
            gradients: size(&self.grads),
            optimizer_state: self.moments.iter().map(size).sum(),
            activations: sum(&self.buffers, &|r| r == Role::Activation),
            activation_gradients: sum(&self.grad_buffers, &|_| true),
            inputs: sum(&self.buffers, &|r| {
                matches!(r, Role::Input | Role::Target | Role::Noise)
            }),
            scratch: self
                .scratch
                .iter()
                .flatten()
                .map(|(_, b)| size(b))
                .sum::<u64>()
                + size(&self.status)
                + lookups,
        }
    }

    fn view(&self, id: TensorId) -> BufferView<'_> {
        match self.plan.param_offsets[id.0] {
            Some(offset) => BufferView::at(&self.params, 4 * offset as u64),
            None => BufferView::new(
                self.buffers[id.0]
                    .as_ref()
                    .expect("every non-parameter tensor has a buffer"),
            ),
        }
    }

    /// Node `node`'s scratch buffer of kind `kind` (the plan made it).
    fn scratch_view(&self, node: usize, kind: ScratchKind) -> BufferView<'_> {
        let (_, buffer) = self.scratch[node]
            .iter()
            .find(|(k, _)| *k == kind)
            .expect("the plan gives this node that scratch buffer");
        BufferView::new(buffer)
    }

    fn grad_view(&self, id: TensorId) -> BufferView<'_> {
        match self.plan.param_offsets[id.0] {
            Some(offset) => BufferView::at(&self.grads, 4 * offset as u64),
            None => BufferView::new(
                self.grad_buffers[id.0]
                    .as_ref()
                    .expect("the plan gives this tensor a gradient"),
            ),
        }
    }

    fn recorded(&mut self, rows: usize) -> Result<&Recorded> {
        self.graph.check_rows(rows)?;
        if !self.recorded.contains_key(&rows) {
            let recorded = self.build(rows)?;
            self.recorded.insert(rows, recorded);
        }
        Ok(&self.recorded[&rows])
    }

    /// Compute dispatches one training step records at `rows` rows.
    pub fn dispatches_per_step(&mut self, rows: usize) -> Result<usize> {
        let r = self.recorded(rows)?;
        let steps = r.forward.len() + r.loss.len() + r.backward.len() + 1;
        Ok(steps + self.tables.update_dispatches().len())
    }

    fn submit(&mut self, rows: usize, what: &str, parts: Parts) -> Result<()> {
        self.recorded(rows)?;
        let recorded = &self.recorded[&rows];
        let forward = match (&recorded.inference, parts.noise) {
            (Some(quiet), false) => quiet,
            _ => &recorded.forward,
        };
        let loss: &[Dispatch] = if parts.loss { &recorded.loss } else { &[] };
        let backward: &[Dispatch] = if parts.backward {
            &recorded.backward
        } else {
            &[]
        };
        let optimizer = if parts.optimizer {
            self.update_dispatches()
        } else {
            Vec::new()
        };
        let all = forward.iter().chain(loss).chain(backward).chain(optimizer);
        self.submit_dispatches(what, all)
    }

    /// The dense optimizer's step, then the tables' updates, which read the status
    /// its guard writes.
    fn update_dispatches(&self) -> Vec<&Dispatch> {
        let mut all = vec![self.optimizer.dispatch()];
        all.extend(self.tables.update_dispatches());
        all
    }

    /// Records `dispatches` in order into one compute pass and submits it.
    fn submit_dispatches<'a>(
        &self,
        what: &str,
        dispatches: impl IntoIterator<Item = &'a Dispatch>,
    ) -> Result<()> {
        self.gpu.scoped(what, || {
            let mut encoder = self
                .gpu
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(what) });
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(what),
                    timestamp_writes: None,
                });
                for d in dispatches {
                    d.record(&mut pass);
                }
            }
            self.gpu.queue().submit([encoder.finish()]);
        })
    }

    /// Runs one training step dispatch by dispatch, timing each (GPU timestamps where
    /// the device has them): where a step's time goes. Applies the update like
    /// [`train_step`](Self::train_step).
    pub fn profile_step(
        &mut self,
        rows: usize,
        step: u32,
        learning_rate: f32,
    ) -> Result<Vec<(&'static str, std::time::Duration)>> {
        let profile = self.profile_step_phases(rows, step, learning_rate)?;
        Ok(profile.into_iter().flat_map(|(_, times)| times).collect())
    }

    /// [`profile_step`](Self::profile_step) with the dispatches grouped by phase, in
    /// step order: forward (with gate noise; the embedding lookups included), loss,
    /// backward (the tables' gradients included), the flat parameters' optimizer,
    /// and the tables' sparse updates.
    pub fn profile_step_phases(
        &mut self,
        rows: usize,
        step: u32,
        learning_rate: f32,
    ) -> Result<PhaseTimes> {
        self.optimizer
            .set_step(self.gpu.queue(), step, learning_rate);
        self.set_table_steps(step, learning_rate);
        self.recorded(rows)?;
        let recorded = &self.recorded[&rows];
        let phases: [(StepPhase, Vec<&Dispatch>); 5] = [
            (StepPhase::Forward, recorded.forward.iter().collect()),
            (StepPhase::Loss, recorded.loss.iter().collect()),
            (StepPhase::Backward, recorded.backward.iter().collect()),
            (StepPhase::Optimizer, vec![self.optimizer.dispatch()]),
            (StepPhase::TableUpdate, self.tables.update_dispatches()),
        ];
        phases
            .into_iter()
            .map(|(phase, dispatches)| {
                let times = dispatches
                    .into_iter()
                    .map(|d| {
                        Ok((
                            d.label(),
                            self.gpu.time_pass(1, |pass| d.record(pass))?.total,
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((phase, times))
            })
            .collect()
    }

    /// Forward pass on the batch last written, without gate noise (inference); with
    /// `loss`, also the loss (targets must have been written).
    pub fn forward(&mut self, rows: usize, loss: bool) -> Result<()> {
        self.submit(
            rows,
            "forward pass",
            Parts {
                noise: false,
                loss,
                backward: false,
                optimizer: false,
            },
        )
    }

    /// Forward (with gate noise), loss and backward: fills the gradient buffer, does
    /// not update.
    pub fn gradients(&mut self, rows: usize) -> Result<()> {
        self.submit(
            rows,
            "forward and backward pass",
            Parts {
                noise: true,
                loss: true,
                backward: true,
                optimizer: false,
            },
        )
    }

    /// One whole training step in one submission: forward (with gate noise), loss,
    /// backward and the optimizer update number `step` (1-based) with
    /// `learning_rate`.
    pub fn train_step(&mut self, rows: usize, step: u32, learning_rate: f32) -> Result<()> {
        self.optimizer
            .set_step(self.gpu.queue(), step, learning_rate);
        self.set_table_steps(step, learning_rate);
        self.submit(
            rows,
            "training step",
            Parts {
                noise: true,
                loss: true,
                backward: true,
                optimizer: true,
            },
        )
    }

    /// The optimizer update number `step` (1-based) with `learning_rate` alone, of
    /// the dense parameters and then the tables, from the gradients and loss in the
    /// device's buffers: with [`gradients`](Self::gradients), a training step split
    /// where the host can replace the gradients first
    /// ([`write_gradients`](Self::write_gradients)), e.g. by their sum over several
    /// processes. Guarded by the loss in the loss buffer like a whole step.
    pub fn apply_update(&mut self, step: u32, learning_rate: f32) -> Result<()> {
        self.optimizer
            .set_step(self.gpu.queue(), step, learning_rate);
        self.set_table_steps(step, learning_rate);
        self.submit_dispatches("optimizer update", self.update_dispatches())
    }
}

struct Parts {
    /// The training forward, with gate noise, rather than the inference one.
    noise: bool,
    loss: bool,
    backward: bool,
    optimizer: bool,
}
