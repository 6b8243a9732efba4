// y[i] = a[i] op b[i] over COUNT values of type T (f32, or vec4<f32> of LANES elements);
// a scalar operand is an f32 read at index 0 and applied to every element.

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let first = group_index(wid) * ITEMS * WG + lid;
    for (var k = 0u; k < ITEMS; k += 1u) {
        let i = first + k * WG;
        if (i < COUNT) {
            let lhs = T(a_at({{A_INDEX}}));
            let rhs = T(b_at({{B_INDEX}}));
            y[i] = {{EXPR}};
        }
    }
}
