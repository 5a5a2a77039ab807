//! Per-device cache of kernel bind groups, keyed by the exact binding set: the layout,
//! the kernel's uniform parameters, each operand's buffer, offset and size, and the
//! contents of any small table the kernel uploads. Rebuilding a [`Dispatch`] over the
//! same buffers (an application calling `encode_*` every frame) then costs the operand
//! checks and a hash lookup, not a uniform upload and a bind group creation.
//!
//! A cached bind group holds its buffers, so the cache is bounded: past
//! [`BIND_GROUP_CACHE_CAPACITY`] entries the least recently used is dropped, and
//! [`Gpu::clear_bind_group_cache`] drops them all.
//!
//! [`Dispatch`]: crate::kernels::Dispatch

use std::collections::HashMap;
use std::sync::Mutex;

use super::Gpu;
use crate::Result;

/// Most bind groups a device keeps cached (see [`Gpu::clear_bind_group_cache`]).
pub const BIND_GROUP_CACHE_CAPACITY: usize = 256;

/// Everything a kernel's bind group is made of.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct BindKey {
    pub layout: wgpu::BindGroupLayout,
    /// The bytes of the kernel's parameter uniform (shape, flags, operand bases).
    pub params: Vec<u8>,
    /// `(slot, buffer, offset, size)` of each operand binding.
    pub operands: Vec<(u32, wgpu::Buffer, u64, u64)>,
    /// `(slot, contents)` of each read-only table the kernel uploads.
    pub tables: Vec<(u32, Vec<u8>)>,
}

/// A bind group and the buffers the kernel made for it (uniform, tables).
#[derive(Clone)]
pub(crate) struct CachedBindGroup {
    pub bind_group: wgpu::BindGroup,
    pub owned: Vec<wgpu::Buffer>,
}

#[derive(Default)]
struct Entries {
    map: HashMap<BindKey, (CachedBindGroup, u64)>,
    clock: u64,
}

#[derive(Default)]
pub(crate) struct BindGroupCache {
    entries: Mutex<Entries>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Gpu {
    /// The cached bind group for `key`, or the one `make` builds, then cached.
    pub(crate) fn cached_bind_group(
        &self,
        key: BindKey,
        make: impl FnOnce() -> Result<CachedBindGroup>,
    ) -> Result<CachedBindGroup> {
        let cache = &self.inner.bind_groups.entries;
        {
            let mut entries = lock(cache);
            entries.clock += 1;
            let now = entries.clock;
            if let Some((hit, used)) = entries.map.get_mut(&key) {
                *used = now;
                return Ok(hit.clone());
            }
        }
        // Built outside the lock: creation waits on the device's error scopes.
        let made = make()?;
        let mut entries = lock(cache);
        if entries.map.len() >= BIND_GROUP_CACHE_CAPACITY {
            let oldest = entries
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                entries.map.remove(&oldest);
            }
        }
        let now = entries.clock;
        entries.map.insert(key, (made.clone(), now));
        Ok(made)
    }

    /// Drops every cached kernel bind group, and with them the cache's hold on the
    /// buffers they bind; dispatches already built keep working. Call it after
    /// dropping large buffers that kernels were bound to, to free their memory now
    /// rather than when newer bind groups push them out of the cache, and after
    /// [`wgpu::Buffer::destroy`], so that no later dispatch is handed a bind group over
    /// a destroyed buffer.
    pub fn clear_bind_group_cache(&self) {
        lock(&self.inner.bind_groups.entries).map.clear();
    }

    /// Drops the cached bind groups that bind any of `buffers`, so that dropping those
    /// buffers frees their memory. Owners of buffers that come and go (the trainer's
    /// executor, the autotuner's stand-in operands) call it when they let go.
    pub fn forget_bind_groups_of(&self, buffers: &[&wgpu::Buffer]) {
        lock(&self.inner.bind_groups.entries)
            .map
            .retain(|key, _| !key.operands.iter().any(|(_, b, _, _)| buffers.contains(&b)));
    }

    /// Number of kernel bind groups cached on this device.
    pub fn cached_bind_groups(&self) -> usize {
        lock(&self.inner.bind_groups.entries).map.len()
    }
}
