//! The built-in demo trains natively: loss falls over its 60 AdamW steps on the CPU backend and on
//! wgpu (lavapipe in CI), and both backends start from identical numbers.

mod common;

use dpo_wgpu::train::options::{OptionOverrides, Task};
use dpo_wgpu::train::run::{Run, RunSpec};

const STEPS: usize = 60;

#[test]
fn demo_loss_decreases_on_every_backend() {
    let mut first_losses = Vec::new();
    for (backend, device) in common::selected_devices() {
        // The demo run as `dpo-wgpu train` builds it, cut to STEPS steps.
        let spec = RunSpec {
            overrides: OptionOverrides {
                max_steps: Some(STEPS),
                ..OptionOverrides::default()
            },
            ..RunSpec::new(Task::Dpo)
        };
        let mut trainer = Run::new(spec, &device).unwrap().trainer;
        pollster::block_on(async {
            let before = *trainer.evaluate().await.unwrap().unwrap().dpo().unwrap();
            // Policy == reference before training: every reward is exactly zero (the loss is
            // ln 2 plus the demo's NLL term).
            for (name, reward) in [
                ("rewards/chosen", before.rewards_chosen),
                ("rewards/rejected", before.rewards_rejected),
            ] {
                common::assert_close(name, reward, 0.0, 1e-6, 0.0);
            }
            let mut losses = Vec::new();
            trainer
                .run(|report| {
                    assert!(report.metrics.loss().is_finite() && report.grad_norm.is_finite());
                    losses.push(report.metrics.loss());
                    true
                })
                .await
                .unwrap();
            let after = *trainer.evaluate().await.unwrap().unwrap().dpo().unwrap();
            eprintln!(
                "{backend}: train loss {:.4} -> {:.4}, held-out loss {:.4} -> {:.4}, accuracy {:.3}",
                losses[0],
                losses[STEPS - 1],
                before.loss,
                after.loss,
                after.rewards_accuracies
            );
            assert!(losses[STEPS - 1] < losses[0], "{backend}: {losses:?}");
            assert!(
                after.loss < before.loss - 0.05,
                "{backend}: held-out loss {after:?}"
            );
            assert!(after.rewards_accuracies > 0.5, "{backend}: {after:?}");
            first_losses.push(losses[0]);
        });
    }
    // Same weights, same data: the backends agree on the first step.
    for w in first_losses.windows(2) {
        common::assert_close("first-step loss across backends", w[1], w[0], 1e-4, 1e-6);
    }
}
