//! PNG plots of benchmark samples (plotters, bitmap backend): a strip plot per benchmark, each run a dot, the
//! median a bar, so the distribution is visible, not just its summary.

use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::{FontStyle, FontTransform};
use std::path::Path;

/// The font plotters draws text with (Debian's fonts-dejavu-core).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Registers the font once; plots fail with a clear error when it is missing.
pub fn init_font() -> Result<(), String> {
    let bytes = std::fs::read(FONT)
        .map_err(|e| format!("cannot read {FONT} (install fonts-dejavu-core): {e}"))?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .map_err(|_| format!("{FONT} is not a usable font"))
}

/// Draws one strip plot: a column per series, one dot per sample, a bar at the median.
pub fn strip_plot(
    path: &Path,
    title: &str,
    unit: &str,
    series: &[(String, Vec<f64>)],
) -> Result<(), String> {
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.15;
    // Names too long to sit side by side under their columns (setup phases) are written downwards.
    let longest = series.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let vertical = series.len() * longest.min(40) * 7 > 820;
    let label_area = if vertical {
        (longest.min(60) * 6 + 30) as u32
    } else {
        40
    };
    let root = BitMapBackend::new(path, (900, 480 + label_area)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let n = series.len().max(1) as f64;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(label_area)
        .y_label_area_size(70);
    let mut layout = Layout {
        names: series.iter().map(|(n, _)| n.clone()).collect(),
        vertical,
        unit: unit.to_string(),
    };
    // Peers a thousand times apart (runc's milliseconds beside a guest's minute) share a log axis, so both show.
    let min = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    if min.is_finite() && max / min > 100.0 {
        layout.unit = format!("{unit} (log scale)");
        let chart = builder
            .build_cartesian_2d(-0.5f64..(n - 0.5), (min / 2.0..max).log_scale())
            .map_err(|e| e.to_string())?;
        draw(chart, &layout, series)?;
    } else {
        let chart = builder
            .build_cartesian_2d(-0.5f64..(n - 0.5), 0f64..max)
            .map_err(|e| e.to_string())?;
        draw(chart, &layout, series)?;
    }
    root.present().map_err(|e| e.to_string())
}

/// What the x axis shows: the series' names, turned downwards when long.
struct Layout {
    names: Vec<String>,
    vertical: bool,
    unit: String,
}

/// Draws the axes, the dots and the median bars on a chart of either y scale.
fn draw<'a, Y>(
    mut chart: ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    layout: &Layout,
    series: &[(String, Vec<f64>)],
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let (names, vertical) = (&layout.names, layout.vertical);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(series.len().max(1))
        .x_label_formatter(&|x| {
            let i = x.round() as isize;
            if (x - i as f64).abs() < 1e-6 && i >= 0 {
                let name = names.get(i as usize).cloned().unwrap_or_default();
                if vertical {
                    // Turned text is centred on its tick: spaces ahead of it push it below the axis.
                    format!("{}{name}", " ".repeat(name.len() * 2))
                } else {
                    name
                }
            } else {
                String::new()
            }
        })
        .x_label_style(if vertical {
            ("sans-serif", 13)
                .into_font()
                .transform(FontTransform::Rotate90)
        } else {
            ("sans-serif", 14).into_font()
        })
        .y_desc(layout.unit.as_str())
        .y_label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (_, values)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let count = values.len().max(1) as f64;
        chart
            .draw_series(values.iter().enumerate().map(|(j, v)| {
                // Spread the dots sideways so repeated values stay visible.
                let x = i as f64 + ((j as f64 + 0.5) / count - 0.5) * 0.5;
                Circle::new((x, *v), 4, color.filled())
            }))
            .map_err(|e| e.to_string())?;
        if let Some(s) = crate::stats::summarize(values) {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(i as f64 - 0.3, s.median), (i as f64 + 0.3, s.median)],
                    BLACK.stroke_width(3),
                )))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
