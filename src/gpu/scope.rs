//! Capturing wgpu errors as `Err` instead of letting them reach the panic handler.

use super::Gpu;
use crate::Result;

impl Gpu {
    /// Runs `f` inside validation, out-of-memory and internal error scopes and turns
    /// whatever they caught into [`Error::Gpu`] naming `during`.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn scoped<T>(&self, during: &str, f: impl FnOnce() -> T) -> Result<T> {
        self.check()?;
        let device = self.device();
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        // Scopes pop in reverse order of pushing.
        let caught = pollster::block_on(validation.pop())
            .into_iter()
            .chain(pollster::block_on(internal.pop()))
            .chain(pollster::block_on(oom.pop()))
            .next();
        match caught {
            Some(e) => {
                // A lost device fails every later call's validation; waiting lets its
                // lost callback run, so the error says the device is gone.
                let _ = device.poll(wgpu::PollType::wait_indefinitely());
                self.check()?;
                Err(crate::Error::Gpu {
                    during: during.to_string(),
                    message: e.to_string(),
                })
            }
            None => Ok(out),
        }
    }
}

impl Gpu {
    /// On the web an error scope resolves only once control returns to the browser's
    /// event loop, so nothing here can wait for one: `f` runs without scopes, and its
    /// errors reach the device's uncaptured-error handler, which [`Gpu::check`] (called
    /// by every entry point) reports at the next call.
    #[cfg(target_arch = "wasm32")]
    pub(crate) fn scoped<T>(&self, _during: &str, f: impl FnOnce() -> T) -> Result<T> {
        self.check()?;
        Ok(f())
    }
}
