// Storage, f32: each kernel family's source is compiled with one of the storage_*.wgsl
// files, which choose the type `Elem` its float tensors are stored as. Arithmetic is
// always f32; loads convert with f32(...) and stores with Elem(...), which are no-ops
// here.
//
// This file is appended AFTER the family's source (WGSL declarations may come in any
// order), so naga meets the types in the same order as in an all-f32 source and the
// f32 kernels compile to word-for-word the SPIR-V they had before f16 storage existed.
// storage_f16.wgsl cannot do the same: an `enable` directive must open the module.
alias Elem = f32;
