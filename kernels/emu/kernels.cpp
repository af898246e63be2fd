// The kernels, compiled for the host against the emulation runtime.
#include "../all.cu"
// Test-only kernels that the emulator's checks must catch (host build only).
#include "broken.cu"

// Referenced by the runtime so that the linker keeps this object (and with it the
// kernels' registrars) when it is pulled from the static library.
extern "C" int ds_emu_kernels_anchor() { return 1; }

// ---- The contract, as the C compiler lays it out, for the host side to check ----

// Every field of every parameter block: src/backend/gpu/params.rs asserts that each
// #[repr(C)] mirror has the same fields at the same offsets (sizes alone would let two
// swapped fields of one size through). The host also checks that the listed fields
// tile each struct, so a field left out of this list is caught too.
struct DsField {
    const char* strukt;
    const char* field;
    size_t offset, size, align;
};
#define DS_FIELD_(S, f) DsField{#S, #f, offsetof(S, f), sizeof(S::f), alignof(decltype(S::f))}
#define DS_FIELD(S, f) DS_FIELD_(S, f)  // expands S (defined per struct below) first
#define F(f) DS_FIELD(S, f)
static const DsField kFields[] = {
#define S ConvParams
    F(xa), F(xb), F(w), F(bias), F(temb), F(residual), F(out), F(n), F(na), F(nb), F(ca), F(cb), F(h), F(w_),
    F(cout), F(ho), F(wo), F(k), F(stride), F(pad_t), F(pad_l), F(upsample), F(temb_n), F(res_n), F(tap),
#undef S
#define S GroupNormParams
    F(xa), F(xb), F(gamma), F(beta), F(film), F(out), F(partial), F(n), F(na), F(nb), F(ca), F(cb), F(hw),
    F(groups), F(silu), F(nf), F(eps), F(splits),
#undef S
#define S ResampleParams
    F(x), F(out), F(n), F(xn), F(c), F(h), F(w), F(ho), F(wo), F(up),
#undef S
#define S LinearParams
    F(x), F(w), F(bias), F(out), F(n), F(xn), F(in_f), F(out_f), F(silu),
#undef S
#define S TembParams
    F(out), F(n), F(dim), F(flip), F(shift), F(t),
#undef S
#define S AttentionParams
    F(qkv), F(out), F(n), F(c), F(heads), F(p), F(scale),
#undef S
#define S HspaceParams
    F(h), F(hc), F(mask), F(out), F(n), F(hn), F(hcn), F(c), F(hw), F(gamma),
#undef S
#define S StepParams
    F(x), F(eps_x0), F(eps_dir), F(out), F(seed), F(n), F(len), F(xn), F(e0n), F(edn), F(stream), F(a_i), F(a_j),
    F(c_dir), F(c_noise),
#undef S
#define S CalibrateParams
    F(x), F(eps), F(eps_mod), F(out), F(n), F(len), F(a), F(omega),
#undef S
#define S CopyParams
    F(src), F(dst), F(n), F(len), F(src_n),
#undef S
#define S PhiloxTestParams
    F(out), F(c), F(k),
#undef S
#define S BrokenParams
    F(out), F(src), F(fixed),
#undef S
};
#undef F

extern "C" {

// The i-th field of the table above (false past the last).
bool ds_emu_param_field(size_t i, const char** strukt, const char** field, size_t* offset, size_t* size,
                        size_t* align) {
    if (i >= sizeof(kFields) / sizeof(kFields[0])) return false;
    const DsField& f = kFields[i];
    *strukt = f.strukt;
    *field = f.field;
    *offset = f.offset;
    *size = f.size;
    *align = f.align;
    return true;
}

// Dynamic shared memory of the attention kernels for head dim d: the kernels' own
// constexpr formulas (attention.cu), so the launcher does not restate the layout. The
// host build of the same source serves the CUDA launches too.
unsigned ds_attention_smem_bytes(int d, bool tensor_cores) {
    return tensor_cores ? (unsigned)attn::tc_smem_bytes(d) : 4u * (unsigned)attn::smem_floats(d);
}

}  // extern "C"
