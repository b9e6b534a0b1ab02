use kiln_kernels::cpu::{Isa, gemm};
fn main() {
    let (m, k, n) = (3168usize, 768usize, 2304usize);
    let x: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let packed = gemm::pack_b(&b, k, n);
    let bias = vec![0f32; n];
    for isa in [Isa::Avx2] {
        let _ = gemm::gemm(isa, &x, m, k, &packed, n, &bias, gemm::Act::None);
        let t = std::time::Instant::now();
        let reps = 5;
        for _ in 0..reps {
            std::hint::black_box(gemm::gemm(
                isa,
                &x,
                m,
                k,
                &packed,
                n,
                &bias,
                gemm::Act::None,
            ));
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!("{isa:?}: {:.1} GFLOP/s", 2.0 * (m * k * n) as f64 / s / 1e9);
    }
}
