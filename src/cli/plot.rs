//! `metrics.svg`: the curves of a run drawn from its `metrics.jsonl` (so a resumed run's plot
//! shows the whole run): one panel per metric, training steps as a line, evaluations as points.

use std::path::Path;

use dpo_wgpu::error::{Error, Result};
use plotters::prelude::*;
use serde_json::Value;

/// The panels: DPO's (and SimPO/ORPO's) loss, reward accuracy and margin; SFT's loss and
/// token accuracy. A metric nobody logged is left out.
const PANELS: [(&str, &str); 4] = [
    ("loss", "loss"),
    ("rewards/accuracies", "reward accuracy"),
    ("rewards/margins", "reward margin"),
    ("mean_token_accuracy", "token accuracy"),
];

/// `(step, value)` of `key` in the records that have it.
fn series(records: &[Value], key: &str) -> Vec<(f64, f64)> {
    records
        .iter()
        .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(key)?.as_f64()?)))
        .filter(|(_, v)| v.is_finite())
        .collect()
}

/// Draw `metrics_jsonl` into `svg`.
pub fn write(metrics_jsonl: &Path, svg: &Path) -> Result<()> {
    let text = std::fs::read_to_string(metrics_jsonl)
        .map_err(|e| Error::io(metrics_jsonl.display(), e))?;
    let records: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    // Preference runs get loss, accuracy and margin; SFT runs loss and token accuracy.
    let preference = records.iter().any(|r| r.get("rewards/margins").is_some());
    let panels: Vec<(&str, &str, Vec<(f64, f64)>, Vec<(f64, f64)>)> = PANELS
        .iter()
        .filter(|(key, _)| !(preference && *key == "mean_token_accuracy"))
        .map(|&(key, label)| {
            let train = series(&records, key);
            let eval = series(&records, &format!("eval_{key}"));
            (key, label, train, eval)
        })
        .filter(|(_, _, train, _)| !train.is_empty())
        .collect();
    if panels.is_empty() {
        return Ok(());
    }
    let failed = |e: &dyn std::fmt::Display| Error::Invalid(format!("{}: {e}", svg.display()));
    let root = SVGBackend::new(svg, (900, 280 * panels.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    for (area, (_, label, train, eval)) in root.split_evenly((panels.len(), 1)).iter().zip(&panels)
    {
        let points = train.iter().chain(eval);
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        let mut last_step: f64 = 1.0;
        for &(step, v) in points {
            lo = lo.min(v);
            hi = hi.max(v);
            last_step = last_step.max(step);
        }
        let pad = ((hi - lo) * 0.05).max(1e-6);
        let mut chart = ChartBuilder::on(area)
            .caption(*label, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..last_step, (lo - pad)..(hi + pad))
            .map_err(|e| failed(&e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(*label)
            .draw()
            .map_err(|e| failed(&e))?;
        chart
            .draw_series(LineSeries::new(train.iter().copied(), &BLUE))
            .map_err(|e| failed(&e))?
            .label("training step")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        if !eval.is_empty() {
            chart
                .draw_series(eval.iter().map(|&p| Circle::new(p, 4, RED.filled())))
                .map_err(|e| failed(&e))?
                .label("evaluation")
                .legend(|(x, y)| Circle::new((x + 10, y), 4, RED.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| failed(&e))?;
    }
    root.present().map_err(|e| failed(&e))?;
    Ok(())
}
