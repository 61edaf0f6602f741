use std::time::Instant;
fn main() {
    for (m, k, n) in [(4096usize, 384usize, 1536usize), (4096, 1536, 384), (4096, 384, 1152), (512, 384, 1536)] {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut c = vec![0f32; m * n];
        let run = |c: &mut Vec<f32>| unsafe {
            gemm::gemm(m, n, k, c.as_mut_ptr(), 1, n as isize, true, a.as_ptr(), 1, k as isize, b.as_ptr(), 1, n as isize, 1.0, 1.0, false, false, false, gemm::Parallelism::None)
        };
        for _ in 0..3 { run(&mut c); }
        let t = Instant::now();
        for _ in 0..10 { run(&mut c); }
        let s = t.elapsed().as_secs_f64() / 10.0;
        println!("{m} {k} {n} gemm 1 thread GFLOPS {:.1}", 2.0 * (m * k * n) as f64 / s / 1e9);
    }
}
