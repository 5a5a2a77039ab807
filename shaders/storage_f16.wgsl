// Storage, f16 (see storage_f32.wgsl): tensors are stored as f16, halving memory and
// bandwidth; every sum and product still runs in f32 and each stored result is
// rounded to f16 once. Prepended to the family's source, as `enable` must open the
// module. Needs the adapter feature SHADER_F16; the host checks before building.
enable f16;

alias Elem = f16;
