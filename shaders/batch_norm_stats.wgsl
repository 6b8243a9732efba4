// Batch norm with batch statistics: one workgroup per channel c computes the mean and the
// biased variance over the M = N * S elements of the channel (S = spatial size), read as
// VM values of type T (VS per channel and image), in two passes with compensated sums,
// and stores them as stats[c] and stats[C + c]. The second pass also sums the deviations
// from the first pass's mean, which are zero but for that mean's rounding error, and
// corrects the mean and the variance by their average. UPDATE, in training mode, then
// moves the running statistics towards the batch's, and a third pass writes
//     y = (x - mean) / sqrt(variance + EPS) * scale[c] + offset[c].

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
    let first_mean = workgroup_sum(lid, sum) / f32(M);

    sum = 0.0;
    compensation = 0.0;
    var deviations = 0.0;
    for (var j = lid; j < VM; j += WG) {
        let d = x_at(element(c, j)) - first_mean;
        deviations += lanes_sum(d);
        let v = lanes_sum(d * d) - compensation;
        let next = sum + v;
        compensation = (next - sum) - v;
        sum = next;
    }
    let correction = workgroup_sum(lid, deviations) / f32(M);
    let variance = max(workgroup_sum(lid, sum) / f32(M) - correction * correction, 0.0);

    let mean = first_mean + correction;
    if (lid == 0u) {
        stats[c] = mean;
        stats[C + c] = variance;
{{UPDATE}}    }

    let inv_std = inverseSqrt(variance + EPS);
    for (var j = lid; j < VM; j += WG) {
        let i = element(c, j);
        y[i] = (x_at(i) - mean) * inv_std * scale[c] + offset[c];
    }
}
