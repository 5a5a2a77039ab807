//! Buffer layout, decided once per graph: parameters, their gradients and the
//! optimizer state each in one flat buffer (tensors as views at aligned offsets);
//! activations, their gradients and scratch one buffer each.

use super::backward::{BackwardStep, backward_steps, needs_grad};
use super::{Graph, Op, Role, TensorId};
use crate::kernels::grouped_gemm::{RowMap, SlotScratch};
use crate::shape::{
    Activation, BalanceLoss, BalanceShape, InputLayout, OptimizerConfig, Selection,
};
use crate::{Error, Result};

/// Where every tensor lives.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Alignment of parameter views, in elements.
    pub align: usize,
    /// Element offset of each parameter in the flat buffers (`None` for other tensors).
    pub param_offsets: Vec<Option<usize>>,
    /// Length of the flat parameter (and gradient, and moment) buffers.
    pub param_len: usize,
    /// Which activations have a gradient buffer.
    pub has_grad: Vec<bool>,
    /// Per node: the scratch buffers its kernels use, at capacity.
    pub scratch: Vec<Vec<Scratch>>,
    /// Per node: for the expert layers of a sparse (top-k) gate, that gate's node.
    /// They run after the gate values, on the rows the gates route to each expert.
    pub routed_by: Vec<Option<usize>>,
    /// Per node: for the noise layer of a noisy gate, that gate's node. Passes
    /// without gate noise skip it.
    pub noise_of: Vec<Option<usize>>,
    /// The backward pass.
    pub backward: Vec<BackwardStep>,
    /// Per tensor: whether its gradient buffer holds the gradient at the input of
    /// the ReLU that made it (`dY ⊙ [Y > 0]`), written so by its only reader's
    /// backward (a gate + mix on an expert layer), so that the layer's own backward
    /// runs with the identity and loads no `Y`.
    pub relu_applied: Vec<bool>,
}

impl Plan {
    /// Lays out `graph` with parameter views aligned to `align_bytes` (the device's
    /// `min_storage_buffer_offset_alignment`, so each view can also be bound alone).
    pub fn new(graph: &Graph, align_bytes: u32) -> Result<Plan> {
        let align = (align_bytes as usize / 4).max(1);
        let mut param_len = 0usize;
        let param_offsets = graph
            .tensors()
            .iter()
            .map(|t| {
                (t.role == Role::Parameter).then(|| {
                    let offset = param_len.next_multiple_of(align);
                    param_len = offset + t.len();
                    offset
                })
            })
            .collect();
        let needs = needs_grad(graph);
        let mut has_grad: Vec<bool> = graph
            .tensors()
            .iter()
            .zip(&needs)
            .map(|(t, &n)| n && matches!(t.role, Role::Activation | Role::Input))
            .collect();
        let routed_by = routed_layers(graph);
        let backward = backward_steps(graph)?;
        let mut noise_of = vec![None; graph.nodes().len()];
        let mut scratch = vec![Vec::new(); graph.nodes().len()];
        for (node, op) in graph.nodes().iter().enumerate() {
            match op {
                // Gate values and losses are outputs without a gradient of their own.
                Op::GateMix {
                    g,
                    shape,
                    wg,
                    balance_weight,
                    balance_loss,
                    noise,
                    ..
                } => {
                    has_grad[g.0] = false;
                    let mut own = vec![Scratch {
                        kind: ScratchKind::LogitGrad,
                        len: shape.g_len(),
                    }];
                    if wg.is_none() {
                        own.extend([ScratchKind::ZeroWeights, ScratchKind::WeightGradSink].map(
                            |kind| Scratch {
                                kind,
                                len: shape.wg_len(),
                            },
                        ));
                    }
                    if *balance_weight > 0.0 {
                        own.push(Scratch {
                            kind: ScratchKind::BalanceStats,
                            len: BalanceShape::from(*shape).stats_len(),
                        });
                        if *balance_loss == BalanceLoss::Load {
                            own.push(Scratch {
                                kind: ScratchKind::FullSoftmax,
                                len: shape.g_len(),
                            });
                        }
                    }
                    if let Some(noise) = noise {
                        own.push(Scratch {
                            kind: ScratchKind::LogitOffset,
                            len: shape.g_len(),
                        });
                        noise_of[producer(graph, noise.n).expect("the noise layer")] = Some(node);
                    }
                    if routed_by.contains(&Some(node)) {
                        own.push(Scratch {
                            kind: ScratchKind::RowMap,
                            len: RowMap::elements(shape.experts, shape.rows),
                        });
                    }
                    scratch[node] = own;
                }
                Op::Loss { loss, .. } => has_grad[loss.0] = false,
                Op::Embedding { .. } => {}
                // A sparse expert layer on a shared input sums its input gradient over
                // the experts each row went to, from their compact rows.
                Op::Dense { shape: gemm, .. }
                    if gemm.input == InputLayout::Shared
                        && backward.iter().any(
                            |s| matches!(s, BackwardStep::DenseInput { node: n, .. } if *n == node),
                        ) =>
                {
                    if let Some(gate) = routed_by[node] {
                        scratch[node].push(Scratch {
                            kind: ScratchKind::InputGradSlots,
                            len: SlotScratch::elements(gemm, max_routes_per_row(graph, gate)),
                        });
                    }
                }
                Op::Dense { .. } => {}
            }
        }
        Ok(Plan {
            align,
            param_offsets,
            param_len,
            has_grad,
            scratch,
            routed_by,
            noise_of,
            backward,
            relu_applied: relu_applied(graph),
        })
    }

    /// Elements the flat parameter, gradient and moment buffers are allocated with:
    /// [`param_len`](Self::param_len) rounded up to whole units of four, so that the
    /// optimizer runs its vec4 kernels on them (the padding is never written).
    pub fn flat_buffer_len(&self) -> usize {
        self.param_len.next_multiple_of(4)
    }

    /// Bytes the plan needs on the device, by kind (f32 everywhere), trained with
    /// `optimizer`.
    pub fn memory(&self, graph: &Graph, optimizer: &OptimizerConfig) -> MemoryReport {
        let moments = moment_buffers(optimizer);
        let bytes = |n: usize| 4 * n as u64;
        let lookups = lookup_buffers(graph);
        let lookup_bytes = |kind: LookupBufferKind| {
            bytes(
                lookups
                    .iter()
                    .filter(|b| b.kind == kind)
                    .map(|b| b.len)
                    .sum(),
            )
        };
        let sum_role = |role: Role| {
            bytes(
                graph
                    .tensors()
                    .iter()
                    .filter(|t| t.role == role)
                    .map(|t| t.len())
                    .sum(),
            )
        };
        MemoryReport {
            parameters: bytes(self.flat_buffer_len()),
            gradients: bytes(self.flat_buffer_len()),
            optimizer_state: bytes(self.flat_buffer_len() * moments),
            activations: sum_role(Role::Activation),
            activation_gradients: bytes(
                graph
                    .tensors()
                    .iter()
                    .zip(&self.has_grad)
                    .filter(|(_, g)| **g)
                    .map(|(t, _)| t.len())
                    .sum(),
            ),
            inputs: sum_role(Role::Input)
                + sum_role(Role::Target)
                + sum_role(Role::Noise)
                + lookup_bytes(LookupBufferKind::Ids),
            scratch: bytes(self.scratch.iter().flatten().map(|s| s.len).sum())
                + lookup_bytes(LookupBufferKind::Scratch),
            tables: bytes(
                graph
                    .tables()
                    .iter()
                    .map(|t| t.len() * table_buffers(t, optimizer))
                    .sum(),
            ),
        }
    }
}

impl Plan {
    /// Checks every buffer the GPU executor allocates for `graph` against the
    /// device's `max_buffer_size` and `max_storage_buffer_binding_size` (each
    /// buffer is bound whole by some kernel), naming the first that is over.
    pub fn check_limits(
        &self,
        graph: &Graph,
        optimizer: &OptimizerConfig,
        limits: &wgpu::Limits,
    ) -> Result<()> {
        let binding = limits.max_storage_buffer_binding_size;
        let (limit, which) = if binding <= limits.max_buffer_size {
            (binding, "max_storage_buffer_binding_size")
        } else {
            (limits.max_buffer_size, "max_buffer_size")
        };
        let bytes = |n: usize| 4 * n as u64;
        let flat = bytes(self.flat_buffer_len());
        let mut buffers = vec![
            ("the flat parameters".to_string(), flat),
            ("the flat gradients".to_string(), flat),
        ];
        for i in 0..moment_buffers(optimizer) {
            buffers.push((format!("optimizer moment {}", i + 1), flat));
        }
        for (tensor, &has_grad) in graph.tensors().iter().zip(&self.has_grad) {
            if tensor.role != Role::Parameter {
                buffers.push((format!("tensor `{}`", tensor.name), bytes(tensor.len())));
            }
            if has_grad {
                buffers.push((
                    format!("gradient of `{}`", tensor.name),
                    bytes(tensor.len()),
                ));
            }
        }
        buffers.extend(
            self.scratch
                .iter()
                .flatten()
                .map(|s| (format!("scratch {:?}", s.kind), bytes(s.len))),
        );
        // Tables are split into chunks that fit; a batch's ID arrays are not.
        buffers.extend(
            lookup_buffers(graph)
                .into_iter()
                .map(|b| (b.name, bytes(b.len))),
        );
        match buffers.into_iter().find(|(_, size)| *size > limit) {
            Some((name, size)) => Err(Error::Limit {
                context: format!(
                    "planning buffers for a batch capacity of {} rows",
                    graph.capacity()
                ),
                what: format!("the size in bytes of {name} (device limit {which})"),
                value: size,
                limit,
            }),
            None => Ok(()),
        }
    }
}

/// Per node, the sparse gate whose routing it runs on: the expert layers (a chain
/// of dense nodes, the first on the shared input) feeding a gate that keeps fewer
/// experts than it sees.
fn routed_layers(graph: &Graph) -> Vec<Option<usize>> {
    let nodes = graph.nodes();
    let mut routed = vec![None; nodes.len()];
    let producer = |t: TensorId| producer(graph, t);
    for (gate, op) in nodes.iter().enumerate() {
        let Op::GateMix {
            shape,
            k,
            access,
            h,
            ..
        } = op
        else {
            continue;
        };
        if *k >= access.visible(shape) {
            continue;
        }
        let mut next = producer(*h);
        while let Some(node) = next {
            let Op::Dense { x, shape: gemm, .. } = &nodes[node] else {
                break;
            };
            // The first layer of a level's experts reads the blocks of the level's
            // input, which the ragged passes do not take: it runs dense (its rows no
            // gate selected get a weight of exactly 0 in the mixture all the same).
            if gemm.groups != shape.experts || matches!(gemm.input, InputLayout::Level { .. }) {
                break;
            }
            routed[node] = Some(gate);
            next = match gemm.input {
                InputLayout::PerGroup => producer(*x),
                InputLayout::Shared | InputLayout::Level { .. } | InputLayout::Columns(_) => None,
            };
        }
    }
    routed
}

/// The most experts sparse gate node `gate` routes one row to: each of its gates
/// keeps `k` (all the same `k` under a shared selection), at most all of them.
pub(super) fn max_routes_per_row(graph: &Graph, gate: usize) -> usize {
    match &graph.nodes()[gate] {
        Op::GateMix {
            shape,
            k,
            selection: Selection::Shared,
            ..
        } => (*k).min(shape.experts),
        Op::GateMix { shape, k, .. } => (k * shape.gates).min(shape.experts),
        _ => unreachable!("node {gate} is the gate of a routed layer"),
    }
}

/// The expert outputs whose gradient the gate + mix reading them stores at the
/// ReLU's input: made by a ReLU dense node and read by nothing else. The mask then
/// costs one load of `H` per element there instead of one per element and weight-
/// gradient row block (and input-gradient column block) in the grouped GEMM.
fn relu_applied(graph: &Graph) -> Vec<bool> {
    let mut applied = vec![false; graph.tensors().len()];
    for op in graph.nodes() {
        let Op::GateMix { h, .. } = op else {
            continue;
        };
        let relu = producer(graph, *h).is_some_and(|n| {
            matches!(
                graph.nodes()[n],
                Op::Dense {
                    activation: Activation::Relu,
                    ..
                }
            )
        });
        let readers = graph
            .nodes()
            .iter()
            .filter(|op| op.inputs().contains(h))
            .count();
        applied[h.0] = relu && readers == 1;
    }
    applied
}

/// The dense node that computes `t`, if one does.
fn producer(graph: &Graph, t: TensorId) -> Option<usize> {
    graph
        .nodes()
        .iter()
        .position(|op| matches!(op, Op::Dense { y, .. } if *y == t))
}

/// What a scratch buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScratchKind {
    /// The gate logits' gradient `dz: [gates, rows, experts]`.
    LogitGrad,
    /// A static gate's weights: zeros, so that its logits are its bias alone.
    ZeroWeights,
    /// Where the gradient of a static gate's (absent) weights is written and left.
    WeightGradSink,
    /// The load-balancing loss's importance, load, coefficients and loss per gate.
    BalanceStats,
    /// A sparse gate's row map: per expert, the rows routed to it (u32).
    RowMap,
    /// A noisy gate's logit offset `ε ⊙ softplus(n): [gates, rows, experts]`.
    LogitOffset,
    /// The full softmax `p: [gates, rows, experts]` of a gate's logits before the
    /// top-k cut, for the load-balancing loss's load kind.
    FullSoftmax,
    /// A sparse expert layer on a shared input: its input gradient's rows per expert,
    /// compact (`[rows · max routes per row, inputs]`, see
    /// [`SlotScratch`]), before they are summed per row.
    InputGradSlots,
}

impl ScratchKind {
    /// Whether the buffer grows with the batch.
    pub fn per_row(self) -> bool {
        matches!(
            self,
            ScratchKind::LogitGrad
                | ScratchKind::RowMap
                | ScratchKind::LogitOffset
                | ScratchKind::FullSoftmax
                | ScratchKind::InputGradSlots
        )
    }
}

/// One scratch buffer of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scratch {
    /// What it holds.
    pub kind: ScratchKind,
    /// Elements (f32) at the graph's capacity.
    pub len: usize,
}

/// What a buffer of the lookups holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupBufferKind {
    /// A batch's IDs and what the host prepared from them (u32, f32 weights).
    Ids,
    /// Gathered table rows and compact table gradients (f32).
    Scratch,
}

/// One buffer the lookups of a graph use besides their tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupBuffer {
    /// What it is, for errors: `` `tags` occurrences ``.
    pub name: String,
    /// What it holds.
    pub kind: LookupBufferKind,
    /// 4-byte elements at the graph's capacity.
    pub len: usize,
}

/// The buffers of every lookup (IDs, offsets, weights, unique offsets, occurrences,
/// the scratch of a table split in chunks) and of every table (unique IDs, compact
/// gradient, and zeros for a table trained densely), at the graph's capacity. The scratch is counted for every lookup, the
/// most a device whose bindings split no table allocates less.
pub fn lookup_buffers(graph: &Graph) -> Vec<LookupBuffer> {
    let mut out = Vec::new();
    let mut unique = vec![0; graph.tables().len()];
    for lookup in graph.lookups() {
        let Op::Embedding { shape, .. } = &graph.nodes()[lookup.node] else {
            continue;
        };
        unique[lookup.table] = shape.bounds.unique;
        let f = &shape.field;
        let mut add = |what: &str, kind, len| {
            out.push(LookupBuffer {
                name: format!("`{}` {what}", lookup.name),
                kind,
                len,
            })
        };
        add("ids", LookupBufferKind::Ids, shape.ids_len());
        if f.multi_valued {
            add("offsets", LookupBufferKind::Ids, shape.offsets_len());
        }
        if f.weighted {
            add("weights", LookupBufferKind::Ids, shape.ids_len());
        }
        add(
            "unique offsets",
            LookupBufferKind::Ids,
            shape.unique_offsets_len(),
        );
        add(
            "occurrences",
            LookupBufferKind::Ids,
            shape.occurrences_len(),
        );
        add("scratch", LookupBufferKind::Scratch, shape.scratch_len());
    }
    for (table, &unique) in graph.tables().iter().zip(&unique) {
        out.push(LookupBuffer {
            name: format!("`{}` unique IDs", table.name),
            kind: LookupBufferKind::Ids,
            len: unique,
        });
        out.push(LookupBuffer {
            name: format!("`{}` compact gradient", table.name),
            kind: LookupBufferKind::Scratch,
            len: unique * table.dim,
        });
        // Trained densely: the zeros that clear its scattered gradient.
        if table.optimizer.sparse().is_none() {
            out.push(LookupBuffer {
                name: format!("`{}` zeros", table.name),
                kind: LookupBufferKind::Scratch,
                len: unique * table.dim,
            });
        }
    }
    out
}

/// Buffers of a table's shape it keeps: itself, its optimizer's state and, trained
/// by the dense optimizer, its gradient.
pub fn table_buffers(table: &super::Table, optimizer: &OptimizerConfig) -> usize {
    let dense_grad = table.optimizer.sparse().is_none() as usize;
    1 + table.state_tables(optimizer) + dense_grad
}

/// Optimizer state buffers `optimizer` keeps, each as long as the parameters.
pub fn moment_buffers(optimizer: &OptimizerConfig) -> usize {
    if optimizer.needs_second_moment() {
        2
    } else {
        1
    }
}

/// Device memory by kind, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// The flat parameter buffer.
    pub parameters: u64,
    /// The flat gradient buffer.
    pub gradients: u64,
    /// Optimizer moments.
    pub optimizer_state: u64,
    /// Forward activations (kept for backward).
    pub activations: u64,
    /// Gradients of activations.
    pub activation_gradients: u64,
    /// Per-step inputs, targets, gate noise draws and lookups' IDs.
    pub inputs: u64,
    /// Kernel scratch (gate-mix `dz`, static gates' constant weights, noisy gates'
    /// logit offsets, sparse gates' row maps and their experts' input-gradient rows,
    /// lookups' gathered rows and compact table gradients).
    pub scratch: u64,
    /// Embedding tables, their optimizer state and, trained densely, their
    /// gradients.
    pub tables: u64,
}

impl MemoryReport {
    /// Sum of all kinds.
    pub fn total(&self) -> u64 {
        self.parameters
            + self.gradients
            + self.optimizer_state
            + self.activations
            + self.activation_gradients
            + self.inputs
            + self.scratch
            + self.tables
    }
}
