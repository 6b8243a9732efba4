// Second stage of a full reduction: one workgroup sums the PARTS partial sums and stores
// the total times SCALE (1 for a sum, 1 / count for a mean) as y[0].

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var sum = 0.0;
    for (var j = lid; j < PARTS; j += WG) {
        sum += partials[j];
    }
    let total = workgroup_sum(lid, sum);
    if (lid == 0u) {
        y[0] = total * SCALE;
    }
}
