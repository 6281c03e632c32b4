//! Thermo curves as a PNG: temperature, the three energies and pressure against the step, one
//! panel each, drawn with plotters. Text uses the DejaVu Sans font built into the binary
//! (`assets/`, its licence beside it), so nothing is needed from the system.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use plotters::prelude::*;
use plotters::style::FontStyle;
use upglobe_protocol::messages::ThermoLine;

/// The font, built in.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const WIDTH: u32 = 1200;
const HEIGHT: u32 = 1000;

fn register_font() -> Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok());
    if !ok {
        bail!("the built-in font cannot be read");
    }
    Ok(())
}

/// Writes thermo lines (sorted by step; duplicates of a step keep the first) to `path` as a PNG.
pub fn thermo_png(path: &Path, title: &str, points: &[ThermoLine]) -> Result<()> {
    if path.extension().and_then(|e| e.to_str()).is_none_or(|e| !e.eq_ignore_ascii_case("png")) {
        bail!("{}: the plot is written as PNG; name the file NAME.png", path.display());
    }
    let mut points: Vec<ThermoLine> = points.to_vec();
    points.sort_by_key(|p| p.step);
    points.dedup_by_key(|p| p.step);
    if points.is_empty() {
        bail!("there are no thermo lines to plot");
    }
    register_font()?;
    draw(path, title, &points)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("writing {}", path.display()))
}

type Series<'a> = (&'a str, RGBColor, fn(&ThermoLine) -> f64);

fn draw(path: &Path, title: &str, points: &[ThermoLine]) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 28))?;
    let panels = root.split_evenly((3, 1));
    let temperature: [Series; 1] = [("temperature", RED, |p| p.temp)];
    let energies: [Series; 3] =
        [("potential", BLUE, |p| p.pe), ("kinetic", RED, |p| p.ke), ("total", BLACK, |p| p.etotal)];
    let pressure: [Series; 1] = [("pressure", RGBColor(0, 130, 0), |p| p.press)];
    let panel_series: [(&str, &[Series]); 3] =
        [("T (LJ units)", &temperature), ("energy per atom", &energies), ("pressure", &pressure)];
    let (first, last) = (points[0].step, points[points.len() - 1].step.max(points[0].step + 1));
    for (area, (label, series)) in panels.iter().zip(panel_series) {
        let values = points.iter().flat_map(|p| series.iter().map(move |(_, _, f)| f(p))).filter(|v| v.is_finite());
        let (low, high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (low, high) = if low.is_finite() { (low, high) } else { (0.0, 1.0) };
        let margin = ((high - low) * 0.05).max(1e-9);
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(first..last, (low - margin)..(high + margin))?;
        chart.configure_mesh().x_desc("step").y_desc(label).label_style(("sans-serif", 15)).draw()?;
        for (name, color, value) in series {
            let line = points.iter().map(|p| (p.step, value(p))).filter(|(_, v)| v.is_finite());
            chart
                .draw_series(LineSeries::new(line, color.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(n: u64) -> Vec<ThermoLine> {
        (0..n)
            .map(|k| {
                let x = k as f64;
                ThermoLine {
                    step: k * 10,
                    temp: 1.5 - x * 0.01,
                    pe: -6.0 + x * 0.02,
                    ke: 2.2,
                    etotal: -3.8,
                    press: 0.5,
                }
            })
            .collect()
    }

    #[test]
    fn writes_a_png_with_the_curves_drawn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("thermo.png");
        thermo_png(&path, "lj-melt.melt", &points(50)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // Drawn, not blank: a white 1200x1000 PNG compresses to a few kilobytes.
        assert!(bytes.len() > 20_000, "{} bytes", bytes.len());
    }

    #[test]
    fn refuses_what_it_cannot_draw() {
        let dir = tempfile::tempdir().unwrap();
        let error = thermo_png(&dir.path().join("t.jpg"), "x", &points(3)).unwrap_err();
        assert!(error.to_string().contains("name the file NAME.png"), "{error}");
        let error = thermo_png(&dir.path().join("t.png"), "x", &[]).unwrap_err();
        assert!(error.to_string().contains("no thermo lines"), "{error}");
        // Non-finite values are left out, not fatal.
        let mut odd = points(5);
        odd[2].press = f64::NAN;
        thermo_png(&dir.path().join("odd.png"), "x", &odd).unwrap();
    }
}
