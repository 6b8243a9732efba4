// First stage of a full reduction: workgroup g sums term(i) for i = g * WG + lid,
// stepping by GROUPS * WG, and stores the sum as partials[g].

fn term(i: u32) -> f32 {
{{TERM}}
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = group_index(wid);
    if (g >= GROUPS) {
        return;
    }
    var sum = 0.0;
    var compensation = 0.0;
    for (var i = g * WG + lid; i < COUNT; i += GROUPS * WG) {
        let v = term(i) - compensation;
        let next = sum + v;
        compensation = (next - sum) - v;
        sum = next;
    }
    let total = workgroup_sum(lid, sum);
    if (lid == 0u) {
        partials[g] = total;
    }
}
