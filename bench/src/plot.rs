//! A small SVG plot of a run's figures against group size (no plotting library: two
//! polylines on labelled axes).

use std::fmt::Write;

use serde_json::Value;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 300.0;
const MARGIN: f64 = 50.0;

/// A plotted series: label, colour, points (group size, value).
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// One panel: `series` (label, colour, points) on axes from 0 to the largest value.
fn panel(out: &mut String, top: f64, title: &str, unit: &str, series: &[Series<'_>]) {
    let max_x = series
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|(x, _)| *x))
        .fold(1.0, f64::max);
    let max_y = series
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|(_, y)| *y))
        .fold(1e-9, f64::max);
    let x = |v: f64| MARGIN + v / max_x * (WIDTH - 2.0 * MARGIN);
    let y = |v: f64| top + HEIGHT - MARGIN - v / max_y * (HEIGHT - 2.0 * MARGIN);
    let _ = write!(
        out,
        r#"<text x="{MARGIN}" y="{}" font-size="14">{title}</text>"#,
        top + 20.0
    );
    let _ = write!(
        out,
        r#"<line x1="{MARGIN}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/><line x1="{MARGIN}" y1="{y0}" x2="{MARGIN}" y2="{y1}" stroke="black"/>"#,
        y0 = y(0.0),
        x1 = x(max_x),
        y1 = y(max_y)
    );
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" font-size="11">{max_y:.2} {unit}</text><text x="{}" y="{}" font-size="11">group size {max_x}</text>"#,
        MARGIN + 4.0,
        y(max_y) + 4.0,
        x(max_x) - 80.0,
        y(0.0) + 16.0
    );
    for (i, (label, colour, points)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|(px, py)| format!("{:.1},{:.1}", x(*px), y(*py)))
            .collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for (px, py) in points {
            let _ = write!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                x(*px),
                y(*py)
            );
        }
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" font-size="11" fill="{colour}">{label}</text>"#,
            WIDTH - 200.0,
            top + 20.0 + 14.0 * i as f64
        );
    }
}

/// Send latency and CPU per message against group size, from a run's JSON document.
pub fn groups(document: &Value) -> String {
    let groups = document["result"]["groups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let points = |f: &dyn Fn(&Value) -> Option<f64>| -> Vec<(f64, f64)> {
        groups
            .iter()
            .filter_map(|g| Some((g["size"].as_f64()?, f(g)?)))
            .collect()
    };
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{}" font-family="sans-serif">"#,
        2.0 * HEIGHT
    );
    panel(
        &mut out,
        0.0,
        &format!(
            "{} ({}): client-observed latency per operation",
            document["result"]["backend"].as_str().unwrap_or("?"),
            document["machine"]["build"].as_str().unwrap_or("?")
        ),
        "ms",
        &[
            (
                "send p50",
                "#1f77b4",
                points(&|g| g["send"]["p50_ms"].as_f64()),
            ),
            (
                "send p95",
                "#aec7e8",
                points(&|g| g["send"]["p95_ms"].as_f64()),
            ),
            (
                "self-update p50",
                "#d62728",
                points(&|g| g["self_update"]["p50_ms"].as_f64()),
            ),
        ],
    );
    panel(
        &mut out,
        HEIGHT,
        "CPU per application message",
        "ms",
        &[
            (
                "server",
                "#2ca02c",
                points(&|g| g["send_cpu"]["server_cpu_ms"].as_f64()),
            ),
            (
                "database",
                "#9467bd",
                points(&|g| g["send_cpu"]["database_cpu_ms"].as_f64()),
            ),
            (
                "client",
                "#ff7f0e",
                points(&|g| g["send_cpu"]["client_cpu_ms"].as_f64()),
            ),
        ],
    );
    out.push_str("</svg>\n");
    out
}
