//! `report --svg DIR`: the figures of `--json` files drawn as SVG charts, one file per
//! chart, each only when its workload is in the files:
//!
//! - `w1-fanout.svg`: W1's aggregate read against the number of readers, one line per
//!   file system, with the reference's figures and the machine's limit (the W0 figure the
//!   records name) dashed;
//! - `w3.svg`: W3's misses and hits per second, ours beside the reference's;
//! - `w5.svg`: W5's wall time and server CPU without and with the daemon;
//! - `w6.svg`: W6's wall time and server CPU without and with the shared tier.
//!
//! Medians are drawn, min - max of the measured repetitions as error bars. plotters' SVG
//! backend writes text as SVG `<text>` for the viewer to lay out: no font files are read.

use std::collections::BTreeMap;
use std::error::Error;
use std::fs;
use std::io;
use std::ops::Range;
use std::path::Path;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::{num, Figure};

type Result<T> = std::result::Result<T, Box<dyn Error>>;
type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
/// A figure and the name of the file it came from.
type Sourced = (String, Figure);
type Draw = fn(&[Sourced]) -> Result<Option<String>>;

const FONT: &str = "sans-serif";
/// What every chart's subtitle says of its marks.
const SPREAD: &str = "medians; bars: min - max of the measured repetitions";
/// W1's figure drawn: the one the reference has figures for.
const W1_FIGURE: &str = "aggregate read N*S/wall";

/// Per line of the W1 chart: our colour, the reference's and the limit's.
const LINE_COLOURS: [(RGBColor, RGBColor, RGBColor); 4] = [
    (
        RGBColor(31, 119, 180),
        RGBColor(107, 174, 214),
        RGBColor(8, 48, 107),
    ),
    (
        RGBColor(230, 85, 13),
        RGBColor(253, 174, 107),
        RGBColor(127, 39, 4),
    ),
    (
        RGBColor(44, 160, 44),
        RGBColor(116, 196, 118),
        RGBColor(0, 68, 27),
    ),
    (
        RGBColor(117, 107, 177),
        RGBColor(188, 189, 220),
        RGBColor(63, 0, 125),
    ),
];
/// The two series of a bar chart: ours (or "without") and the reference (or "with").
const BAR_COLOURS: [RGBColor; 2] = [RGBColor(31, 119, 180), RGBColor(230, 85, 13)];

/// Draws the charts of `figures` into `dir` (created if missing and a chart is drawn).
/// Returns every chart's file name and whether it was written; a chart whose workload is
/// not in `figures` is not.
pub(crate) fn write(dir: &Path, figures: &[Sourced]) -> io::Result<Vec<(&'static str, bool)>> {
    let charts: [(&'static str, Draw); 4] = [
        ("w1-fanout.svg", w1_fanout),
        ("w3.svg", w3),
        ("w5.svg", w5),
        ("w6.svg", w6),
    ];
    let mut written = Vec::new();
    for (name, draw) in charts {
        let svg = draw(figures).map_err(|e| io::Error::other(format!("{name}: {e}")))?;
        let drawn = svg.is_some();
        if let Some(svg) = svg {
            fs::create_dir_all(dir)?;
            fs::write(dir.join(name), svg)?;
        }
        written.push((name, drawn));
    }
    Ok(written)
}

/// A parameter's value as the table prints it.
fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The parameters (but `except`) whose values differ between `figs`, or that some of
/// them lack: these tell the lines or groups of a chart apart. The others are the same
/// for all and go in its subtitle.
fn split_parameters(figs: &[&Sourced], except: &[&str]) -> (Vec<String>, Vec<String>) {
    let mut values: BTreeMap<&str, Vec<Option<&serde_json::Value>>> = BTreeMap::new();
    for (_, f) in figs {
        for k in f.parameters.keys() {
            values.entry(k.as_str()).or_default();
        }
    }
    for (k, vs) in values.iter_mut() {
        vs.extend(figs.iter().map(|(_, f)| f.parameters.get(*k)));
    }
    let (mut varying, mut common) = (Vec::new(), Vec::new());
    for (k, vs) in values {
        if except.contains(&k) {
            continue;
        }
        if vs.iter().all(|v| *v == vs[0]) {
            if let Some(v) = vs[0] {
                common.push(format!("{k}={}", value_text(v)));
            }
        } else {
            varying.push(k.to_string());
        }
    }
    (varying, common)
}

/// The name of a line or group: the file (where the chart's figures come from several),
/// the file system and the varying parameters.
fn label((source, f): &Sourced, varying: &[String], several_files: bool) -> String {
    let mut parts = Vec::new();
    if several_files {
        parts.push(source.clone());
    }
    parts.push(f.fs.clone());
    for k in varying {
        if let Some(v) = f.parameters.get(k) {
            parts.push(match k.as_str() {
                "clients" => format!("{}x", value_text(v)),
                "clone" => value_text(v),
                _ => format!("{k}={}", value_text(v)),
            });
        }
    }
    parts.join(" ")
}

fn several_files(figs: &[&Sourced]) -> bool {
    figs.iter().any(|(s, _)| *s != figs[0].0)
}

/// The subtitle: the parameters common to the chart's figures, and what the marks are.
fn subtitle(common: &[String]) -> String {
    if common.is_empty() {
        SPREAD.to_string()
    } else {
        format!("{}; {SPREAD}", common.join(", "))
    }
}

/// A linear axis with ticks (and grid lines) at the given values only: plotters'
/// `WithKeyPoints` has no label formatter for `f64`.
struct Ticks {
    range: Range<f64>,
    ticks: Vec<f64>,
}

impl Ranged for Ticks {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let span = self.range.end - self.range.start;
        let t = if span > 0.0 {
            (value - self.range.start) / span
        } else {
            0.5
        };
        (f64::from(limit.0) + t * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

/// A tick label of a linear axis: "20", "2.5", "0.25".
fn tick(y: &f64) -> String {
    format!("{}", (y * 1000.0).round() / 1000.0)
}

/// An upper end of the y axis that leaves the top of the plot to a legend of `entries`
/// lines, above data that reach `top`.
fn y_top(top: f64, entries: usize, plot_height: u32) -> f64 {
    let legend = (entries as f64 * 20.0 + 36.0) / f64::from(plot_height.max(1));
    let top = if top.is_finite() && top > 0.0 {
        top
    } else {
        1.0
    };
    top / (1.0 - legend.clamp(0.08, 0.6))
}

/// An SVG document of `size` pixels, a title and subtitle at the top, the rest drawn by
/// `draw`.
fn render(
    size: (u32, u32),
    title: &str,
    subtitle: &str,
    draw: impl FnOnce(&Area<'_>) -> Result<()>,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, (FONT, 22))?;
        let root = root.titled(subtitle, (FONT, 14).into_font().color(&BLACK.mix(0.7)))?;
        draw(&root)?;
        root.present()?;
    }
    Ok(svg)
}

/// One point of a W1 line: log2(N) and the figure's median, min and max, with the
/// reference's figure and the limit at that N.
struct Point {
    x: f64,
    median: f64,
    min: f64,
    max: f64,
    reference: Option<f64>,
    limit: Option<f64>,
}

struct Line {
    label: String,
    limit_name: Option<String>,
    points: Vec<Point>,
}

/// N of a W1 figure.
fn readers(f: &Figure) -> Option<f64> {
    f.parameters
        .get("N")?
        .as_f64()
        .filter(|n| n.is_finite() && *n >= 1.0)
}

fn w1_fanout(figures: &[Sourced]) -> Result<Option<String>> {
    let figs: Vec<&Sourced> = figures
        .iter()
        .filter(|(_, f)| f.workload == "w1" && f.figure == W1_FIGURE && readers(f).is_some())
        .collect();
    if figs.is_empty() {
        return Ok(None);
    }
    let (varying, common) = split_parameters(&figs, &["N"]);
    let several = several_files(&figs);
    let mut lines: Vec<Line> = Vec::new();
    for sourced in &figs {
        let f = &sourced.1;
        let label = label(sourced, &varying, several);
        let i = match lines.iter().position(|l| l.label == label) {
            Some(i) => i,
            None => {
                lines.push(Line {
                    label,
                    limit_name: None,
                    points: Vec::new(),
                });
                lines.len() - 1
            }
        };
        let line = &mut lines[i];
        line.points.push(Point {
            x: readers(f).unwrap_or(1.0).log2(),
            median: f.median,
            min: f.min,
            max: f.max,
            reference: f.reference,
            limit: f.limit_value,
        });
        if f.limit_value.is_some() {
            line.limit_name.clone_from(&f.limit);
        }
    }
    for l in &mut lines {
        l.points.sort_by(|a, b| a.x.total_cmp(&b.x));
    }
    let unit = figs[0].1.unit.clone();
    let mut xs: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.x))
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let (lo, hi) = (xs[0] - 0.35, xs[xs.len() - 1] + 0.35);
    let top = lines
        .iter()
        .flat_map(|l| l.points.iter())
        .flat_map(|p| {
            [
                p.max,
                p.median,
                p.reference.unwrap_or(0.0),
                p.limit.unwrap_or(0.0),
            ]
        })
        .fold(0.0, f64::max);
    let entries: usize = lines
        .iter()
        .map(|l| {
            1 + usize::from(l.points.iter().any(|p| p.reference.is_some()))
                + usize::from(l.points.iter().any(|p| p.limit.is_some()))
        })
        .sum();
    let size = (900, 600);
    let svg = render(
        size,
        "W1 fan-out: aggregate read (N*S/wall) against N readers",
        &subtitle(&common),
        |area| {
            let plot_height = area.dim_in_pixel().1.saturating_sub(90);
            let mut chart = ChartBuilder::on(area)
                .margin(16)
                .x_label_area_size(50)
                .y_label_area_size(64)
                .build_cartesian_2d(
                    Ticks {
                        range: lo..hi,
                        ticks: xs.clone(),
                    },
                    0.0..y_top(top, entries, plot_height),
                )?;
            chart
                .configure_mesh()
                .x_desc("readers N (log scale)")
                .y_desc(format!("aggregate read ({unit})"))
                .x_label_formatter(&|x| format!("{}", x.exp2().round()))
                .y_label_formatter(&tick)
                .y_max_light_lines(1)
                .label_style((FONT, 13))
                .axis_desc_style((FONT, 15))
                .draw()?;
            for (i, l) in lines.iter().enumerate() {
                let (ours, reference, limit) = LINE_COLOURS[i % LINE_COLOURS.len()];
                let style = ours.stroke_width(2);
                chart
                    .draw_series(LineSeries::new(
                        l.points.iter().map(|p| (p.x, p.median)),
                        style,
                    ))?
                    .label(format!("{}: ours", l.label))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
                chart.draw_series(l.points.iter().map(|p| {
                    ErrorBar::new_vertical(
                        p.x,
                        p.min,
                        p.median,
                        p.max,
                        ours.filled().stroke_width(2),
                        8,
                    )
                }))?;
                let refs: Vec<(f64, f64)> = l
                    .points
                    .iter()
                    .filter_map(|p| Some((p.x, p.reference?)))
                    .collect();
                if !refs.is_empty() {
                    let style = reference.stroke_width(2);
                    chart
                        .draw_series(DashedLineSeries::new(refs.clone(), 8, 5, style))?
                        .label(format!("{}: reference", l.label))
                        .legend(move |(x, y)| {
                            DashedPathElement::new(vec![(x, y), (x + 24, y)], 8, 5, style)
                        });
                    chart.draw_series(refs.iter().map(|p| Circle::new(*p, 3, style)))?;
                }
                let limits: Vec<(f64, f64)> = l
                    .points
                    .iter()
                    .filter_map(|p| Some((p.x, p.limit?)))
                    .collect();
                if let Some(first) = limits.first() {
                    // One W0 figure for the whole line: drawn across the chart.
                    let across = if limits.iter().all(|p| p.1 == first.1) {
                        vec![(lo, first.1), (hi, first.1)]
                    } else {
                        limits
                    };
                    let style = limit.stroke_width(2);
                    let name = l.limit_name.as_deref().unwrap_or("W0");
                    chart
                        .draw_series(DashedLineSeries::new(across, 3, 4, style))?
                        .label(format!("{}: limit, {name}", l.label))
                        .legend(move |(x, y)| {
                            DashedPathElement::new(vec![(x, y), (x + 24, y)], 3, 4, style)
                        });
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .margin(10)
                .label_font((FONT, 13))
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK.mix(0.4))
                .draw()?;
            Ok(())
        },
    )?;
    Ok(Some(svg))
}

/// Median, min and max of a bar.
#[derive(Debug, Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(f: &Figure) -> Spread {
        Spread {
            median: f.median,
            min: f.min,
            max: f.max,
        }
    }

    /// A single value (the reference's): no error bar.
    fn value(v: f64) -> Spread {
        Spread {
            median: v,
            min: v,
            max: v,
        }
    }
}

/// One panel of a bar chart: a group of bars per file system (and varying parameters),
/// a bar per series in each.
struct Panel {
    caption: String,
    unit: String,
    groups: Vec<String>,
    bars: BTreeMap<(usize, usize), Spread>,
}

/// Adds the bar of `series` in `group` to the panel `caption`, making either if new.
fn add_bar(
    panels: &mut Vec<Panel>,
    caption: &str,
    unit: &str,
    group: &str,
    series: usize,
    s: Spread,
) {
    let p = match panels.iter().position(|p| p.caption == caption) {
        Some(i) => &mut panels[i],
        None => {
            panels.push(Panel {
                caption: caption.to_string(),
                unit: unit.to_string(),
                groups: Vec::new(),
                bars: BTreeMap::new(),
            });
            panels.last_mut().expect("just pushed")
        }
    };
    let g = match p.groups.iter().position(|g| g == group) {
        Some(g) => g,
        None => {
            p.groups.push(group.to_string());
            p.groups.len() - 1
        }
    };
    p.bars.insert((g, series), s);
}

/// A bar chart: its panels side by side (`stacked`: one above the other).
struct Bars {
    title: String,
    subtitle: String,
    x_desc: String,
    series: [&'static str; 2],
    panels: Vec<Panel>,
    stacked: bool,
}

impl Bars {
    fn render(&self) -> Result<String> {
        let n = self.panels.len();
        let (size, grid) = if self.stacked {
            ((1000, 60 + 380 * n as u32), (n, 1))
        } else {
            (((520 * n as u32).max(600), 540), (1, n))
        };
        render(size, &self.title, &self.subtitle, |area| {
            for (p, cell) in self.panels.iter().zip(area.split_evenly(grid)) {
                self.draw_panel(&cell, p)?;
            }
            Ok(())
        })
    }

    fn draw_panel(&self, area: &Area<'_>, p: &Panel) -> Result<()> {
        let n = p.groups.len();
        let present: Vec<usize> = (0..self.series.len())
            .filter(|s| p.bars.keys().any(|k| k.1 == *s))
            .collect();
        let top = p
            .bars
            .values()
            .map(|s| s.max.max(s.median))
            .fold(0.0, f64::max);
        let plot_height = area.dim_in_pixel().1.saturating_sub(100);
        let groups = p.groups.clone();
        let group_name = move |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                groups.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        let mut chart = ChartBuilder::on(area)
            .caption(&p.caption, (FONT, 17))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(
                Ticks {
                    range: -0.5..n as f64 - 0.5,
                    ticks: (0..n).map(|i| i as f64).collect(),
                },
                0.0..y_top(top, present.len(), plot_height),
            )?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc(self.x_desc.as_str())
            .y_desc(format!("{} ({})", p.caption, p.unit))
            .x_label_formatter(&group_name)
            .y_label_formatter(&tick)
            .y_max_light_lines(1)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 15))
            .draw()?;
        let width = 0.72 / present.len().max(1) as f64;
        for (j, &s) in present.iter().enumerate() {
            let colour = BAR_COLOURS[s % BAR_COLOURS.len()];
            // (left edge, spread) of each bar of this series.
            let bars: Vec<(f64, Spread)> = (0..n)
                .filter_map(|g| {
                    let spread = p.bars.get(&(g, s))?;
                    Some((g as f64 - 0.36 + width * j as f64, *spread))
                })
                .collect();
            chart
                .draw_series(bars.iter().map(|(x, b)| {
                    Rectangle::new(
                        [(x + width * 0.06, 0.0), (x + width * 0.94, b.median)],
                        colour.filled(),
                    )
                }))?
                .label(self.series[s])
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled())
                });
            let cap = width * 0.15;
            chart.draw_series(bars.iter().filter(|(_, b)| b.max > b.min).map(|(x, b)| {
                let c = x + width / 2.0;
                PathElement::new(
                    vec![
                        (c - cap, b.max),
                        (c + cap, b.max),
                        (c, b.max),
                        (c, b.min),
                        (c - cap, b.min),
                        (c + cap, b.min),
                    ],
                    BLACK.stroke_width(1),
                )
            }))?;
            let style = (FONT, 12)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Bottom));
            // The median above its bar (and its error bar).
            chart.draw_series(bars.iter().map(|(x, b)| {
                EmptyElement::at((x + width / 2.0, b.max.max(b.median)))
                    + Text::new(num(b.median), (0, -3), style.clone())
            }))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .margin(10)
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.4))
            .draw()?;
        Ok(())
    }
}

/// The x axis of a bar chart: the file system and the parameters that vary.
fn x_desc(varying: &[String]) -> String {
    std::iter::once("file system")
        .chain(varying.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(", ")
}

fn w3(figures: &[Sourced]) -> Result<Option<String>> {
    let figs: Vec<&Sourced> = figures
        .iter()
        .filter(|(_, f)| f.workload == "w3" && f.unit.ends_with("ops/s"))
        .collect();
    if figs.is_empty() {
        return Ok(None);
    }
    let (varying, common) = split_parameters(&figs, &[]);
    let several = several_files(&figs);
    let mut panels = Vec::new();
    for sourced in &figs {
        let f = &sourced.1;
        let group = label(sourced, &varying, several);
        add_bar(&mut panels, &f.figure, &f.unit, &group, 0, Spread::of(f));
        if let Some(r) = f.reference {
            add_bar(&mut panels, &f.figure, &f.unit, &group, 1, Spread::value(r));
        }
    }
    Bars {
        title: "W3: lookups per second, streamcache and the reference".into(),
        subtitle: subtitle(&common),
        x_desc: x_desc(&varying),
        series: ["streamcache", "reference"],
        panels,
        stacked: false,
    }
    .render()
    .map(Some)
}

fn w5(figures: &[Sourced]) -> Result<Option<String>> {
    // (figure, panel, series): the variants are in the figures' names.
    let known = [
        ("wall, no hook", "wall time", 0),
        ("wall, hook", "wall time", 1),
        ("server CPU, no hook", "server CPU", 0),
        ("server CPU, hook", "server CPU", 1),
    ];
    let figs: Vec<&Sourced> = figures
        .iter()
        .filter(|(_, f)| f.workload == "w5" && known.iter().any(|k| k.0 == f.figure))
        .collect();
    if figs.is_empty() {
        return Ok(None);
    }
    let (varying, common) = split_parameters(&figs, &[]);
    let several = several_files(&figs);
    let mut panels = Vec::new();
    for sourced in &figs {
        let f = &sourced.1;
        let Some(&(_, panel, series)) = known.iter().find(|k| k.0 == f.figure) else {
            continue;
        };
        let group = label(sourced, &varying, several);
        add_bar(&mut panels, panel, &f.unit, &group, series, Spread::of(f));
    }
    Bars {
        title: "W5 clone storm: without and with the daemon".into(),
        subtitle: subtitle(&common),
        x_desc: x_desc(&varying),
        series: ["without the daemon (no hook)", "with the daemon (hook)"],
        panels,
        stacked: true,
    }
    .render()
    .map(Some)
}

fn w6(figures: &[Sourced]) -> Result<Option<String>> {
    let tier = |f: &Figure| match f.parameters.get("tier").and_then(|v| v.as_str()) {
        Some("none") => Some(0),
        Some("shared") => Some(1),
        _ => None,
    };
    let panel = |f: &Figure| match f.figure.as_str() {
        "wall" => Some("wall time"),
        // The SeaweedFS server's CPU is counted in the shared tier's (docs/BENCHMARKS.md).
        "server CPU" => Some("server CPU, SeaweedFS included"),
        _ => None,
    };
    let figs: Vec<&Sourced> = figures
        .iter()
        .filter(|(_, f)| f.workload == "w6" && tier(f).is_some() && panel(f).is_some())
        .collect();
    if figs.is_empty() {
        return Ok(None);
    }
    let (varying, common) = split_parameters(&figs, &["tier"]);
    let several = several_files(&figs);
    let mut panels = Vec::new();
    for sourced in &figs {
        let f = &sourced.1;
        let (Some(series), Some(panel)) = (tier(f), panel(f)) else {
            continue;
        };
        let group = label(sourced, &varying, several);
        add_bar(&mut panels, panel, &f.unit, &group, series, Spread::of(f));
    }
    Bars {
        title: "W6 clone storm over two hosts: without and with the shared tier".into(),
        subtitle: subtitle(&common),
        x_desc: x_desc(&varying),
        series: ["no shared tier", "shared tier"],
        panels,
        stacked: false,
    }
    .render()
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(workload: &str, fs: &str, figure: &str, params: serde_json::Value, m: f64) -> Figure {
        Figure {
            workload: workload.into(),
            fs: fs.into(),
            figure: figure.into(),
            parameters: serde_json::from_value(params).unwrap(),
            median: m,
            min: m * 0.9,
            max: m * 1.1,
            unit: "GB/s".into(),
            ratio_to_limit: None,
            limit: None,
            limit_value: None,
            reference: None,
            ratio_to_reference: None,
            target: None,
            values: vec![m * 0.9, m, m * 1.1],
            max_foreign_cpu: 0.0,
            flagged: false,
        }
    }

    fn w1(fs: &str, n: u32, m: f64) -> Figure {
        let params = serde_json::json!({ "N": n, "S": "1 GiB" });
        Figure {
            limit: Some("W0 copy 1 MiB x2".into()),
            limit_value: Some(if fs == "tmpfs" { 57.0 } else { 56.0 }),
            reference: Some(m * 1.2),
            ..fig("w1", fs, W1_FIGURE, params, m)
        }
    }

    fn with_unit(unit: &str, f: Figure) -> Figure {
        Figure {
            unit: unit.into(),
            ..f
        }
    }

    /// The records of a run of W1, W3 and W6 (and of other W1 and W6 figures the charts
    /// leave out), as in a `--json` file.
    fn records() -> Vec<Sourced> {
        let mut v = Vec::new();
        for fs in ["tmpfs", "ext4"] {
            for (n, m) in [(1, 2.0), (4, 5.0), (16, 13.0), (64, 26.0)] {
                v.push(w1(fs, n, m));
                let params = serde_json::json!({ "N": n, "S": "1 GiB" });
                v.push(fig("w1", fs, "fan-out (N+1)*S/wall", params.clone(), m));
                v.push(with_unit("s", fig("w1", fs, "wall", params, 1.0)));
            }
            let params = serde_json::json!({ "entry": "4 KiB", "hot": 1000, "keys": 100000 });
            for (figure, m, r) in [
                ("misses (distinct keys)", 38.1, 38.8),
                ("hits (hot keys)", 644.0, 212.0),
            ] {
                v.push(Figure {
                    reference: Some(r),
                    ..with_unit("k ops/s", fig("w3", fs, figure, params.clone(), m))
                });
            }
            v.push(with_unit(
                "us",
                fig("w3", fs, "time per miss", params, 26.2),
            ));
            for (tier, wall, cpu) in [
                ("none", 5.45, 2.16),
                ("shared", 6.25, 3.67),
                ("shared / none", 1.15, 1.7),
            ] {
                let params =
                    serde_json::json!({ "clients": 8, "hosts": 2, "repo": "123 MB", "tier": tier });
                let unit = |u| if tier.contains('/') { "x" } else { u };
                v.push(with_unit(
                    unit("s"),
                    fig("w6", fs, "wall", params.clone(), wall),
                ));
                v.push(with_unit(
                    unit("CPU-s"),
                    fig("w6", fs, "server CPU", params.clone(), cpu),
                ));
                v.push(with_unit(
                    "count",
                    fig("w6", fs, "pack-objects runs", params, 1.0),
                ));
            }
        }
        v.into_iter().map(|f| ("run".to_string(), f)).collect()
    }

    fn w5_records() -> Vec<Sourced> {
        let mut v = Vec::new();
        for fs in ["tmpfs", "ext4"] {
            for (clients, clone) in [(8, "full"), (8, "depth 1"), (1, "full")] {
                let params =
                    serde_json::json!({ "clients": clients, "clone": clone, "repo": "123 MB" });
                for (figure, unit, m) in [
                    ("wall, no hook", "s", 7.5),
                    ("wall, hook", "s", 6.2),
                    ("wall hook / no hook", "x", 0.84),
                    ("server CPU, no hook", "CPU-s", 4.5),
                    ("server CPU, hook", "CPU-s", 1.35),
                    ("  of it: daemon + its pack-objects", "CPU-s", 0.7),
                ] {
                    v.push(with_unit(unit, fig("w5", fs, figure, params.clone(), m)));
                }
            }
        }
        v.into_iter().map(|f| ("run".to_string(), f)).collect()
    }

    /// Checks that `svg` is one `<svg>` element of properly nested tags with no stray `<`
    /// in its text, and returns its tags (the text between `<` and `>`).
    fn tags(svg: &str) -> Vec<&str> {
        assert!(svg.starts_with("<svg "), "{}", &svg[..40]);
        let mut tags = Vec::new();
        let mut open: Vec<&str> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').expect("an unclosed tag") + start;
            let tag = &rest[start + 1..end];
            assert!(!tag.contains('<'), "a `<` inside the tag {tag}");
            let name = tag
                .trim_start_matches('/')
                .split_whitespace()
                .next()
                .unwrap_or_default();
            if let Some(closed) = tag.strip_prefix('/') {
                assert_eq!(open.pop(), Some(closed.trim()), "mismatched </{closed}>");
            } else if !tag.ends_with('/') {
                open.push(name);
            }
            tags.push(tag);
            rest = &rest[end + 1..];
            if open.is_empty() {
                assert!(rest.trim().is_empty(), "content after </svg>");
            }
        }
        assert!(open.is_empty(), "unclosed: {open:?}");
        assert_eq!(tags.last(), Some(&"/svg"));
        tags
    }

    fn hex(c: RGBColor) -> String {
        format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
    }

    /// The polylines of colour `c`, as their number of points each.
    fn polylines(tags: &[&str], c: RGBColor) -> Vec<usize> {
        let stroke = format!("stroke=\"{}\"", hex(c));
        tags.iter()
            .filter(|t| t.starts_with("polyline ") && t.contains(&stroke))
            .map(|t| {
                let points = t
                    .split("points=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap();
                points.split_whitespace().count()
            })
            .collect()
    }

    /// The filled rectangles of colour `c`.
    fn rects(tags: &[&str], c: RGBColor) -> usize {
        let fill = format!("fill=\"{}\"", hex(c));
        tags.iter()
            .filter(|t| t.starts_with("rect ") && t.contains(&fill))
            .count()
    }

    fn read(dir: &Path, name: &str) -> String {
        fs::read_to_string(dir.join(name)).unwrap()
    }

    #[test]
    fn the_charts_of_the_workloads_present_are_drawn_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("charts");
        let written = write(&out, &records()).unwrap();
        assert_eq!(
            written,
            vec![
                ("w1-fanout.svg", true),
                ("w3.svg", true),
                ("w5.svg", false),
                ("w6.svg", true)
            ]
        );
        assert!(!out.join("w5.svg").exists());
        let mut names: Vec<String> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["w1-fanout.svg", "w3.svg", "w6.svg"]);

        // W1: one solid line of four points per file system, its reference and the
        // machine's limit dashed (many short polylines), and all of them in the legend.
        let svg = read(&out, "w1-fanout.svg");
        let t = tags(&svg);
        assert!(svg.contains("W1 fan-out: aggregate read (N*S/wall) against N readers"));
        assert!(svg.contains("S=1 GiB; medians"));
        assert!(svg.contains("readers N (log scale)") && svg.contains("aggregate read (GB/s)"));
        for (i, fs) in ["tmpfs", "ext4"].into_iter().enumerate() {
            let (ours, reference, limit) = LINE_COLOURS[i];
            let lines = polylines(&t, ours);
            assert_eq!(
                lines.iter().filter(|n| **n == 4).count(),
                1,
                "{fs}: {lines:?}"
            );
            assert!(polylines(&t, reference).len() > 3, "{fs} reference");
            assert!(polylines(&t, limit).len() > 3, "{fs} limit");
            for entry in [
                format!("{fs}: ours"),
                format!("{fs}: reference"),
                format!("{fs}: limit, W0 copy 1 MiB x2"),
            ] {
                assert!(svg.contains(&entry), "no legend entry {entry}");
            }
        }
        // The four N, on the x axis.
        for n in ["1", "4", "16", "64"] {
            assert!(svg.contains(&format!("\n{n}\n</text>")), "no tick {n}");
        }
        // The other W1 figures are not drawn: only two solid lines.
        let solid = LINE_COLOURS
            .iter()
            .map(|c| polylines(&t, c.0).iter().filter(|n| **n > 2).count())
            .sum::<usize>();
        assert_eq!(solid, 2);

        // W3: two panels of two groups; a bar per group and series, one legend entry
        // each per panel.
        let svg = read(&out, "w3.svg");
        let t = tags(&svg);
        assert!(svg.contains("W3: lookups per second, streamcache and the reference"));
        assert!(svg.contains("misses (distinct keys)") && svg.contains("hits (hot keys)"));
        assert!(svg.contains("(k ops/s)") && svg.contains("file system"));
        assert!(!svg.contains("time per miss"));
        assert_eq!(rects(&t, BAR_COLOURS[0]), 2 * 2 + 2);
        assert_eq!(rects(&t, BAR_COLOURS[1]), 2 * 2 + 2);
        assert!(svg.contains("\nstreamcache\n") && svg.contains("\nreference\n"));
        assert!(svg.contains("\n644\n") && svg.contains("\n212\n"));

        // W6: the tiers none and shared, not their ratio.
        let svg = read(&out, "w6.svg");
        let t = tags(&svg);
        assert!(svg.contains("W6 clone storm over two hosts: without and with the shared tier"));
        assert!(svg.contains("wall time (s)"));
        assert!(svg.contains("server CPU, SeaweedFS included (CPU-s)"));
        assert!(svg.contains("clients=8, hosts=2, repo=123 MB"));
        assert_eq!(rects(&t, BAR_COLOURS[0]), 2 * 2 + 2);
        assert_eq!(rects(&t, BAR_COLOURS[1]), 2 * 2 + 2);
        assert!(svg.contains("\nno shared tier\n") && svg.contains("\nshared tier\n"));
        assert!(!svg.contains("\n1.15\n"), "the ratio was drawn");
    }

    #[test]
    fn w5_alone_gives_w5_alone() {
        let dir = tempfile::tempdir().unwrap();
        let written = write(dir.path(), &w5_records()).unwrap();
        let drawn: Vec<&str> = written.iter().filter(|w| w.1).map(|w| w.0).collect();
        assert_eq!(drawn, ["w5.svg"]);
        for absent in ["w1-fanout.svg", "w3.svg", "w6.svg"] {
            assert!(!dir.path().join(absent).exists());
        }
        let svg = read(dir.path(), "w5.svg");
        let t = tags(&svg);
        assert!(svg.contains("W5 clone storm: without and with the daemon"));
        assert!(svg.contains("wall time (s)") && svg.contains("server CPU (CPU-s)"));
        // Six groups (two file systems, three storms) in each of two panels.
        assert_eq!(rects(&t, BAR_COLOURS[0]), 6 * 2 + 2);
        assert_eq!(rects(&t, BAR_COLOURS[1]), 6 * 2 + 2);
        for group in ["tmpfs 8x full", "ext4 8x depth 1", "ext4 1x full"] {
            assert!(svg.contains(&format!("\n{group}\n")), "no group {group}");
        }
        assert!(
            svg.contains("without the daemon (no hook)") && svg.contains("with the daemon (hook)")
        );
        assert!(svg.contains("file system, clients, clone"));
    }

    #[test]
    fn nothing_to_draw_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("charts");
        let only_w0 = vec![(
            "run".to_string(),
            fig("w0", "tmpfs", "memory copy", serde_json::json!({}), 9.0),
        )];
        for input in [Vec::new(), only_w0] {
            let written = write(&out, &input).unwrap();
            assert!(written.iter().all(|w| !w.1), "{written:?}");
            assert!(!out.exists());
        }
    }

    #[test]
    fn figures_of_several_files_are_told_apart_by_file() {
        let mut figures = records();
        figures.extend(records().into_iter().map(|(_, f)| ("other".to_string(), f)));
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &figures).unwrap();
        let svg = read(dir.path(), "w1-fanout.svg");
        assert!(svg.contains("run tmpfs: ours") && svg.contains("other ext4: ours"));
        let svg = read(dir.path(), "w3.svg");
        assert!(svg.contains("\nother tmpfs\n"));
    }

    #[test]
    fn parameters_split_into_varying_and_common() {
        let a = (
            "x".to_string(),
            fig(
                "w1",
                "tmpfs",
                "f",
                serde_json::json!({ "N": 1, "S": "1 GiB", "max_lead": 8 }),
                1.0,
            ),
        );
        let b = (
            "x".to_string(),
            fig(
                "w1",
                "tmpfs",
                "f",
                serde_json::json!({ "N": 4, "S": "1 GiB" }),
                1.0,
            ),
        );
        let (varying, common) = split_parameters(&[&a, &b], &["N"]);
        assert_eq!(varying, ["max_lead"]);
        assert_eq!(common, ["S=1 GiB"]);
        assert_eq!(label(&a, &varying, false), "tmpfs max_lead=8");
        assert_eq!(label(&b, &varying, true), "x tmpfs");
    }
}
