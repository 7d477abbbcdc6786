//! `coordinator report`: one self-contained HTML file (no network needed to
//! view it): learning curves, the leaderboard, the members' pairwise
//! disagreement, per-class accuracy of the best member against the
//! ensemble, and the ensemble's members and weights.
//!
//! The charts are the dashboard's: the report carries their data as JSON
//! and the dashboard's bundled `report.js` (ECharts with the options of
//! `dashboard/src/charts.js`), inlined, draws them. Each chart also has an
//! SVG drawn here, shown when the script is absent (a coordinator built
//! without the dashboard) or cannot run.

use std::fmt::Write as _;

use crate::ensemble::{self, Outcome};
use crate::oof::{ConfigResult, Loaded};
use crate::store::CurvePoint;

// `static REPORT_SCRIPT: Option<&str>`: `dashboard/dist/report.js`, when
// the dashboard was built (see `build.rs`).
include!(concat!(env!("OUT_DIR"), "/report_script.rs"));

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

/// Round tick values covering `[lo, hi]`: about `target` steps of 1, 2 or 5
/// times a power of ten, the first at or below `lo` and the last at or
/// above `hi` (so the axis ends on ticks). Also returns the step.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, f64) {
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 0.5, lo + 0.5)
    };
    let raw = (hi - lo) / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).floor() as i64;
    let last = (hi / step).ceil() as i64;
    // Multiples of the step, so 0.1 + 0.2 prints as 0.3.
    let ticks = (first..=last).map(|k| k as f64 * step).collect();
    (ticks, step)
}

/// Decimals that show a tick step exactly (0.05 -> 2, 20 -> 0).
fn decimals(step: f64) -> usize {
    (-step.log10().floor()).max(0.0) as usize
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
        return format!(
            r#"<p class="note">{}: not reported by the jobs (or no epoch finished yet).</p>"#,
            esc(title)
        );
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
    let (y_ticks, y_step) = nice_ticks(y0, y1, 5);
    let (y0, y1) = (y_ticks[0], y_ticks[y_ticks.len() - 1]);
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
    let digits = decimals(y_step);
    for &y in &y_ticks {
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{py:.1}" y2="{py:.1}" stroke="#e5e5e5"/><text x="{}" y="{:.1}" class="a" text-anchor="end">{y:.digits$}</text>"##,
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
/// up to 40 classes; otherwise a scatter (member across, ensemble up). With
/// that many classes `render` adds [`class_tables`] below it.
fn per_class_svg(best: &[f64], ens: &[f64], best_name: &str) -> String {
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
        // A scatter with both axes (0 to 1): a point above the diagonal is
        // a class the ensemble improved. The title is the page's text above
        // the chart, so it is never cut.
        let (size, left, top, bottom) = (420.0, 56.0, 12.0, 44.0);
        let (w, h) = (left + size + 16.0, top + size + bottom);
        let _ = write!(
            s,
            r#"<p class="note">{n} classes, one point each: accuracy of the best member ({}) across, of the ensemble up. Green: the ensemble is at least as good; red: worse.</p><svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img"><title>Per-class accuracy, {n} classes: ensemble against the best member</title>"#,
            esc(best_name)
        );
        let px = |v: f64| left + v * size;
        let py = |v: f64| top + (1.0 - v) * size;
        for i in 0..=5 {
            let v = f64::from(i) / 5.0;
            let _ = write!(
                s,
                r##"<line x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#e5e5e5"/><line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" class="a" text-anchor="end">{v:.1}</text><text x="{x:.1}" y="{:.1}" class="a" text-anchor="middle">{v:.1}</text>"##,
                px(0.0),
                px(1.0),
                py(1.0),
                py(0.0),
                left - 4.0,
                py(v) + 4.0,
                py(0.0) + 16.0,
                x = px(v),
                y = py(v),
            );
        }
        let _ = write!(
            s,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="4"/><text x="{:.1}" y="{:.1}" class="a" text-anchor="middle">best member's accuracy</text><text x="14" y="{:.1}" class="a" transform="rotate(-90 14 {:.1})" text-anchor="middle">ensemble's accuracy</text>"##,
            px(0.0),
            py(0.0),
            px(1.0),
            py(1.0),
            px(0.5),
            h - 6.0,
            py(0.5),
            py(0.5),
        );
        for c in 0..n {
            let color = if ens[c] >= best[c] {
                PALETTE[2]
            } else {
                PALETTE[1]
            };
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}" fill-opacity="0.5"><title>class {c}: {:.3} -> {:.3}</title></circle>"#,
                px(best[c]),
                py(ens[c]),
                best[c],
                ens[c]
            );
        }
        s.push_str("</svg>");
        return s;
    }
    s.push_str("</svg>");
    s
}

/// Rows in each table of [`class_tables`].
const CLASS_ROWS: usize = 15;

/// The ensemble's worst classes and the classes it changed most, side by
/// side (ties broken by class index, so the report is reproducible).
fn class_tables(best: &[f64], ens: &[f64], support: &[usize]) -> String {
    let n = best.len();
    // A class without training rows has no accuracy to rank.
    let mut worst: Vec<usize> = (0..n)
        .filter(|&c| support.get(c).is_some_and(|&rows| rows > 0))
        .collect();
    worst.sort_by(|&a, &b| ens[a].total_cmp(&ens[b]).then(a.cmp(&b)));
    let mut changed: Vec<usize> = (0..n).filter(|&c| ens[c] != best[c]).collect();
    changed.sort_by(|&a, &b| {
        (ens[b] - best[b])
            .abs()
            .total_cmp(&(ens[a] - best[a]).abs())
            .then(a.cmp(&b))
    });
    let table = |title: &str, classes: &[usize]| {
        let mut t = format!(
            r#"<div><h3>{title}</h3><table><tr><th>class</th><th>rows</th><th>best member</th><th>ensemble</th><th>change</th></tr>"#
        );
        for &c in classes.iter().take(CLASS_ROWS) {
            let _ = write!(
                t,
                "<tr><td>{c}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:+.3}</td></tr>",
                support.get(c).copied().unwrap_or(0),
                best[c],
                ens[c],
                ens[c] - best[c]
            );
        }
        if classes.is_empty() {
            t.push_str(r#"<tr><td colspan="5" class="l">none</td></tr>"#);
        }
        t.push_str("</table></div>");
        t
    };
    format!(
        r#"<div class="pair">{}{}</div>"#,
        table(
            &format!("The ensemble's {CLASS_ROWS} worst classes"),
            &worst
        ),
        table(
            &format!("The {CLASS_ROWS} classes the ensemble changed most"),
            &changed
        )
    )
}

/// The report's charts: each is a `<figure>` holding its SVG fallback, and
/// its data under the figure's id for `report.js` to draw.
#[derive(Default)]
struct Charts {
    specs: serde_json::Map<String, serde_json::Value>,
}

impl Charts {
    fn figure(&mut self, html: &mut String, spec: serde_json::Value, fallback: &str) {
        let id = format!("chart{}", self.specs.len());
        let _ = write!(
            html,
            r#"<figure data-chart="{id}"><div class="fallback">{fallback}</div></figure>"#
        );
        self.specs.insert(id, spec);
    }

    /// The data and the script, when this coordinator has the script.
    fn finish(self, html: &mut String) {
        let Some(script) = REPORT_SCRIPT else { return };
        if self.specs.is_empty() {
            return;
        }
        let data = serde_json::json!({ "charts": self.specs }).to_string();
        // Neither may end its <script> element early: `<\/` means `</`
        // inside JSON strings and inside JavaScript strings and regexes.
        let _ = write!(
            html,
            r#"<script type="application/json" id="report-data">{}</script><script>{}</script>"#,
            data.replace("</", "<\\/"),
            script.replace("</script", "<\\/script")
        );
    }
}

/// Whether reports draw their charts with the dashboard's script.
pub fn interactive() -> bool {
    REPORT_SCRIPT.is_some()
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
.big{{font-size:20px;font-weight:600}} h3{{font-size:14px;margin:12px 0 6px}}
.pair{{display:flex;gap:32px;flex-wrap:wrap}}
figure{{margin:0}} figure .echart{{width:100%;height:320px}} figure .caption{{font-size:13px;font-weight:600;margin:12px 0 0}}
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
    let mut charts = Charts::default();
    for (title, y_label, metric, value) in [
        (
            "Validation accuracy",
            "accuracy",
            "val_accuracy",
            (|p| p.val_accuracy) as fn(&CurvePoint) -> f64,
        ),
        ("Training loss", "loss", "train_loss", |p| p.train_loss),
        ("Validation loss", "loss", "val_loss", |p| p.val_loss),
    ] {
        let series: Vec<(String, Vec<(f64, f64)>)> = curves
            .iter()
            .map(|(name, pts)| {
                let pts = pts.iter().map(|p| (f64::from(p.epoch), value(p)));
                (name.clone(), pts.collect())
            })
            .collect();
        let fallback = line_chart(title, y_label, &series);
        if !series
            .iter()
            .flat_map(|(_, p)| p)
            .any(|(_, y)| y.is_finite())
        {
            // Not reported: said in words, with no chart to draw.
            html.push_str(&fallback);
            continue;
        }
        let spec = serde_json::json!({
            "kind": "curves",
            "title": title,
            "metric": metric,
            // A NaN (not reported, or a diverged run) becomes null: absent.
            "series": series.iter().map(|(name, pts)| serde_json::json!({
                "name": name,
                "points": pts.iter().map(|&(x, y)| serde_json::json!([x, y])).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        charts.figure(&mut html, spec, &fallback);
    }
    if loaded.members.len() > 1 {
        let labels: Vec<String> = loaded.members.iter().map(|m| m.name.clone()).collect();
        html.push_str("<h2>How often members disagree</h2><p class=\"note\">Share of training rows on which two members' OOF predictions differ. Accurate members that disagree often make the best ensembles.</p>");
        let title = "Pairwise disagreement of OOF predictions (%)";
        let matrix = ensemble::disagreement(&loaded.members);
        let spec = serde_json::json!({
            "kind": "disagreement",
            "title": title,
            "labels": labels,
            "matrix": matrix,
        });
        charts.figure(&mut html, spec, &heatmap(title, &labels, &matrix));
    }
    if let Some(o) = outcome {
        let best = &loaded.members[o.best_member];
        let targets = &loaded.targets;
        html.push_str("<h2>Per-class accuracy</h2>");
        let mut support = vec![0usize; loaded.classes];
        for &t in targets.iter() {
            if let Some(n) = support.get_mut(t as usize) {
                *n += 1;
            }
        }
        let best_acc = ensemble::per_class_accuracy(&best.oof, targets);
        let ens_acc = ensemble::per_class_accuracy(&o.oof, targets);
        let spec = serde_json::json!({
            "kind": "per_class",
            "title": if best_acc.len() > 40 { "" } else { "Per-class accuracy: best member and ensemble" },
            "best": best_acc,
            "ensemble": ens_acc,
            "support": support,
            "best_name": best.name,
        });
        charts.figure(
            &mut html,
            spec,
            &per_class_svg(&best_acc, &ens_acc, &best.name),
        );
        if best_acc.len() > 40 {
            html.push_str(&class_tables(&best_acc, &ens_acc, &support));
        }
    }
    charts.finish(&mut html);
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
        let bars = per_class_svg(&[0.5, 1.0], &[0.6, 1.0], "m");
        assert_eq!(bars.matches("<rect").count(), 4);
        let scatter = per_class_svg(&vec![0.5; 100], &vec![0.6; 100], "m");
        assert_eq!(scatter.matches("<circle").count(), 100);
        assert!(
            scatter.contains("best member's accuracy") && scatter.contains("ensemble's accuracy")
        );
    }

    #[test]
    fn ticks_are_round_and_cover_the_data() {
        let (t, step) = nice_ticks(0.11352, 0.11384, 5);
        assert_eq!(step, 0.0001);
        assert!(t[0] <= 0.11352 && *t.last().unwrap() >= 0.11384);
        assert_eq!(decimals(step), 4);
        let (t, step) = nice_ticks(0.0, 2.3, 5);
        assert_eq!((step, t), (0.5, vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5]));
        // A flat series still gets a readable axis.
        let (t, _) = nice_ticks(0.0, 0.0, 5);
        assert!(t.len() >= 2 && t[0] < 0.0 && *t.last().unwrap() > 0.0);
    }

    #[test]
    fn a_metric_no_job_reported_is_absent_not_zero() {
        let nan = vec![(1.0, f64::NAN), (2.0, f64::NAN)];
        let chart = line_chart("Training loss", "loss", &[("c0".into(), nan)]);
        assert!(
            !chart.contains("<svg") && chart.contains("not reported"),
            "{chart}"
        );
        let chart = line_chart(
            "Validation loss",
            "loss",
            &[("c0".into(), vec![(1.0, 0.5), (2.0, 0.25)])],
        );
        assert!(!chart.contains("-0.0"), "no negative-zero ticks: {chart}");
    }

    #[test]
    fn with_many_classes_the_worst_and_most_changed_are_listed() {
        let n = 500;
        let best: Vec<f64> = (0..n).map(|c| 0.5 + (c % 10) as f64 * 0.01).collect();
        let mut ens = best.clone();
        ens[42] = 0.0; // the worst class
        ens[7] = best[7] + 0.4; // the biggest change
        let html = class_tables(&best, &ens, &vec![30; n]);
        let worst = &html[html.find("worst classes").unwrap()..html.find("changed most").unwrap()];
        assert!(
            worst.contains(
                "<tr><td>42</td><td>30</td><td>0.520</td><td>0.000</td><td>-0.520</td></tr>"
            ),
            "{worst}"
        );
        let changed = &html[html.find("changed most").unwrap()..];
        let first = changed.find("<td>42</td>").unwrap();
        let second = changed.find("<td>7</td>").unwrap();
        assert!(first < second, "sorted by the size of the change");
        assert_eq!(
            changed.matches("<tr><td>").count(),
            2,
            "only changed classes"
        );
    }

    #[test]
    fn charts_carry_their_data_and_cannot_end_the_script_early() {
        let mut html = String::new();
        let mut charts = Charts::default();
        let name = "</script><b>x";
        let spec = serde_json::json!({
            "kind": "curves",
            "series": [{ "name": name, "points": [[1.0, f64::NAN], [2.0, 0.5]] }],
        });
        charts.figure(&mut html, spec, "<svg></svg>");
        charts.finish(&mut html);
        assert!(html.starts_with(
            r#"<figure data-chart="chart0"><div class="fallback"><svg></svg></div></figure>"#
        ));
        if !interactive() {
            // Built without the dashboard: the SVG is all there is.
            assert!(!html.contains("<script"));
            return;
        }
        assert_eq!(
            html.matches("</script>").count(),
            2,
            "only the two elements' own ends"
        );
        let open = r#"<script type="application/json" id="report-data">"#;
        let data = &html[html.find(open).unwrap() + open.len()..];
        let data: serde_json::Value =
            serde_json::from_str(&data[..data.find("</script>").unwrap()]).unwrap();
        let series = &data["charts"]["chart0"]["series"][0];
        assert_eq!(series["name"], name);
        assert_eq!(
            series["points"],
            serde_json::json!([[1.0, null], [2.0, 0.5]]),
            "a NaN is absent, never zero"
        );
    }
}
