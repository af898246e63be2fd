//! The model hash: what an inversion cache records to refuse another model's caches.

use std::collections::BTreeMap;

use crate::model::schedule::Schedule;
use crate::tensor::HostTensor;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

struct Fnv(u64);

impl Fnv {
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= x as u64;
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }
    /// FNV-1a over 32-bit words (the f32 bit patterns), for speed on large tensors.
    fn words(&mut self, v: &[f32]) {
        for x in v {
            self.0 ^= x.to_bits() as u64;
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }
    fn u64(&mut self, x: u64) {
        self.bytes(&x.to_le_bytes());
    }
    fn finish(&self) -> u64 {
        // splitmix64 finaliser: every output bit depends on every state bit.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// 16 hex chars identifying the weights (canonical names, shapes and f32 values in
/// name order) and the schedule (alphas_cumprod). FNV-1a 64 with a final mix.
pub fn model_hash(tensors: &BTreeMap<String, HostTensor>, schedule: &Schedule) -> String {
    let mut h = Fnv(FNV_OFFSET);
    h.bytes(b"diffstyle-model-v1");
    h.u64(tensors.len() as u64);
    for (name, t) in tensors {
        h.u64(name.len() as u64);
        h.bytes(name.as_bytes());
        h.u64(t.shape.len() as u64);
        for &d in &t.shape {
            h.u64(d as u64);
        }
        h.words(&t.data);
    }
    h.bytes(b"schedule");
    h.u64(schedule.alphas_cumprod.len() as u64);
    h.words(&schedule.alphas_cumprod);
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_sees_every_value_name_and_the_schedule() {
        let t = |v: f32| HostTensor::new(vec![2], vec![1.0, v]);
        let map = |name: &str, v: f32| BTreeMap::from([(name.to_string(), t(v))]);
        let s = Schedule::ddpm_linear();
        let h = model_hash(&map("a", 2.0), &s);
        assert_eq!(h.len(), 16);
        assert_eq!(h, model_hash(&map("a", 2.0), &s));
        assert_ne!(h, model_hash(&map("a", 2.5), &s));
        assert_ne!(h, model_hash(&map("b", 2.0), &s));
        assert_ne!(h, model_hash(&map("a", 2.0), &Schedule::from_betas(&[0.1])));
    }
}
