//! What needs no GPU: the data layer and its parsers, the metrics, the WGSL sources
//! through naga, and the layering of `src/`.

#[path = "../common/mod.rs"]
mod common;

mod data;
mod fuzz_parsers;
mod metrics;
mod shaders;
mod source_layers;
