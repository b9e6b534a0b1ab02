//! DREAM's multi-scale dilated convolution (kiln-kernels `dream`): the CPU reference against
//! PyTorch (`nn.Conv2d` + `nn.BatchNorm2d` in eval mode + ReLU, the four branches of MambaRec's
//! DREAM, both input forms; `tests/data/dream/conv_torch.json` from
//! `scripts/fixtures/dream-conv-torch.py`), and the CubeCL kernel on wgpu against the CPU over
//! awkward shapes. Tolerances: 2e-5 absolute + 2e-5 relative (f32 sums in another order).

use burn::tensor::{Device, Tensor, TensorData};
use kiln_kernels::dream::{Conv2dBn, DilatedConv};
use kiln_tests::{data, wgpu_device};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 2e-5 + 2e-5 * w.abs(),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn cpu_matches_pytorch_on_both_input_forms() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/dream/conv_torch.json");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (c_in, c_out) = (
        r["c_in"].as_u64().unwrap() as usize,
        r["c_out"].as_u64().unwrap() as usize,
    );
    let parts: Vec<[Vec<f32>; 6]> = r["branches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            ["weight", "bias", "bn_gamma", "bn_beta", "bn_mean", "bn_var"].map(|k| floats(&b[k]))
        })
        .collect();
    let branches: Vec<Conv2dBn> = r["branches"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&parts)
        .map(|(b, p)| Conv2dBn {
            weight: &p[0],
            bias: Some(&p[1]),
            kernel: b["kernel"].as_u64().unwrap() as usize,
            dilation: b["dilation"].as_u64().unwrap() as usize,
            bn_gamma: &p[2],
            bn_beta: &p[3],
            bn_mean: &p[4],
            bn_var: &p[5],
            bn_eps: b["bn_eps"].as_f64().unwrap() as f32,
        })
        .collect();
    let cpu = Device::flex();
    let conv = DilatedConv::from_conv2d(&branches, c_in, c_out, &cpu).unwrap();
    let (b, s) = (
        r["seq"]["b"].as_u64().unwrap() as usize,
        r["seq"]["s"].as_u64().unwrap() as usize,
    );
    let x = Tensor::<3>::from_data(TensorData::new(floats(&r["seq"]["x"]), [b, s, c_in]), &cpu);
    let y: Vec<f32> = conv.forward(x).unwrap().into_data().try_to_vec().unwrap();
    assert_close(&y, &floats(&r["seq"]["y"]), "sequence form");
    assert!(
        y.iter().filter(|&&v| v > 0.0).count() > y.len() / 4,
        "ReLU leaves values"
    );
    let n = r["points"]["n"].as_u64().unwrap() as usize;
    let x = Tensor::<2>::from_data(TensorData::new(floats(&r["points"]["x"]), [n, c_in]), &cpu);
    let y: Vec<f32> = conv
        .forward_points(x)
        .unwrap()
        .into_data()
        .try_to_vec()
        .unwrap();
    assert_close(&y, &floats(&r["points"]["y"]), "point form");

    // Wrong channel count: an error.
    let x = Tensor::<2>::zeros([2, c_in + 1], &cpu);
    assert!(conv.forward_points(x).is_err());
}

#[test]
fn wgpu_matches_the_cpu_on_awkward_shapes() {
    let Some((_, gpu)) = wgpu_device() else {
        return;
    };
    let (c_in, c_out) = (67, 13);
    // DREAM's branches at rate 2 plus a 5-tap branch: kernel size and dilation are parameters.
    let specs = [(1, 2), (3, 12), (3, 24), (3, 36), (5, 2)];
    let store: Vec<[Vec<f32>; 6]> = specs
        .iter()
        .enumerate()
        .map(|(i, &(k, _))| {
            let s = i as u64 * 10;
            [
                data(c_out * c_in * k * k, s + 1),
                data(c_out, s + 2),
                data(c_out, s + 3).iter().map(|v| v + 1.0).collect(),
                data(c_out, s + 4),
                data(c_out, s + 5),
                data(c_out, s + 6).iter().map(|v| v + 1.0).collect(),
            ]
        })
        .collect();
    let branches: Vec<Conv2dBn> = specs
        .iter()
        .zip(&store)
        .map(|(&(kernel, dilation), p)| Conv2dBn {
            weight: &p[0],
            bias: Some(&p[1]),
            kernel,
            dilation,
            bn_gamma: &p[2],
            bn_beta: &p[3],
            bn_mean: &p[4],
            bn_var: &p[5],
            bn_eps: 1e-5,
        })
        .collect();
    let cpu = Device::flex();
    let on_cpu = DilatedConv::from_conv2d(&branches, c_in, c_out, &cpu).unwrap();
    let on_gpu = DilatedConv::from_conv2d(&branches, c_in, c_out, &gpu).unwrap();
    // Batch 1, a single position (the point form), shorter and longer than the dilations.
    for (b, s) in [(1, 1), (3, 1), (1, 7), (2, 30), (1, 100)] {
        let x = data(b * s * c_in, (b * 100 + s) as u64);
        let run = |conv: &DilatedConv, dev: &Device| -> Vec<f32> {
            let t = Tensor::<3>::from_data(TensorData::new(x.clone(), [b, s, c_in]), dev);
            conv.forward(t).unwrap().into_data().try_to_vec().unwrap()
        };
        assert_close(
            &run(&on_gpu, &gpu),
            &run(&on_cpu, &cpu),
            &format!("b={b} s={s}"),
        );
    }
}
