//! Training controls: gradient accumulation gives the update of the whole batch.

mod common;

use common::{devices, worst_weight_difference};
use dpo_wgpu::train::optim::{LrSchedule, OptimizerKind};
use dpo_wgpu::train::options::TrainOptions;
use dpo_wgpu::train::trainer::Trainer;

/// Train to the end; the loss and gradient norm of each step.
fn train(trainer: &mut Trainer) -> Vec<(f64, f64)> {
    let mut steps = Vec::new();
    while !trainer.is_done() {
        let report = pollster::block_on(trainer.step()).unwrap();
        steps.push((report.metrics.loss(), report.grad_norm));
    }
    steps
}

#[test]
fn accumulated_micro_batches_give_the_whole_batch_update() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, device) in devices() {
        for optimizer in [OptimizerKind::Sgd, OptimizerKind::AdamW] {
            let options = |batch_size, accumulation| TrainOptions {
                optimizer,
                learning_rate: if optimizer == OptimizerKind::Sgd {
                    0.5
                } else {
                    1e-2
                },
                batch_size,
                gradient_accumulation_steps: accumulation,
                epochs: 2,
                max_length: Some(64),
                lr_schedule: LrSchedule::Linear,
                shuffle: true,
                weight_decay: 0.1,
                ..TrainOptions::default()
            };
            // One step per epoch over all 8 pairs, as one batch and as micro-batches, the
            // uneven 3 + 3 + 2 included (each weighted by its share of the step).
            let mut whole = common::fixture_dpo_trainer("gpt2", options(8, 1), &device);
            let whole_losses = train(&mut whole);
            assert_eq!(whole_losses.len(), 2);
            let path = dir.path().join("whole.safetensors");
            let weights =
                pollster::block_on(dpo_wgpu::io::bundle::export_weights(&whole.policy())).unwrap();
            std::fs::write(&path, weights.to_bytes().unwrap()).unwrap();
            for (batch, accumulation) in [(2, 4), (3, 3), (4, 2)] {
                let what = format!("{backend} {optimizer:?} {batch}×{accumulation}");
                let mut micro =
                    common::fixture_dpo_trainer("gpt2", options(batch, accumulation), &device);
                assert_eq!(micro.total_steps(), 2, "{what}: steps");
                let losses = train(&mut micro);
                for ((loss, norm), (whole_loss, whole_norm)) in losses.iter().zip(&whole_losses) {
                    // The step's loss is the mean over its pairs either way.
                    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs();
                    assert!(
                        close(*loss, *whole_loss),
                        "{what}: loss {loss} vs {whole_loss}"
                    );
                    assert!(
                        close(*norm, *whole_norm),
                        "{what}: grad norm {norm} vs {whole_norm}"
                    );
                }
                let worst = worst_weight_difference(&micro.policy(), &path);
                eprintln!("{what}: worst weight difference to one batch of 8: {worst:.1e}");
                // SGD's update is linear in the gradient: only summation order differs. Adam
                // divides by √v, which turns round-off in gradients near zero into visible
                // weight differences (up to ~0.2 lr here), so there the losses and gradient
                // norms of both steps are the check.
                if optimizer == OptimizerKind::Sgd {
                    assert!(worst < 1e-6, "{what}: {worst}");
                }
            }
        }
    }
}
