// The batch statistics of channel c of x [N, C, S] (S = spatial size, M = N * S) that the
// forward batch_norm saved: saved[c] is the mean and saved[C + c] the biased variance.
// Returns the mean and 1 / sqrt(variance + EPS), as the forward pass normalized with.

fn channel_stats(c: u32, lid: u32) -> vec2<f32> {
    return vec2<f32>(saved[c], inverseSqrt(saved[C + c] + EPS));
}
