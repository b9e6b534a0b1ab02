//! Image preprocessing against PIL on the committed images (`scripts/fixtures/images.py` made
//! them and the references): COPE's pipeline (224 × 224 bilinear) and CLIP's at 64 px (shorter
//! side, bicubic, centre crop). Bad files fail one by one while the batch goes on.

use std::path::{Path, PathBuf};

use kiln_models::image::{self, ImageError, ImageSpec, Limits};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/images")
}

fn inputs() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(data().join("inputs"))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

fn reference(kind: &str, name: &str) -> ::image::RgbImage {
    let stem = name.rsplit_once('.').unwrap().0;
    ::image::open(data().join("ref").join(kind).join(format!("{stem}.png")))
        .unwrap()
        .to_rgb8()
}

/// Largest and mean absolute difference in 8-bit levels.
fn diff(a: &::image::RgbImage, b: &::image::RgbImage) -> (u8, f64) {
    assert_eq!(a.dimensions(), b.dimensions());
    let d: Vec<u8> = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .collect();
    let max = *d.iter().max().unwrap();
    (
        max,
        d.iter().map(|&v| f64::from(v)).sum::<f64>() / d.len() as f64,
    )
}

#[test]
fn preprocessing_matches_pil_on_the_committed_images() {
    let inputs = inputs();
    assert!(inputs.len() >= 20, "{} images", inputs.len());
    let limits = Limits::default();
    for (kind, spec) in [("cope", ImageSpec::cope()), ("clip64", ImageSpec::clip(64))] {
        let mut worst = (0u8, 0.0f64);
        for (name, bytes) in &inputs {
            let rgb = image::decode_rgb(bytes, &limits).unwrap();
            let got = image::resize_crop(&rgb, &spec).unwrap();
            let want = reference(kind, name);
            let (max, mean) = diff(&got, &want);
            // Lossless inputs differ only by the resampler's rounding: `fast_image_resize` holds
            // its coefficients as i16, Pillow with 22 fraction bits in i32, so a pixel can land
            // one level apart. The passes run in Pillow's order (`image::resize_crop`); in the
            // other order bicubic edges were up to 5 levels off here. JPEG and lossy WebP also
            // differ by the decoders (libjpeg-turbo / libwebp in PIL, zune-jpeg / image-webp).
            let lossless = name.ends_with(".png") || name.contains("lossless");
            let (max_ok, mean_ok) = if lossless { (1, 0.01) } else { (4, 0.35) };
            eprintln!("{kind} {name}: max {max} levels, mean {mean:.4}");
            assert!(
                max <= max_ok && mean <= mean_ok,
                "{kind} {name}: max {max} levels, mean {mean:.4}"
            );
            worst = (worst.0.max(max), worst.1.max(mean));
        }
        // After normalization one level is 1 / (255 · std) ≈ 0.0175 for ImageNet's smallest std.
        let per_level = 1.0 / (255.0 * spec.std.iter().cloned().fold(f32::MAX, f32::min));
        eprintln!(
            "{kind}: worst max {} levels = {:.4} normalized, worst mean {:.4} levels",
            worst.0,
            f32::from(worst.0) * per_level,
            worst.1
        );
    }
}

#[test]
fn exif_orientation_is_applied() {
    // 07/08/09 were stored rotated with orientation tags 3, 6 and 8: decoded, they are upright
    // and have the reference's size.
    let limits = Limits::default();
    for (name, bytes) in inputs().iter().filter(|(n, _)| n.contains("exif")) {
        let rgb = image::decode_rgb(bytes, &limits).unwrap();
        let upright = ::image::load_from_memory(bytes).unwrap();
        let (w, h) = (upright.width(), upright.height());
        if name.contains("exif3") {
            assert_eq!(rgb.dimensions(), (w, h), "{name}");
        } else {
            assert_eq!(rgb.dimensions(), (h, w), "{name}: 90° turns swap the sides");
        }
    }
}

#[test]
fn bad_files_fail_alone_and_the_batch_goes_on() {
    let dir = data().join("bad");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let good = inputs().remove(0).1;
    let mut files: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(dir.join(n)).unwrap())
        .collect();
    files.push(good);
    let items: Vec<&[u8]> = files.iter().map(|f| f.as_slice()).collect();
    let spec = ImageSpec::cope();
    let results = image::preprocess_batch(&items, &spec, &Limits::default());
    assert_eq!(results.len(), names.len() + 1);
    for (name, r) in names.iter().zip(&results) {
        let Err(err) = r else {
            panic!("{name}: decoded without an error")
        };
        eprintln!("{name}: {err}");
        match name.as_str() {
            "empty.jpg" => assert!(matches!(err, ImageError::Empty)),
            "not-an-image.jpg" => assert!(matches!(err, ImageError::UnknownFormat)),
            "bomb-144mpx.png" => assert!(matches!(err, ImageError::TooLarge { .. }), "{err}"),
            // 100,000² in its header but no image data: PNG's decoder stops at the missing
            // IDAT before it reports the size.
            "header-bomb.png" => assert!(
                matches!(err, ImageError::TooLarge { .. } | ImageError::Decode(_)),
                "{err}"
            ),
            _ => assert!(matches!(err, ImageError::Decode(_)), "{name}: {err}"),
        }
    }
    let last = results.last().unwrap().as_ref().unwrap();
    assert_eq!(last.len(), 3 * 224 * 224);
    assert!(last.iter().all(|v| v.is_finite() && v.abs() < 3.0));
}
