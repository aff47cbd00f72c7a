//! The reference implementation's figures that ours are reported against.
//!
//! A reference is one JSON object per figure (JSON lines), with the names this benchmark
//! uses: `workload`, `fs`, `figure`, `params` (or `parameters`) and the reference's
//! `median`, as Gitaly's Go package gave them when run through the same workload
//! definitions. `--reference FILE` reads one; without it the benchmark uses the figures
//! it carries for the CPU it runs on, measured on that CPU model: a file for the AMD
//! EPYC, and for the Intel Xeon the table of WORKLOADS.md (`workloads::reference`).
//! Figures measured on one CPU say little on another, so an unknown model gets none.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde_json::Value;

/// The Go reference on an AMD EPYC (2 vCPU), 2026-12-01.
const AMD_EPYC: &str = include_str!("../reference/go-gitaly-amd-epyc-2026-12-01.jsonl");

/// Where the reference figures of a run come from.
#[derive(Debug)]
pub(crate) enum References {
    /// Figures read from JSON lines.
    Lines {
        /// Where they came from, for the report.
        source: String,
        figures: Vec<Reference>,
    },
    /// The table of WORKLOADS.md, measured on an Intel Xeon.
    Table,
    /// None for this CPU model.
    None { model: String },
}

/// One reference figure.
#[derive(Debug, PartialEq)]
pub(crate) struct Reference {
    workload: String,
    fs: String,
    figure: String,
    params: BTreeMap<String, Value>,
    median: f64,
}

impl References {
    /// The figures of `path`.
    pub(crate) fn load(path: &Path) -> io::Result<References> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| io::Error::new(e.kind(), format!("reference {}: {e}", path.display())))?;
        let figures = parse(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("reference {}: {e}", path.display()),
            )
        })?;
        Ok(References::Lines {
            source: format!(
                "{} ({}, --reference)",
                path.display(),
                implementations(&text)
            ),
            figures,
        })
    }

    /// The figures this benchmark carries for the CPU model `model`.
    pub(crate) fn for_cpu(model: &str) -> References {
        if model.contains("AMD EPYC") {
            let figures = parse(AMD_EPYC).expect("the figures the benchmark carries parse");
            References::Lines {
                source: format!(
                    "go-gitaly-amd-epyc-2026-12-01.jsonl ({}, carried for AMD EPYC; chosen by the CPU model)",
                    implementations(AMD_EPYC)
                ),
                figures,
            }
        } else if model.contains("Intel") && model.contains("Xeon") {
            References::Table
        } else {
            References::None {
                model: model.to_string(),
            }
        }
    }

    /// What the report says of them.
    pub(crate) fn describe(&self) -> String {
        match self {
            References::Lines { source, .. } => source.clone(),
            References::Table => {
                "WORKLOADS.md's figures (carried for Intel Xeon; chosen by the CPU model)".into()
            }
            References::None { model } => format!(
                "none carried for CPU model {model:?}; pass --reference FILE.jsonl measured on it"
            ),
        }
    }

    /// The reference's figure for one of ours: same workload, file system and figure,
    /// and every parameter the reference names equal to ours. `table` is the figure the
    /// WORKLOADS.md table gives, used when that is the reference.
    pub(crate) fn lookup(
        &self,
        workload: &str,
        fs: &str,
        figure: &str,
        params: &BTreeMap<String, Value>,
        table: Option<f64>,
    ) -> Option<f64> {
        match self {
            References::Lines { figures, .. } => figures
                .iter()
                .find(|r| {
                    r.workload == workload
                        && r.fs == fs
                        && r.figure == figure
                        && r.params.iter().all(|(k, v)| params.get(k) == Some(v))
                })
                .map(|r| r.median),
            References::Table => table,
            References::None { .. } => None,
        }
    }
}

/// The implementations named in `text`'s `impl` fields, for the report.
fn implementations(text: &str) -> String {
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.get("impl").and_then(Value::as_str).map(String::from))
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        "implementation not named".into()
    } else {
        names.join(", ")
    }
}

/// Parses JSON lines of reference figures; an error names the line and what is wrong.
fn parse(text: &str) -> Result<Vec<Reference>, String> {
    let mut figures = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |what: &str| format!("line {}: {what}", i + 1);
        let v: Value = serde_json::from_str(line).map_err(|e| at(&format!("not JSON: {e}")))?;
        let text_field = |name: &str| {
            v.get(name)
                .and_then(Value::as_str)
                .map(String::from)
                .ok_or_else(|| at(&format!("no text field {name:?}")))
        };
        let params = v
            .get("params")
            .or_else(|| v.get("parameters"))
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let median = v
            .get("median")
            .and_then(Value::as_f64)
            .ok_or_else(|| at("no number field \"median\""))?;
        figures.push(Reference {
            workload: text_field("workload")?,
            fs: text_field("fs")?,
            figure: text_field("figure")?,
            params,
            median,
        });
    }
    if figures.is_empty() {
        return Err("no figures".into());
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn the_carried_epyc_figures_parse_and_match_ours_by_name_and_parameters() {
        let refs = References::for_cpu("AMD EPYC 7B13");
        let ours = params(&[
            ("N", 4.into()),
            ("S", "1 GiB".into()),
            ("max_lead", 0.into()),
        ]);
        let got = refs.lookup("w1", "tmpfs", "fan-out (N+1)*S/wall", &ours, Some(99.0));
        assert!(got.is_some_and(|v| v > 1.0), "{got:?}");
        let other_n = params(&[("N", 5.into()), ("S", "1 GiB".into())]);
        assert_eq!(
            refs.lookup("w1", "tmpfs", "fan-out (N+1)*S/wall", &other_n, None),
            None
        );
        assert!(refs.describe().contains("AMD EPYC"), "{}", refs.describe());
    }

    #[test]
    fn a_xeon_uses_the_table_and_an_unknown_cpu_gets_no_reference() {
        let none = BTreeMap::new();
        let xeon = References::for_cpu("Intel(R) Xeon(R) Processor");
        assert_eq!(
            xeon.lookup("w1", "tmpfs", "wall", &none, Some(1.5)),
            Some(1.5)
        );
        let other = References::for_cpu("Apple M2");
        assert_eq!(other.lookup("w1", "tmpfs", "wall", &none, Some(1.5)), None);
        assert!(other.describe().contains("Apple M2"));
    }

    #[test]
    fn a_reference_file_with_a_bad_line_is_refused_with_the_line_named() {
        let err = parse(
            "{\"workload\":\"w1\",\"fs\":\"tmpfs\",\"figure\":\"wall\",\"median\":1}\nnot json\n",
        )
        .unwrap_err();
        assert!(err.starts_with("line 2: not JSON"), "{err}");
        let err =
            parse("{\"workload\":\"w1\",\"fs\":\"tmpfs\",\"figure\":\"wall\"}\n").unwrap_err();
        assert!(err.contains("\"median\""), "{err}");
        assert_eq!(parse("\n").unwrap_err(), "no figures");
    }
}
