//! Storage buffers: creation within the device's limits, upload and readback.

use super::Gpu;
use crate::{Error, Result};

/// Usage of every buffer the crate allocates: bound as storage, filled by queue
/// writes or copies, read back by copies.
pub const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

impl Gpu {
    /// A zero-filled storage buffer of `bytes` bytes (rounded up to 4), with
    /// [`STORAGE_USAGE`]. Sizes over the device's `max_buffer_size` are an error.
    pub fn storage_buffer(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        let size = bytes.max(4).next_multiple_of(4);
        let limit = self.limits().max_buffer_size;
        if size > limit {
            return Err(Error::Limit {
                context: format!("allocating `{label}`"),
                what: "buffer size in bytes".into(),
                value: size,
                limit,
            });
        }
        self.scoped(&format!("allocating `{label}` ({size} bytes)"), || {
            self.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: STORAGE_USAGE,
                mapped_at_creation: false,
            })
        })
    }

    /// A storage buffer holding `data` (f32, [`half::f16`], ...), its size rounded up
    /// to whole 4-byte words.
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> Result<wgpu::Buffer> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buffer = self.storage_buffer(label, bytes.len() as u64)?;
        // Queue writes are whole words; the buffer has the room, and it is ours.
        let mut words = bytes.to_vec();
        words.resize(bytes.len().next_multiple_of(4), 0);
        self.write(&buffer, 0, &words)?;
        Ok(buffer)
    }

    /// Writes `data` into `buffer` at byte `offset` (queued before the next submit).
    pub fn write<T: bytemuck::Pod>(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        data: &[T],
    ) -> Result<()> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let end = offset + bytes.len() as u64;
        if end > buffer.size() || !offset.is_multiple_of(4) || !bytes.len().is_multiple_of(4) {
            return Err(Error::Binding {
                context: "Gpu::write".into(),
                operand: buffer_label(buffer),
                problem: format!(
                    "of {} bytes cannot take {} bytes at offset {offset} (must fit and be 4-byte aligned)",
                    buffer.size(),
                    bytes.len()
                ),
            });
        }
        if bytes.is_empty() {
            return Ok(());
        }
        self.scoped("writing a buffer", || {
            self.queue().write_buffer(buffer, offset, bytes)
        })
    }

    /// Reads `len` elements of `T` from `buffer` at byte `offset`, waiting for all
    /// submitted work first. Copies move whole 4-byte words, so a range that starts or
    /// ends mid-word (f16 data) needs the rest of its words inside the buffer. Native
    /// only: on the web it is [`Error::Blocking`]; use [`Gpu::read_async`].
    pub fn read<T: bytemuck::Pod>(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        len: usize,
    ) -> Result<Vec<T>> {
        #[cfg(target_arch = "wasm32")]
        return self
            .read_range::<T>(buffer, offset, len)
            .and(Err(Error::blocking("Gpu::read", "await Gpu::read_async")));
        #[cfg(not(target_arch = "wasm32"))]
        pollster::block_on(self.read_async(buffer, offset, len))
    }

    /// [`read`](Self::read) without blocking the thread: the data once all work
    /// submitted before the call is done. On the web, the way to read results back.
    pub async fn read_async<T: bytemuck::Pod>(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        len: usize,
    ) -> Result<Vec<T>> {
        let (start, end, bytes) = self.read_range::<T>(buffer, offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let staging = self.scoped("creating a readback buffer", || {
            let staging = self.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("mmoe-wgpu readback"),
                size: end - start,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut encoder = self
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
            encoder.copy_buffer_to_buffer(buffer, start, &staging, 0, end - start);
            self.queue().submit([encoder.finish()]);
            staging
        })?;
        let (sender, receiver) = super::signal::channel();
        // In a scope: on a lost device mapping fails validation, which must come
        // back as an error, not reach a (possibly panicking) uncaptured-error handler.
        self.scoped("mapping a readback buffer", || {
            staging.map_async(wgpu::MapMode::Read, .., move |r| sender.send(r))
        })?;
        // Natively the callback runs once the device is polled; in a browser, once
        // the copy is done and the event loop gets to it.
        self.wait_async().await?;
        let mapped = receiver.await.ok_or_else(|| Error::Gpu {
            during: "reading a buffer back".into(),
            message: "the map callback never ran".into(),
        })?;
        mapped.map_err(|e| Error::Gpu {
            during: "mapping a readback buffer".into(),
            message: e.to_string(),
        })?;
        let out = {
            let view = staging.get_mapped_range(..).map_err(|e| Error::Gpu {
                during: "reading a mapped buffer".into(),
                message: e.to_string(),
            })?;
            let first = (offset - start) as usize;
            bytemuck::pod_collect_to_vec(&view[first..first + bytes as usize])
        };
        staging.unmap();
        Ok(out)
    }

    /// The whole 4-byte words `start..end` a read of `len` elements at `offset` copies,
    /// and its size in bytes, once the read is checked against the buffer.
    fn read_range<T>(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        len: usize,
    ) -> Result<(u64, u64, u64)> {
        let bytes = (len * std::mem::size_of::<T>()) as u64;
        let start = offset / 4 * 4;
        let end = (offset + bytes).next_multiple_of(4);
        if end > buffer.size() {
            return Err(Error::Binding {
                context: "Gpu::read".into(),
                operand: buffer_label(buffer),
                problem: format!(
                    "of {} bytes cannot give {bytes} bytes at offset {offset} (read as the \
                     4-byte words {start}..{end})",
                    buffer.size()
                ),
            });
        }
        if len > 0 && !buffer.usage().contains(wgpu::BufferUsages::COPY_SRC) {
            return Err(Error::Binding {
                context: "Gpu::read".into(),
                operand: buffer_label(buffer),
                problem: "lacks COPY_SRC usage, so it cannot be read back".into(),
            });
        }
        Ok((start, end, bytes))
    }
}

fn buffer_label(buffer: &wgpu::Buffer) -> String {
    format!("buffer of {} bytes", buffer.size())
}
