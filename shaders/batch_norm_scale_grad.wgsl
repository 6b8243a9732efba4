// scale_grad[c] = sum over the channel of dy * x_hat, one workgroup per channel.

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    // Surplus workgroups of a folded grid still take part in the barriers, on channel 0.
    let group = group_index(wid);
    let c = select(0u, group, group < C);
    let stats = channel_stats(c, lid);

    var sum = 0.0;
    for (var j = lid; j < VM; j += WG) {
        let i = element(c, j);
        sum += lanes_sum(dy_at(i) * (x_at(i) - stats.x)) * stats.y;
    }
    let total = workgroup_sum(lid, sum);
    if (lid == 0u && group < C) {
        scale_grad[c] = total;
    }
}
