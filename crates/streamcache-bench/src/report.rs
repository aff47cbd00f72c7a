//! Figures: the statistics of one measured quantity, the table a person reads and the
//! JSON lines a program reads.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// One reported figure (one JSON object per figure with `--json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Figure {
    pub(crate) workload: String,
    /// `tmpfs`, `ext4`, or `-` where the file system plays no part.
    pub(crate) fs: String,
    pub(crate) figure: String,
    pub(crate) parameters: BTreeMap<String, serde_json::Value>,
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) unit: String,
    /// `median / limit`, where the limit is named in `limit`.
    pub(crate) ratio_to_limit: Option<f64>,
    pub(crate) limit: Option<String>,
    pub(crate) limit_value: Option<f64>,
    /// The reference implementation's figure (see `reference.rs`), in `unit`, if it has one.
    pub(crate) reference: Option<f64>,
    pub(crate) ratio_to_reference: Option<f64>,
    /// The target of issue 3 for this figure, in words.
    pub(crate) target: Option<String>,
    /// Every measured repetition, in order.
    pub(crate) values: Vec<f64>,
    /// Highest share of the machine's CPU used by other processes during a measured
    /// repetition (0..1).
    pub(crate) max_foreign_cpu: f64,
    /// A measured repetition stayed above the foreign-CPU limit after its retries, or the
    /// machine was never idle before the measurement.
    pub(crate) flagged: bool,
}

/// Median, minimum and maximum of `values` (the median of an even count is the mean of
/// the middle two).
pub(crate) fn stats(values: &[f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

/// A number with about three significant digits.
pub(crate) fn num(x: f64) -> String {
    let a = x.abs();
    if !x.is_finite() {
        "-".into()
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else if a >= 0.01 {
        format!("{x:.3}")
    } else if a == 0.0 {
        "0".into()
    } else {
        format!("{x:.2e}")
    }
}

fn params(p: &BTreeMap<String, serde_json::Value>) -> String {
    p.iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

/// The table of `figures`, as a Markdown pipe table (readable as plain text too).
pub(crate) fn table(figures: &[Figure]) -> String {
    let header = [
        "workload",
        "fs",
        "parameters",
        "figure",
        "median",
        "min",
        "max",
        "unit",
        "ratio to limit",
        "limit",
        "reference",
        "vs ref",
        "foreign CPU",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for f in figures {
        rows.push(vec![
            f.workload.clone(),
            f.fs.clone(),
            params(&f.parameters),
            f.figure.clone(),
            num(f.median),
            num(f.min),
            num(f.max),
            f.unit.clone(),
            f.ratio_to_limit.map_or_else(|| "-".into(), pct),
            match (&f.limit, f.limit_value) {
                (Some(name), Some(v)) => format!("{name} {}", num(v)),
                _ => "-".into(),
            },
            f.reference.map_or_else(|| "-".into(), num),
            f.ratio_to_reference
                .map_or_else(|| "-".into(), |r| format!("{r:.2}x")),
            format!(
                "{}{}",
                pct(f.max_foreign_cpu),
                if f.flagged { " (!)" } else { "" }
            ),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let numeric = [4, 5, 6, 8, 10, 11, 12];
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        out.push('|');
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if numeric.contains(&c) && i > 0 {
                let _ = write!(out, " {}{} |", " ".repeat(pad), cell);
            } else {
                let _ = write!(out, " {}{} |", cell, " ".repeat(pad));
            }
        }
        out.push('\n');
        if i == 0 {
            out.push('|');
            for (c, w) in widths.iter().enumerate() {
                if numeric.contains(&c) {
                    let _ = write!(out, "{}:|", "-".repeat(w + 1));
                } else {
                    let _ = write!(out, "{}|", "-".repeat(w + 2));
                }
            }
            out.push('\n');
        }
    }
    out
}

/// `median [min - max]` of a figure.
fn spread(f: &Figure) -> String {
    format!("{} [{} - {}]", num(f.median), num(f.min), num(f.max))
}

/// A side-by-side table of the figures of several file systems (from `--json` files):
/// one row per workload, parameters and figure.
pub(crate) fn side_by_side(figures: &[Figure]) -> String {
    let mut fss: Vec<String> = Vec::new();
    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    let mut cells: BTreeMap<(String, String, String, String), Figure> = BTreeMap::new();
    for f in figures {
        if !fss.contains(&f.fs) {
            fss.push(f.fs.clone());
        }
        let key = (
            f.workload.clone(),
            params(&f.parameters),
            f.figure.clone(),
            f.unit.clone(),
        );
        if !rows.contains(&key) {
            rows.push(key.clone());
        }
        cells.insert(
            (key.0, key.1, key.2, format!("{}|{}", key.3, f.fs)),
            f.clone(),
        );
    }
    let mut out = String::from("| workload | parameters | figure | unit |");
    for fs in &fss {
        let _ = write!(
            out,
            " {fs}: median [min - max] | ratio to limit | vs reference |"
        );
    }
    out.push_str(" target |\n|---|---|---|---|");
    for _ in &fss {
        out.push_str("--:|--:|--:|");
    }
    out.push_str("---|\n");
    for (w, p, fig, unit) in rows {
        let _ = write!(out, "| {w} | {p} | {fig} | {unit} |");
        let mut target = String::new();
        for fs in &fss {
            match cells.get(&(w.clone(), p.clone(), fig.clone(), format!("{unit}|{fs}"))) {
                Some(f) => {
                    let flag = if f.flagged { " (!)" } else { "" };
                    let ratio = f.ratio_to_limit.map_or_else(|| "-".into(), pct);
                    let vs = f
                        .ratio_to_reference
                        .map_or_else(|| "-".into(), |r| format!("{r:.2}x"));
                    let _ = write!(out, " {}{flag} | {ratio} | {vs} |", spread(f));
                    if let Some(t) = &f.target {
                        target = t.clone();
                    }
                }
                None => out.push_str(" - | - | - |"),
            }
        }
        let _ = writeln!(out, " {target} |");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_give_median_min_max() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(stats(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
        assert!(stats(&[]).0.is_nan());
    }

    #[test]
    fn numbers_keep_about_three_digits() {
        assert_eq!(num(1234.6), "1235");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(1.2345), "1.23");
        assert_eq!(num(0.12345), "0.123");
    }

    fn figure(fs: &str, median: f64) -> Figure {
        Figure {
            workload: "w3".into(),
            fs: fs.into(),
            figure: "hits".into(),
            parameters: BTreeMap::new(),
            median,
            min: median,
            max: median,
            unit: "k ops/s".into(),
            ratio_to_limit: None,
            limit: None,
            limit_value: None,
            reference: None,
            ratio_to_reference: None,
            target: Some(">= 3x reference".into()),
            values: vec![median],
            max_foreign_cpu: 0.0,
            flagged: fs == "ext4",
        }
    }

    #[test]
    fn side_by_side_puts_each_file_system_of_a_figure_in_one_row() {
        let t = side_by_side(&[figure("tmpfs", 700.0), figure("ext4", 650.0)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].contains("tmpfs: median") && lines[0].contains("ext4: median"));
        assert!(lines[2].contains("700 [700 - 700]"));
        assert!(lines[2].contains("650 [650 - 650] (!)"));
        assert!(lines[2].ends_with(">= 3x reference |"));
    }

    #[test]
    fn table_has_a_header_a_rule_and_one_row_per_figure() {
        let f = Figure {
            workload: "w1".into(),
            fs: "tmpfs".into(),
            figure: "aggregate read".into(),
            parameters: [("N".to_string(), serde_json::json!(4))]
                .into_iter()
                .collect(),
            median: 6.2,
            min: 6.0,
            max: 6.4,
            unit: "GB/s".into(),
            ratio_to_limit: Some(0.5),
            limit: Some("copy2".into()),
            limit_value: Some(12.4),
            reference: None,
            ratio_to_reference: None,
            target: None,
            values: vec![6.0, 6.2, 6.4],
            max_foreign_cpu: 0.01,
            flagged: false,
        };
        let t = table(&[f]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[2].contains("N=4"));
        assert!(lines[2].contains("50%"));
    }
}
