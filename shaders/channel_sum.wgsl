// y[c] = SCALE * the sum of x over channel c of [N, C, S] (S = spatial size), one
// workgroup per channel, with a compensated sum per invocation. x is read in values of
// type T, VS of them per channel and image and VM per channel.

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = group_index(wid);
    if (c >= C) {
        return;
    }
    var sum = 0.0;
    var compensation = 0.0;
    for (var j = lid; j < VM; j += WG) {
        let v = lanes_sum(x_at(element(c, j))) - compensation;
        let next = sum + v;
        compensation = (next - sum) - v;
        sum = next;
    }
    let total = workgroup_sum(lid, sum);
    if (lid == 0u) {
        y[c] = total * SCALE;
    }
}
