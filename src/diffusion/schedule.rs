//! TEMPORARY stub (replaced by the loading branch).
pub struct Schedule {
    pub alphas_cumprod: Vec<f32>,
}
impl Schedule {
    pub fn alpha_bar(&self, t: i64) -> f32 {
        if t < 0 { 1.0 } else { self.alphas_cumprod[t as usize] }
    }
    pub fn len(&self) -> usize {
        self.alphas_cumprod.len()
    }
}
pub fn seq(n: usize) -> Vec<i64> {
    let step = 1.0 / (n - 1) as f64;
    (0..n).map(|k| {
        let v = if k == n - 1 { 1.0 } else { k as f64 * step };
        (v * 999.0 + 1e-6) as i64
    }).collect()
}
