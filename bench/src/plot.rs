//! Plots of bench results with `plotters`, each written as SVG and PNG. Text needs a TrueType
//! font: the first of a few usual system fonts is loaded once; without one, no plot is
//! written and the caller is told why (the JSON and markdown results do not depend on it).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail};
use plotters::coord::Shift;
use plotters::prelude::*;

/// Fonts tried in order (Debian/Ubuntu, Fedora, Arch, macOS).
const FONT_PATHS: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
];

const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (960, 560);

/// One named line of a plot.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Its colour, as an index into the palette, so that a line keeps its colour from plot to
    /// plot whichever others are drawn with it; `None`: by its place among the series.
    pub colour: Option<usize>,
}

/// A line chart.
#[derive(Clone, Debug)]
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    pub series: &'a [Series],
    /// Log-scale x axis (rates swept by doubling).
    pub log_x: bool,
    /// Log-scale y axis (latencies spanning decades).
    pub log_y: bool,
    /// Legend in the lower right corner instead of the upper left.
    pub legend_lower_right: bool,
    /// Label x values as percentiles: x is the number of nines, −log10(1 − q).
    pub percentile_x: bool,
}

impl Series {
    /// The latency distribution of a run: milliseconds against percentiles (as [`nines`]).
    pub fn latency_curve(name: impl Into<String>, report: &crate::Report) -> Series {
        let points = report.latency_percentiles_us.iter().map(|&(q, us)| (nines(q), ms(us)));
        Series { name: name.into(), points: points.collect(), colour: None }
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl<'a> Chart<'a> {
    /// Latency curves: log milliseconds against percentiles.
    pub fn latency(title: &'a str, series: &'a [Series]) -> Chart<'a> {
        Chart {
            title,
            x_desc: "percentile",
            y_desc: "latency (ms, log)",
            series,
            log_x: false,
            log_y: true,
            legend_lower_right: false,
            percentile_x: true,
        }
    }

    /// A figure against the offered tick rate, both axes logarithmic (rates double).
    pub fn rate_sweep(title: &'a str, y_desc: &'a str, series: &'a [Series]) -> Chart<'a> {
        Chart {
            title,
            x_desc: "offered ticks/s (log)",
            y_desc,
            series,
            log_x: true,
            log_y: true,
            legend_lower_right: true,
            percentile_x: false,
        }
    }
}

/// Whether a font is available (plots can be drawn).
pub fn available() -> bool {
    font().is_ok()
}

fn font() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let bytes = FONT_PATHS.iter().find_map(|p| std::fs::read(p).ok()).ok_or_else(|| {
                format!("no TrueType font found (tried {})", FONT_PATHS.join(", "))
            })?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| "the system font could not be parsed".to_owned())
        })
        .clone()
}

/// X value of quantile `q` on a percentile axis: 0.9 → 1, 0.99 → 2, 0.999 → 3, …; 1 (the
/// maximum) is drawn half a step beyond 99.999 %.
pub fn nines(q: f64) -> f64 {
    if q >= 1.0 {
        5.5
    } else {
        -(1.0 - q).log10()
    }
}

fn percentile_label(x: f64) -> String {
    if x >= 5.5 {
        return "max".into();
    }
    let q = 100.0 * (1.0 - 10f64.powf(-x));
    let s = format!("{q:.4}");
    format!("{}%", s.trim_end_matches('0').trim_end_matches('.'))
}

/// Writes `chart` to `{stem}.svg` and `{stem}.png`; returns the paths written.
pub fn write(stem: &Path, chart: &Chart<'_>) -> anyhow::Result<Vec<PathBuf>> {
    font().map_err(|e| anyhow!("plots skipped: {e}"))?;
    if chart.series.iter().all(|s| s.points.is_empty()) {
        bail!("nothing to plot for {:?}", chart.title);
    }
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    draw(SVGBackend::new(&svg, SIZE).into_drawing_area(), chart)?;
    draw(BitMapBackend::new(&png, SIZE).into_drawing_area(), chart)?;
    Ok(vec![svg, png])
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, chart: &Chart<'_>) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing {:?}: {e}", chart.title);
    root.fill(&WHITE).map_err(err)?;
    let points = chart.series.iter().flat_map(|s| s.points.iter());
    let (x, y) = bounds(points.clone().map(|p| p.0), chart.log_x)
        .zip(bounds(points.map(|p| p.1), chart.log_y))
        .ok_or_else(|| anyhow!("no finite points"))?;
    let mut builder = ChartBuilder::on(&root);
    builder.caption(chart.title, (FONT, 22)).margin(16).x_label_area_size(48).y_label_area_size(84);
    let percentile_x = chart.percentile_x;
    let x_fmt = move |v: &f64| {
        if percentile_x {
            percentile_label(*v)
        } else {
            human(*v)
        }
    };
    let y_fmt = |v: &f64| human(*v);
    macro_rules! body {
        ($ctx:expr) => {{
            let mut ctx = $ctx;
            ctx.configure_mesh()
                .x_desc(chart.x_desc)
                .y_desc(chart.y_desc)
                .x_label_formatter(&x_fmt)
                .y_label_formatter(&y_fmt)
                .x_labels(if percentile_x { 7 } else { 10 })
                .label_style((FONT, 14))
                .axis_desc_style((FONT, 16))
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(err)?;
            for (i, s) in chart.series.iter().enumerate() {
                let color = Palette99::pick(s.colour.unwrap_or(i)).to_rgba();
                let style = color.stroke_width(2);
                ctx.draw_series(LineSeries::new(s.points.iter().copied(), style))
                    .map_err(err)?
                    .label(s.name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3))
                    });
                ctx.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(err)?;
            }
            ctx.configure_series_labels()
                .position(if chart.legend_lower_right {
                    SeriesLabelPosition::LowerRight
                } else {
                    SeriesLabelPosition::UpperLeft
                })
                .label_font((FONT, 15))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }};
    }
    match (chart.log_x, chart.log_y) {
        (false, false) => body!(builder.build_cartesian_2d(x, y).map_err(err)?),
        (false, true) => body!(builder.build_cartesian_2d(x, y.log_scale()).map_err(err)?),
        (true, false) => body!(builder.build_cartesian_2d(x.log_scale(), y).map_err(err)?),
        (true, true) => {
            body!(builder.build_cartesian_2d(x.log_scale(), y.log_scale()).map_err(err)?)
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

/// A padded axis range over `values` (positive only on a log axis).
fn bounds(values: impl Iterator<Item = f64>, log: bool) -> Option<Range<f64>> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return None;
    }
    Some(if log {
        lo / 1.5..hi * 1.5
    } else {
        // Non-negative data starts at 0, so that heights compare honestly.
        let pad = ((hi - lo) * 0.05).max(hi.abs() * 0.05).max(1e-9);
        (if lo >= 0.0 { 0.0 } else { lo - pad })..hi + pad
    })
}

/// 1234567 → "1.23M", 4500 → "4.5k", 12 → "12".
pub fn human(v: f64) -> String {
    let a = v.abs();
    let (scaled, unit) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let s = format!("{scaled:.2}");
    format!("{}{unit}", s.trim_end_matches('0').trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(0.99) - 2.0).abs() < 1e-9);
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(5.5), "max");
    }

    #[test]
    fn human_numbers() {
        assert_eq!(human(1_234_567.0), "1.23M");
        assert_eq!(human(4500.0), "4.5k");
        assert_eq!(human(12.0), "12");
        assert_eq!(human(0.5), "0.5");
    }

    #[test]
    fn writes_svg_and_png_when_a_font_exists() {
        if !available() {
            eprintln!("skipped: no system font");
            return;
        }
        let dir = std::env::temp_dir().join(format!("bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let series =
            [Series { name: "a".into(), points: vec![(0.0, 10.0), (2.0, 1000.0)], colour: None }];
        let chart = Chart {
            title: "t",
            x_desc: "x",
            y_desc: "y",
            series: &series,
            log_x: false,
            log_y: true,
            legend_lower_right: false,
            percentile_x: true,
        };
        let files = write(&dir.join("p"), &chart).unwrap();
        assert_eq!(files.len(), 2);
        let png = std::fs::read(&files[1]).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        assert!(svg.contains("<svg") && svg.contains("99%"), "{svg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
