//! `coordinator report`: one self-contained HTML file (no network needed to
//! view it) with SVG charts drawn here: learning curves, the leaderboard,
//! the members' pairwise disagreement, per-class accuracy of the best
//! member against the ensemble, and the ensemble's members and weights.

use std::fmt::Write as _;

use crate::ensemble::{self, Outcome};
use crate::oof::{ConfigResult, Loaded};
use crate::store::CurvePoint;

/// A categorical palette that stays readable for many series.
const PALETTE: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn params_text(params_json: &str) -> String {
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(params_json) {
        Ok(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => "(no parameters)".into(),
    }
}

/// A line chart: one polyline per series of (x, y) points.
pub fn line_chart(title: &str, y_label: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let (w, h, left, right, top, bottom) = (640.0, 300.0, 56.0, 180.0, 28.0, 36.0);
    // A diverged run's NaN or infinite losses are left out of the plot.
    let series: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(name, pts)| {
            let finite = pts
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite());
            (name.clone(), finite.collect())
        })
        .collect();
    let points: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    if points.is_empty() {
        return format!("<p>{}: no data yet.</p>", esc(title));
    }
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in &points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x1 == x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let px = |x: f64| left + (x - x0) / (x1 - x0) * (w - left - right);
    let py = |y: f64| top + (1.0 - (y - y0) / (y1 - y0)) * (h - top - bottom);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img"><title>{}</title>"#,
        esc(title)
    );
    let _ = write!(
        s,
        r#"<text x="{left}" y="18" class="t">{}</text>"#,
        esc(title)
    );
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * f64::from(i) / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{py:.1}" y2="{py:.1}" stroke="#e5e5e5"/><text x="{}" y="{:.1}" class="a" text-anchor="end">{y:.3}</text>"##,
            w - right,
            left - 4.0,
            py(y) + 4.0,
            py = py(y)
        );
    }
    let xs: Vec<f64> = {
        let mut v: Vec<f64> = points.iter().map(|p| p.0).collect();
        v.sort_by(f64::total_cmp);
        v.dedup();
        v
    };
    let step = (xs.len() / 10).max(1);
    for x in xs.iter().step_by(step) {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{}" class="a" text-anchor="middle">{x}</text>"#,
            px(*x),
            h - bottom + 16.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{}" class="a" text-anchor="middle">epoch</text><text x="12" y="{:.1}" class="a" transform="rotate(-90 12 {:.1})" text-anchor="middle">{}</text>"#,
        (left + w - right) / 2.0,
        h - 4.0,
        h / 2.0,
        h / 2.0,
        esc(y_label)
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for &(x, y) in pts {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"#,
                px(x),
                py(y)
            );
        }
        let ly = top + 14.0 * i as f64;
        if ly < h - bottom {
            let _ = write!(
                s,
                r#"<rect x="{}" y="{:.1}" width="10" height="10" fill="{color}"/><text x="{}" y="{:.1}" class="a">{}</text>"#,
                w - right + 10.0,
                ly,
                w - right + 24.0,
                ly + 9.0,
                esc(name)
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// A heatmap of a square matrix in [0, 1] with row/column labels.
pub fn heatmap(title: &str, labels: &[String], m: &[Vec<f64>]) -> String {
    let n = labels.len();
    if n == 0 {
        return format!("<p>{}: no members.</p>", esc(title));
    }
    let cell = (360.0 / n as f64).clamp(14.0, 48.0);
    let left = 150.0;
    let top = 40.0;
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0) as f64;
    let (w, h) = (
        (left + cell * n as f64 + 20.0).max(560.0),
        top + cell * n as f64 + 12.0 + 6.0 * longest,
    );
    let max = m.iter().flatten().copied().fold(1e-9, f64::max);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img"><title>{}</title><text x="0" y="18" class="t">{}</text>"#,
        esc(title),
        esc(title)
    );
    for (i, row) in m.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            let shade = (255.0 * (1.0 - v / max)).round() as u8;
            let (x, y) = (left + cell * j as f64, top + cell * i as f64);
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{cell:.1}" height="{cell:.1}" fill="rgb(255,{shade},{shade})" stroke="white"><title>{} vs {}: {:.1}% disagree</title></rect>"#,
                esc(&labels[i]),
                esc(&labels[j]),
                100.0 * v
            );
            if cell >= 30.0 {
                let ink = if shade < 128 { "#fff" } else { "#222" };
                let _ = write!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" font-size="11" fill="{ink}" text-anchor="middle">{:.1}</text>"#,
                    x + cell / 2.0,
                    y + cell / 2.0 + 4.0,
                    100.0 * v
                );
            }
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" class="a" text-anchor="end">{}</text>"#,
            left - 6.0,
            top + cell * i as f64 + cell / 2.0 + 4.0,
            esc(&labels[i])
        );
        let (x, y) = (
            left + cell * i as f64 + cell / 2.0,
            top + cell * n as f64 + 8.0,
        );
        let _ = write!(
            s,
            r#"<text x="{x:.1}" y="{y:.1}" class="a" transform="rotate(60 {x:.1} {y:.1})">{}</text>"#,
            esc(&labels[i])
        );
    }
    s.push_str("</svg>");
    s
}

/// Per-class accuracy, best member against the ensemble: grouped bars for
/// up to 40 classes, otherwise a scatter (member on x, ensemble on y).
pub fn per_class_chart(best: &[f64], ens: &[f64], best_name: &str) -> String {
    let n = best.len();
    if n == 0 {
        return String::new();
    }
    let mut s = String::new();
    if n <= 40 {
        let (left, top, bar) = (44.0, 40.0, 9.0);
        let group = 2.0 * bar + 8.0;
        let (w, h) = ((left + group * n as f64 + 20.0).max(560.0), 260.0);
        let plot = h - top - 40.0;
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img"><title>Per-class accuracy</title><text x="0" y="18" class="t">Per-class accuracy: best member (blue) and ensemble (red)</text>"#
        );
        for i in 0..=4 {
            let v = f64::from(i) / 4.0;
            let y = top + plot * (1.0 - v);
            let _ = write!(
                s,
                r##"<line x1="{left}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{}" y="{:.1}" class="a" text-anchor="end">{v:.2}</text>"##,
                w - 10.0,
                left - 4.0,
                y + 4.0
            );
        }
        for c in 0..n {
            let x = left + group * c as f64 + 4.0;
            for (k, (v, color)) in [(best[c], PALETTE[0]), (ens[c], PALETTE[1])]
                .iter()
                .enumerate()
            {
                let bh = plot * v;
                let _ = write!(
                    s,
                    r#"<rect x="{:.1}" y="{:.1}" width="{bar}" height="{bh:.1}" fill="{color}"><title>class {c}: {:.3}</title></rect>"#,
                    x + bar * k as f64,
                    top + plot - bh,
                    v
                );
            }
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{:.1}" class="a" text-anchor="middle">{c}</text>"#,
                x + bar,
                top + plot + 14.0
            );
        }
    } else {
        let (size, pad) = (360.0, 44.0);
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{w}" viewBox="0 0 {w} {w}" role="img"><title>Per-class accuracy</title><text x="0" y="18" class="t">Per-class accuracy, {n} classes: ensemble (y) against {} (x)</text>"#,
            esc(best_name),
            w = size + 2.0 * pad
        );
        let p = |v: f64| pad + v * size;
        let _ = write!(
            s,
            r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#999" stroke-dasharray="4"/>"##,
            p(0.0),
            pad + size,
            p(1.0),
            pad
        );
        for c in 0..n {
            let color = if ens[c] >= best[c] {
                PALETTE[2]
            } else {
                PALETTE[1]
            };
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}" fill-opacity="0.6"><title>class {c}: {:.3} -> {:.3}</title></circle>"#,
                p(best[c]),
                pad + size * (1.0 - ens[c]),
                best[c],
                ens[c]
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// The whole report.
pub fn render(
    title: &str,
    generated_at: &str,
    loaded: &Loaded,
    curves: &[(String, Vec<CurvePoint>)],
    outcome: Option<&Outcome>,
) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{t}</title><style>
body{{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1100px}}
h1{{font-size:22px}} h2{{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}}
table{{border-collapse:collapse;font-size:13px}} th,td{{padding:4px 8px;border-bottom:1px solid #eee;text-align:right}}
th{{background:#f6f6f6}} td.l,th.l{{text-align:left}} .partial{{color:#888}}
svg .t{{font-size:13px;font-weight:600}} svg .a{{font-size:11px;fill:#444}} .note{{color:#555;font-size:13px}}
.big{{font-size:20px;font-weight:600}}
</style></head><body><h1>{t}</h1><p class="note">Generated {g}. Out-of-fold (OOF) accuracy puts every configuration's fold models together so each training row is predicted once, by the model that did not train on it.</p>"#,
        t = esc(title),
        g = esc(generated_at)
    );
    if let Some(o) = outcome {
        let best = &loaded.members[o.best_member].name;
        let _ = write!(
            html,
            r#"<h2>Ensemble ({m} voting)</h2><p><span class="big">OOF accuracy {e:.4}</span> &nbsp; against {b:.4} for the best single member ({bn}): {d:+.4}.</p><table><tr><th class="l">member</th><th class="l">parameters</th><th>OOF accuracy</th><th>weight</th></tr>"#,
            m = o.method,
            e = o.oof_accuracy,
            b = o.best_member_accuracy,
            bn = esc(best),
            d = o.oof_accuracy - o.best_member_accuracy
        );
        for (k, m) in loaded.members.iter().enumerate() {
            let r = &loaded.results[loaded.member_results[k]];
            let _ = write!(
                html,
                r#"<tr><td class="l">{}</td><td class="l">{}</td><td>{:.4}</td><td>{:.3}</td></tr>"#,
                esc(&m.name),
                esc(&params_text(&r.params_json)),
                r.oof_accuracy.unwrap_or(0.0),
                o.weights[k]
            );
        }
        html.push_str("</table>");
    }
    html.push_str(r#"<h2>Leaderboard</h2><table><tr><th>rank</th><th class="l">configuration</th><th class="l">parameters</th><th>OOF accuracy</th><th>fold accuracy</th><th>folds</th><th>epochs</th><th>GPU time</th></tr>"#);
    for i in crate::oof::display_order(&loaded.results) {
        leaderboard_row(&mut html, &loaded.results[i]);
    }
    html.push_str("</table>");
    html.push_str("<h2>Learning curves (mean over folds)</h2>");
    let series = |f: fn(&CurvePoint) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        curves
            .iter()
            .map(|(name, pts)| {
                (
                    name.clone(),
                    pts.iter().map(|p| (f64::from(p.epoch), f(p))).collect(),
                )
            })
            .collect()
    };
    html.push_str(&line_chart(
        "Validation accuracy",
        "accuracy",
        &series(|p| p.val_accuracy),
    ));
    html.push_str(&line_chart(
        "Training loss",
        "loss",
        &series(|p| p.train_loss),
    ));
    html.push_str(&line_chart(
        "Validation loss",
        "loss",
        &series(|p| p.val_loss),
    ));
    if loaded.members.len() > 1 {
        let labels: Vec<String> = loaded.members.iter().map(|m| m.name.clone()).collect();
        html.push_str("<h2>How often members disagree</h2><p class=\"note\">Share of training rows on which two members' OOF predictions differ. Accurate members that disagree often make the best ensembles.</p>");
        html.push_str(&heatmap(
            "Pairwise disagreement of OOF predictions (%)",
            &labels,
            &ensemble::disagreement(&loaded.members),
        ));
    }
    if let Some(o) = outcome {
        let best = &loaded.members[o.best_member];
        let targets = &loaded.targets;
        html.push_str("<h2>Per-class accuracy</h2>");
        html.push_str(&per_class_chart(
            &ensemble::per_class_accuracy(&best.oof, targets),
            &ensemble::per_class_accuracy(&o.oof, targets),
            &best.name,
        ));
    }
    html.push_str("</body></html>\n");
    html
}

fn leaderboard_row(html: &mut String, r: &ConfigResult) {
    let (mean, std) = r.fold_mean_std();
    let class = if r.oof_accuracy.is_some() {
        ""
    } else {
        " class=\"partial\""
    };
    let _ = write!(
        html,
        r#"<tr{class}><td>{}</td><td class="l">{}</td><td class="l">{}</td><td>{}</td><td>{mean:.4} &plusmn; {std:.4}</td><td>{}/{}</td><td>{:.1}</td><td>{:.0} s</td></tr>"#,
        if r.rank > 0 {
            r.rank.to_string()
        } else {
            "partial".into()
        },
        match r.stopped_at_epoch {
            Some(e) => format!("{} (stopped at epoch {e})", esc(&r.label())),
            None => esc(&r.label()),
        },
        esc(&params_text(&r.params_json)),
        r.oof_accuracy.map_or("-".into(), |a| format!("{a:.4}")),
        r.folds_done,
        r.folds,
        r.epochs_mean,
        r.gpu_seconds
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_and_escape_text() {
        let s = line_chart(
            "acc <1>",
            "y",
            &[("a&b".into(), vec![(1.0, 0.5), (2.0, 0.7)])],
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert!(s.contains("acc &lt;1&gt;") && s.contains("a&amp;b"));
        assert!(s.contains("<polyline"));
        let h = heatmap(
            "d",
            &["x".into(), "y".into()],
            &[vec![0.0, 0.4], vec![0.4, 0.0]],
        );
        assert_eq!(h.matches("<rect").count(), 4);
        let bars = per_class_chart(&[0.5, 1.0], &[0.6, 1.0], "m");
        assert_eq!(bars.matches("<rect").count(), 4);
        let scatter = per_class_chart(&vec![0.5; 100], &vec![0.6; 100], "m");
        assert_eq!(scatter.matches("<circle").count(), 100);
    }
}
