// y[i] = x[source(i)] over COUNT elements, for broadcasts and slices; SOURCE is the index
// arithmetic of the op, with every size baked in.

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let first = group_index(wid) * ITEMS * WG + lid;
    for (var k = 0u; k < ITEMS; k += 1u) {
        let i = first + k * WG;
        if (i < COUNT) {
            y[i] = x[{{SOURCE}}];
        }
    }
}
