//! A tiny deterministic PRNG (SplitMix64). Beacon `n` of a run is a pure
//! function of `(seed, n)`, so the Kafka checker can recompute what was sent
//! without storing it.

/// SplitMix64 finalizer: a good 64-bit mixing function.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The generator for item `n` of a stream seeded with `seed`.
    pub fn for_item(seed: u64, n: u64) -> Self {
        Rng(mix(seed ^ mix(n)))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n); `n` must be > 0.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// FNV-1a 64: a streaming hash (split writes give the same result as one),
/// stable across processes. Used to compare a delivered capsule with the one
/// sent.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn write(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_per_item() {
        let a: Vec<u64> = (0..4).map(|n| Rng::for_item(7, n).next_u64()).collect();
        let b: Vec<u64> = (0..4).map(|n| Rng::for_item(7, n).next_u64()).collect();
        assert_eq!(a, b);
        assert_ne!(a[0], a[1]);
        let mut r = Rng::new(1);
        for _ in 0..1000 {
            let x = r.next_f64();
            assert!((0.0..1.0).contains(&x));
            assert!(r.below(3) < 3);
        }
    }

    #[test]
    fn fnv_is_streaming() {
        let whole = Fnv::default().write(b"hello world").finish();
        let split = Fnv::default().write(b"hello").write(b" world").finish();
        assert_eq!(whole, split);
        assert_ne!(whole, Fnv::default().write(b"hello worle").finish());
    }
}
