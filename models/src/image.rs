//! Image preprocessing for the multimodal encoders: decode (JPEG, PNG, WebP), apply the EXIF
//! orientation, convert to RGB, resize, centre-crop and normalize into a `[3, H, W]` f32 tensor,
//! as each model's reference pipeline does it.
//!
//! The reference pipelines resize with PIL (`Image.resize`, whose convolution resampler scales
//! the filter's support when shrinking); `fast_image_resize`'s convolution resizer is the same
//! algorithm, on 8-bit pixels as PIL's, run pass by pass in Pillow's order ([`resize_crop`]).
//! Parity with PIL on the committed images: `tests/tests/images.rs` (lossless files within one
//! level: the two keep their coefficients at different precisions).
//!
//! Every item is untrusted input: a zero-byte, corrupt or truncated file, an unknown format, or
//! a header announcing more pixels than [`Limits`] allows (a decompression bomb) is an
//! [`ImageError`] for that item; [`preprocess_batch`] goes on with the others.

use std::borrow::Cow;
use std::io::Cursor;

use fast_image_resize::images::{Image as FirImage, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use rayon::prelude::*;

/// ImageNet's per-channel mean and standard deviation (torchvision's models, COPE).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// OpenAI CLIP's.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Why one image could not be preprocessed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    #[error("empty file (0 bytes)")]
    Empty,
    #[error("not a JPEG, PNG or WebP image")]
    UnknownFormat,
    #[error(
        "{width}×{height} pixels is more than the limit of {limit} pixels (a decompression bomb?)"
    )]
    TooLarge { width: u32, height: u32, limit: u64 },
    #[error("cannot decode: {0}")]
    Decode(String),
    #[error("{0}")]
    Spec(String),
}

/// How an image is resized before the centre crop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resize {
    /// To exactly `width × height`, ignoring the aspect ratio (PIL `img.resize((w, h))`).
    Exact { width: u32, height: u32 },
    /// The shorter side to `n`, the longer in proportion, truncated (torchvision `Resize(n)`).
    ShorterSide(u32),
}

/// The resampling filter (PIL's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// PIL `BILINEAR`: a triangle filter, support 1 (scaled when shrinking).
    Bilinear,
    /// PIL `BICUBIC`: Keys' cubic with a = -0.5, support 2 (scaled when shrinking).
    Bicubic,
}

/// One model's preprocessing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageSpec {
    pub resize: Resize,
    pub filter: Filter,
    /// The centre crop, `[height, width]`.
    pub crop: [u32; 2],
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ImageSpec {
    /// COPE's (`adxcreative/COPE` `infer.py`): `video_transforms.Resize((224, 224))` — its
    /// default interpolation `'nearest'` is mapped to PIL's `BILINEAR` by
    /// `torchvideotransforms.functional.resize_clip` — then a 224 centre crop (a no-op), `/ 255`,
    /// ImageNet mean and std.
    pub fn cope() -> Self {
        ImageSpec {
            resize: Resize::Exact {
                width: 224,
                height: 224,
            },
            filter: Filter::Bilinear,
            crop: [224, 224],
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// CLIP's (`clip.load`'s transform): shorter side to `size` (bicubic), centre crop
    /// `size × size`, CLIP's mean and std.
    pub fn clip(size: u32) -> Self {
        ImageSpec {
            resize: Resize::ShorterSide(size),
            filter: Filter::Bicubic,
            crop: [size, size],
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// The size after resizing an image of `width × height`.
    pub fn resized_size(&self, width: u32, height: u32) -> (u32, u32) {
        match self.resize {
            Resize::Exact { width, height } => (width, height),
            Resize::ShorterSide(n) => {
                // torchvision `_compute_resized_output_size`: int(n * long / short).
                let long = |l: u32, s: u32| (u64::from(n) * u64::from(l) / u64::from(s)) as u32;
                if width <= height {
                    (n, long(height, width))
                } else {
                    (long(width, height), n)
                }
            }
        }
    }

    fn check(&self) -> Result<(), ImageError> {
        let (w, h) = match self.resize {
            Resize::Exact { width, height } => (width, height),
            Resize::ShorterSide(n) => (n, n),
        };
        let [ch, cw] = self.crop;
        if w == 0 || h == 0 || ch == 0 || cw == 0 || ch > h || cw > w {
            return Err(ImageError::Spec(format!(
                "a {cw}×{ch} crop of images resized to at least {w}×{h}"
            )));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(ImageError::Spec(format!("std {:?}", self.std)));
        }
        Ok(())
    }
}

/// What a decoder may be asked to hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most pixels (width × height) an image may declare. Default 64 M (an 8,000 × 8,000 photo;
    /// PIL refuses above 179 M).
    pub max_pixels: u64,
    /// Most bytes the decoder may allocate. Default 1 GiB.
    pub max_alloc: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pixels: 64 << 20,
            max_alloc: 1 << 30,
        }
    }
}

/// Decodes `bytes` to 8-bit RGB: EXIF orientation applied, alpha dropped, grey replicated (as
/// PIL's `ImageOps.exif_transpose` then `convert("RGB")`).
pub fn decode_rgb(bytes: &[u8], limits: &Limits) -> Result<RgbImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    match reader.format() {
        Some(image::ImageFormat::Jpeg | image::ImageFormat::Png | image::ImageFormat::WebP) => {}
        _ => return Err(ImageError::UnknownFormat),
    }
    if reader.format() == Some(image::ImageFormat::Jpeg)
        && !bytes.windows(2).any(|w| w == [0xFF, 0xD9])
    {
        // The decoder fills a cut-off scan with grey; a JPEG's data cannot hold FF D9 (FF is
        // stuffed as FF 00 there), so a file without the end-of-image marker was cut short.
        return Err(ImageError::Decode(
            "truncated JPEG (no end-of-image marker)".into(),
        ));
    }
    let mut reader = reader;
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(limits.max_alloc);
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(ImageError::TooLarge {
            width,
            height,
            limit: limits.max_pixels,
        });
    }
    let orientation = decoder.orientation().map_err(decode_error)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    img.apply_orientation(orientation);
    Ok(match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

/// Width and height from the file's header, without decoding it (`None`: not a readable image).
pub fn dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

fn decode_error(e: image::ImageError) -> ImageError {
    ImageError::Decode(e.to_string())
}

/// `rgb` resized and centre-cropped as `spec` says, still 8-bit (what PIL holds before
/// `ToTensor`).
pub fn resize_crop(rgb: &RgbImage, spec: &ImageSpec) -> Result<RgbImage, ImageError> {
    spec.check()?;
    let (w, h) = rgb.dimensions();
    let (rw, rh) = spec.resized_size(w, h);
    let [ch, cw] = spec.crop;
    if rw < cw || rh < ch {
        return Err(ImageError::Spec(format!(
            "a {w}×{h} image resizes to {rw}×{rh}, smaller than the {cw}×{ch} crop"
        )));
    }
    let filter = match spec.filter {
        Filter::Bilinear => FilterType::Bilinear,
        Filter::Bicubic => FilterType::CatmullRom,
    };
    // Both passes round to 8 bits (and clip the cubic's overshoot to 0..=255) in between, so
    // their order shows at sharp edges: up to 6 levels with the bicubic filter. Pillow 13
    // (`ImagingResampleInner`) runs the horizontal pass first unless the height shrinks by more
    // than twice as many pixels as the width does; `fast_image_resize` always runs 8-bit images
    // vertically first. So the passes are asked for one at a time, in Pillow's order.
    let (dw, dh) = (i64::from(w) - i64::from(rw), i64::from(h) - i64::from(rh));
    let horizontal_first = !(dh > 0 && dh > 2 * dw);
    let first = if horizontal_first { (rw, h) } else { (w, rh) };
    let once = resize_pass(rgb, first, filter)?;
    let twice = resize_pass(once.as_ref().unwrap_or(rgb), (rw, rh), filter)?;
    // Borrowed when neither pass had work: the decoded image is copied only if it is returned.
    let resized = match twice.or(once) {
        Some(img) => Cow::Owned(img),
        None => Cow::Borrowed(rgb),
    };
    // torchvision `center_crop`: int(round((size - crop) / 2)), Python's round (ties to even).
    let offset = |size: u32, crop: u32| (f64::from(size - crop) / 2.0).round_ties_even() as u32;
    let (left, top) = (offset(rw, cw), offset(rh, ch));
    if (left, top, cw, ch) == (0, 0, rw, rh) {
        return Ok(resized.into_owned());
    }
    Ok(image::imageops::crop_imm(resized.as_ref(), left, top, cw, ch).to_image())
}

/// One convolution pass of `fast_image_resize` to `size` (`rgb` and `size` differ in one side
/// at most); `None` when `rgb` already has that size.
fn resize_pass(
    rgb: &RgbImage,
    (width, height): (u32, u32),
    filter: FilterType,
) -> Result<Option<RgbImage>, ImageError> {
    let (w, h) = rgb.dimensions();
    if (w, h) == (width, height) {
        return Ok(None);
    }
    debug_assert!(w == width || h == height, "one pass changes one side");
    // Borrowed: no copy of the source image.
    let src = ImageRef::new(w, h, rgb.as_raw(), PixelType::U8x3)
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    let mut dst = FirImage::new(width, height, PixelType::U8x3);
    Resizer::new()
        .resize(
            &src,
            &mut dst,
            &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter)),
        )
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    RgbImage::from_raw(width, height, dst.into_vec())
        .map(Some)
        .ok_or_else(|| ImageError::Decode("resizer returned a short buffer".into()))
}

/// `rgb` as a `[3, H, W]` tensor of `(v / 255 - mean) / std` per channel.
pub fn normalize(rgb: &RgbImage, spec: &ImageSpec) -> Vec<f32> {
    let (w, h) = rgb.dimensions();
    let plane = (w * h) as usize;
    let mut out = vec![0.0f32; 3 * plane];
    for (i, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(px.0[c]) / 255.0 - spec.mean[c]) / spec.std[c];
        }
    }
    out
}

/// One encoded image to its model input: `[3, crop_h, crop_w]` values, row-major.
pub fn preprocess(bytes: &[u8], spec: &ImageSpec, limits: &Limits) -> Result<Vec<f32>, ImageError> {
    let rgb = decode_rgb(bytes, limits)?;
    Ok(normalize(&resize_crop(&rgb, spec)?, spec))
}

/// [`preprocess`] for a batch, spread over rayon's worker threads; one result per item, in
/// order, so that a bad image fails alone.
pub fn preprocess_batch(
    items: &[&[u8]],
    spec: &ImageSpec,
    limits: &Limits,
) -> Vec<Result<Vec<f32>, ImageError>> {
    items
        .par_iter()
        .map(|bytes| preprocess(bytes, spec, limits))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorter_side_sizes_follow_torchvision() {
        let spec = ImageSpec::clip(224);
        assert_eq!(spec.resized_size(640, 480), (298, 224)); // int(224 * 640 / 480) = 298
        assert_eq!(spec.resized_size(480, 640), (224, 298));
        assert_eq!(spec.resized_size(300, 300), (224, 224));
        assert_eq!(ImageSpec::cope().resized_size(17, 900), (224, 224));
    }

    #[test]
    fn centre_crop_rounds_half_to_even_and_normalize_is_chw() {
        // 5×1 → crop 2 wide: (5 - 2) / 2 = 1.5 rounds to 2 (torchvision: int(round(1.5)) = 2).
        let rgb = RgbImage::from_fn(5, 2, |x, _| image::Rgb([x as u8 * 50, 0, 255]));
        let spec = ImageSpec {
            resize: Resize::Exact {
                width: 5,
                height: 2,
            },
            filter: Filter::Bilinear,
            crop: [2, 2],
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let out = resize_crop(&rgb, &spec).unwrap();
        assert_eq!(out.get_pixel(0, 0).0[0], 100);
        let x = normalize(&out, &spec);
        assert_eq!(x.len(), 12);
        assert_eq!(
            &x[..4],
            &[100.0 / 255.0, 150.0 / 255.0, 100.0 / 255.0, 150.0 / 255.0]
        );
        assert_eq!(&x[8..], &[1.0; 4]);
    }

    #[test]
    fn bad_specs_and_inputs_are_errors() {
        let mut spec = ImageSpec::cope();
        spec.crop = [225, 224];
        let rgb = RgbImage::new(4, 4);
        assert!(matches!(resize_crop(&rgb, &spec), Err(ImageError::Spec(_))));
        let limits = Limits::default();
        assert!(matches!(decode_rgb(&[], &limits), Err(ImageError::Empty)));
        assert!(matches!(
            decode_rgb(b"hello, world", &limits),
            Err(ImageError::UnknownFormat)
        ));
    }
}
