//! The GPU executor: allocates the plan's buffers once, builds every dispatch (and
//! its bind group) once per batch size, and records a whole training step into one
//! command encoder with no host round trip inside it.
//!
//! Training passes ([`GpuExecutor::gradients`], [`GpuExecutor::train_step`]) add
//! noisy gates' noise from the draws last written with [`GpuExecutor::write_noise`];
//! [`GpuExecutor::forward`] is the inference pass, which skips the noise altogether.

use std::collections::HashMap;

use super::plan::{ScratchKind, max_routes_per_row, moment_buffers};
use super::{BackwardStep, GateNoise, Graph, MemoryReport, Op, Plan, Role, TensorId, at_rows};
use crate::gpu::Gpu;
use crate::kernels::balance::{Balance, BalanceBackward, BalanceForward, BalanceLoad};
use crate::kernels::gate_mix::{ForwardStages, GateMix, GateMixBackward, GateMixForward};
use crate::kernels::gate_topk::{GateTopk, GateTopkForward};
use crate::kernels::grouped_gemm::{
    GroupedGemm, GroupedGemmBackwardInput, GroupedGemmBackwardWeights, GroupedGemmForward, RowMap,
    SlotScratch,
};
use crate::kernels::loss::{Loss, LossForward};
use crate::kernels::noise::{Noise, NoiseBackward, NoiseForward};
use crate::kernels::optimizer::{Optimizer, OptimizerStep, OptimizerUpdate};
use crate::kernels::routing::{Routing, RoutingForward};
use crate::kernels::{BufferView, Dispatch, Precision};
use crate::shape::BalanceLoss;
use crate::shape::ExpertAccess;
use crate::shape::OptimizerConfig;
use crate::shape::RoutingShape;
use crate::shape::{Activation, InputLayout};
use crate::{Error, Result};

/// The dispatches of one batch size, built once.
struct Recorded {
    /// The training forward pass, gate noise included.
    forward: Vec<Dispatch>,
    /// The forward pass without gate noise, for graphs that have some (the
    /// training one serves otherwise).
    inference: Option<Vec<Dispatch>>,
    loss: Vec<Dispatch>,
    backward: Vec<Dispatch>,
}

/// A graph's buffers and dispatches on one device.
pub struct GpuExecutor {
    gpu: Gpu,
    graph: Graph,
    plan: Plan,
    gemm: GroupedGemm,
    gate_mix: GateMix,
    gate_topk: GateTopk,
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
        if params.len() != plan.param_len {
            return Err(Error::shape(
                "GpuExecutor::new",
                "params",
                format!("{} values", plan.param_len),
                format!("{} values", params.len()),
            ));
        }
        let bytes = |n: usize| 4 * n as u64;
        let params_buffer = gpu.upload("parameters", params)?;
        let grads = gpu.storage_buffer("gradients", bytes(plan.param_len))?;
        let moments = (0..moment_buffers(&optimizer))
            .map(|i| {
                gpu.storage_buffer(
                    &format!("optimizer moment {}", i + 1),
                    bytes(plan.param_len),
                )
            })
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
        Ok(GpuExecutor {
            gemm: GroupedGemm::new(gpu),
            gate_mix: GateMix::new(gpu),
            gate_topk: GateTopk::new(gpu),
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
        MemoryReport {
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
                + size(&self.status),
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

    /// The forward of expert layer `node` on the rows its sparse gate routes to it.
    fn expert_forward(&self, node: usize, rows: usize) -> Result<Dispatch> {
        let Op::Dense {
            shape,
            activation,
            x,
            w,
            b,
            y,
        } = at_rows(&self.graph.nodes()[node], rows)
        else {
            unreachable!("routed nodes are dense");
        };
        let gate = self.plan.routed_by[node].expect("a routed node");
        self.gemm.forward_ragged(
            &GroupedGemmForward {
                precision: Precision::F32,
                shape,
                activation,
                x: self.view(x),
                w: self.view(w),
                bias: b.map(|b| self.view(b)),
                y: self.view(y),
            },
            self.row_map(gate),
        )
    }

    /// The row map sparse gate `gate` writes.
    fn row_map(&self, gate: usize) -> RowMap<'_> {
        RowMap {
            routes: self.scratch_view(gate, ScratchKind::RowMap),
        }
    }

    /// A gate's weights: its parameter, or a static gate's zeros.
    fn gate_weights(&self, node: usize, wg: Option<TensorId>) -> BufferView<'_> {
        match wg {
            Some(wg) => self.view(wg),
            None => self.scratch_view(node, ScratchKind::ZeroWeights),
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

    /// Writes a batch of `rows` rows: one slice per input tensor and (optionally) per
    /// target tensor, in creation order.
    pub fn write_batch(&self, rows: usize, inputs: &[&[f32]], targets: &[&[f32]]) -> Result<()> {
        for (id, values) in
            self.graph
                .fed_tensors("GpuExecutor::write_batch", rows, inputs, targets)?
        {
            self.gpu.write(
                self.buffers[id.0].as_ref().expect("input buffer"),
                0,
                values,
            )?;
        }
        Ok(())
    }

    /// Writes the draws `ε` of a training pass on `rows` rows: one slice per noise
    /// tensor (one per noisy gate node), in creation order. Training passes read the
    /// draws last written (zeros before the first write).
    pub fn write_noise(&self, rows: usize, noise: &[&[f32]]) -> Result<()> {
        for (id, values) in self
            .graph
            .fed_noise("GpuExecutor::write_noise", rows, noise)?
        {
            self.gpu.write(
                self.buffers[id.0].as_ref().expect("noise buffer"),
                0,
                values,
            )?;
        }
        Ok(())
    }

    fn recorded(&mut self, rows: usize) -> Result<&Recorded> {
        self.graph.check_rows(rows)?;
        if !self.recorded.contains_key(&rows) {
            let recorded = self.build(rows)?;
            self.recorded.insert(rows, recorded);
        }
        Ok(&self.recorded[&rows])
    }

    fn build(&self, rows: usize) -> Result<Recorded> {
        let noisy_graph = self.plan.noise_of.iter().any(Option::is_some);
        let mut recorded = Recorded {
            forward: self.build_forward(rows, true)?,
            inference: noisy_graph
                .then(|| self.build_forward(rows, false))
                .transpose()?,
            loss: Vec::new(),
            backward: Vec::new(),
        };
        for op in self.graph.nodes() {
            if let Op::Loss {
                tasks,
                predictions,
                targets,
                loss,
            } = at_rows(op, rows)
            {
                recorded.loss.push(self.loss_kernel.forward(&LossForward {
                    precision: Precision::F32,
                    rows,
                    tasks: &tasks,
                    predictions: self.view(predictions),
                    targets: self.view(targets),
                    loss: self.view(loss),
                    grad: self.grad_view(predictions),
                })?);
            }
        }
        for &step in &self.plan.backward {
            self.build_backward(step, rows, &mut recorded.backward)?;
        }
        Ok(recorded)
    }

    /// The forward pass up to the loss, with gate noise (`noisy`, the training pass)
    /// or without.
    fn build_forward(&self, rows: usize, noisy: bool) -> Result<Vec<Dispatch>> {
        let mut forward = Vec::new();
        for (node, op) in self.graph.nodes().iter().enumerate() {
            match at_rows(op, rows) {
                // Sparse experts run inside their gate's forward, below.
                Op::Dense { .. } if self.plan.routed_by[node].is_some() => {}
                Op::Dense { .. } if !noisy && self.plan.noise_of[node].is_some() => {}
                Op::Dense {
                    shape,
                    activation,
                    x,
                    w,
                    b,
                    y,
                } => forward.push(self.gemm.forward(&GroupedGemmForward {
                    precision: Precision::F32,
                    shape,
                    activation,
                    x: self.view(x),
                    w: self.view(w),
                    bias: b.map(|b| self.view(b)),
                    y: self.view(y),
                })?),
                Op::GateMix {
                    shape,
                    k,
                    access,
                    selection,
                    balance_weight,
                    balance_loss,
                    x,
                    wg,
                    bg,
                    h,
                    g,
                    m,
                    noise,
                } => {
                    // The load loss averages the full softmax, which the gate phase
                    // writes next to G.
                    let full_softmax = (balance_weight > 0.0 && balance_loss == BalanceLoss::Load)
                        .then(|| self.scratch_view(node, ScratchKind::FullSoftmax));
                    let experts: Vec<usize> = (0..node)
                        .filter(|&e| self.plan.routed_by[e] == Some(node))
                        .collect();
                    let noise = noise.filter(|_| noisy);
                    if let Some(GateNoise { n, eps }) = noise {
                        forward.push(self.noise.forward(&NoiseForward {
                            shape: shape.into(),
                            precision: Precision::F32,
                            n: self.view(n),
                            eps: self.view(eps),
                            offset: self.scratch_view(node, ScratchKind::LogitOffset),
                        })?);
                    }
                    let gate = |stages| {
                        let args = GateTopkForward {
                            precision: Precision::F32,
                            shape,
                            k,
                            access,
                            selection,
                            stages,
                            x: self.view(x),
                            wg: self.gate_weights(node, wg),
                            bg: self.view(bg),
                            h: self.view(h),
                            g: self.view(g),
                            m: self.view(m),
                            logit_offset: noise
                                .map(|_| self.scratch_view(node, ScratchKind::LogitOffset)),
                        };
                        match full_softmax {
                            Some(p) => self.gate_topk.forward_keeping_softmax(&args, p),
                            None => self.gate_topk.forward(&args),
                        }
                    };
                    if k == shape.experts
                        && access == ExpertAccess::All
                        && noise.is_none()
                        && full_softmax.is_none()
                    {
                        // The paper's gate, under its own name in profiles.
                        forward.push(self.gate_mix.forward(&GateMixForward {
                            precision: Precision::F32,
                            shape,
                            x: self.view(x),
                            wg: self.gate_weights(node, wg),
                            bg: self.view(bg),
                            h: self.view(h),
                            g: self.view(g),
                            m: self.view(m),
                        })?);
                    } else if experts.is_empty() {
                        forward.push(gate(ForwardStages::Both)?);
                    } else {
                        // Gate values first, so each expert runs on its routed rows
                        // only; then the mixtures.
                        forward.push(gate(ForwardStages::GateOnly)?);
                        let routes = self.scratch_view(node, ScratchKind::RowMap);
                        forward.push(self.routing.forward(&RoutingForward {
                            shape: RoutingShape {
                                gates: shape.gates,
                                rows,
                                experts: shape.experts,
                            },
                            precision: Precision::F32,
                            g: self.view(g),
                            routes,
                        })?);
                        for expert in experts {
                            forward.push(self.expert_forward(expert, rows)?);
                        }
                        forward.push(gate(ForwardStages::MixOnly)?);
                    }
                    if let Some(p) = full_softmax {
                        forward.push(self.balance.forward_load(
                            &BalanceForward {
                                shape: shape.into(),
                                weight: balance_weight,
                                precision: Precision::F32,
                                g: self.view(g),
                                stats: self.scratch_view(node, ScratchKind::BalanceStats),
                            },
                            &BalanceLoad {
                                k,
                                seen: access.visible(&shape),
                                p,
                            },
                        )?);
                    } else if balance_weight > 0.0 {
                        forward.push(self.balance.forward(&BalanceForward {
                            shape: shape.into(),
                            weight: balance_weight,
                            precision: Precision::F32,
                            g: self.view(g),
                            stats: self.scratch_view(node, ScratchKind::BalanceStats),
                        })?);
                    }
                }
                Op::Loss { .. } => {}
            }
        }
        Ok(forward)
    }

    fn build_backward(
        &self,
        step: BackwardStep,
        rows: usize,
        out: &mut Vec<Dispatch>,
    ) -> Result<()> {
        let node = step.node();
        match (step, at_rows(&self.graph.nodes()[node], rows)) {
            (
                BackwardStep::DenseWeights { .. },
                Op::Dense {
                    shape,
                    activation,
                    x,
                    w,
                    b,
                    y,
                },
            ) => {
                let args = GroupedGemmBackwardWeights {
                    precision: Precision::F32,
                    shape,
                    activation,
                    x: self.view(x),
                    dy: self.grad_view(y),
                    y: (activation == Activation::Relu).then(|| self.view(y)),
                    dw: self.grad_view(w),
                    db: b.map(|b| self.grad_view(b)),
                };
                out.push(match self.plan.routed_by[node] {
                    Some(gate) => self
                        .gemm
                        .backward_weights_ragged(&args, self.row_map(gate))?,
                    None => self.gemm.backward_weights(&args)?,
                });
            }
            (
                BackwardStep::DenseInput { accumulate, .. },
                Op::Dense {
                    shape,
                    activation,
                    x,
                    w,
                    y,
                    ..
                },
            ) => {
                let args = GroupedGemmBackwardInput {
                    precision: Precision::F32,
                    shape,
                    activation,
                    dy: self.grad_view(y),
                    y: (activation == Activation::Relu).then(|| self.view(y)),
                    w: self.view(w),
                    dx: self.grad_view(x),
                    accumulate,
                };
                match self.plan.routed_by[node] {
                    // Only the rows the gate routed to each expert.
                    Some(gate) => {
                        let scratch = (shape.input == InputLayout::Shared).then(|| {
                            SlotScratch::new(
                                self.scratch_view(node, ScratchKind::InputGradSlots),
                                max_routes_per_row(&self.graph, gate),
                            )
                        });
                        out.extend(self.gemm.backward_input_ragged(
                            &args,
                            self.row_map(gate),
                            scratch,
                        )?);
                    }
                    None => out.push(self.gemm.backward_input(&args)?),
                }
            }
            (
                BackwardStep::GateMix { dx, .. },
                Op::GateMix {
                    shape,
                    x,
                    wg,
                    bg,
                    h,
                    g,
                    m,
                    balance_weight,
                    balance_loss,
                    noise,
                    ..
                },
            ) => {
                let mut dispatches = self.gate_mix.backward(&GateMixBackward {
                    precision: Precision::F32,
                    shape,
                    x: self.view(x),
                    wg: self.gate_weights(node, wg),
                    h: self.view(h),
                    g: self.view(g),
                    dm: self.grad_view(m),
                    dh: self.grad_view(h),
                    dz: self.scratch_view(node, ScratchKind::LogitGrad),
                    dwg: match wg {
                        Some(wg) => self.grad_view(wg),
                        None => self.scratch_view(node, ScratchKind::WeightGradSink),
                    },
                    dbg: self.grad_view(bg),
                    dx: dx.map(|_| self.grad_view(x)),
                    accumulate_dx: dx == Some(true),
                })?;
                // The balancing loss adds to dz after the gate writes it, before the
                // GEMMs read it.
                if balance_weight > 0.0 {
                    // The load loss's gradient is the importance loss's with the full
                    // softmax in place of G.
                    let balance = self.balance.backward(&BalanceBackward {
                        shape: shape.into(),
                        precision: Precision::F32,
                        g: match balance_loss {
                            BalanceLoss::Importance => self.view(g),
                            BalanceLoss::Load => self.scratch_view(node, ScratchKind::FullSoftmax),
                        },
                        stats: self.scratch_view(node, ScratchKind::BalanceStats),
                        dz: self.scratch_view(node, ScratchKind::LogitGrad),
                    })?;
                    dispatches.insert(1, balance);
                }
                // dn reads the final dz: after the balancing loss added its share.
                if let Some(GateNoise { n, eps }) = noise {
                    dispatches.push(self.noise.backward(&NoiseBackward {
                        shape: shape.into(),
                        precision: Precision::F32,
                        n: self.view(n),
                        eps: self.view(eps),
                        dz: self.scratch_view(node, ScratchKind::LogitGrad),
                        dn: self.grad_view(n),
                    })?);
                }
                out.extend(dispatches);
            }
            (step, op) => unreachable!("backward step {step:?} does not match node {op:?}"),
        }
        Ok(())
    }

    /// Compute dispatches one training step records at `rows` rows.
    pub fn dispatches_per_step(&mut self, rows: usize) -> Result<usize> {
        let r = self.recorded(rows)?;
        Ok(r.forward.len() + r.loss.len() + r.backward.len() + 1)
    }

    fn submit(&mut self, rows: usize, what: &str, parts: Parts) -> Result<()> {
        self.recorded(rows)?;
        let recorded = &self.recorded[&rows];
        let optimizer = parts.optimizer.then(|| self.optimizer.dispatch());
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
                for d in forward.iter().chain(loss).chain(backward).chain(optimizer) {
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
        self.optimizer
            .set_step(self.gpu.queue(), step, learning_rate);
        self.recorded(rows)?;
        let recorded = &self.recorded[&rows];
        let all = recorded
            .forward
            .iter()
            .chain(&recorded.loss)
            .chain(&recorded.backward)
            .chain([self.optimizer.dispatch()]);
        all.map(|d| {
            Ok((
                d.label(),
                self.gpu.time_pass(1, |pass| d.record(pass))?.total,
            ))
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

    /// Reads a tensor as computed by the last run at `rows` rows.
    pub fn read(&self, id: TensorId, rows: usize) -> Result<Vec<f32>> {
        let view = self.view(id);
        self.gpu
            .read(view.buffer, view.offset, self.graph.tensor(id).len_at(rows))
    }

    /// Reads the gradient of a tensor (parameter or activation).
    pub fn read_grad(&self, id: TensorId, rows: usize) -> Result<Vec<f32>> {
        let view = self.grad_view(id);
        self.gpu
            .read(view.buffer, view.offset, self.graph.tensor(id).len_at(rows))
    }

    /// The flat parameters.
    pub fn parameters(&self) -> Result<Vec<f32>> {
        self.gpu.read(&self.params, 0, self.plan.param_len)
    }

    /// The flat gradients of the last backward pass.
    pub fn gradients_flat(&self) -> Result<Vec<f32>> {
        self.gpu.read(&self.grads, 0, self.plan.param_len)
    }

    /// Replaces the flat parameters.
    pub fn set_parameters(&self, params: &[f32]) -> Result<()> {
        if params.len() != self.plan.param_len {
            return Err(Error::shape(
                "GpuExecutor::set_parameters",
                "params",
                format!("{} values", self.plan.param_len),
                format!("{} values", params.len()),
            ));
        }
        self.gpu.write(&self.params, 0, params)
    }

    /// The optimizer's state buffers (the first and, for Adam and AdamW, second
    /// moments), each laid out like the flat parameters.
    pub fn optimizer_state(&self) -> Result<Vec<Vec<f32>>> {
        self.moments
            .iter()
            .map(|m| self.gpu.read(m, 0, self.plan.param_len))
            .collect()
    }

    /// Replaces the optimizer's state buffers (see
    /// [`optimizer_state`](Self::optimizer_state)).
    pub fn set_optimizer_state(&self, state: &[Vec<f32>]) -> Result<()> {
        if state.len() != self.moments.len() {
            return Err(Error::shape(
                "GpuExecutor::set_optimizer_state",
                "state",
                format!("{} buffers", self.moments.len()),
                format!("{} buffers", state.len()),
            ));
        }
        for (i, (buffer, values)) in self.moments.iter().zip(state).enumerate() {
            if values.len() != self.plan.param_len {
                return Err(Error::shape(
                    "GpuExecutor::set_optimizer_state",
                    format!("state[{i}]"),
                    format!("{} values", self.plan.param_len),
                    format!("{} values", values.len()),
                ));
            }
            self.gpu.write(buffer, 0, values)?;
        }
        Ok(())
    }

    /// Forgets a non-finite loss seen earlier, so the optimizer updates again: for
    /// after the parameters were replaced by good ones.
    pub fn clear_non_finite(&self) -> Result<()> {
        let words = (self.status.size() / 4) as usize;
        self.gpu.write(&self.status, 0, &vec![0u32; words])
    }

    /// The load-balancing statistics of gate node `node` at its last forward pass
    /// (laid out as [`crate::kernels::balance::BalanceShape::stats_len`] says), or
    /// `None` when the node has no balancing loss.
    pub fn balance_stats(&self, node: usize) -> Result<Option<Vec<f32>>> {
        let Some((_, buffer)) = self
            .scratch
            .get(node)
            .and_then(|own| own.iter().find(|(k, _)| *k == ScratchKind::BalanceStats))
        else {
            return Ok(None);
        };
        let len = (buffer.size() / 4) as usize;
        Ok(Some(self.gpu.read(buffer, 0, len)?))
    }

    /// The per-task loss of the last run with a loss.
    pub fn loss(&self) -> Result<Vec<f32>> {
        match self.loss_tensor {
            Some(id) => self.read(id, 1),
            None => Err(Error::invalid(
                "GpuExecutor::loss",
                "the graph has no loss node",
            )),
        }
    }

    /// Err naming the first step whose loss was non-finite, if any step's was: the
    /// optimizer skipped that update and every later one.
    pub fn check_finite(&self) -> Result<()> {
        let Some(id) = self.loss_tensor else {
            return Ok(());
        };
        let status: Vec<u32> = self
            .gpu
            .read(&self.status, 0, 1 + self.graph.tensor(id).len())?;
        if status[0] == 0 {
            return Ok(());
        }
        let losses: Vec<f32> = status[1..].iter().map(|&b| f32::from_bits(b)).collect();
        let task = losses.iter().position(|l| !l.is_finite()).unwrap_or(0);
        Err(Error::NonFiniteLoss {
            step: status[0] as u64,
            task,
            value: losses[task],
        })
    }
}

struct Parts {
    /// The training forward, with gate noise, rather than the inference one.
    noise: bool,
    loss: bool,
    backward: bool,
    optimizer: bool,
}
