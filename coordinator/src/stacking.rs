//! Stacking, honestly: a multinomial logistic regression over the members'
//! out-of-fold probabilities, whose own out-of-fold accuracy comes from a
//! second cross-validation on the same folds (each fold's rows are scored
//! by a model fitted on the other folds only), and whose test prediction
//! comes from a model fitted on every row. Pure: no store, no I/O.
//!
//! The model is the multinomial logit with class-shared member weights
//! (log-linear pooling):
//!
//! `P(c | x) = softmax_c(b_c + sum_m w_m * ln p_m(c | x))`
//!
//! It has M + C parameters (20 members of 500 classes: 520), where the
//! fully connected multinomial regression on all M x C probabilities has
//! M x C x C (5 million), more than the 15,000 training rows can fit and
//! far too slow on a coordinator's CPU. It is convex; fitted by L-BFGS with
//! a backtracking line search and a small L2 penalty.

/// Probabilities below this are taken at it before the logarithm.
const FLOOR: f32 = 1e-7;
/// L2 penalty on the weights and biases (per row).
const L2: f64 = 1e-4;
const MAX_ITERATIONS: usize = 100;
/// L-BFGS memory.
const HISTORY: usize = 8;

/// The members' log-probabilities, `[rows][members][classes]`, shared by
/// every fit.
pub struct Features {
    rows: usize,
    members: usize,
    classes: usize,
    log_p: Vec<f32>,
}

impl Features {
    /// From each member's row-major `[rows, classes]` probabilities.
    pub fn new(members: &[&[f32]], rows: usize, classes: usize) -> Features {
        let m = members.len();
        let mut log_p = vec![0f32; rows * m * classes];
        for r in 0..rows {
            for (j, p) in members.iter().enumerate() {
                let src = &p[r * classes..(r + 1) * classes];
                let dst = &mut log_p[(r * m + j) * classes..(r * m + j + 1) * classes];
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = s.max(FLOOR).ln();
                }
            }
        }
        Features {
            rows,
            members: m,
            classes,
            log_p,
        }
    }

    fn row(&self, r: usize) -> &[f32] {
        let n = self.members * self.classes;
        &self.log_p[r * n..(r + 1) * n]
    }
}

/// A fitted stacker: one weight per member, one bias per class.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub weights: Vec<f64>,
    pub biases: Vec<f64>,
}

impl Model {
    /// Probabilities of every row of `f`, row-major `[rows, classes]`.
    pub fn predict(&self, f: &Features) -> Vec<f32> {
        let c = f.classes;
        let mut out = vec![0f32; f.rows * c];
        let mut z = vec![0f64; c];
        for r in 0..f.rows {
            logits(self, f.row(r), c, &mut z);
            softmax(&mut z);
            for (o, &p) in out[r * c..(r + 1) * c].iter_mut().zip(&z) {
                *o = p as f32;
            }
        }
        out
    }
}

fn logits(model: &Model, row: &[f32], classes: usize, z: &mut [f64]) {
    z.copy_from_slice(&model.biases);
    for (j, &w) in model.weights.iter().enumerate() {
        let lp = &row[j * classes..(j + 1) * classes];
        for (zc, &l) in z.iter_mut().zip(lp) {
            *zc += w * f64::from(l);
        }
    }
}

fn softmax(z: &mut [f64]) {
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for v in z.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in z.iter_mut() {
        *v /= sum;
    }
}

/// Mean negative log-likelihood (plus the penalty) over `rows`, and its
/// gradient in `grad` (`[weights..., biases...]`).
fn loss(theta: &[f64], f: &Features, targets: &[u32], rows: &[usize], grad: &mut [f64]) -> f64 {
    let (m, c) = (f.members, f.classes);
    let model = Model {
        weights: theta[..m].to_vec(),
        biases: theta[m..].to_vec(),
    };
    grad.iter_mut().for_each(|g| *g = 0.0);
    let mut z = vec![0f64; c];
    let mut total = 0.0;
    for &r in rows {
        let row = f.row(r);
        logits(&model, row, c, &mut z);
        let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let log_sum = z.iter().map(|v| (v - max).exp()).sum::<f64>().ln() + max;
        let t = targets[r] as usize;
        total += log_sum - z[t];
        // d/dz_c = p_c - [c = t]
        for v in z.iter_mut() {
            *v = (*v - log_sum).exp();
        }
        z[t] -= 1.0;
        for j in 0..m {
            let lp = &row[j * c..(j + 1) * c];
            grad[j] += z
                .iter()
                .zip(lp)
                .map(|(d, &l)| d * f64::from(l))
                .sum::<f64>();
        }
        for (g, d) in grad[m..].iter_mut().zip(&z) {
            *g += d;
        }
    }
    let n = rows.len().max(1) as f64;
    let mut value = total / n;
    for (g, &x) in grad.iter_mut().zip(theta) {
        *g = *g / n + L2 * x;
        value += 0.5 * L2 * x * x;
    }
    value
}

/// Fits the stacker on `rows` (indices into `f` and `targets`).
pub fn fit(f: &Features, targets: &[u32], rows: &[usize]) -> Model {
    let (m, c) = (f.members, f.classes);
    // Start at the geometric mean of the members.
    let mut theta: Vec<f64> = std::iter::repeat_n(1.0 / m as f64, m)
        .chain(std::iter::repeat_n(0.0, c))
        .collect();
    let mut grad = vec![0.0; m + c];
    let mut value = loss(&theta, f, targets, rows, &mut grad);
    let mut history: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> =
        std::collections::VecDeque::new();
    let mut next_grad = vec![0.0; m + c];
    for _ in 0..MAX_ITERATIONS {
        let direction = lbfgs_direction(&grad, &history);
        let slope: f64 = direction.iter().zip(&grad).map(|(d, g)| d * g).sum();
        if slope >= 0.0 {
            history.clear();
            continue;
        }
        let mut step = 1.0;
        let (candidate, next_value) = loop {
            let candidate: Vec<f64> = theta
                .iter()
                .zip(&direction)
                .map(|(t, d)| t + step * d)
                .collect();
            let v = loss(&candidate, f, targets, rows, &mut next_grad);
            if v <= value + 1e-4 * step * slope || step < 1e-10 {
                break (candidate, v);
            }
            step *= 0.5;
        };
        let s: Vec<f64> = candidate.iter().zip(&theta).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = next_grad.iter().zip(&grad).map(|(a, b)| a - b).collect();
        let sy: f64 = s.iter().zip(&y).map(|(a, b)| a * b).sum();
        let improvement = value - next_value;
        theta = candidate;
        grad.copy_from_slice(&next_grad);
        value = next_value;
        if sy > 1e-12 {
            history.push_back((s, y, 1.0 / sy));
            if history.len() > HISTORY {
                history.pop_front();
            }
        }
        let gnorm = grad.iter().map(|g| g * g).sum::<f64>().sqrt();
        if gnorm < 1e-6 || improvement.abs() < 1e-9 {
            break;
        }
    }
    Model {
        weights: theta[..m].to_vec(),
        biases: theta[m..].to_vec(),
    }
}

/// The two-loop recursion: an approximation of -H^-1 g.
fn lbfgs_direction(
    grad: &[f64],
    history: &std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)>,
) -> Vec<f64> {
    let mut q = grad.to_vec();
    let mut alphas = Vec::with_capacity(history.len());
    for (s, y, rho) in history.iter().rev() {
        let a = rho * s.iter().zip(&q).map(|(a, b)| a * b).sum::<f64>();
        for (qi, yi) in q.iter_mut().zip(y) {
            *qi -= a * yi;
        }
        alphas.push(a);
    }
    if let Some((s, y, _)) = history.back() {
        let gamma = s.iter().zip(y).map(|(a, b)| a * b).sum::<f64>()
            / y.iter().map(|v| v * v).sum::<f64>().max(1e-300);
        q.iter_mut().for_each(|v| *v *= gamma);
    }
    for ((s, y, rho), a) in history.iter().zip(alphas.iter().rev()) {
        let b = rho * y.iter().zip(&q).map(|(a, b)| a * b).sum::<f64>();
        for (qi, si) in q.iter_mut().zip(s) {
            *qi += (a - b) * si;
        }
    }
    q.iter_mut().for_each(|v| *v = -*v);
    q
}

/// What stacking gives: out-of-fold probabilities from the second
/// cross-validation, test probabilities from the model on every row, and
/// that model.
pub struct Stacked {
    pub oof: Vec<f32>,
    pub test: Vec<f32>,
    pub model: Model,
}

/// Stacks members given by their OOF and test probabilities; `folds` is the
/// fold of every training row (the members' shared split).
pub fn stack(
    oof: &[&[f32]],
    test: &[&[f32]],
    rows: usize,
    test_rows: usize,
    classes: usize,
    targets: &[u32],
    folds: &[u32],
) -> Stacked {
    let features = Features::new(oof, rows, classes);
    // Every member is complete, so every row has a fold; a row without one
    // (u32::MAX) would be scored by the model fitted on every row.
    let k = folds
        .iter()
        .copied()
        .filter(|&f| f != u32::MAX)
        .max()
        .map_or(0, |m| m + 1);
    // The K fold fits and the fit on every row are independent: one
    // thread each (the features are shared, read-only).
    let fits: Vec<Model> = std::thread::scope(|scope| {
        let features = &features;
        let handles: Vec<_> = (0..=k)
            .map(|fold| {
                scope.spawn(move || {
                    let train: Vec<usize> = (0..rows)
                        .filter(|&r| fold == k || folds[r] != fold)
                        .collect();
                    fit(features, targets, &train)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a stacking fit panicked"))
            .collect()
    });
    let mut out = vec![0f32; rows * classes];
    let mut z = vec![0f64; classes];
    for r in 0..rows {
        let model = &fits[(folds[r] as usize).min(k as usize)];
        logits(model, features.row(r), classes, &mut z);
        softmax(&mut z);
        for (o, &p) in out[r * classes..(r + 1) * classes].iter_mut().zip(&z) {
            *o = p as f32;
        }
    }
    let model = fits[k as usize].clone();
    let test_features = Features::new(test, test_rows, classes);
    Stacked {
        oof: out,
        test: model.predict(&test_features),
        model,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argmax(p: &[f32]) -> usize {
        p.iter()
            .enumerate()
            .fold(0, |b, (j, &v)| if v > p[b] { j } else { b })
    }

    /// Two members over 3 classes: one right on 80% of rows, one right on
    /// 55% and confidently wrong otherwise.
    fn members(rows: usize) -> (Vec<f32>, Vec<f32>, Vec<u32>) {
        let mut a = Vec::new();
        let mut b = Vec::new();
        let mut t = Vec::new();
        for r in 0..rows {
            let target = (r % 3) as u32;
            t.push(target);
            let pick = |right: bool| {
                if right {
                    target as usize
                } else {
                    (target as usize + 1) % 3
                }
            };
            for (v, right, conf) in [(&mut a, r % 5 != 0, 0.6f32), (&mut b, r % 20 < 11, 0.9)] {
                let p = pick(right);
                for c in 0..3 {
                    v.push(if c == p { conf } else { (1.0 - conf) / 2.0 });
                }
            }
        }
        (a, b, t)
    }

    #[test]
    fn the_fit_lowers_the_loss_and_prefers_the_better_member() {
        let (a, b, t) = members(300);
        let f = Features::new(&[&a, &b], 300, 3);
        let rows: Vec<usize> = (0..300).collect();
        let mut g = vec![0.0; 5];
        let start = loss(&[0.5, 0.5, 0.0, 0.0, 0.0], &f, &t, &rows, &mut g);
        let model = fit(&f, &t, &rows);
        let theta: Vec<f64> = model.weights.iter().chain(&model.biases).copied().collect();
        let end = loss(&theta, &f, &t, &rows, &mut g);
        assert!(end < start, "{end} < {start}");
        assert!(model.weights[0] > model.weights[1], "{model:?}");
        // At the optimum the gradient vanishes.
        assert!(g.iter().all(|v| v.abs() < 1e-3), "{g:?}");
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (a, b, t) = members(60);
        let f = Features::new(&[&a, &b], 60, 3);
        let rows: Vec<usize> = (0..60).collect();
        let theta = [0.3, 0.9, 0.1, -0.2, 0.05];
        let mut g = vec![0.0; 5];
        loss(&theta, &f, &t, &rows, &mut g);
        for i in 0..5 {
            let mut up = theta;
            up[i] += 1e-6;
            let mut down = theta;
            down[i] -= 1e-6;
            let mut scratch = vec![0.0; 5];
            let numeric = (loss(&up, &f, &t, &rows, &mut scratch)
                - loss(&down, &f, &t, &rows, &mut scratch))
                / 2e-6;
            assert!((numeric - g[i]).abs() < 1e-5, "{i}: {numeric} vs {}", g[i]);
        }
    }

    #[test]
    fn out_of_fold_rows_are_scored_by_models_that_did_not_see_them() {
        // Member b is right on exactly the rows of fold 0 and wrong
        // elsewhere: a model fitted on folds 1 and 2 learns to distrust it,
        // so honest OOF accuracy on fold 0 falls; fitting on every row
        // would not show that.
        let rows = 300;
        let (a, _, t) = members(rows);
        let folds: Vec<u32> = (0..rows as u32).map(|r| r % 3).collect();
        let mut b = Vec::new();
        for r in 0..rows {
            let right = folds[r] == 0;
            let p = if right {
                t[r] as usize
            } else {
                (t[r] as usize + 1) % 3
            };
            for c in 0..3 {
                b.push(if c == p { 0.98 } else { 0.01 });
            }
        }
        let s = stack(&[&a, &b], &[&a, &b], rows, rows, 3, &t, &folds);
        let fold0: Vec<usize> = (0..rows).filter(|&r| folds[r] == 0).collect();
        let honest = fold0
            .iter()
            .filter(|&&r| argmax(&s.oof[r * 3..r * 3 + 3]) == t[r] as usize)
            .count() as f64
            / fold0.len() as f64;
        // Member b alone is perfect on fold 0; the honest stacker is not
        // fooled into trusting it there.
        assert!(honest < 0.95, "{honest}");
        assert_eq!(s.test.len(), rows * 3);
        let sums_ok = s
            .test
            .chunks(3)
            .all(|p| (p.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        assert!(sums_ok);
    }
}
