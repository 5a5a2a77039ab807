//! Which device each process opens: by default the processes on one machine take
//! its adapters in turn (local rank modulo the adapters), so `mpirun -np 4` on a
//! machine with 4 GPUs gives each process its own.

use mpi::topology::SimpleCommunicator;
use mpi::traits::Communicator;

use crate::{Error, Gpu, GpuOptions, Result};

/// Environment variable overriding the adapter of each local rank: one adapter
/// position for every process, or a comma-separated list indexed by local rank
/// (`0,0,1,1`: two processes per GPU). Positions count the adapters
/// [`wgpu::Instance::enumerate_adapters`] lists on the chosen backends whose name
/// contains `WGPU_ADAPTER_NAME` (all of them without it).
pub const RANK_ADAPTER_ENV: &str = "MMOE_WGPU_RANK_ADAPTER";

/// This process's rank among the processes of `world` on the same machine (those
/// that can share memory).
pub fn local_rank(world: &SimpleCommunicator) -> usize {
    world.split_shared(world.rank()).rank() as usize
}

/// Opens the device of this process: the adapter at position [`RANK_ADAPTER_ENV`]
/// gives for its local rank, or else local rank modulo the adapters present, among
/// those `options` allow (backends, name). Returns the device and the adapter's
/// position.
pub fn open_rank_device(world: &SimpleCommunicator, options: &GpuOptions) -> Result<(Gpu, usize)> {
    let local = local_rank(world);
    let backends = options.backends.unwrap_or(wgpu::Backends::PRIMARY);
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    let instance = wgpu::Instance::new(desc);
    let needle = options.adapter_name.as_ref().map(|n| n.to_lowercase());
    let adapters: Vec<wgpu::Adapter> = pollster::block_on(instance.enumerate_adapters(backends))
        .into_iter()
        .filter(|a| {
            needle
                .as_ref()
                .is_none_or(|n| a.get_info().name.to_lowercase().contains(n))
        })
        .collect();
    if adapters.is_empty() {
        return Err(Error::NoAdapter {
            detail: format!(
                " for local rank {local} (backends {backends:?}, name filter {:?})",
                options.adapter_name
            ),
        });
    }
    let index = match std::env::var(RANK_ADAPTER_ENV) {
        Ok(list) if !list.trim().is_empty() => adapter_from_list(&list, local)?,
        _ => local % adapters.len(),
    };
    let count = adapters.len();
    let adapter = adapters.into_iter().nth(index).ok_or_else(|| {
        Error::invalid(
            RANK_ADAPTER_ENV,
            format!(
                "adapter {index} for local rank {local}, but only {count} adapters are present"
            ),
        )
    })?;
    Ok((Gpu::with_adapter(adapter, options)?, index))
}

/// The adapter position `list` gives local rank `local`.
fn adapter_from_list(list: &str, local: usize) -> Result<usize> {
    let positions = list
        .split(',')
        .map(|p| p.trim().parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid(RANK_ADAPTER_ENV, format!("`{list}`: {e}")))?;
    match positions.as_slice() {
        [one] => Ok(*one),
        many => many.get(local).copied().ok_or_else(|| {
            Error::invalid(
                RANK_ADAPTER_ENV,
                format!(
                    "`{list}` names {} local ranks; this is local rank {local}",
                    many.len()
                ),
            )
        }),
    }
}
