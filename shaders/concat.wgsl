// Copies one operand of a concatenation into its slice of y, in values of type T (f32,
// or vec4<f32>). The operand is BLOCK values per outer index; y is OUT_BLOCK, and the
// slice starts OFFSET into each block.

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let first = group_index(wid) * ITEMS * WG + lid;
    for (var k = 0u; k < ITEMS; k += 1u) {
        let i = first + k * WG;
        if (i < COUNT) {
            let outer = i / BLOCK;
            y[outer * OUT_BLOCK + OFFSET + i % BLOCK] = x[i];
        }
    }
}
