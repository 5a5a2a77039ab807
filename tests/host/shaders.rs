//! Every WGSL program parsed and validated by naga, then translated to SPIR-V, MSL and
//! HLSL for every entry point and several override settings, so a shader that would
//! break on Metal or DX12 fails here, on any machine. Needs no GPU.

use std::collections::BTreeSet;

use mmoe_wgpu::gpu::ShaderProgram;
use naga::back::{hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn capabilities(program: &ShaderProgram) -> Capabilities {
    let mut caps = Capabilities::empty();
    if program.needs_subgroups {
        caps |= Capabilities::SUBGROUP | Capabilities::SUBGROUP_BARRIER;
    }
    if program.needs_f16 {
        caps |= Capabilities::SHADER_FLOAT16;
    }
    caps
}

/// Override settings each entry point is translated with: the defaults, and the
/// largest tiles the host may ask for (in ragged mode, where a kernel has one).
fn override_sets(module: &naga::Module) -> Vec<naga::back::PipelineConstants> {
    let names: BTreeSet<String> = module
        .overrides
        .iter()
        .filter_map(|(_, o)| o.name.clone())
        .collect();
    let mut large = naga::back::PipelineConstants::default();
    for (name, value) in [
        ("RB", 8.0),
        ("CN", 2.0),
        ("CB", 4.0),
        ("WG", 64.0),
        ("WG_ROWS", 4.0),
        ("RAGGED", 1.0),
        ("KT", 64.0),
    ] {
        if names.contains(name) {
            large.insert(name.to_string(), value);
        }
    }
    vec![naga::back::PipelineConstants::default(), large]
}

fn check_program(program: &ShaderProgram) {
    let text = program.text();
    let module = naga::front::wgsl::parse_str(&text)
        .unwrap_or_else(|e| panic!("{}: {}", program.name, e.emit_to_string(&text)));
    let info = Validator::new(ValidationFlags::all(), capabilities(program))
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}: {}", program.name, e.emit_to_string(&text)));
    assert!(
        !module.entry_points.is_empty(),
        "{} has no entry point",
        program.name
    );
    for ep in &module.entry_points {
        for constants in override_sets(&module) {
            let what = format!("{}::{} {constants:?}", program.name, ep.name);
            let (module, info) = naga::back::pipeline_constants::process_overrides(
                &module,
                &info,
                Some((ep.stage, &ep.name)),
                &constants,
            )
            .unwrap_or_else(|e| panic!("{what}: overrides: {e}"));

            let spv_options = spv::Options::default();
            let spv_pipeline = spv::PipelineOptions {
                shader_stage: ep.stage,
                entry_point: ep.name.clone(),
            };
            let words = spv::write_vec(&module, &info, &spv_options, Some(&spv_pipeline))
                .unwrap_or_else(|e| panic!("{what}: SPIR-V: {e}"));
            assert!(words.len() > 5, "{what}: empty SPIR-V");

            let msl_options = msl::Options {
                lang_version: (2, 4),
                ..Default::default()
            };
            let msl_pipeline = msl::PipelineOptions {
                entry_point: Some((ep.stage, ep.name.clone())),
                ..Default::default()
            };
            let (msl_text, _) = msl::write_string(&module, &info, &msl_options, &msl_pipeline)
                .unwrap_or_else(|e| panic!("{what}: MSL: {e}"));
            assert!(msl_text.contains("kernel"), "{what}: MSL has no kernel");

            let hlsl_options = hlsl::Options {
                // 16-bit types need shader model 6.2 on DX12.
                shader_model: if program.needs_f16 {
                    hlsl::ShaderModel::V6_2
                } else {
                    hlsl::ShaderModel::V6_0
                },
                ..Default::default()
            };
            let hlsl_pipeline = hlsl::PipelineOptions {
                entry_point: Some((ep.stage, ep.name.clone())),
            };
            let mut hlsl_text = String::new();
            hlsl::Writer::new(&mut hlsl_text, &hlsl_options, &hlsl_pipeline)
                .write(&module, &info, None)
                .unwrap_or_else(|e| panic!("{what}: HLSL: {e}"));
            assert!(
                hlsl_text.contains("numthreads"),
                "{what}: HLSL has no numthreads"
            );
        }
    }
}

#[test]
fn every_program_validates_and_translates_to_spirv_msl_and_hlsl() {
    let programs = mmoe_wgpu::kernels::programs();
    assert!(!programs.is_empty());
    for program in &programs {
        check_program(program);
    }
}

#[test]
fn every_file_in_shaders_belongs_to_a_program() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let used: BTreeSet<&str> = mmoe_wgpu::kernels::programs()
        .iter()
        .flat_map(|p| p.parts.iter().map(|(file, _)| *file))
        .collect();
    for entry in std::fs::read_dir(dir).expect("shaders/ is readable") {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".wgsl") {
            assert!(
                used.contains(name.as_str()),
                "shaders/{name} is not part of any program, so nothing checks it"
            );
        }
    }
}

#[test]
fn the_base_programs_need_no_optional_capability() {
    for program in mmoe_wgpu::kernels::programs()
        .iter()
        .filter(|p| !p.needs_subgroups && !p.needs_f16)
    {
        let module = naga::front::wgsl::parse_str(&program.text()).unwrap();
        Validator::new(ValidationFlags::all(), Capabilities::empty())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{} needs a capability: {e:?}", program.name));
    }
}
