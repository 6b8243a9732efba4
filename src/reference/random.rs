//! The Rust twin of `shaders/random.wgsl`: the same bits for the same keys, so the
//! reference computes the dropout masks the kernels compute.

/// The `lowbias32` integer hash (Chris Wellons, "Prospecting for Hash Functions", 2018).
pub fn mix32(value: u32) -> u32 {
    let mut h = value;
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^= h >> 16;
    h
}

/// The random bits for `element` of node `node` at `step` of a run seeded `seed`.
pub fn random_bits(seed: u32, step: u32, node: u32, element: u32) -> u32 {
    let mut h = mix32(seed ^ 0x6a09_e667);
    h = mix32(h ^ step);
    h = mix32(h ^ node);
    mix32(h ^ element)
}

/// Folds a 64-bit run seed to the 32 bits the kernels read.
pub fn fold_seed(seed: u64) -> u32 {
    (seed as u32) ^ ((seed >> 32) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix32_is_a_permutation_sample() {
        let mut seen: Vec<u32> = (0..10_000u32).map(mix32).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 10_000);
    }

    #[test]
    fn random_bits_depend_on_every_key() {
        let base = random_bits(1, 2, 3, 4);
        assert_ne!(base, random_bits(0, 2, 3, 4));
        assert_ne!(base, random_bits(1, 0, 3, 4));
        assert_ne!(base, random_bits(1, 2, 0, 4));
        assert_ne!(base, random_bits(1, 2, 3, 0));
    }
}
