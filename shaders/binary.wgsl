// y[i] = a[i] op b[i] over COUNT elements; a scalar operand is read at index 0.

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let first = group_index(wid) * ITEMS * WG + lid;
    for (var k = 0u; k < ITEMS; k += 1u) {
        let i = first + k * WG;
        if (i < COUNT) {
            let lhs = a[{{A_INDEX}}];
            let rhs = b[{{B_INDEX}}];
            y[i] = {{EXPR}};
        }
    }
}
