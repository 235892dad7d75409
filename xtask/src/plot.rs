//! benches/results.png: cost against the number of published ports, where
//! netplane should stay flat and iptables should not.

use std::path::Path;

use anyhow::Context;
use plotters::{prelude::*, style::FontStyle};

use crate::report::{Row, values};

/// The font the lettering is set in, from `fonts-dejavu-core`.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One line: a label and its (published ports, value) points.
type Series = (String, Vec<(f64, f64)>);

/// The points of `function` in `group`, the value scaled by `unit`.
fn series(rows: &[Row], group: &str, function: &str, unit: f64) -> Series {
    let mut points: Vec<(f64, f64)> = values(rows, group)
        .iter()
        .filter_map(|n| {
            let r = rows.iter().find(|r| {
                r.group == group && r.function == function && r.value.as_deref() == Some(n)
            })?;
            Some((n.parse().ok()?, r.median_ns / unit))
        })
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    (function.to_string(), points)
}

/// Three panels side by side: time per new connection, per-packet program
/// cost, and time to publish, each against the number of ports published.
pub fn draw(rows: &[Row], path: &Path) -> anyhow::Result<()> {
    let font: &'static [u8] = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT}"))?
        .leak();
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("{FONT} is not a font"))?;
    let root = BitMapBackend::new(path, (1800, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));
    let connections: Vec<Series> = ["netplane", "iptables", "cni"]
        .iter()
        .map(|f| series(rows, "new_connection", f, 1e3))
        .collect();
    panel(&panels[0], "New TCP connection (µs)", &connections, false)?;
    let paths: Vec<Series> = [
        "dnat_established",
        "dnat_reverse",
        "snat_established",
        "snat_new_flow",
        "miss",
        "floor_empty_program",
    ]
    .iter()
    .map(|f| series(rows, "per_packet", f, 1.0))
    .collect();
    panel(
        &panels[1],
        "netplane per packet (ns, test_run)",
        &paths,
        false,
    )?;
    let publish: Vec<Series> = ["netplane", "iptables", "cni"]
        .iter()
        .map(|f| series(rows, "publish", f, 1e6))
        .collect();
    panel(&panels[2], "Publishing the ports (ms)", &publish, true)?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// One chart: log-scaled published ports across, the value up (log-scaled
/// too when `log_y`), a line and points per series with any.
fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    all: &[Series],
    log_y: bool,
) -> anyhow::Result<()> {
    let drawn: Vec<&Series> = all.iter().filter(|(_, p)| !p.is_empty()).collect();
    let xs = drawn.iter().flat_map(|(_, p)| p.iter().map(|(x, _)| *x));
    let ys = drawn.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y));
    let (x_min, x_max) = xs.fold((f64::MAX, 1.0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let y_max = ys.clone().fold(1.0f64, f64::max) * 1.2;
    let y_min = ys.fold(f64::MAX, f64::min).min(y_max) / 2.0;
    let x_range = (x_min.min(x_max) / 2.0..x_max * 2.0).log_scale();
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70);
    let series_colour = |i: usize| Palette99::pick(i).to_rgba();
    // Clear of the lines, which on the log-scaled panel stay below its
    // upper right.
    let legend = if log_y {
        SeriesLabelPosition::UpperRight
    } else {
        SeriesLabelPosition::UpperLeft
    };
    macro_rules! plot_on {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc("ports published")
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{y:.0}"))
                .label_style(("sans-serif", 15))
                .draw()?;
            for (i, (label, points)) in drawn.iter().enumerate() {
                let colour = series_colour(i);
                chart
                    .draw_series(LineSeries::new(
                        points.iter().copied(),
                        colour.stroke_width(2),
                    ))?
                    .label(label.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                    });
                chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, colour.filled())))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 15))
                .position(legend)
                .draw()?;
        }};
    }
    if log_y {
        plot_on!(builder.build_cartesian_2d(x_range, (y_min..y_max).log_scale())?);
    } else {
        plot_on!(builder.build_cartesian_2d(x_range, 0.0..y_max)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_of_every_panel() {
        let row = |group: &str, function: &str, n: u32, ns: f64| Row {
            group: group.into(),
            function: function.into(),
            value: Some(n.to_string()),
            median_ns: ns,
        };
        let mut rows = Vec::new();
        for (i, n) in [1u32, 1_000, 10_000].into_iter().enumerate() {
            let grow = 1.0 + i as f64;
            rows.push(row("new_connection", "netplane", n, 90e3));
            rows.push(row("new_connection", "iptables", n, 90e3 * grow * grow));
            rows.push(row("per_packet", "dnat_established", n, 600.0));
            rows.push(row("per_packet", "floor_empty_program", n, 120.0));
            rows.push(row("publish", "netplane", n * 10, 1e6 * grow));
            rows.push(row("publish", "iptables", n * 10, 30e6 * grow * grow));
        }
        let dir = std::env::temp_dir().join(format!("xtask-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let png = dir.join("results.png");
        draw(&rows, &png).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
        // A blank canvas compresses to a few kilobytes; lines, points and
        // lettering do not.
        assert!(bytes.len() > 20_000, "{} bytes", bytes.len());
    }
}
