//! Kiln's fused quantized matmul (GGUF blocks decoded inside the kernel) against Burn's own path
//! for a quantized weight (dequantize to f32, then Burn's matmul), on the same wgpu device, at
//! SmolLM2-135M's and Llama-3.2-1B's FFN shapes: decode (m = 1) and prefill (m = 128).
//!
//! Burn has no GGUF dequantizer, so its path's first step is Kiln's dequantize kernel (the same
//! block decoder); the dequantized weight is not cached, as a quantized model's memory saving
//! would be lost. Both paths end with `Device::sync`. On llvmpipe (CI, this machine) the
//! "GPU" is the CPU: compare ratios, never absolute numbers with a real GPU's.
//!
//! `KILN_BENCH_QUICK=1` runs the SmolLM2 shapes only; `KILN_BENCH_VARIANTS=1` adds every
//! mat-vec variant at m = 1; `KILN_MATVEC=perunit|plane|shared(8)…` sets the one measured as
//! `kiln_fused` (default: the kernel's `Auto`).

use burn::tensor::{Device, Tensor, TensorData};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kiln_kernels::qmatmul::{self, CubeKernel, Reduction, Tiling};
use kiln_kernels::{QTensor, dequant};
use kiln_quant::GgmlType;

fn data(n: usize) -> Vec<f32> {
    let mut s = 0x2545F4914F6CDD1Du64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn wgpu() -> Option<Device> {
    let devices = kiln_runtime::probe_devices();
    let info = devices
        .devices
        .iter()
        .find(|d| d.id.to_string().starts_with("wgpu"))?;
    eprintln!("wgpu device: {} ({})", info.name, info.api);
    info.burn_device().ok()
}

fn bench(c: &mut Criterion) {
    let Some(device) = wgpu() else {
        eprintln!("no wgpu adapter: nothing to measure");
        return;
    };
    let quick = std::env::var_os("KILN_BENCH_QUICK").is_some();
    let planes = kiln_kernels::device_has_planes(&device);
    // The mat-vec variant `kiln plan` picks for this device class.
    let reduction = std::env::var("KILN_MATVEC")
        .ok()
        .and_then(|v| {
            Reduction::variants(planes)
                .into_iter()
                .find(|r| format!("{r:?}").eq_ignore_ascii_case(&v))
        })
        .unwrap_or(Reduction::Auto);
    // (model, layer, n, k): FFN up (n × k) and down (k × n) projections.
    let mut shapes = vec![
        ("smollm2-135m", "ffn_up", 1536, 576),
        ("smollm2-135m", "ffn_down", 576, 1536),
    ];
    if !quick {
        shapes.push(("llama-3.2-1b", "ffn_up", 8192, 2048));
        shapes.push(("llama-3.2-1b", "ffn_down", 2048, 8192));
    }
    for (model, layer, n, k) in shapes {
        let wf = data(n * k);
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
        ] {
            if k % ty.block_size() != 0 {
                continue;
            }
            let bytes = kiln_quant::blocks::quantize_to_vec(ty, &wf).unwrap();
            let w = QTensor::from_blocks("w", ty, &[n, k], &bytes, &device).unwrap();
            let mut g = c.benchmark_group(format!("cube_qmatmul/{model}/{layer}/{ty}"));
            for m in [1usize, 128] {
                let x = Tensor::<2>::from_data(TensorData::new(data(m * k), [m, k]), &device);
                g.throughput(Throughput::Elements((n * k * m) as u64));
                let fast = CubeKernel::fast(reduction, Tiling::Auto);
                g.bench_with_input(BenchmarkId::new("kiln_fused", m), &m, |b, _| {
                    b.iter(|| {
                        let y = qmatmul::qmatmul_with(x.clone(), &w, fast).unwrap();
                        device.sync().unwrap();
                        y
                    })
                });
                // The default: the CPU path's arithmetic (bit-identical results).
                g.bench_with_input(BenchmarkId::new("kiln_exact", m), &m, |b, _| {
                    b.iter(|| {
                        let y = qmatmul::qmatmul(x.clone(), &w).unwrap();
                        device.sync().unwrap();
                        y
                    })
                });
                if m == 1 && std::env::var_os("KILN_BENCH_VARIANTS").is_some() {
                    for red in Reduction::variants(planes) {
                        let id = format!("kiln_fused_{red:?}").to_lowercase();
                        g.bench_with_input(BenchmarkId::new(id, m), &m, |b, _| {
                            b.iter(|| {
                                let kernel = CubeKernel::fast(red, Tiling::Auto);
                                let y = qmatmul::qmatmul_with(x.clone(), &w, kernel).unwrap();
                                device.sync().unwrap();
                                y
                            })
                        });
                    }
                }
                g.bench_with_input(BenchmarkId::new("burn_dequant_matmul", m), &m, |b, _| {
                    b.iter(|| {
                        let wd = dequant::dequantize(&w).unwrap();
                        let y = x.clone().matmul(wd.transpose());
                        device.sync().unwrap();
                        y
                    })
                });
            }
            g.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
