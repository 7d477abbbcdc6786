//! Ensembling arithmetic, pure: no store, no I/O.
//!
//! A *member* is one complete configuration of a sweep: its out-of-fold
//! (OOF) probabilities, one row per training row (each fold's validation
//! rows put together), and its test probabilities (the mean of its fold
//! models' softmax). Every method reports its OOF accuracy, so the gain over
//! the best single member is visible before submitting.
//!
//! - soft: the mean of the members' probabilities;
//! - hard: a majority of the members' argmaxes, ties broken by the summed
//!   probability of the tied classes (the output "probabilities" are the
//!   vote shares);
//! - weighted: non-negative weights summing to 1 that minimise the OOF
//!   log-loss of the weighted mean, fitted by exponentiated-gradient descent
//!   on the simplex (the problem is convex, so it converges to the optimum);
//! - greedy: Caruana et al.'s ensemble selection: start empty, repeatedly
//!   add (with replacement) the member that most improves OOF accuracy,
//!   stop when none does; weights are the selection counts;
//! - stacking: a multinomial logistic regression on the members' OOF
//!   probabilities (`stacking.rs`), scored by a second cross-validation on
//!   the same folds; its weights are the fitted member weights, normalised.
//!   Greedy's OOF accuracy is computed beside it, to say whether it wins.

/// How members are combined (defined with the rest of the contract).
pub use sweepfold_common::EnsembleMethod as Method;

/// Row-major probabilities `[rows, classes]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Probs {
    pub rows: usize,
    pub classes: usize,
    pub data: Vec<f32>,
}

impl Probs {
    pub fn zeros(rows: usize, classes: usize) -> Probs {
        Probs {
            rows,
            classes,
            data: vec![0.0; rows * classes],
        }
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.classes..(r + 1) * self.classes]
    }

    /// Index of the largest value of each row (first on ties).
    pub fn argmax(&self) -> Vec<u32> {
        (0..self.rows).map(|r| argmax(self.row(r)) as u32).collect()
    }
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// One member's predictions.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: String,
    pub oof: Probs,
    pub test: Probs,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub method: Method,
    /// Weight of each member (sum 1; hard voting: 1/M each).
    pub weights: Vec<f64>,
    pub oof: Probs,
    pub test: Probs,
    pub oof_accuracy: f64,
    pub best_member: usize,
    pub best_member_accuracy: f64,
    /// For stacking: greedy selection's OOF accuracy on the same members.
    pub greedy_oof_accuracy: Option<f64>,
}

pub fn accuracy(p: &Probs, targets: &[u32]) -> f64 {
    let hits = p
        .argmax()
        .iter()
        .zip(targets)
        .filter(|(a, b)| a == b)
        .count();
    hits as f64 / targets.len().max(1) as f64
}

/// e^x for f32, vectorisable: x = n ln2 + r with a Cody-Waite reduction
/// (ln2 split in a high part exact in f32 and a low correction), e^r by a
/// degree-6 polynomial on |r| <= ln2/2, times 2^n built from the exponent
/// bits. Relative error below 3e-7 over the range softmax uses.
///
/// Written so the compiler vectorises it: comparisons instead of `clamp`,
/// and n read from the bits of the rounded float instead of an `as i32`
/// cast (whose saturation semantics defeat vectorisation).
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_888_9)))));
    let n_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    p * f32::from_bits(((n_int + 127) << 23) as u32)
}

/// Lanes of the row reductions: independent accumulators the compiler can
/// keep in one SIMD register (float addition is not reassociated for it).
const LANES: usize = 8;

/// `out += weight * softmax(row)`, with `tmp` as scratch of the row's length.
#[inline]
fn softmax_row_into(row: &[f32], tmp: &mut [f32], out: &mut [f32], weight: f32) {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &v in lanes.iter().chain(rest) {
        max = if v > max { v } else { max };
    }
    let mut sums = [0f32; LANES];
    let full = row.len() - rest.len();
    for (t, c) in tmp[..full]
        .chunks_exact_mut(LANES)
        .zip(row[..full].chunks_exact(LANES))
    {
        for i in 0..LANES {
            let e = fast_exp(c[i] - max);
            t[i] = e;
            sums[i] += e;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for (t, &v) in tmp[full..].iter_mut().zip(rest) {
        *t = fast_exp(v - max);
        sum += *t;
    }
    let scale = weight / sum;
    for (o, &t) in out.iter_mut().zip(tmp.iter()) {
        *o += t * scale;
    }
}

/// Soft voting of raw logits: the mean of the softmaxes of `members`
/// (each `[rows, classes]` row-major), the kernel behind every soft
/// combination (a configuration's test prediction is this over its folds).
///
/// Rows are split into blocks, one per core; within a block every member is
/// applied to a row while its accumulator row is still in the L1 cache, so
/// the output is written once instead of once per member.
pub fn mean_softmax(members: &[&[f32]], rows: usize, classes: usize) -> Probs {
    let mut out = Probs::zeros(rows, classes);
    if members.is_empty() || rows == 0 {
        return out;
    }
    for m in members {
        assert_eq!(m.len(), rows * classes, "every member is [rows, classes]");
    }
    let weight = 1.0 / members.len() as f32;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(rows);
    let per = rows.div_ceil(threads);
    std::thread::scope(|s| {
        for (block, dst) in out.data.chunks_mut(per * classes).enumerate() {
            s.spawn(move || {
                let mut tmp = vec![0f32; classes];
                let first = block * per;
                for (i, out_row) in dst.chunks_exact_mut(classes).enumerate() {
                    let r = first + i;
                    for m in members {
                        softmax_row_into(
                            &m[r * classes..(r + 1) * classes],
                            &mut tmp,
                            out_row,
                            weight,
                        );
                    }
                }
            });
        }
    });
    out
}

/// `softmax(row)` written into `out` (for scattering rows one by one).
pub fn softmax_row(row: &[f32], out: &mut [f32]) {
    out.iter_mut().for_each(|o| *o = 0.0);
    let mut tmp = vec![0f32; row.len()];
    softmax_row_into(row, &mut tmp, out, 1.0);
}

fn weighted_mean(parts: &[&Probs], weights: &[f64]) -> Probs {
    let mut out = Probs::zeros(parts[0].rows, parts[0].classes);
    for (p, &w) in parts.iter().zip(weights) {
        if w == 0.0 {
            continue;
        }
        let w = w as f32;
        for (o, &v) in out.data.iter_mut().zip(&p.data) {
            *o += w * v;
        }
    }
    out
}

/// Combines `members` (at least one) by `method`; `targets` are the
/// training rows' classes and `folds` their folds (only stacking uses them).
pub fn combine(members: &[Member], targets: &[u32], folds: &[u32], method: Method) -> Outcome {
    assert!(!members.is_empty(), "at least one member");
    let accs: Vec<f64> = members.iter().map(|m| accuracy(&m.oof, targets)).collect();
    let best_member = (0..members.len())
        .max_by(|&a, &b| accs[a].total_cmp(&accs[b]).then(b.cmp(&a)))
        .expect("non-empty");
    let m = members.len();
    let (weights, oof, test) = match method {
        Method::Soft => {
            let w = vec![1.0 / m as f64; m];
            let oof = weighted_mean(&members.iter().map(|x| &x.oof).collect::<Vec<_>>(), &w);
            let test = weighted_mean(&members.iter().map(|x| &x.test).collect::<Vec<_>>(), &w);
            (w, oof, test)
        }
        Method::Hard => (
            vec![1.0 / m as f64; m],
            hard_vote(&members.iter().map(|x| &x.oof).collect::<Vec<_>>()),
            hard_vote(&members.iter().map(|x| &x.test).collect::<Vec<_>>()),
        ),
        Method::Weighted => {
            let w = fit_weights(members, targets);
            let oof = weighted_mean(&members.iter().map(|x| &x.oof).collect::<Vec<_>>(), &w);
            let test = weighted_mean(&members.iter().map(|x| &x.test).collect::<Vec<_>>(), &w);
            (w, oof, test)
        }
        Method::Greedy => {
            let w = greedy_weights(members, targets);
            let oof = weighted_mean(&members.iter().map(|x| &x.oof).collect::<Vec<_>>(), &w);
            let test = weighted_mean(&members.iter().map(|x| &x.test).collect::<Vec<_>>(), &w);
            (w, oof, test)
        }
        Method::Stacking => {
            let (rows, classes) = (members[0].oof.rows, members[0].oof.classes);
            let s = crate::stacking::stack(
                &members
                    .iter()
                    .map(|x| x.oof.data.as_slice())
                    .collect::<Vec<_>>(),
                &members
                    .iter()
                    .map(|x| x.test.data.as_slice())
                    .collect::<Vec<_>>(),
                rows,
                members[0].test.rows,
                classes,
                targets,
                folds,
            );
            let total: f64 = s
                .model
                .weights
                .iter()
                .map(|w| w.abs())
                .sum::<f64>()
                .max(1e-12);
            let w = s.model.weights.iter().map(|w| w / total).collect();
            let oof = Probs {
                rows,
                classes,
                data: s.oof,
            };
            let test = Probs {
                rows: members[0].test.rows,
                classes,
                data: s.test,
            };
            (w, oof, test)
        }
    };
    let greedy_oof_accuracy = (method == Method::Stacking).then(|| {
        let w = greedy_weights(members, targets);
        accuracy(
            &weighted_mean(&members.iter().map(|x| &x.oof).collect::<Vec<_>>(), &w),
            targets,
        )
    });
    let oof_accuracy = accuracy(&oof, targets);
    Outcome {
        method,
        weights,
        oof,
        test,
        oof_accuracy,
        best_member,
        best_member_accuracy: accs[best_member],
        greedy_oof_accuracy,
    }
}

/// Vote shares; the argmax of each row is the majority class, ties broken
/// by the summed probability of the tied classes (a tiny bonus below one
/// vote's share).
fn hard_vote(parts: &[&Probs]) -> Probs {
    let (rows, classes) = (parts[0].rows, parts[0].classes);
    let share = 1.0 / parts.len() as f32;
    let mut out = Probs::zeros(rows, classes);
    let mut summed = vec![0f32; classes];
    for r in 0..rows {
        summed.iter_mut().for_each(|s| *s = 0.0);
        let o = &mut out.data[r * classes..(r + 1) * classes];
        for p in parts {
            let row = p.row(r);
            o[argmax(row)] += share;
            for (s, &v) in summed.iter_mut().zip(row) {
                *s += v;
            }
        }
        let top = o.iter().copied().fold(0.0, f32::max);
        let tied: Vec<usize> = (0..classes).filter(|&c| o[c] == top).collect();
        if tied.len() > 1 {
            let winner = *tied
                .iter()
                .max_by(|&&a, &&b| summed[a].total_cmp(&summed[b]).then(b.cmp(&a)))
                .expect("non-empty");
            // Break the tie in the output itself: the winner's share is
            // raised by less than any real vote difference.
            o[winner] += share * 1e-3;
        }
    }
    out
}

/// Simplex weights minimising OOF log-loss (exponentiated gradient).
fn fit_weights(members: &[Member], targets: &[u32]) -> Vec<f64> {
    let m = members.len();
    if m == 1 {
        return vec![1.0];
    }
    // Only each member's probability of the true class matters.
    let p: Vec<Vec<f64>> = members
        .iter()
        .map(|x| {
            targets
                .iter()
                .enumerate()
                .map(|(r, &t)| f64::from(x.oof.row(r)[t as usize]).max(1e-12))
                .collect()
        })
        .collect();
    let n = targets.len() as f64;
    let mut w = vec![1.0 / m as f64; m];
    let eta = 0.5;
    for _ in 0..2000 {
        let q: Vec<f64> = (0..targets.len())
            .map(|r| (0..m).map(|k| w[k] * p[k][r]).sum::<f64>())
            .collect();
        // d/dw_k of mean(-ln q) = -mean(p_k / q)
        let grad: Vec<f64> = (0..m)
            .map(|k| -p[k].iter().zip(&q).map(|(a, b)| a / b).sum::<f64>() / n)
            .collect();
        let mut next: Vec<f64> = w
            .iter()
            .zip(&grad)
            .map(|(wk, g)| wk * (-eta * g).exp())
            .collect();
        let z: f64 = next.iter().sum();
        next.iter_mut().for_each(|x| *x /= z);
        let change: f64 = next.iter().zip(&w).map(|(a, b)| (a - b).abs()).sum();
        w = next;
        if change < 1e-10 {
            break;
        }
    }
    // Exact zeros for negligible weights keep the report readable.
    w.iter_mut().for_each(|x| {
        if *x < 1e-6 {
            *x = 0.0
        }
    });
    let z: f64 = w.iter().sum();
    w.into_iter().map(|x| x / z).collect()
}

/// Caruana ensemble selection with replacement on OOF accuracy.
fn greedy_weights(members: &[Member], targets: &[u32]) -> Vec<f64> {
    let m = members.len();
    let (rows, classes) = (members[0].oof.rows, members[0].oof.classes);
    let mut counts = vec![0usize; m];
    let mut sum = Probs::zeros(rows, classes);
    let mut current = f64::NEG_INFINITY;
    for _round in 0..(4 * m).max(20) {
        let mut best: Option<(usize, f64)> = None;
        for (k, member) in members.iter().enumerate() {
            let hits = (0..rows)
                .filter(|&r| {
                    let s = sum.row(r);
                    let p = member.oof.row(r);
                    let mut arg = 0;
                    let mut top = f32::NEG_INFINITY;
                    for c in 0..classes {
                        let v = s[c] + p[c];
                        if v > top {
                            top = v;
                            arg = c;
                        }
                    }
                    arg as u32 == targets[r]
                })
                .count();
            let acc = hits as f64 / rows.max(1) as f64;
            if best.is_none_or(|(_, a)| acc > a) {
                best = Some((k, acc));
            }
        }
        let (k, acc) = best.expect("at least one member");
        if acc <= current {
            break;
        }
        current = acc;
        counts[k] += 1;
        for (s, &v) in sum.data.iter_mut().zip(&members[k].oof.data) {
            *s += v;
        }
    }
    let total: usize = counts.iter().sum();
    counts.iter().map(|&c| c as f64 / total as f64).collect()
}

/// Share of rows on which each pair of members predicts differently.
pub fn disagreement(members: &[Member]) -> Vec<Vec<f64>> {
    let preds: Vec<Vec<u32>> = members.iter().map(|m| m.oof.argmax()).collect();
    let n = preds.first().map_or(0, Vec::len).max(1) as f64;
    preds
        .iter()
        .map(|a| {
            preds
                .iter()
                .map(|b| a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / n)
                .collect()
        })
        .collect()
}

/// Accuracy per class of a prediction.
pub fn per_class_accuracy(p: &Probs, targets: &[u32]) -> Vec<f64> {
    let mut hits = vec![0usize; p.classes];
    let mut total = vec![0usize; p.classes];
    // Rows no member covers (u32::MAX) or out of range are not counted.
    for (pred, &t) in p.argmax().into_iter().zip(targets) {
        if t as usize >= p.classes {
            continue;
        }
        total[t as usize] += 1;
        if pred == t {
            hits[t as usize] += 1;
        }
    }
    hits.iter()
        .zip(&total)
        .map(|(&h, &t)| if t == 0 { 0.0 } else { h as f64 / t as f64 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probs(rows: &[&[f32]]) -> Probs {
        Probs {
            rows: rows.len(),
            classes: rows[0].len(),
            data: rows.iter().flat_map(|r| r.iter().copied()).collect(),
        }
    }

    fn member(name: &str, oof: &[&[f32]]) -> Member {
        Member {
            name: name.into(),
            oof: probs(oof),
            test: probs(oof),
        }
    }

    #[test]
    fn fast_exp_is_accurate() {
        // Softmax arguments are <= 0; below e^-80 (1.8e-35) nothing matters.
        for i in -8000..8000 {
            let x = i as f32 / 100.0;
            let (a, b) = (fast_exp(x), x.exp());
            assert!(((a - b) / b).abs() < 3e-7, "exp({x}) = {a}, expected {b}");
        }
        assert_eq!(fast_exp(-200.0), fast_exp(-87.0));
    }

    #[test]
    fn softmax_kernel_matches_the_definition() {
        let logits = [1.0f32, 2.0, 3.0, 0.0, 0.0, 0.0, 100.0, 0.0, -100.0];
        let p = mean_softmax(&[&logits], 3, 3);
        let e: f32 = 1f32.exp() + 2f32.exp() + 3f32.exp();
        assert!((p.data[2] - 3f32.exp() / e).abs() < 1e-6);
        assert!((p.data[3] - 1.0 / 3.0).abs() < 1e-6);
        assert!(
            (p.data[6] - 1.0).abs() < 1e-6,
            "no overflow for large logits"
        );
        let twice = mean_softmax(&[&logits, &logits], 3, 3);
        for (a, b) in twice.data.iter().zip(&p.data) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn soft_voting_averages_probabilities() {
        let a = member("a", &[&[0.6, 0.4], &[0.2, 0.8]]);
        let b = member("b", &[&[0.2, 0.8], &[0.4, 0.6]]);
        let out = combine(&[a, b], &[0, 1], &[], Method::Soft);
        for (x, y) in out.oof.data.iter().zip([0.4, 0.6, 0.3, 0.7]) {
            assert!((x - y).abs() < 1e-6, "{:?}", out.oof.data);
        }
        assert_eq!(out.oof_accuracy, 0.5);
        assert_eq!(out.weights, vec![0.5, 0.5]);
        assert_eq!(out.best_member, 0, "both 0.5: the first");
    }

    #[test]
    fn hard_voting_majority_and_tie_break_by_summed_probability() {
        // Two votes for class 1, one for class 0: class 1, although the
        // dissenting member is the most confident.
        let a = member("a", &[&[0.1, 0.8, 0.1]]);
        let b = member("b", &[&[0.1, 0.6, 0.3]]);
        let c = member("c", &[&[0.99, 0.005, 0.005]]);
        let out = combine(&[a, b, c], &[1], &[], Method::Hard);
        assert_eq!(out.oof.argmax(), vec![1]);
        // One vote each; summed probability: class 0 0.85, class 1 1.15.
        let two = combine(
            &[member("x", &[&[0.55, 0.45]]), member("y", &[&[0.30, 0.70]])],
            &[1],
            &[],
            Method::Hard,
        );
        assert_eq!(two.oof.argmax(), vec![1]);
        // The vote shares stay readable: just above one half.
        assert!(
            two.oof.data[1] > 0.5 && two.oof.data[1] < 0.501,
            "{:?}",
            two.oof.data
        );
    }

    #[test]
    fn hard_voting_three_way_tie_uses_summed_probability() {
        let a = member("a", &[&[0.5, 0.0, 0.49]]);
        let b = member("b", &[&[0.3, 0.0, 0.7]]);
        let c = member("c", &[&[0.1, 0.85, 0.05]]);
        let out = combine(&[a, b, c], &[2], &[], Method::Hard);
        // Sums: 0.9, 0.85, 1.24.
        assert_eq!(out.oof.argmax(), vec![2]);
    }

    #[test]
    fn weighted_prefers_the_better_member() {
        // a is right everywhere with confidence 0.9, b is uninformative.
        let a = member("a", &[&[0.9, 0.1], &[0.1, 0.9], &[0.9, 0.1], &[0.1, 0.9]]);
        let half: &[f32] = &[0.5, 0.5];
        let b = member("b", &[half; 4]);
        let out = combine(&[a, b], &[0, 1, 0, 1], &[], Method::Weighted);
        assert!(out.weights[0] > 0.99, "{:?}", out.weights);
        assert!((out.weights.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(out.oof_accuracy, 1.0);
    }

    #[test]
    fn weighted_mixes_complementary_members() {
        // Each member is confidently right on half the rows and unsure on
        // the other half: the optimum is an even mix.
        let a = member("a", &[&[0.99, 0.01], &[0.5, 0.5]]);
        let b = member("b", &[&[0.5, 0.5], &[0.01, 0.99]]);
        let out = combine(&[a, b], &[0, 1], &[], Method::Weighted);
        assert!((out.weights[0] - 0.5).abs() < 1e-3, "{:?}", out.weights);
    }

    #[test]
    fn greedy_picks_a_weaker_but_diverse_member() {
        // Targets: 0 0 0 0 1 1 1 1 1 1 (10 rows).
        // strong: right on 8 rows, wrong (unsure) on rows 8 and 9.
        // twin: the same predictions as strong (no diversity).
        // diverse: right on only 6 rows, but confidently right on 8 and 9.
        let t = [0u32, 0, 0, 0, 1, 1, 1, 1, 1, 1];
        let strong: Vec<[f32; 2]> = (0..10)
            .map(|r| match r {
                0..=3 => [0.8, 0.2],
                4..=7 => [0.2, 0.8],
                _ => [0.55, 0.45],
            })
            .collect();
        let diverse: Vec<[f32; 2]> = (0..10)
            .map(|r| match r {
                0..=3 => [0.6, 0.4],
                4..=7 => [0.52, 0.48],
                _ => [0.02, 0.98],
            })
            .collect();
        let rows = |v: &Vec<[f32; 2]>| v.iter().map(|r| r.to_vec()).collect::<Vec<_>>();
        let mk = |name: &str, v: &Vec<[f32; 2]>| {
            let r = rows(v);
            let refs: Vec<&[f32]> = r.iter().map(Vec::as_slice).collect();
            member(name, &refs)
        };
        let members = [
            mk("strong", &strong),
            mk("twin", &strong),
            mk("diverse", &diverse),
        ];
        assert_eq!(accuracy(&members[0].oof, &t), 0.8);
        assert_eq!(accuracy(&members[2].oof, &t), 0.6);
        let out = combine(&members, &t, &[], Method::Greedy);
        assert!(
            out.weights[2] > 0.0,
            "the weaker, diverse member is picked: {:?}",
            out.weights
        );
        assert_eq!(out.weights[1], 0.0, "the twin adds nothing");
        assert!(out.oof_accuracy > 0.8, "{}", out.oof_accuracy);
        assert_eq!(out.best_member_accuracy, 0.8);
    }

    #[test]
    fn greedy_never_loses_to_the_best_member() {
        let a = member("a", &[&[0.9, 0.1], &[0.4, 0.6]]);
        let b = member("b", &[&[0.1, 0.9], &[0.9, 0.1]]);
        let out = combine(&[a, b], &[0, 1], &[], Method::Greedy);
        assert_eq!(out.weights, vec![1.0, 0.0]);
        assert_eq!(out.oof_accuracy, 1.0);
    }

    #[test]
    fn disagreement_and_per_class() {
        let a = member("a", &[&[0.9, 0.1], &[0.9, 0.1]]);
        let b = member("b", &[&[0.9, 0.1], &[0.1, 0.9]]);
        let d = disagreement(&[a.clone(), b]);
        assert_eq!(d, vec![vec![0.0, 0.5], vec![0.5, 0.0]]);
        assert_eq!(per_class_accuracy(&a.oof, &[0, 1]), vec![1.0, 0.0]);
    }
}
