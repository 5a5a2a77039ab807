//! Tables larger than one storage binding: a table as row chunks, each its own
//! binding, and buffers of the crate's own that hold one.

use std::ops::Range;

use crate::gpu::Gpu;
use crate::kernels::BufferView;
use crate::{Error, Result};

/// A table `[vocab, dim]` of f32 (or a state or gradient table of its shape) as row
/// chunks, each its own binding: chunk `i` holds rows
/// `i·chunk_rows .. min(vocab, (i + 1)·chunk_rows)`, row-major from the start of its
/// view. A table in one binding is one chunk with `chunk_rows ≥ vocab`.
///
/// Devices bound a binding by `max_storage_buffer_binding_size` (128 MiB by default)
/// and a buffer by `max_buffer_size`; [`max_chunk_rows`] is the largest chunk both
/// allow. The kernels give bitwise the same results however a table is split.
#[derive(Clone, Copy, Debug)]
pub struct EmbeddingTable<'a> {
    /// The chunks, in row order.
    pub chunks: &'a [BufferView<'a>],
    /// Rows per chunk (the last may hold fewer).
    pub chunk_rows: usize,
}

impl<'a> EmbeddingTable<'a> {
    /// The table made of `chunks` of `chunk_rows` rows each.
    pub fn new(chunks: &'a [BufferView<'a>], chunk_rows: usize) -> Self {
        EmbeddingTable { chunks, chunk_rows }
    }

    /// Checks the table has the `⌈vocab / chunk_rows⌉` chunks `vocab` rows need;
    /// `name` names it in the error.
    pub(super) fn check(&self, ctx: &str, name: &str, vocab: usize) -> Result<()> {
        if self.chunk_rows == 0 {
            return Err(Error::shape(ctx, name, "at least 1 row per chunk", "0"));
        }
        let need = vocab.div_ceil(self.chunk_rows);
        if self.chunks.len() != need {
            return Err(Error::shape(
                ctx,
                name,
                format!("{need} chunks of {} rows ({vocab} rows)", self.chunk_rows),
                format!("{} chunks", self.chunks.len()),
            ));
        }
        Ok(())
    }

    /// Checks `other` (named `name`) is split as this table is.
    pub(super) fn check_same_split(
        &self,
        ctx: &str,
        name: &str,
        other: &EmbeddingTable<'_>,
    ) -> Result<()> {
        if (other.chunk_rows, other.chunks.len()) != (self.chunk_rows, self.chunks.len()) {
            return Err(Error::shape(
                ctx,
                name,
                format!(
                    "the table's split: {} chunks of {} rows",
                    self.chunks.len(),
                    self.chunk_rows
                ),
                format!("{} chunks of {} rows", other.chunks.len(), other.chunk_rows),
            ));
        }
        Ok(())
    }

    /// The table rows chunk `i` holds, of a table of `vocab` rows.
    pub(super) fn rows(&self, i: usize, vocab: usize) -> Range<usize> {
        let start = i * self.chunk_rows;
        start..vocab.min(start + self.chunk_rows)
    }
}

/// The most rows of `dim` f32 one chunk may hold on `gpu`, placed at the start of a
/// buffer (or at a multiple of `min_storage_buffer_offset_alignment`): what fits both
/// `max_storage_buffer_binding_size` and `max_buffer_size`. An [`Error::Limit`] when
/// not even one row fits, the one case in which the device cannot hold the table.
pub fn max_chunk_rows(gpu: &Gpu, dim: usize) -> Result<usize> {
    let limits = gpu.limits();
    let bytes = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size);
    let row = 4 * dim.max(1) as u64;
    // Elements of a chunk are indexed with 32-bit integers, top bit kept free.
    let rows = (bytes / row).min(u32::MAX as u64 / 2 / dim.max(1) as u64);
    if rows == 0 {
        return Err(Error::Limit {
            context: "embedding table".into(),
            what: format!(
                "bytes of one table row of {dim} f32 (a chunk must fit \
                 max_storage_buffer_binding_size and max_buffer_size)"
            ),
            value: row,
            limit: bytes,
        });
    }
    Ok(rows as usize)
}

/// A table `[vocab, dim]` in buffers of the crate's own, one per chunk: made zeroed,
/// written and read back as one row-major table.
#[derive(Clone, Debug)]
pub struct EmbeddingTableBuffers {
    vocab: usize,
    dim: usize,
    chunk_rows: usize,
    buffers: Vec<wgpu::Buffer>,
}

impl EmbeddingTableBuffers {
    /// A zeroed table in as few chunks as `gpu` allows ([`max_chunk_rows`]).
    pub fn new(gpu: &Gpu, label: &str, vocab: usize, dim: usize) -> Result<Self> {
        let rows = max_chunk_rows(gpu, dim)?;
        Self::with_chunk_rows(gpu, label, vocab, dim, rows)
    }

    /// A zeroed table in chunks of `chunk_rows` rows: at least 1 and at most
    /// [`max_chunk_rows`] (an [`Error::Limit`] above).
    pub fn with_chunk_rows(
        gpu: &Gpu,
        label: &str,
        vocab: usize,
        dim: usize,
        chunk_rows: usize,
    ) -> Result<Self> {
        let ctx = format!("embedding table `{label}`");
        if vocab == 0 || dim == 0 || chunk_rows == 0 {
            let what = format!("{vocab} rows of {dim} in chunks of {chunk_rows}");
            return Err(Error::shape(
                ctx,
                "vocab, dim, chunk_rows",
                "all non-zero",
                what,
            ));
        }
        let max = max_chunk_rows(gpu, dim)?;
        if chunk_rows > max {
            return Err(Error::Limit {
                context: ctx,
                what: format!("rows of {dim} f32 per chunk"),
                value: chunk_rows as u64,
                limit: max as u64,
            });
        }
        let mut table = EmbeddingTableBuffers {
            vocab,
            dim,
            chunk_rows: chunk_rows.min(vocab),
            buffers: Vec::new(),
        };
        for i in 0..vocab.div_ceil(table.chunk_rows) {
            let rows = table.table_rows(i).len();
            let name = format!("{label} chunk {i}");
            table
                .buffers
                .push(gpu.storage_buffer(&name, (4 * rows * dim) as u64)?);
        }
        Ok(table)
    }

    fn table_rows(&self, i: usize) -> Range<usize> {
        let start = i * self.chunk_rows;
        start..self.vocab.min(start + self.chunk_rows)
    }

    /// Rows per chunk.
    pub fn chunk_rows(&self) -> usize {
        self.chunk_rows
    }

    /// The chunks' buffers, in row order.
    pub fn buffers(&self) -> &[wgpu::Buffer] {
        &self.buffers
    }

    /// A view of each chunk, for [`EmbeddingTable::new`].
    pub fn views(&self) -> Vec<BufferView<'_>> {
        self.buffers.iter().map(BufferView::new).collect()
    }

    /// Writes the whole table, `data: [vocab, dim]` row-major (queued before the
    /// next submit).
    pub fn write(&self, gpu: &Gpu, data: &[f32]) -> Result<()> {
        if data.len() != self.vocab * self.dim {
            return Err(Error::shape(
                "EmbeddingTableBuffers::write",
                "data",
                format!(
                    "{} values ({} rows of {})",
                    self.vocab * self.dim,
                    self.vocab,
                    self.dim
                ),
                format!("{} values", data.len()),
            ));
        }
        for (i, buffer) in self.buffers.iter().enumerate() {
            let rows = self.table_rows(i);
            gpu.write(buffer, 0, &data[rows.start * self.dim..rows.end * self.dim])?;
        }
        Ok(())
    }

    /// Sets every element to `value`: Adagrad's initial accumulator, for one.
    pub fn fill(&self, gpu: &Gpu, value: f32) -> Result<()> {
        for (i, buffer) in self.buffers.iter().enumerate() {
            let values = vec![value; self.table_rows(i).len() * self.dim];
            gpu.write(buffer, 0, &values)?;
        }
        Ok(())
    }

    /// Reads the whole table back, `[vocab, dim]` row-major, after all submitted work.
    pub fn read(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.vocab * self.dim);
        for (i, buffer) in self.buffers.iter().enumerate() {
            out.extend(gpu.read::<f32>(buffer, 0, self.table_rows(i).len() * self.dim)?);
        }
        Ok(out)
    }
}
