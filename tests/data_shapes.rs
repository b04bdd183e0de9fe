//! TRL's data handling beyond the plain JSONL shape, against TRL 1.16
//! (`tests/fixtures/make_data_fixtures.py`): implicit-prompt rows (JSONL and a JSON array) give
//! TRL's prompt, answers and token ids; `keep_end` truncation gives TRL's `evaluate()` metrics.

mod common;

use common::{assert_close, assert_pair_ids, devices, fixtures};
use dpo_wgpu::io::native::files::{load_model, read_pairs};
use dpo_wgpu::text::collate::TruncationMode;
use dpo_wgpu::text::rows::Content;
use dpo_wgpu::text::tokenize::tokenize_pairs;
use dpo_wgpu::train::options::TrainOptions;
use serde_json::Value;

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("data_shapes/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn implicit_prompt_rows_tokenize_as_trl() {
    let exp = expected();
    let trl = exp["implicit"].as_array().unwrap();
    let bundle = load_model(&fixtures().join("gpt2/policy"), &devices()[0].1).unwrap();
    for file in ["implicit.jsonl", "implicit.json"] {
        let rows = read_pairs(&fixtures().join("data_shapes").join(file)).unwrap();
        assert_eq!(rows.len(), trl.len(), "{file}");
        for (i, (row, theirs)) in rows.iter().zip(trl).enumerate() {
            // TRL's prompt and answers (its answers have EOS appended by then).
            let Content::Text(prompt) = &row.prompt else {
                panic!("{file} row {i}: text expected")
            };
            assert_eq!(prompt, theirs["prompt"].as_str().unwrap(), "{file} row {i}");
            for (ours, key) in [(&row.chosen, "chosen"), (&row.rejected, "rejected")] {
                let Content::Text(ours) = ours else { panic!() };
                let theirs = theirs[key].as_str().unwrap();
                let eos = "<|endoftext|>";
                let ours = if ours.ends_with(eos) {
                    ours.clone()
                } else {
                    format!("{ours}{eos}")
                };
                assert_eq!(theirs, ours, "{file} row {i}");
            }
        }
        let tokenized = tokenize_pairs(&rows, &bundle.tokenizer, Some(64)).unwrap();
        assert_eq!(tokenized.dropped, 0);
        for (i, (pair, theirs)) in tokenized.rows.iter().zip(trl).enumerate() {
            assert_pair_ids(&format!("{file} row {i}"), pair, theirs);
        }
    }
}

#[test]
fn keep_end_truncation_evaluates_as_trl() {
    let exp = expected();
    let max_length = exp["keep_end"]["max_length"].as_u64().unwrap() as usize;
    for (backend, device) in devices() {
        for family in ["gpt2", "llama"] {
            let options = TrainOptions {
                max_length: Some(max_length),
                truncation_mode: TruncationMode::KeepEnd,
                eval_batch_size: 3,
                ..TrainOptions::default()
            };
            // keep_end never drops a pair: every pair ends with completion tokens.
            let mut trainer = common::fixture_dpo_trainer(family, options, &device);
            assert_eq!(trainer.eval_len(), 8);
            let ours = pollster::block_on(trainer.evaluate()).unwrap().unwrap();
            let theirs = &exp["keep_end"]["eval"][family];
            for (key, value) in serde_json::to_value(ours).unwrap().as_object().unwrap() {
                let trl = theirs[format!("eval_{key}")].as_f64().unwrap();
                let what = format!("{backend} {family} keep_end {key}");
                assert_close(&what, value.as_f64().unwrap(), trl, 1e-4, 1e-6);
            }
        }
    }
}

#[test]
fn json_array_rows_report_their_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.json");
    std::fs::write(
        &path,
        r#"[{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": 3, "rejected": "c"}]"#,
    )
    .unwrap();
    let message = read_pairs(&path).unwrap_err().to_string();
    assert!(
        message.contains("[1].chosen") && message.contains("a number"),
        "{message}"
    );
    // No common beginning: no prompt to extract.
    std::fs::write(&path, r#"[{"chosen": "yes", "rejected": "no"}]"#).unwrap();
    let message = read_pairs(&path).unwrap_err().to_string();
    assert!(message.contains("no common beginning"), "{message}");
}
