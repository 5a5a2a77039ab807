//! Checking a kernel's operands against the caller's buffers and binding them.

use crate::gpu::{BindingKind, Gpu, ShaderProgram};
use crate::{Error, Result};

/// The type a kernel's floating-point tensors are stored as. Arithmetic is f32 either
/// way: f16 storage halves memory and bandwidth, and rounds each stored result once.
///
/// [`F16`](Precision::F16) needs the adapter feature `SHADER_F16`
/// ([`Capabilities::f16`](crate::Capabilities::f16)); asking for it without is an
/// [`Error::MissingFeature`]. On the host, f16 data is [`half::f16`] (re-exported as
/// [`mmoe_wgpu::half`](crate::half)), which [`Gpu::upload`] and [`Gpu::read`] take
/// as they are.
///
/// Which operands follow the precision: every tensor of the grouped GEMM and gate +
/// mix kernels; predictions, targets and gradient of the loss (the per-task loss
/// values stay f32); gradients and the optional parameter copy of the optimizer (the
/// parameters and moments stay f32: master weights in f32 are what keeps small updates
/// from rounding away). The model [`Trainer`](crate::model::Trainer) always uses f32.
///
/// ```
/// use mmoe_wgpu::kernels::Precision;
///
/// # fn main() -> mmoe_wgpu::Result<()> {
/// let gpu = mmoe_wgpu::Gpu::new()?;
/// // f16 where the adapter has it, the f32 path otherwise.
/// let precision = Precision::best(&gpu);
/// assert!(precision.check(&gpu, "this example").is_ok());
/// assert_eq!(Precision::F16.element_size(), 2);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// 32-bit floats, `f32` on the host. Every adapter.
    #[default]
    F32,
    /// 16-bit floats, [`half::f16`] on the host; accumulation stays f32.
    F16,
}

impl Precision {
    /// Bytes per element: 4 or 2.
    pub const fn element_size(self) -> u64 {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }

    /// Whether `gpu` can run kernels at this precision.
    pub fn is_supported(self, gpu: &Gpu) -> bool {
        match self {
            Precision::F32 => true,
            Precision::F16 => gpu.capabilities().f16,
        }
    }

    /// `Ok` when `gpu` supports this precision, otherwise an
    /// [`Error::MissingFeature`] naming `what` asked for it.
    pub fn check(self, gpu: &Gpu, what: &str) -> Result<()> {
        if self.is_supported(gpu) {
            return Ok(());
        }
        Err(Error::MissingFeature {
            what: format!("{what} with {self:?} storage"),
            feature: "SHADER_F16".into(),
            adapter: gpu.adapter().name.clone(),
        })
    }

    /// The smallest storage `gpu` supports: [`F16`](Precision::F16) where the adapter
    /// has `SHADER_F16`, [`F32`](Precision::F32) otherwise.
    pub fn best(gpu: &Gpu) -> Precision {
        if Precision::F16.is_supported(gpu) {
            Precision::F16
        } else {
            Precision::F32
        }
    }
}

/// The storage parts (`shaders/storage_*.wgsl`): a family's source is compiled with one
/// of them, which sets the type its tensors are stored as. The f32 part goes last and
/// the f16 part first (see the files for why).
pub(crate) const STORAGE_F32: (&str, &str) = (
    "storage_f32.wgsl",
    include_str!("../../shaders/storage_f32.wgsl"),
);
pub(crate) const STORAGE_F16: (&str, &str) = (
    "storage_f16.wgsl",
    include_str!("../../shaders/storage_f16.wgsl"),
);

/// The `[f32, f16]` programs of a family compiled from one source `$source` (a
/// `(file name, text)` pair), named `$name` and `$name` + `_f16`, with the storage
/// parts placed as they must be.
macro_rules! storage_programs {
    ($name:literal, $source:expr) => {
        [
            crate::gpu::ShaderProgram {
                name: $name,
                parts: &[$source, crate::kernels::binding::STORAGE_F32],
                needs_subgroups: false,
                needs_f16: false,
            },
            crate::gpu::ShaderProgram {
                name: concat!($name, "_f16"),
                parts: &[crate::kernels::binding::STORAGE_F16, $source],
                needs_subgroups: false,
                needs_f16: true,
            },
        ]
    };
}
pub(crate) use storage_programs;

/// A family's program at each precision: `[f32, f16]`.
pub(crate) fn program_for(
    programs: &'static [ShaderProgram; 2],
    precision: Precision,
) -> &'static ShaderProgram {
    match precision {
        Precision::F32 => &programs[0],
        Precision::F16 => &programs[1],
    }
}

/// A place in a caller's buffer where an operand starts: `offset` in bytes, a multiple
/// of the operand's element size (4 for f32, 2 for f16). The element count comes from
/// the kernel's shape. Any such offset works: the binding starts at the device's
/// alignment below it and the shader adds the rest.
#[derive(Clone, Copy, Debug)]
pub struct BufferView<'a> {
    /// The buffer; needs `STORAGE` usage.
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset of the first element.
    pub offset: u64,
}

impl<'a> BufferView<'a> {
    /// The operand starts at the beginning of `buffer`.
    pub fn new(buffer: &'a wgpu::Buffer) -> Self {
        BufferView { buffer, offset: 0 }
    }

    /// The operand starts `offset` bytes into `buffer`.
    pub fn at(buffer: &'a wgpu::Buffer, offset: u64) -> Self {
        BufferView { buffer, offset }
    }
}

impl<'a> From<&'a wgpu::Buffer> for BufferView<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        BufferView::new(buffer)
    }
}

/// One operand of a dispatch.
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a> {
    pub name: &'static str,
    pub slot: u32,
    pub view: BufferView<'a>,
    /// Elements the kernel touches from `view.offset` on.
    pub len: usize,
    /// Bytes per element.
    pub elem: u64,
    pub kind: BindingKind,
    /// The slot only satisfies the layout: the kernel never touches it (an absent
    /// optional operand), so it is exempt from the aliasing rules.
    pub placeholder: bool,
}

impl<'a> Operand<'a> {
    pub fn new(
        name: &'static str,
        slot: u32,
        view: BufferView<'a>,
        len: usize,
        kind: BindingKind,
    ) -> Self {
        Operand {
            name,
            slot,
            view,
            len,
            elem: 4,
            kind,
            placeholder: false,
        }
    }

    /// The operand stored at `precision` (f32 unless said).
    pub fn of(self, precision: Precision) -> Self {
        Operand {
            elem: precision.element_size(),
            ..self
        }
    }

    /// `self`'s buffer standing in at `slot` for an absent operand.
    pub fn stand_in(&self, slot: u32) -> Self {
        Operand {
            slot,
            placeholder: true,
            ..*self
        }
    }
}

/// An operand after checking: where its binding starts and the element offset of the
/// operand inside it.
#[derive(Clone, Copy)]
pub(crate) struct BoundOperand<'a> {
    pub slot: u32,
    pub kind: BindingKind,
    pub buffer: &'a wgpu::Buffer,
    pub bind_offset: u64,
    pub bind_size: u64,
    /// Element index of the operand's first value within the binding.
    pub base: u32,
}

impl<'a> BoundOperand<'a> {
    /// The same binding at `slot` as `kind`: for a dispatch that reads what another
    /// one over the same operands writes.
    pub fn at(&self, slot: u32, kind: BindingKind) -> Self {
        BoundOperand {
            slot,
            kind,
            ..*self
        }
    }
}

fn ranges_overlap(a: &Operand<'_>, b: &Operand<'_>) -> bool {
    let (a0, b0) = (a.view.offset, b.view.offset);
    let (a1, b1) = (a0 + a.elem * a.len as u64, b0 + b.elem * b.len as u64);
    a0 < b1 && b0 < a1
}

/// Checks usage, alignment, size, aliasing and binding limits of `operands`.
pub(crate) fn bind_operands<'a>(
    gpu: &Gpu,
    context: &str,
    operands: &[Operand<'a>],
) -> Result<Vec<BoundOperand<'a>>> {
    let limits = gpu.limits();
    let align = limits.min_storage_buffer_offset_alignment as u64;
    let max_binding = limits.max_storage_buffer_binding_size;
    let mut bound = Vec::with_capacity(operands.len());
    for op in operands {
        let buffer = op.view.buffer;
        let binding_err = |problem: String| Error::Binding {
            context: context.into(),
            operand: op.name.into(),
            problem,
        };
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(binding_err(format!(
                "lacks STORAGE usage (has {:?})",
                buffer.usage()
            )));
        }
        if op.view.offset % op.elem != 0 {
            return Err(binding_err(format!(
                "offset {} is not a multiple of {} bytes (the element size)",
                op.view.offset, op.elem
            )));
        }
        let type_name = if op.elem == 2 { "f16" } else { "f32" };
        let needed = op.view.offset + op.elem * op.len as u64;
        if needed > buffer.size() {
            return Err(Error::shape(
                context,
                op.name,
                format!(
                    "a buffer of at least {needed} bytes ({} {type_name} from byte offset {})",
                    op.len, op.view.offset
                ),
                format!("a buffer of {} bytes", buffer.size()),
            ));
        }
        let bind_offset = op.view.offset / align * align;
        // Storage bindings are whole 4-byte words: an f16 operand ending mid-word binds
        // the word's other half too (never touched) and needs it inside the buffer.
        let bind_size = (needed - bind_offset).next_multiple_of(4);
        if bind_offset + bind_size > buffer.size() {
            return Err(Error::shape(
                context,
                op.name,
                format!(
                    "a buffer of at least {} bytes ({} {type_name} from byte offset {}, \
                     rounded up to a whole 4-byte word, as storage bindings must be)",
                    bind_offset + bind_size,
                    op.len,
                    op.view.offset
                ),
                format!("a buffer of {} bytes", buffer.size()),
            ));
        }
        if bind_size > max_binding {
            return Err(Error::Limit {
                context: context.into(),
                what: format!("binding size of `{}` in bytes", op.name),
                value: bind_size,
                limit: max_binding,
            });
        }
        bound.push(BoundOperand {
            slot: op.slot,
            kind: op.kind,
            buffer,
            bind_offset,
            bind_size,
            base: ((op.view.offset - bind_offset) / op.elem) as u32,
        });
    }
    // wgpu forbids a buffer bound read-only and writable in one dispatch, and two
    // writable views that overlap would race.
    for (i, out) in operands.iter().enumerate() {
        if out.kind != BindingKind::ReadWrite || out.placeholder {
            continue;
        }
        for (j, other) in operands.iter().enumerate() {
            if i == j || other.placeholder || other.view.buffer != out.view.buffer {
                continue;
            }
            if other.kind == BindingKind::Read {
                return Err(Error::Binding {
                    context: context.into(),
                    operand: other.name.into(),
                    problem: format!(
                        "is the same buffer as output `{}`; a dispatch's inputs and outputs must be distinct buffers",
                        out.name
                    ),
                });
            }
            if j > i && ranges_overlap(out, other) {
                return Err(Error::Binding {
                    context: context.into(),
                    operand: other.name.into(),
                    problem: format!("overlaps output `{}` in the same buffer", out.name),
                });
            }
        }
    }
    Ok(bound)
}

#[cfg(test)]
/// Where a host struct's fields sit, recorded by `host_struct!`.
pub(crate) struct HostLayout {
    pub name: &'static str,
    pub size: usize,
    /// Name, byte offset and byte size of each field.
    pub fields: &'static [(&'static str, usize, usize)],
}

/// Declares a `#[repr(C)]` struct the host writes for a WGSL struct of the same name
/// (a uniform block or a table entry), recording in tests where each field sits so
/// that `kernels::layout`'s test can hold the two to each other.
macro_rules! host_struct {
    (
        $(#[$meta:meta])*
        struct $name:ident { $($(#[$field_meta:meta])* $field:ident: $ty:ty,)* }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
        pub(crate) struct $name {
            $($(#[$field_meta])* $field: $ty,)*
        }

        #[cfg(test)]
        impl $name {
            pub(crate) const LAYOUT: crate::kernels::binding::HostLayout =
                crate::kernels::binding::HostLayout {
                    name: stringify!($name),
                    size: size_of::<$name>(),
                    fields: &[$(
                        (stringify!($field), std::mem::offset_of!($name, $field), size_of::<$ty>()),
                    )*],
                };
        }
    };
}
pub(crate) use host_struct;
