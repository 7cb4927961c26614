//! `--plot FILE.svg`: the series of a report drawn as lines over time, one panel per
//! unit (Gbit/s, µs, MiB). Plain SVG written by hand: no plotting dependency.

use std::fmt::Write as _;

use crate::report::{Report, Series};

const WIDTH: f64 = 900.0;
const PANEL: f64 = 260.0;
const MARGIN: f64 = 60.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// The SVG document for `report`.
pub fn svg(report: &Report) -> String {
    let mut units: Vec<&str> = Vec::new();
    for series in &report.series {
        if !units.contains(&series.unit.as_str()) {
            units.push(&series.unit);
        }
    }
    let height = MARGIN + units.len().max(1) as f64 * (PANEL + MARGIN);
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{MARGIN}" y="24" font-size="15">{} — {} — {}</text>"#,
        escape(&report.scenario),
        escape(&report.date),
        escape(&report.machine.summary())
    );
    for (index, unit) in units.iter().enumerate() {
        let top = MARGIN + index as f64 * (PANEL + MARGIN);
        let series: Vec<&Series> = report.series.iter().filter(|s| s.unit == *unit).collect();
        panel(&mut out, top, unit, &series);
    }
    out.push_str("</svg>\n");
    out
}

fn panel(out: &mut String, top: f64, unit: &str, series: &[&Series]) {
    let points = series.iter().flat_map(|s| s.points.iter());
    let (mut x_max, mut y_max) = (0f64, 0f64);
    for &(x, y) in points {
        x_max = x_max.max(x);
        y_max = y_max.max(y);
    }
    let x_max = if x_max > 0.0 { x_max } else { 1.0 };
    let y_max = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    let plot_w = WIDTH - 2.0 * MARGIN;
    let bottom = top + PANEL;
    let _ = write!(
        out,
        r##"<rect x="{MARGIN}" y="{top}" width="{plot_w}" height="{PANEL}" fill="none" stroke="#999"/>"##
    );
    let _ = write!(
        out,
        r#"<text x="8" y="{}">{}</text><text x="8" y="{}">{y_max:.1}</text><text x="8" y="{bottom}">0</text><text x="{}" y="{}" text-anchor="end">{x_max:.0} s</text>"#,
        top + PANEL / 2.0,
        escape(unit),
        top + 12.0,
        WIDTH - MARGIN,
        bottom + 16.0
    );
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| {
                format!(
                    "{:.1},{:.1}",
                    MARGIN + x / x_max * plot_w,
                    bottom - y / y_max * PANEL
                )
            })
            .collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/><text x="{}" y="{}" fill="{colour}">{}</text>"#,
            path.join(" "),
            MARGIN + 8.0,
            top + 16.0 + 14.0 * i as f64,
            escape(&s.name)
        );
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
