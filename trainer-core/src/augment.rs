//! Training-time augmentation of a whole batch on the device with tensor
//! ops, so the GPU never waits for the CPU. Input and output are float
//! `[B, 3, S, S]` in `[0, 1]` with white = 1 (dark strokes on white).
//!
//! Each augmentation is applied to each image with its probability `p`
//! (independent per image) and a random strength within its limits.
//! Rotation, affine (shift-scale-rotate with shear) and the elastic
//! transform are fused into one `grid_sample`; areas moved in from outside
//! the image are white.

use std::f64::consts::PI;

use sweepfold_common::rng::Rng;
use sweepfold_common::trainer_config::AugmentConfig;
use tch::{Device, Kind, Tensor};

use crate::font;

pub struct Augmenter {
    cfg: AugmentConfig,
    /// Host-side choices (text strings, blur angle); per-image draws use
    /// the device generator.
    rng: Rng,
}

fn uniform(b: i64, lo: f64, hi: f64, device: Device) -> Tensor {
    Tensor::rand([b], (Kind::Float, device)) * (hi - lo) + lo
}

/// Per-image coin flips with probability `p`, as floats 0/1.
fn coin(b: i64, p: f64, device: Device) -> Tensor {
    Tensor::rand([b], (Kind::Float, device))
        .lt(p)
        .to_kind(Kind::Float)
}

/// `mask` `[B]` selects `a` over `b` per image.
fn select(mask: &Tensor, a: &Tensor, b: &Tensor) -> Tensor {
    let m = mask.view([-1, 1, 1, 1]).to_kind(Kind::Bool);
    a.where_self(&m, b)
}

impl Augmenter {
    pub fn new(cfg: AugmentConfig, seed: u64) -> Augmenter {
        Augmenter {
            cfg,
            rng: Rng::new(seed),
        }
    }

    /// True when every probability is zero.
    pub fn is_identity(&self) -> bool {
        self.cfg.probabilities().iter().all(|(_, p)| *p == 0.0)
    }

    pub fn apply(&mut self, x: &Tensor) -> Tensor {
        if self.is_identity() {
            return x.shallow_clone();
        }
        tch::no_grad(|| self.apply_inner(x))
    }

    fn apply_inner(&mut self, x: &Tensor) -> Tensor {
        let c = self.cfg.clone();
        let (b, _, h, w) = x.size4().expect("a [B, 3, S, S] batch");
        let dev = x.device();
        let mut x = x.shallow_clone();

        if c.hflip.p > 0.0 {
            x = select(&coin(b, c.hflip.p, dev), &x.flip([3]), &x);
        }
        x = self.geometric(&x, b, h, w);
        if c.erode.p > 0.0 {
            // Thinner dark strokes: a max filter grows the white.
            let k = i64::from(c.erode.size);
            let y = x.max_pool2d([k, k], [1, 1], [k / 2, k / 2], [1, 1], false);
            x = select(&coin(b, c.erode.p, dev), &y, &x);
        }
        if c.dilate.p > 0.0 {
            // Thicker dark strokes: a min filter grows the ink.
            let k = i64::from(c.dilate.size);
            let y = -(-&x).max_pool2d([k, k], [1, 1], [k / 2, k / 2], [1, 1], false);
            x = select(&coin(b, c.dilate.p, dev), &y, &x);
        }
        if c.motion_blur.p > 0.0 {
            let y = self.motion_blur(&x, i64::from(c.motion_blur.size));
            x = select(&coin(b, c.motion_blur.p, dev), &y, &x);
        }
        if c.text.p > 0.0 {
            x = self.text(&x, b, h, w);
        }
        if c.brightness_contrast.p > 0.0 {
            let on = coin(b, c.brightness_contrast.p, dev);
            let bc = &c.brightness_contrast;
            let contrast =
                (uniform(b, -bc.contrast, bc.contrast, dev) * &on + 1.0).view([-1, 1, 1, 1]);
            let brightness =
                (uniform(b, -bc.brightness, bc.brightness, dev) * &on).view([-1, 1, 1, 1]);
            x = (x - 0.5) * contrast + 0.5 + brightness;
        }
        if c.noise.p > 0.0 {
            let on = coin(b, c.noise.p, dev).view([-1, 1, 1, 1]);
            x = &x + x.randn_like() * c.noise.std * on;
        }
        if c.coarse_dropout.p > 0.0 {
            x = self.coarse_dropout(&x, b, h, w);
        }
        x.clamp(0.0, 1.0)
    }

    /// Rotation, affine and elastic displacement in one resampling.
    fn geometric(&mut self, x: &Tensor, b: i64, h: i64, w: i64) -> Tensor {
        let c = &self.cfg;
        let dev = x.device();
        if c.rotate.p == 0.0 && c.affine.p == 0.0 && c.elastic.p == 0.0 {
            return x.shallow_clone();
        }
        let deg = PI / 180.0;
        let rot_on = coin(b, c.rotate.p, dev);
        let aff_on = coin(b, c.affine.p, dev);
        let angle = uniform(b, -c.rotate.degrees, c.rotate.degrees, dev) * &rot_on * deg
            + uniform(b, -c.affine.degrees, c.affine.degrees, dev) * &aff_on * deg;
        let scale = uniform(b, -c.affine.scale, c.affine.scale, dev) * &aff_on + 1.0;
        let shear = uniform(b, -c.affine.shear, c.affine.shear, dev) * &aff_on * deg;
        // Normalised coordinates span 2 per image side.
        let tx = uniform(b, -2.0 * c.affine.shift, 2.0 * c.affine.shift, dev) * &aff_on;
        let ty = uniform(b, -2.0 * c.affine.shift, 2.0 * c.affine.shift, dev) * &aff_on;
        let (cos, sin) = (angle.cos(), angle.sin());
        let inv_s = scale.reciprocal();
        // Output pixel -> input pixel (the inverse transform).
        let row0 = Tensor::stack(&[&cos * &inv_s, (-&sin + shear.tan()) * &inv_s, tx], 1);
        let row1 = Tensor::stack(&[&sin * &inv_s, &cos * &inv_s, ty], 1);
        let theta = Tensor::stack(&[row0, row1], 1);
        let mut grid = Tensor::affine_grid_generator(&theta, [b, 3, h, w], false);
        if c.elastic.p > 0.0 {
            let on = coin(b, c.elastic.p, dev).view([-1, 1, 1, 1]);
            let cells = ((1.0 / c.elastic.sigma).round() as i64).clamp(2, h.max(2));
            let field = Tensor::rand([b, 2, cells, cells], (Kind::Float, dev)) * 2.0 - 1.0;
            let field = field
                .upsample_bilinear2d([h, w], true, None, None)
                .permute([0, 2, 3, 1]);
            grid += field * (2.0 * c.elastic.alpha) * on;
        }
        // Resample the ink (1 - x) with zero padding: outside stays white.
        let ink: Tensor = x.neg().g_add_scalar(1.0).grid_sampler(&grid, 0, 0, false);
        ink.neg().g_add_scalar(1.0)
    }

    /// Blur along a line of `k` pixels at an angle chosen per batch.
    fn motion_blur(&mut self, x: &Tensor, k: i64) -> Tensor {
        let angle = [0.0, 45.0, 90.0, 135.0][self.rng.below(4) as usize] * PI / 180.0;
        let mut kernel = vec![0f32; (k * k) as usize];
        let mid = (k / 2) as f64;
        for i in 0..k {
            let t = i as f64 - mid;
            let (x0, y0) = (
                (mid + t * angle.cos()).round() as i64,
                (mid - t * angle.sin()).round() as i64,
            );
            kernel[(y0.clamp(0, k - 1) * k + x0.clamp(0, k - 1)) as usize] = 1.0;
        }
        let sum: f32 = kernel.iter().sum();
        let weight = Tensor::from_slice(&kernel)
            .to_device_(x.device(), Kind::Float, true, false)
            .to_kind(x.kind())
            .view([1, 1, k, k])
            .repeat([3, 1, 1, 1])
            / f64::from(sum);
        let p = k / 2;
        x.pad([p, p, p, p], "replicate", None).conv2d(
            &weight,
            None::<Tensor>,
            [1, 1],
            [0, 0],
            [1, 1],
            3,
        )
    }

    /// Random semi-transparent dark text (the team's watermark trick).
    fn text(&mut self, x: &Tensor, b: i64, h: i64, w: i64) -> Tensor {
        let t = self.cfg.text.clone();
        let dev = x.device();
        let alphabet = font::alphabet();
        let max_chars = t.max_chars as usize;
        let canvas_w = max_chars * (font::GLYPH_W + 1) - 1;
        let mut canvas = vec![0f32; b as usize * font::GLYPH_H * canvas_w];
        for i in 0..b as usize {
            let len = 2 + self.rng.below(max_chars.saturating_sub(1).max(1) as u64) as usize;
            let text: String = (0..len.min(max_chars))
                .map(|_| alphabet[self.rng.below(alphabet.len() as u64) as usize])
                .collect();
            let (gh, gw, mask) = font::render(&text);
            for y in 0..gh {
                let dst = (i * font::GLYPH_H + y) * canvas_w;
                canvas[dst..dst + gw].copy_from_slice(&mask[y * gw..(y + 1) * gw]);
            }
        }
        let canvas = Tensor::from_slice(&canvas)
            .view([b, 1, font::GLYPH_H as i64, canvas_w as i64])
            // Asynchronous: a blocking copy would stall the host every batch.
            .to_device_(dev, Kind::Float, true, false);
        // Text height 8-20% of the image, random position and tilt.
        let half_h = uniform(b, 0.08, 0.2, dev);
        let aspect = canvas_w as f64 / font::GLYPH_H as f64 * (h as f64 / w as f64);
        let half_w = &half_h * aspect;
        let cx = uniform(b, -0.6, 0.6, dev);
        let cy = uniform(b, -0.7, 0.7, dev);
        let a = uniform(b, -30.0, 30.0, dev) * (PI / 180.0);
        let (cos, sin) = (a.cos(), a.sin());
        // Output (image) coordinates -> canvas coordinates.
        let row0 = Tensor::stack(
            &[
                &cos / &half_w,
                &sin / &half_w,
                -(&cos * &cx + &sin * &cy) / &half_w,
            ],
            1,
        );
        let row1 = Tensor::stack(
            &[
                -&sin / &half_h,
                &cos / &half_h,
                -(-&sin * &cx + &cos * &cy) / &half_h,
            ],
            1,
        );
        let theta = Tensor::stack(&[row0, row1], 1);
        let grid = Tensor::affine_grid_generator(&theta, [b, 1, h, w], false);
        let m = canvas.grid_sampler(&grid, 0, 0, false);
        let on = coin(b, t.p, dev);
        let opacity = (uniform(b, t.opacity_min, t.opacity_max, dev) * on).view([-1, 1, 1, 1]);
        x * (1.0 - m * opacity)
    }

    /// White square holes (erasing parts of the strokes).
    fn coarse_dropout(&mut self, x: &Tensor, b: i64, h: i64, w: i64) -> Tensor {
        let c = self.cfg.coarse_dropout.clone();
        let dev = x.device();
        let on = coin(b, c.p, dev).view([-1, 1, 1]);
        let half = (c.size * h.min(w) as f64 / 2.0).max(0.5);
        let yy = Tensor::arange(h, (Kind::Float, dev)).view([1, -1, 1]);
        let xx = Tensor::arange(w, (Kind::Float, dev)).view([1, 1, -1]);
        let mut holes = Tensor::zeros([b, h, w], (Kind::Bool, dev));
        for _ in 0..c.holes {
            let cy = uniform(b, 0.0, h as f64, dev).view([-1, 1, 1]);
            let cx = uniform(b, 0.0, w as f64, dev).view([-1, 1, 1]);
            let hole = (&yy - cy)
                .abs()
                .lt(half)
                .logical_and(&(&xx - cx).abs().lt(half));
            holes = holes.logical_or(&hole);
        }
        let holes = holes.logical_and(&on.to_kind(Kind::Bool)).unsqueeze(1);
        x.masked_fill(&holes, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4 x 3 x 16 x 16 white batch with a dark vertical bar left of centre.
    fn batch() -> Tensor {
        let x = Tensor::ones([4, 3, 16, 16], (Kind::Float, Device::Cpu));
        let _ = x.narrow(3, 5, 2).fill_(0.0);
        x
    }

    fn only(f: impl FnOnce(&mut AugmentConfig)) -> Augmenter {
        let mut cfg = AugmentConfig::none();
        f(&mut cfg);
        Augmenter::new(cfg, 1)
    }

    fn dark(x: &Tensor) -> i64 {
        x.lt(0.5).sum(Kind::Int64).int64_value(&[])
    }

    fn diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().sum(Kind::Float).double_value(&[])
    }

    #[test]
    fn nothing_enabled_is_the_identity() {
        tch::manual_seed(0);
        let x = batch();
        assert!(Augmenter::new(AugmentConfig::none(), 0).apply(&x).equal(&x));
    }

    #[test]
    fn hflip_mirrors() {
        tch::manual_seed(0);
        let x = batch();
        let y = only(|c| c.hflip.p = 1.0).apply(&x);
        assert!(y.equal(&x.flip([3])));
        assert_eq!(y.double_value(&[0, 0, 0, 9]), 0.0);
    }

    #[test]
    fn rotation_and_affine_move_ink_and_fill_white() {
        tch::manual_seed(0);
        let x = batch();
        let y = only(|c| {
            c.rotate.p = 1.0;
            c.rotate.degrees = 45.0;
        })
        .apply(&x);
        assert!(diff(&x, &y) > 10.0, "rotated");
        let y = only(|c| {
            c.affine.p = 1.0;
            c.affine.shift = 0.3;
            c.affine.scale = 0.0;
            c.affine.degrees = 0.0;
            c.affine.shear = 0.0;
        })
        .apply(&x);
        assert!(diff(&x, &y) > 10.0, "shifted");
        // Whatever moved in from outside the image is white.
        let white = Tensor::ones([4, 3, 16, 16], (Kind::Float, Device::Cpu));
        let y = only(|c| {
            c.affine.p = 1.0;
            c.affine.shift = 0.4;
        })
        .apply(&white);
        assert!(y.min().double_value(&[]) > 0.999, "no black borders");
    }

    #[test]
    fn erosion_thins_and_dilation_thickens_strokes() {
        tch::manual_seed(0);
        let x = batch();
        let thin = only(|c| c.erode.p = 1.0).apply(&x);
        let thick = only(|c| c.dilate.p = 1.0).apply(&x);
        assert!(dark(&thin) < dark(&x), "{} < {}", dark(&thin), dark(&x));
        assert!(dark(&thick) > dark(&x));
    }

    #[test]
    fn noise_has_the_configured_strength() {
        tch::manual_seed(0);
        let x = Tensor::full([4, 3, 32, 32], 0.5, (Kind::Float, Device::Cpu));
        let y = only(|c| {
            c.noise.p = 1.0;
            c.noise.std = 0.1;
        })
        .apply(&x);
        let std = (&y - &x).std(true).double_value(&[]);
        assert!((std - 0.1).abs() < 0.01, "{std}");
    }

    #[test]
    fn motion_blur_spreads_a_dot_along_a_line() {
        tch::manual_seed(0);
        let x = Tensor::ones([1, 3, 15, 15], (Kind::Float, Device::Cpu));
        let _ = x.narrow(2, 7, 1).narrow(3, 7, 1).fill_(0.0);
        let y = only(|c| {
            c.motion_blur.p = 1.0;
            c.motion_blur.size = 5;
        })
        .apply(&x);
        let touched = y.lt(0.999).sum(Kind::Int64).int64_value(&[]);
        assert_eq!(touched, 3 * 5, "a 5-pixel line per channel");
        let ink = |t: &Tensor| t.neg().g_add_scalar(1.0).sum(Kind::Float).double_value(&[]);
        let (ink_before, ink_after) = (ink(&x), ink(&y));
        assert!((ink_before - ink_after).abs() < 1e-4, "ink is conserved");
    }

    #[test]
    fn coarse_dropout_punches_white_holes() {
        tch::manual_seed(0);
        let black = Tensor::zeros([2, 3, 20, 20], (Kind::Float, Device::Cpu));
        let y = only(|c| {
            c.coarse_dropout.p = 1.0;
            c.coarse_dropout.holes = 2;
            c.coarse_dropout.size = 0.2;
        })
        .apply(&black);
        let white = y.gt(0.99).sum(Kind::Int64).int64_value(&[]);
        assert!(
            white >= 2 * 3 * 16,
            "at least one 4x4 hole per image: {white}"
        );
        assert!(white <= 2 * 3 * 2 * 25, "{white}");
    }

    #[test]
    fn brightness_contrast_changes_levels() {
        tch::manual_seed(0);
        let x = batch();
        let y = only(|c| {
            c.brightness_contrast.p = 1.0;
            c.brightness_contrast.brightness = 0.3;
            c.brightness_contrast.contrast = 0.3;
        })
        .apply(&x);
        assert!(diff(&x, &y) > 1.0);
        assert!(y.max().double_value(&[]) <= 1.0 && y.min().double_value(&[]) >= 0.0);
    }

    #[test]
    fn elastic_deforms_gently() {
        tch::manual_seed(0);
        let x = batch();
        let y = only(|c| {
            c.elastic.p = 1.0;
            c.elastic.alpha = 0.05;
            c.elastic.sigma = 0.25;
        })
        .apply(&x);
        let changed = diff(&x, &y);
        assert!(changed > 1.0, "deformed: {changed}");
        let dark_ratio = dark(&y) as f64 / dark(&x) as f64;
        assert!(
            (0.5..2.0).contains(&dark_ratio),
            "the stroke survives: {dark_ratio}"
        );
    }

    #[test]
    fn text_stamps_dark_semi_transparent_marks_on_white() {
        tch::manual_seed(3);
        let white = Tensor::ones([4, 3, 64, 64], (Kind::Float, Device::Cpu));
        let y = only(|c| {
            c.text.p = 1.0;
            c.text.opacity_min = 0.5;
            c.text.opacity_max = 0.5;
        })
        .apply(&white);
        for i in 0..4 {
            let img = y.get(i);
            let marked = img.lt(0.9).sum(Kind::Int64).int64_value(&[]);
            assert!(marked > 10, "image {i} has text: {marked}");
            // Semi-transparent: never darker than 1 - opacity.
            assert!(img.min().double_value(&[]) >= 0.5 - 1e-4);
        }
    }
}
