//! The host's uniform blocks and tables held to the WGSL structs they fill: same
//! size, and every named field at the same offset with the same size (padding may
//! be named differently). Every `var<uniform>` of every program needs a host struct.

use std::collections::BTreeMap;

use naga::proc::Layouter;

use super::binding::HostLayout;

/// The same of a WGSL struct, from naga's reflection.
#[derive(Debug, PartialEq)]
struct ShaderLayout {
    size: usize,
    fields: Vec<(String, usize, usize)>,
}

fn host_layouts() -> [HostLayout; 14] {
    use super::{
        balance, ceiling_probe, embedding, gate_mix, grouped_gemm, kmeans, loss, noise, optimizer,
        routing,
    };
    [
        grouped_gemm::GemmParams::LAYOUT,
        grouped_gemm::ReduceParams::LAYOUT,
        gate_mix::GateMixParams::LAYOUT,
        balance::BalanceParams::LAYOUT,
        ceiling_probe::ProbeParams::LAYOUT,
        noise::NoiseParams::LAYOUT,
        routing::RoutingParams::LAYOUT,
        loss::LossParams::LAYOUT,
        loss::TaskEntry::LAYOUT,
        optimizer::OptParams::LAYOUT,
        optimizer::StepParams::LAYOUT,
        embedding::EmbeddingParams::LAYOUT,
        embedding::SparseStepParams::LAYOUT,
        kmeans::KMeansParams::LAYOUT,
    ]
}

/// Every named struct of every program, by name (one entry per distinct layout, so
/// two programs that disagree on a struct show up as two), and the names of the
/// structs the programs bind as uniforms.
fn shader_layouts() -> (BTreeMap<String, Vec<ShaderLayout>>, Vec<String>) {
    let mut structs: BTreeMap<String, Vec<ShaderLayout>> = BTreeMap::new();
    let mut uniforms = Vec::new();
    for program in super::programs() {
        let text = program.text();
        let module = naga::front::wgsl::parse_str(&text)
            .unwrap_or_else(|e| panic!("{}: {}", program.name, e.emit_to_string(&text)));
        let mut layouter = Layouter::default();
        layouter.update(module.to_ctx()).expect("layouts");
        for (_, ty) in module.types.iter() {
            let (Some(name), naga::TypeInner::Struct { members, span }) = (&ty.name, &ty.inner)
            else {
                continue;
            };
            let layout = ShaderLayout {
                size: *span as usize,
                fields: members
                    .iter()
                    .map(|m| {
                        let name = m.name.clone().unwrap_or_default();
                        (name, m.offset as usize, layouter[m.ty].size as usize)
                    })
                    .collect(),
            };
            let known = structs.entry(name.clone()).or_default();
            if !known.contains(&layout) {
                known.push(layout);
            }
        }
        for (_, global) in module.global_variables.iter() {
            if global.space == naga::AddressSpace::Uniform
                && let Some(name) = &module.types[global.ty].name
            {
                uniforms.push(name.clone());
            }
        }
    }
    (structs, uniforms)
}

/// Padding carries no value, so only its room is checked (through the size).
fn is_padding(name: &str) -> bool {
    name.starts_with('_')
}

#[test]
fn every_host_struct_matches_its_wgsl_struct() {
    let (structs, uniforms) = shader_layouts();
    let hosts = host_layouts();
    for uniform in &uniforms {
        assert!(
            hosts.iter().any(|h| h.name == uniform),
            "`{uniform}` is a uniform of a shader with no host struct (declare it with host_struct!)"
        );
    }
    for host in &hosts {
        let shaders = structs
            .get(host.name)
            .unwrap_or_else(|| panic!("no WGSL struct `{}`", host.name));
        for shader in shaders {
            assert_eq!(host.size, shader.size, "`{}`: size", host.name);
            let named = |fields: Vec<(String, usize, usize)>| -> Vec<(String, usize, usize)> {
                fields
                    .into_iter()
                    .filter(|(n, ..)| !is_padding(n))
                    .collect()
            };
            let host_fields = named(
                host.fields
                    .iter()
                    .map(|&(n, offset, size)| (n.to_string(), offset, size))
                    .collect(),
            );
            assert_eq!(
                host_fields,
                named(shader.fields.clone()),
                "`{}`: fields (name, offset, size), host then WGSL",
                host.name
            );
        }
    }
}
