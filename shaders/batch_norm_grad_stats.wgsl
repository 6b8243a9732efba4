// The batch statistics of channel c of x [N, C, S] (S = spatial size, M = N * S), as the
// forward batch_norm computes them: mean and 1 / sqrt(biased variance + EPS). Every
// invocation of the workgroup must call it, from uniform control flow.

fn channel_stats(c: u32, lid: u32) -> vec2<f32> {
    var sum = 0.0;
    for (var j = lid; j < VM; j += WG) {
        sum += lanes_sum(x[element(c, j)]);
    }
    let mean = workgroup_sum(lid, sum) / f32(M);

    sum = 0.0;
    for (var j = lid; j < VM; j += WG) {
        let d = x[element(c, j)] - mean;
        sum += lanes_sum(d * d);
    }
    let variance = workgroup_sum(lid, sum) / f32(M);
    return vec2<f32>(mean, inverseSqrt(variance + EPS));
}
