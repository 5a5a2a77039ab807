//! What needs no GPU: the data layer and its parsers, categorical encoders, the metrics, the WGSL sources
//! through naga, and the layering of `src/`.

#[path = "../common/mod.rs"]
mod common;

mod categorical;
mod data;
mod fuzz_parsers;
mod metrics;
mod shaders;
mod source_layers;
