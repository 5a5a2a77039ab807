//! The examples run end to end as the binaries `cargo test` builds next to this one
//! (`target/<profile>/examples/<name>`).

#[path = "../common/mod.rs"]
mod common;

mod census_example;
mod funnel_example;
mod predict_example;
mod synthetic_example;
mod synthetic_expert_init;
