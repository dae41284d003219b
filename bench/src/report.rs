//! Results: samples per (metric, system), medians with min-max, ratios against each baseline,
//! and the three outputs (JSON for machines, a Markdown table for people, an SVG chart of the
//! ratios).
//!
//! Ratio convention: every ratio is oriented so that **> 1 means netbee is better**. For
//! higher-is-better metrics (throughput, connections/s) it is `netbee / baseline`; for
//! lower-is-better metrics (latency, time, memory) it is `baseline / netbee`. Ratios use medians.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

#[derive(Serialize, Clone, Debug)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

impl Stats {
    pub fn of(samples: &[f64]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
        Some(Stats { median, min: s[0], max: s[n - 1], samples: samples.to_vec() })
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct BaselineResult {
    pub system: String,
    /// None when the baseline produced no sample.
    pub stats: Option<Stats>,
    /// Oriented so that > 1 means netbee is better (see module docs).
    pub ratio: Option<f64>,
    pub target: String,
}

#[derive(Serialize, Clone, Debug)]
pub struct Metric {
    pub name: String,
    pub unit: String,
    pub better: Better,
    pub netbee: Option<Stats>,
    pub baselines: Vec<BaselineResult>,
    /// Target for the absolute value, for metrics without a baseline.
    pub target: String,
}

impl Metric {
    /// Complete when netbee and every baseline have at least one sample.
    pub fn complete(&self) -> bool {
        self.netbee.is_some() && self.baselines.iter().all(|b| b.stats.is_some())
    }
}

/// Declares a metric before measuring: the baselines it is compared with (and each
/// comparison's target, from the design brief), or an absolute target.
#[derive(Clone, Debug)]
pub struct MetricDef {
    pub key: String,
    pub name: String,
    pub unit: &'static str,
    pub better: Better,
    pub baselines: Vec<(&'static str, String)>,
    pub target: String,
}

impl MetricDef {
    pub fn new(key: impl Into<String>, name: impl Into<String>, unit: &'static str, better: Better) -> MetricDef {
        MetricDef { key: key.into(), name: name.into(), unit, better, baselines: Vec::new(), target: String::new() }
    }
    pub fn vs(mut self, system: &'static str, target: impl Into<String>) -> MetricDef {
        self.baselines.push((system, target.into()));
        self
    }
    pub fn target(mut self, t: impl Into<String>) -> MetricDef {
        self.target = t.into();
        self
    }
}

pub const NETBEE: &str = "netbee";

/// Collects samples as a scenario runs, and prints each as it arrives.
pub struct Collector {
    scenario: String,
    defs: Vec<MetricDef>,
    samples: BTreeMap<(String, String), Vec<f64>>,
}

impl Collector {
    pub fn new(scenario: &str, defs: Vec<MetricDef>) -> Collector {
        Collector { scenario: scenario.to_string(), defs, samples: BTreeMap::new() }
    }

    pub fn add(&mut self, key: &str, system: &str, value: f64) {
        let def = self.defs.iter().find(|d| d.key == key);
        let (name, unit) = def.map(|d| (d.name.as_str(), d.unit)).unwrap_or((key, ""));
        println!("    {:<14} {:<12} {name}: {} {unit}", self.scenario, system, fmt_num(value));
        self.samples.entry((key.to_string(), system.to_string())).or_default().push(value);
    }

    pub fn get(&self, key: &str, system: &str) -> &[f64] {
        self.samples.get(&(key.to_string(), system.to_string())).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn finish(self) -> Vec<Metric> {
        self.defs
            .iter()
            .map(|d| {
                let netbee = Stats::of(self.get(&d.key, NETBEE));
                let baselines = d
                    .baselines
                    .iter()
                    .map(|(sys, target)| {
                        let stats = Stats::of(self.get(&d.key, sys));
                        let ratio = match (&netbee, &stats) {
                            (Some(n), Some(b)) if n.median > 0.0 && b.median > 0.0 => Some(match d.better {
                                Better::Higher => n.median / b.median,
                                Better::Lower => b.median / n.median,
                            }),
                            _ => None,
                        };
                        BaselineResult { system: sys.to_string(), stats, ratio, target: target.clone() }
                    })
                    .collect();
                Metric {
                    name: d.name.clone(),
                    unit: d.unit.to_string(),
                    better: d.better,
                    netbee,
                    baselines,
                    target: d.target.clone(),
                }
            })
            .collect()
    }
}

#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum Status {
    Ok,
    /// Implemented, but it failed (message) or left metrics without numbers.
    Failed(String),
    /// Depends on features not built yet; no numbers on purpose.
    NotYetAvailable(String),
    /// Not selected by `--only`.
    Skipped,
}

#[derive(Serialize, Clone, Debug)]
pub struct ScenarioResult {
    pub name: String,
    pub description: String,
    pub rerun: String,
    pub status: Status,
    pub seconds: f64,
    pub metrics: Vec<Metric>,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub date: String,
    pub started: String,
    pub finished: String,
    pub mode: String,
    pub rounds: usize,
    pub host: BTreeMap<String, String>,
    pub ratio_convention: String,
    pub scenarios: Vec<ScenarioResult>,
}

pub const RATIO_CONVENTION: &str = "ratio > 1 means netbee is better: netbee/baseline for higher-is-better \
metrics (throughput, conn/s), baseline/netbee for lower-is-better metrics (latency, time); ratios of medians";

pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_stats(s: &Option<Stats>) -> String {
    match s {
        Some(s) if s.samples.len() == 1 => fmt_num(s.median),
        Some(s) => format!("{} [{}–{}]", fmt_num(s.median), fmt_num(s.min), fmt_num(s.max)),
        None => "no data".into(),
    }
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(m, "# netbee benchmarks, {} ({} mode, {} round(s))\n", self.date, self.mode, self.rounds);
        let _ = writeln!(m, "Started {}, finished {}. Host: {}.\n", self.started, self.finished, self.host_line());
        let _ = writeln!(
            m,
            "Medians with [min–max] over the rounds; netbee and its baselines were measured alternately \
             (netbee, baseline, netbee, baseline, ...) in the same run. **Ratio > 1 means netbee is better**: \
             netbee/baseline for higher-is-better metrics (↑), baseline/netbee for lower-is-better ones (↓).\n"
        );
        let _ = writeln!(
            m,
            "| scenario | metric | netbee median [min–max] | baseline | baseline median [min–max] | ratio | target |"
        );
        let _ = writeln!(m, "|---|---|---|---|---|---|---|");
        for s in &self.scenarios {
            match &s.status {
                Status::NotYetAvailable(why) => {
                    let _ = writeln!(m, "| {} | — | not yet available | | | | {why} |", s.name);
                    continue;
                }
                Status::Skipped => continue,
                Status::Failed(e) if s.metrics.is_empty() => {
                    let first = e.lines().next().unwrap_or("").replace('|', "\\|");
                    let _ = writeln!(m, "| {} | — | **failed**: {first} | | | | |", s.name);
                    continue;
                }
                _ => {}
            }
            for met in &s.metrics {
                let arrow = if met.better == Better::Higher { "↑" } else { "↓" };
                let name = format!("{} ({}) {arrow}", met.name, met.unit);
                let nb = fmt_stats(&met.netbee);
                if met.baselines.is_empty() {
                    let _ = writeln!(m, "| {} | {name} | {nb} | — | | | {} |", s.name, met.target);
                }
                for b in &met.baselines {
                    let ratio = b.ratio.map(|r| format!("{r:.2}")).unwrap_or_else(|| "—".into());
                    let _ = writeln!(
                        m,
                        "| {} | {name} | {nb} | {} | {} | {ratio} | {} |",
                        s.name,
                        b.system,
                        fmt_stats(&b.stats),
                        b.target
                    );
                }
            }
        }
        let _ = writeln!(m, "\n## Scenarios\n");
        for s in &self.scenarios {
            if matches!(s.status, Status::Skipped) {
                continue;
            }
            let state = match &s.status {
                Status::Ok => format!("ok, {:.0} s", s.seconds),
                Status::Failed(e) => {
                    format!("**failed** after {:.0} s: `{}`", s.seconds, e.replace('\n', " ").replace('`', "'"))
                }
                Status::NotYetAvailable(w) => format!("not yet available: {w}"),
                Status::Skipped => unreachable!(),
            };
            let _ = writeln!(m, "- **{}** ({state}): {}  \n  rerun alone: `{}`", s.name, s.description, s.rerun);
        }
        m
    }

    fn host_line(&self) -> String {
        self.host.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    }

    /// A horizontal bar chart of every ratio on a log axis centred on 1 (bars to the right:
    /// netbee better).
    pub fn svg(&self, path: &Path) -> Result<()> {
        use plotters::prelude::*;
        let mut bars: Vec<(String, f64)> = Vec::new();
        for s in &self.scenarios {
            for met in &s.metrics {
                for b in &met.baselines {
                    if let Some(r) = b.ratio {
                        bars.push((format!("{}: {} vs {}", s.name, met.name, b.system), r));
                    }
                }
            }
        }
        let n = bars.len().max(1);
        let height = 90 + 26 * n as u32;
        let (lo, hi) = bars.iter().fold((0.5f64, 2.0f64), |(lo, hi), (_, r)| (lo.min(*r), hi.max(*r)));
        let (lo, hi) = (lo / 1.5, hi * 1.5);
        let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let title = format!("netbee vs baselines, {} ({}): ratio > 1 = netbee better", self.date, self.mode);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(520)
            .build_cartesian_2d((lo..hi).log_scale(), (0..n).into_segmented())?;
        let labels: Vec<String> = bars.iter().map(|(l, _)| l.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                // first bar at the top, in table order
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                    labels.get(n.saturating_sub(1 + *i)).cloned().unwrap_or_default()
                }
                SegmentValue::Last => String::new(),
            })
            .x_desc("ratio (log scale)")
            .draw()?;
        let row = |i: usize| n - 1 - i;
        chart.draw_series(bars.iter().enumerate().map(|(i, (_, r))| {
            let i = row(i);
            let color = if *r >= 1.0 { RGBColor(46, 139, 87) } else { RGBColor(200, 60, 50) };
            let mut bar =
                Rectangle::new([(1.0, SegmentValue::Exact(i)), (*r, SegmentValue::Exact(i + 1))], color.filled());
            bar.set_margin(4, 4, 0, 0);
            bar
        }))?;
        chart.draw_series(bars.iter().enumerate().map(|(i, (_, r))| {
            let i = row(i);
            Text::new(format!("{r:.2}"), (r.max(1.0) * 1.03, SegmentValue::CenterOf(i)), ("sans-serif", 13))
        }))?;
        chart.draw_series(LineSeries::new(
            [(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Last)],
            BLACK.stroke_width(1),
        ))?;
        root.present().with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_ratio_orientation() {
        let s = Stats::of(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        let defs = vec![
            MetricDef::new("tput", "throughput", "Gbit/s", Better::Higher).vs("bridge", ">= 1"),
            MetricDef::new("lat", "latency", "us", Better::Lower).vs("bridge", "> 1"),
        ];
        let mut c = Collector::new("t", defs);
        c.add("tput", NETBEE, 20.0);
        c.add("tput", "bridge", 10.0);
        c.add("lat", NETBEE, 5.0);
        c.add("lat", "bridge", 10.0);
        let m = c.finish();
        assert_eq!(m[0].baselines[0].ratio, Some(2.0));
        assert_eq!(m[1].baselines[0].ratio, Some(2.0));
        assert!(m.iter().all(Metric::complete));
    }
}
