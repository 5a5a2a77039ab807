//! Checking a kernel's operands against the caller's buffers and binding them.

use crate::gpu::{BindingKind, Gpu};
use crate::{Error, Result};

/// A place in a caller's buffer where an operand starts: `offset` in bytes, a multiple
/// of 4. The element count comes from the kernel's shape. Any 4-byte-aligned offset
/// works: the binding starts at the device's alignment below it and the shader adds
/// the rest.
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
    /// f32 elements the kernel touches from `view.offset` on.
    pub len: usize,
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
            kind,
            placeholder: false,
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
pub(crate) struct BoundOperand<'a> {
    pub slot: u32,
    pub buffer: &'a wgpu::Buffer,
    pub bind_offset: u64,
    pub bind_size: u64,
    /// Element index of the operand's first value within the binding.
    pub base: u32,
}

fn ranges_overlap(a: &Operand<'_>, b: &Operand<'_>) -> bool {
    let (a0, b0) = (a.view.offset, b.view.offset);
    let (a1, b1) = (a0 + 4 * a.len as u64, b0 + 4 * b.len as u64);
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
        if op.view.offset % 4 != 0 {
            return Err(binding_err(format!(
                "offset {} is not a multiple of 4 bytes",
                op.view.offset
            )));
        }
        let needed = op.view.offset + 4 * op.len as u64;
        if needed > buffer.size() {
            return Err(Error::shape(
                context,
                op.name,
                format!(
                    "a buffer of at least {needed} bytes ({} f32 from byte offset {})",
                    op.len, op.view.offset
                ),
                format!("a buffer of {} bytes", buffer.size()),
            ));
        }
        let bind_offset = op.view.offset / align * align;
        let bind_size = needed - bind_offset;
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
            buffer,
            bind_offset,
            bind_size,
            base: ((op.view.offset - bind_offset) / 4) as u32,
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
