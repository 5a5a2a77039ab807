//! The kernels on a device opened without `SUBGROUP` (as on WebGPU in a browser, DX12
//! through FXC or older Vulkan drivers), where the grouped GEMM's register tiles share
//! their rows through workgroup memory: the awkward shapes of the other modules
//! against the reference and every tiling bitwise, dense and ragged, f32 and f16, and
//! the gate + mix (whose backward pass records grouped GEMMs) giving the same bits as
//! on the device with subgroups.

use crate::common::gate::{data, output_bits};
use crate::common::{gpu, gpu_without_subgroups};
use crate::{backend_api, gate_levels, gate_mix, gate_topk, grouped_gemm, ragged_gemm};
use mmoe_wgpu::kernels::gate_mix::Selection;
use mmoe_wgpu::kernels::grouped_gemm::{GroupedGemm, Tiling};

/// What the module tests: a device with the workgroup-memory tiles and without the
/// subgroup ones, which defaults to them.
#[test]
fn the_device_offers_workgroup_tiles_and_no_subgroup_tiles() {
    let gpu = gpu_without_subgroups();
    assert!(!gpu.capabilities().subgroups);
    let gemm = GroupedGemm::new(gpu);
    let tilings = gemm.tilings();
    assert!(
        tilings
            .iter()
            .any(|t| matches!(t, Tiling::Workgroup { .. }))
    );
    assert!(!tilings.iter().any(|t| matches!(t, Tiling::Subgroup { .. })));
    let census = mmoe_wgpu::StandardShape::CENSUS.expert_gemm();
    assert!(matches!(
        gemm.default_tiling(&census),
        Tiling::Workgroup { .. }
    ));
}

#[test]
fn grouped_gemm_every_tiling_matches_the_reference_and_each_other_bitwise() {
    grouped_gemm::every_tiling_matches_the_reference_and_each_other_bitwise_on(
        gpu_without_subgroups(),
    );
}

#[test]
fn grouped_gemm_backward_input_accumulates_into_dx() {
    grouped_gemm::backward_input_accumulates_into_dx_on(gpu_without_subgroups());
}

#[test]
fn grouped_gemm_weight_gradients_over_many_rows_are_whole_or_an_error() {
    grouped_gemm::weight_gradients_over_many_rows_are_whole_or_an_error_on(gpu_without_subgroups());
}

#[test]
fn grouped_gemm_in_f32_and_f16_matches_the_reference() {
    backend_api::grouped_gemm_forward_and_backward_match_the_reference_in_f32_and_f16_on(
        gpu_without_subgroups(),
    );
}

#[test]
fn f16_gemm_is_the_same_for_every_tiling() {
    backend_api::f16_gemm_is_the_same_for_every_tiling_on(gpu_without_subgroups());
}

#[test]
fn ragged_every_tiling_matches_the_reference_and_the_dense_kernels_bitwise() {
    ragged_gemm::every_tiling_matches_the_reference_and_the_dense_kernels_bitwise_on(
        gpu_without_subgroups(),
    );
}

#[test]
fn ragged_with_every_row_routed_equals_dense_bitwise() {
    ragged_gemm::with_every_row_routed_ragged_equals_dense_bitwise_on(gpu_without_subgroups());
}

#[test]
fn ragged_f16_rows_match_the_f16_dense_kernel() {
    ragged_gemm::f16_ragged_rows_match_the_f16_dense_kernel_on(gpu_without_subgroups());
}

#[test]
fn ragged_input_gradient_matches_the_reference_and_the_dense_kernel() {
    ragged_gemm::ragged_input_gradient_matches_the_reference_and_the_dense_kernel_on(
        gpu_without_subgroups(),
    );
}

#[test]
fn ragged_input_gradient_with_every_row_routed_is_the_dense_one() {
    ragged_gemm::with_every_row_routed_the_ragged_input_gradient_is_the_dense_one_on(
        gpu_without_subgroups(),
    );
}

#[test]
fn ragged_f16_input_gradient() {
    ragged_gemm::f16_ragged_input_gradient_on(gpu_without_subgroups());
}

#[test]
fn gate_mix_in_f32_and_f16_matches_the_reference() {
    backend_api::gate_mix_forward_and_backward_match_the_reference_in_f32_and_f16_on(
        gpu_without_subgroups(),
    );
}

#[test]
fn gate_mix_every_tiling_matches_the_reference_and_each_other_bitwise() {
    gate_mix::every_tiling_matches_the_reference_and_each_other_bitwise_on(gpu_without_subgroups());
}

#[test]
fn gate_topk_every_case_matches_the_reference_and_every_tiling_bitwise() {
    gate_topk::every_case_matches_the_reference_and_every_tiling_bitwise_on(gpu_without_subgroups());
}

#[test]
fn gate_levels_match_the_reference_and_every_tiling_bitwise() {
    gate_levels::level_gates_match_the_reference_and_every_tiling_bitwise_on(
        gpu_without_subgroups(),
    );
}

#[test]
fn gate_topk_shared_selection_matches_the_reference_and_every_tiling_bitwise() {
    gate_topk::a_shared_selection_matches_the_reference_and_every_tiling_bitwise_on(
        gpu_without_subgroups(),
    );
}

/// The gate + mix forward and backward (its dWg, dbg and dX are grouped GEMMs, tuned
/// per device) give the same bits on both devices: dense, top-k and shared top-k.
#[test]
fn the_gate_gives_the_same_bits_with_and_without_subgroups() {
    let (with, without) = (gpu(), gpu_without_subgroups());
    for (n, shape) in gate_mix::cases().into_iter().enumerate() {
        let accumulate = n % 2 == 1;
        let d = data(&shape, n as u64, 1.0);
        assert_eq!(
            output_bits(&gate_mix::run_gpu(with, shape, &d, None, accumulate)),
            output_bits(&gate_mix::run_gpu(without, shape, &d, None, accumulate)),
            "dense gate {shape:?}"
        );
    }
    for (n, (shape, k)) in gate_topk::cases().into_iter().enumerate() {
        let accumulate = n % 2 == 0;
        let d = gate_topk::data_away_from_ties(&shape, k, n as u64, 1.0, gate_topk::MARGIN);
        assert_eq!(
            output_bits(&gate_topk::run_gpu(with, shape, k, &d, None, accumulate)),
            output_bits(&gate_topk::run_gpu(without, shape, k, &d, None, accumulate)),
            "top-{k} gate {shape:?}"
        );
        if shape.gates > 1 {
            let pick = (shape, k, Selection::Shared);
            assert_eq!(
                output_bits(&gate_topk::run_gpu_selecting(
                    with, pick, &d, None, accumulate
                )),
                output_bits(&gate_topk::run_gpu_selecting(
                    without, pick, &d, None, accumulate
                )),
                "shared top-{k} gate {shape:?}"
            );
        }
    }
    with.check().unwrap();
    without.check().unwrap();
}
