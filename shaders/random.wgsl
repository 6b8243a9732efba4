// A counter-based random generator: the bits for element i of node NODE at step
// run.step of a run seeded run.seed, so a backward kernel can recompute any mask.
// The mixing function is the `lowbias32` integer hash (Chris Wellons, "Prospecting for
// Hash Functions", 2018), chained once per key; src/reference/random.rs is its twin.

fn mix32(value: u32) -> u32 {
    var h = value;
    h ^= h >> 16u;
    h *= 0x7feb352du;
    h ^= h >> 15u;
    h *= 0x846ca68bu;
    h ^= h >> 16u;
    return h;
}

fn random_bits(seed: u32, step: u32, node: u32, element: u32) -> u32 {
    var h = mix32(seed ^ 0x6a09e667u);
    h = mix32(h ^ step);
    h = mix32(h ^ node);
    return mix32(h ^ element);
}
