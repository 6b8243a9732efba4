// y[i] = x[source(g)] over the COUNT values (of type T: f32, or vec4<f32> of LANES
// elements) of a chunk that starts at element BASE, where g = BASE / LANES + i is the
// value's index in the whole output. SOURCE is the op's index arithmetic, in values,
// with every size baked in; broadcasts and slices use it.

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let first = group_index(wid) * ITEMS * WG + lid;
    for (var k = 0u; k < ITEMS; k += 1u) {
        let i = first + k * WG;
        if (i < COUNT) {
            let g = BASE / LANES + i;
            y[i] = x[{{SOURCE}}];
        }
    }
}
