//! Deterministic preprocessing of one image, the team's recipe:
//!
//! 1. greyscale when the channels barely differ (colour images keep colour);
//! 2. polarity normalised to dark strokes on a light background;
//! 3. near-white pixels pushed to white (faint watermarks, tinted paper);
//! 4. aspect-preserving resize, then white padding to a square.
//!
//! Each step is switchable in `PreprocessConfig`. The result is an RGB
//! `size x size` image stored as uint8 in the cache.

use fast_image_resize as fr;
use sweepfold_common::trainer_config::PreprocessConfig;

/// An interleaved 8-bit RGB image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl Rgb {
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Rgb {
        assert_eq!(data.len(), (width * height * 3) as usize, "RGB buffer size");
        Rgb {
            width,
            height,
            data,
        }
    }

    /// A blank image of one colour.
    pub fn filled(width: u32, height: u32, rgb: [u8; 3]) -> Rgb {
        let data = rgb
            .iter()
            .copied()
            .cycle()
            .take((width * height * 3) as usize)
            .collect();
        Rgb::new(width, height, data)
    }

    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = ((y * self.width + x) * 3) as usize;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    pub fn set(&mut self, x: u32, y: u32, rgb: [u8; 3]) {
        let i = ((y * self.width + x) * 3) as usize;
        self.data[i..i + 3].copy_from_slice(&rgb);
    }
}

/// Decodes an image file's bytes (JPEG, PNG, ...) to RGB.
pub fn decode(bytes: &[u8]) -> Result<Rgb, String> {
    let img = image::load_from_memory(bytes).map_err(|e| e.to_string())?;
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    if w == 0 || h == 0 {
        return Err("the image is empty".into());
    }
    Ok(Rgb::new(w, h, rgb.into_raw()))
}

/// ITU-R BT.601 luma in 0..=255.
#[inline]
fn luma(p: &[u8]) -> u8 {
    ((299 * u32::from(p[0]) + 587 * u32::from(p[1]) + 114 * u32::from(p[2]) + 500) / 1000) as u8
}

/// Mean over pixels of (largest channel - smallest channel).
pub fn channel_spread(img: &Rgb) -> f64 {
    let total: u64 = img
        .data
        .chunks_exact(3)
        .map(|p| u64::from(p[0].max(p[1]).max(p[2]) - p[0].min(p[1]).min(p[2])))
        .sum();
    total as f64 / (img.width as u64 * img.height as u64) as f64
}

/// Step 1: converts to grey when the mean channel spread is at most
/// `tolerance`. Returns whether it did.
pub fn greyscale_if_grey(img: &mut Rgb, tolerance: u8) -> bool {
    if channel_spread(img) > f64::from(tolerance) {
        return false;
    }
    for p in img.data.chunks_exact_mut(3) {
        let y = luma(p);
        p.copy_from_slice(&[y, y, y]);
    }
    true
}

/// Step 2: inverts an image whose background is dark. The background is
/// the median luma (a sketch is mostly background). Returns whether it did.
pub fn normalize_polarity(img: &mut Rgb) -> bool {
    let mut hist = [0u32; 256];
    for p in img.data.chunks_exact(3) {
        hist[luma(p) as usize] += 1;
    }
    let half = (img.width * img.height).div_ceil(2);
    let mut seen = 0;
    let median = hist
        .iter()
        .position(|&n| {
            seen += n;
            seen >= half
        })
        .unwrap_or(255);
    if median >= 128 {
        return false;
    }
    for v in img.data.iter_mut() {
        *v = 255 - *v;
    }
    true
}

/// Step 3: pixels whose luma is at least `threshold` become pure white.
pub fn whiten(img: &mut Rgb, threshold: u8) {
    for p in img.data.chunks_exact_mut(3) {
        if luma(p) >= threshold {
            p.copy_from_slice(&[255, 255, 255]);
        }
    }
}

/// Step 4: resizes to fit `size x size` keeping the aspect ratio and pads
/// with white (or, with `pad: false`, stretches to the square).
pub fn resize_pad(img: &Rgb, size: u32, pad: bool) -> Rgb {
    let (w, h) = if pad {
        let scale = f64::from(size) / f64::from(img.width.max(img.height));
        (
            ((f64::from(img.width) * scale).round() as u32).clamp(1, size),
            ((f64::from(img.height) * scale).round() as u32).clamp(1, size),
        )
    } else {
        (size, size)
    };
    let resized = resize(img, w, h);
    if w == size && h == size {
        return resized;
    }
    let mut out = Rgb::filled(size, size, [255, 255, 255]);
    let (x0, y0) = ((size - w) / 2, (size - h) / 2);
    let row = (w * 3) as usize;
    for y in 0..h {
        let src = (y * w * 3) as usize;
        let dst = (((y0 + y) * size + x0) * 3) as usize;
        out.data[dst..dst + row].copy_from_slice(&resized.data[src..src + row]);
    }
    out
}

/// Bilinear resize (antialiased when shrinking), SIMD where available.
fn resize(img: &Rgb, w: u32, h: u32) -> Rgb {
    if img.width == w && img.height == h {
        return img.clone();
    }
    let src = fr::images::ImageRef::new(img.width, img.height, &img.data, fr::PixelType::U8x3)
        .expect("buffer matches its dimensions");
    let mut dst = fr::images::Image::new(w, h, fr::PixelType::U8x3);
    let mut resizer = fr::Resizer::new();
    let options =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    resizer
        .resize(&src, &mut dst, &options)
        .expect("resizing between valid RGB images");
    Rgb::new(w, h, dst.into_vec())
}

/// The whole recipe on one decoded image.
pub fn preprocess(mut img: Rgb, size: u32, cfg: &PreprocessConfig) -> Rgb {
    if cfg.greyscale {
        greyscale_if_grey(&mut img, cfg.grey_tolerance);
    }
    if cfg.normalize_polarity {
        normalize_polarity(&mut img);
    }
    if cfg.whiten {
        whiten(&mut img, cfg.white_threshold);
    }
    resize_pad(&img, size, cfg.pad_to_square)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 20x10 white image with a dark 2-pixel stroke in the middle.
    fn sketch() -> Rgb {
        let mut img = Rgb::filled(20, 10, [255, 255, 255]);
        for x in 2..18 {
            img.set(x, 4, [20, 20, 20]);
            img.set(x, 5, [20, 20, 20]);
        }
        img
    }

    #[test]
    fn grey_images_become_grey_colour_ones_stay() {
        let mut tinted = sketch();
        for p in tinted.data.chunks_exact_mut(3) {
            p[0] = p[0].saturating_sub(3); // barely different channels
        }
        assert!(greyscale_if_grey(&mut tinted, 10));
        assert!(
            tinted
                .data
                .chunks_exact(3)
                .all(|p| p[0] == p[1] && p[1] == p[2])
        );
        let mut colour = sketch();
        for x in 2..18 {
            for y in 0..10 {
                colour.set(x, y, [200, 30, 30]); // red strokes
            }
        }
        assert!(!greyscale_if_grey(&mut colour, 10));
        assert_eq!(colour.pixel(5, 5), [200, 30, 30]);
    }

    #[test]
    fn an_inverted_image_is_normalised() {
        let mut inverted = sketch();
        for v in inverted.data.iter_mut() {
            *v = 255 - *v;
        }
        assert_eq!(inverted.pixel(0, 0), [0, 0, 0]);
        assert!(normalize_polarity(&mut inverted));
        assert_eq!(inverted, sketch());
        let mut normal = sketch();
        assert!(!normalize_polarity(&mut normal));
    }

    #[test]
    fn a_faint_watermark_is_removed_and_strokes_stay() {
        let mut img = sketch();
        for x in 0..20 {
            img.set(x, 8, [225, 225, 225]); // faint grey watermark text
        }
        img.set(0, 0, [250, 240, 215]); // tinted paper
        whiten(&mut img, 200);
        assert_eq!(img.pixel(3, 8), [255, 255, 255]);
        assert_eq!(img.pixel(0, 0), [255, 255, 255]);
        assert_eq!(img.pixel(3, 4), [20, 20, 20]);
    }

    #[test]
    fn padding_is_white_and_keeps_the_aspect_ratio() {
        let out = resize_pad(&sketch(), 40, true);
        assert_eq!((out.width, out.height), (40, 40));
        // 20x10 scales to 40x20, centred: rows 0..10 and 30..40 are padding.
        for y in (0..10).chain(30..40) {
            for x in 0..40 {
                assert_eq!(out.pixel(x, y), [255, 255, 255], "({x},{y})");
            }
        }
        // The stroke is still dark in the middle.
        assert!(out.pixel(20, 19)[0] < 100, "{:?}", out.pixel(20, 19));
        let stretched = resize_pad(&sketch(), 40, false);
        assert!(stretched.pixel(20, 0)[0] > 200);
        assert!(stretched.pixel(20, 18)[0] < 100);
    }

    #[test]
    fn decode_reports_garbage() {
        assert!(decode(b"not an image").is_err());
        let mut png = Vec::new();
        image::RgbImage::from_pixel(3, 2, image::Rgb([1, 2, 3]))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let img = decode(&png).unwrap();
        assert_eq!((img.width, img.height, img.pixel(2, 1)), (3, 2, [1, 2, 3]));
    }

    #[test]
    fn the_recipe_handles_a_dark_tinted_noisy_sketch() {
        // White strokes on black with a faint grey watermark: after the
        // recipe, dark strokes on pure white, square and padded.
        let mut img = Rgb::filled(30, 12, [0, 0, 0]);
        for x in 5..25 {
            img.set(x, 6, [250, 250, 250]);
        }
        img.set(1, 1, [40, 40, 40]); // faint watermark (light after inversion)
        let out = preprocess(img, 30, &PreprocessConfig::default());
        assert_eq!((out.width, out.height), (30, 30));
        assert_eq!(out.pixel(0, 0), [255, 255, 255]);
        assert_eq!(out.pixel(1, 10), [255, 255, 255], "watermark whitened");
        assert!(
            out.pixel(15, 15)[0] < 60,
            "stroke dark: {:?}",
            out.pixel(15, 15)
        );
    }
}
