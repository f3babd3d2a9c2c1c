//! The embeddable API (`TextModel`): text in, text out, against transformers' tokenizer and greedy
//! `generate()` on the embedded tiny model (`tests/fixtures/tiny_reference.json`), and logits against
//! transformers' on a fixture without tokenizer.

mod common;

use bamba::model::{BackendKind, FinishReason, TextModel, TextModelError, TextOptions};
use common::*;

fn tiny() -> TextModel {
    TextModel::builder(tiny_dir().to_str().unwrap()).backend(BackendKind::Ndarray).load().unwrap()
}

/// transformers' prompt, greedy text and its length in tokens.
fn generations() -> Vec<(String, String, usize)> {
    let reference = tiny_reference();
    let all = reference["generations"].as_array().unwrap();
    let text = |g: &serde_json::Value, key: &str| g[key].as_str().unwrap().to_string();
    all.iter().map(|g| (text(g, "prompt"), text(g, "text"), json_ids(&g["generated_ids"]).len())).collect()
}

#[test]
fn generate_stream_and_batch_give_transformers_text() {
    let model = tiny();
    let mut prompts = Vec::new();
    for (prompt, expected, new_tokens) in generations() {
        // ignore_eos as the reference was made with min_new_tokens = max_new_tokens
        let mut options = TextOptions::default().max_new_tokens(new_tokens);
        options.generate.ignore_eos = true;
        let whole = model.generate(&prompt, &options).unwrap();
        assert_eq!(whole.text, expected, "{prompt:?}");
        assert_eq!((whole.ids.len(), whole.finish), (new_tokens, FinishReason::Length));
        let pieces: Vec<String> = model.stream(&prompt, &options).unwrap().map(Result::unwrap).collect();
        assert!(pieces.len() > 1, "streamed in pieces");
        assert_eq!(pieces.concat(), expected, "{prompt:?} streamed");
        prompts.push((prompt, expected, options));
    }
    // one left-padded batch of the prompts (of different lengths): each row transformers' tokens
    let texts: Vec<&str> = prompts.iter().map(|(p, _, _)| p.as_str()).collect();
    let options = &prompts.iter().min_by_key(|(_, _, o)| o.generate.max_new_tokens).unwrap().2;
    let n = options.generate.max_new_tokens;
    let batch = model.generate_batch(&texts, options).unwrap();
    let reference = tiny_reference();
    for (g, out) in reference["generations"].as_array().unwrap().iter().zip(&batch) {
        assert_eq!(out.ids, json_ids(&g["generated_ids"])[..n]);
        assert_eq!(out.text, model.decode(&out.ids).unwrap());
    }
}

#[test]
fn stop_strings_end_the_text_before_them_whole_and_streamed() {
    let model = tiny();
    let (prompt, expected, new_tokens) = generations().remove(0);
    let stop = "Passepartout";
    let cut = &expected[..expected.find(stop).expect("the reference text holds the stop string")];
    let options = TextOptions::default().max_new_tokens(new_tokens).stop([stop]);
    let whole = model.generate(&prompt, &options).unwrap();
    assert_eq!((whole.text.as_str(), whole.finish), (cut, FinishReason::Stop));
    let streamed: String = model.stream(&prompt, &options).unwrap().map(Result::unwrap).collect();
    assert_eq!(streamed, cut);
    let err = model.generate(&prompt, &TextOptions::default().stop([""])).err().unwrap();
    assert!(err.to_string().contains("stop"), "{err}");
}

#[test]
fn logits_equal_transformers_and_bad_input_is_an_error() {
    let dir = fixtures_dir().join("base");
    let model = TextModel::builder(dir.to_str().unwrap()).backend(BackendKind::Ndarray).load().unwrap();
    let floor = manifest()["fixtures"]["base"]["f32_vs_f64_max_abs"].as_f64().unwrap() as f32;
    let tolerance = (10.0 * floor).max(2e-5).min(1e-3); // as tests/parity.rs
    for reference in references("base") {
        let logits = model.logits(&reference.ids).unwrap();
        assert_eq!((logits.len(), logits.vocab), (reference.ids.len(), reference.vocab));
        assert_eq!(logits.rows().count(), reference.ids.len());
        assert_eq!(logits.last(), logits.row(reference.ids.len() - 1));
        assert_eq!(logits.row(reference.ids.len()), None);
        let diff = max_abs_diff(&logits.values, &reference.logits);
        assert!(diff <= tolerance, "{diff:e} > {tolerance:e}");
    }
    assert!(matches!(model.logits(&[]), Err(TextModelError::Input(_))));
    assert!(matches!(model.logits(&[1, u32::MAX]), Err(TextModelError::Input(_))));
    // the fixture has no tokenizer: text methods say so
    let err = model.generate("hello", &TextOptions::default()).err().unwrap();
    assert!(matches!(err, TextModelError::NoTokenizer(_)), "{err}");
}

#[test]
fn loading_errors_are_typed() {
    let missing = TextModel::builder("/nonexistent/model").load().err().unwrap();
    assert!(missing.to_string().contains("/nonexistent/model"), "{missing}");
    // a repo id without hub options is not looked up anywhere
    assert!(matches!(TextModel::builder("owner/name").load(), Err(TextModelError::Hub(_))));
    #[cfg(not(feature = "cuda"))]
    {
        let err = TextModel::builder(tiny_dir().to_str().unwrap()).backend(BackendKind::Cuda).load().err().unwrap();
        assert!(matches!(err, TextModelError::Backend(_)), "{err}");
    }
}
