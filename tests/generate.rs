//! Greedy generation against transformers' `generate()` (with its cache) token for token, with every
//! step's logits within the fixture's noise-floor tolerance; plus EOS and sampling behaviour.

mod common;

use bamba::model::generate::eos_ids;
use bamba::model::sampling::{apply_output_penalties, apply_repetition_penalty, argmax, filtered_probabilities};
use bamba::model::{BambaModel, FinishReason, GenerateParams, Precision, Sampler, SamplingError, SamplingParams};
use common::*;

#[test]
fn greedy_generation_matches_transformers() {
    let manifest = manifest();
    let mut checked = 0;
    for name in fixture_names() {
        let floor = manifest["fixtures"][&name]["f32_vs_f64_max_abs"].as_f64().unwrap() as f32;
        let tolerance = (10.0 * floor).max(2e-5).min(1e-3); // as tests/parity.rs
        let dir = fixtures_dir().join(&name);
        let model = BambaModel::<TestBackend>::load(&dir, &Default::default(), Precision::F32).unwrap();
        let eos = eos_ids(&dir, &model.config.eos_token_ids).unwrap();
        for (i, r) in generate_references(&name).iter().enumerate() {
            for chunk in [None, Some(4)] {
                let p = GenerateParams { prefill_chunk: chunk, ..greedy_params(r.ids.len(), eos.clone()) };
                let mut sampler = Sampler::new(SamplingParams::default()).unwrap();
                let out = model.generate(&r.prompt, &p, &mut sampler, |_| true).unwrap();
                assert_eq!(out.ids, r.ids, "{name} prompt {i} prefill chunk {chunk:?}: tokens");
                for (step, (got, want)) in out.step_logits.iter().zip(&r.step_logits).enumerate() {
                    let diff = max_abs_diff(got, want);
                    assert!(diff <= tolerance, "{name} prompt {i} step {step}: {diff:e} > {tolerance:e}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 12, "only {checked} generations checked");
}

#[test]
fn stops_at_eos_unless_ignored_and_at_max_tokens() {
    let model =
        BambaModel::<TestBackend>::load(fixtures_dir().join("base"), &Default::default(), Precision::F32).unwrap();
    let r = &generate_references("base")[0];
    let eos = r.ids[2]; // pretend the third greedy token is EOS
    let greedy = || Sampler::new(SamplingParams::default()).unwrap();
    let out = model.generate(&r.prompt, &greedy_params(10, vec![eos]), &mut greedy(), |_| true).unwrap();
    assert_eq!((out.ids.as_slice(), out.finish), (&r.ids[..3], FinishReason::Eos));
    let ignoring = GenerateParams { ignore_eos: true, ..greedy_params(10, vec![eos]) };
    let out = model.generate(&r.prompt, &ignoring, &mut greedy(), |_| true).unwrap();
    assert_eq!((out.ids.as_slice(), out.finish), (&r.ids[..], FinishReason::Length));
    let mut seen = 0;
    let out = model
        .generate(&r.prompt, &greedy_params(10, vec![]), &mut greedy(), |_| {
            seen += 1;
            seen < 4
        })
        .unwrap();
    assert_eq!((out.ids.len(), out.finish), (4, FinishReason::Stop));
    assert!(model.generate(&r.prompt, &greedy_params(0, vec![]), &mut greedy(), |_| true).unwrap().ids.is_empty());
}

/// The iterator form yields transformers' greedy tokens for every fixture prompt (no step logits kept,
/// so the argmax is taken on the device as in serving), ends with EOS where transformers did, and
/// with a seeded sampler gives the callback form's tokens.
#[test]
fn token_stream_yields_transformers_tokens() {
    for name in fixture_names() {
        let dir = fixtures_dir().join(&name);
        let model = BambaModel::<TestBackend>::load(&dir, &Default::default(), Precision::F32).unwrap();
        let eos = eos_ids(&dir, &model.config.eos_token_ids).unwrap();
        for (i, r) in generate_references(&name).iter().enumerate() {
            let params = GenerateParams::default().max_new_tokens(r.ids.len()).eos_ids(eos.clone());
            let greedy = Sampler::new(SamplingParams::default()).unwrap();
            let mut stream = model.stream(&r.prompt, &params, greedy).unwrap();
            let ids: Vec<u32> = stream.by_ref().map(Result::unwrap).collect();
            assert_eq!(ids, r.ids, "{name} prompt {i}");
            assert_eq!(stream.generation().ids, r.ids);
            let ended_on_eos = r.ids.last().is_some_and(|t| eos.contains(t));
            let expected = if ended_on_eos { FinishReason::Eos } else { FinishReason::Length };
            assert_eq!(stream.generation().finish, expected, "{name} prompt {i}");
            assert!(stream.next().is_none(), "a finished stream stays finished");
        }
    }
    let model =
        BambaModel::<TestBackend>::load(fixtures_dir().join("base"), &Default::default(), Precision::F32).unwrap();
    let seeded = SamplingParams { temperature: 0.9, top_k: Some(20), seed: 7, ..SamplingParams::default() };
    let params = GenerateParams::default().max_new_tokens(12);
    let mut sampler = Sampler::new(seeded.clone()).unwrap();
    let called = model.generate(&[1, 2, 3], &params, &mut sampler, |_| true).unwrap();
    let streamed: Vec<u32> =
        model.stream(&[1, 2, 3], &params, Sampler::new(seeded).unwrap()).unwrap().map(Result::unwrap).collect();
    assert_eq!(streamed, called.ids);
    let err = model.stream(&[], &params, Sampler::new(SamplingParams::default()).unwrap()).err().unwrap();
    assert!(matches!(err, bamba::model::GenerateError::Input(_)), "{err}");
}

#[test]
fn generation_input_errors() {
    let model =
        BambaModel::<TestBackend>::load(fixtures_dir().join("base"), &Default::default(), Precision::F32).unwrap();
    let mut s = Sampler::new(SamplingParams::default()).unwrap();
    assert!(model.generate(&[], &greedy_params(4, vec![]), &mut s, |_| true).is_err());
    assert!(model.generate(&[1, 500], &greedy_params(4, vec![]), &mut s, |_| true).is_err());
    let too_long = greedy_params(model.config.context_length(), vec![]);
    let err = model.generate(&[1, 2], &too_long, &mut s, |_| true).unwrap_err();
    assert!(err.to_string().contains("context length"), "{err}");
    let zero_chunk = GenerateParams { prefill_chunk: Some(0), ..greedy_params(4, vec![]) };
    assert!(model.generate(&[1, 2], &zero_chunk, &mut s, |_| true).is_err());
}

#[test]
fn seeded_sampling_is_deterministic_and_seed_dependent() {
    let model =
        BambaModel::<TestBackend>::load(fixtures_dir().join("base"), &Default::default(), Precision::F32).unwrap();
    let run = |seed| {
        let p = SamplingParams { temperature: 1.5, top_k: Some(50), top_p: Some(0.95), seed, ..Default::default() };
        model.generate(&[5, 6, 7], &greedy_params(12, vec![]), &mut Sampler::new(p).unwrap(), |_| true).unwrap().ids
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn filters_keep_the_right_tokens() {
    // logits -> probabilities at temperature 1: softmax([2, 1, 0, -1, 3]) = [.23, .09, .03, .01, .63]
    let logits = [2.0, 1.0, 0.0, -1.0, 3.0];
    let base = SamplingParams { temperature: 1.0, ..Default::default() };
    let kept = |p: &SamplingParams| -> Vec<usize> {
        filtered_probabilities(&logits, p).iter().enumerate().filter(|(_, &x)| x > 0.0).map(|(i, _)| i).collect()
    };
    assert_eq!(kept(&SamplingParams { top_k: Some(2), ..base.clone() }), vec![0, 4]);
    assert_eq!(kept(&SamplingParams { top_p: Some(0.5), ..base.clone() }), vec![4]);
    assert_eq!(kept(&SamplingParams { top_p: Some(0.8), ..base.clone() }), vec![0, 4]);
    assert_eq!(kept(&SamplingParams { top_p: Some(0.9), ..base.clone() }), vec![0, 1, 4]);
    assert_eq!(kept(&SamplingParams { min_p: Some(0.3), ..base.clone() }), vec![0, 4]);
    assert_eq!(kept(&SamplingParams { min_p: Some(0.1), ..base.clone() }), vec![0, 1, 4]);
    let probs = filtered_probabilities(&logits, &SamplingParams { top_k: Some(2), ..base.clone() });
    assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert!((probs[4] - 1.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
    // Temperature sharpens: at 0.1 the top token carries nearly all the mass.
    assert!(filtered_probabilities(&logits, &SamplingParams { temperature: 0.1, ..base.clone() })[4] > 0.9999);

    let mut l = vec![2.0, -2.0, 1.0];
    apply_repetition_penalty(&mut l, &[0, 1, 1], 2.0);
    assert_eq!(l, vec![1.0, -4.0, 1.0]);
    assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1, "ties go to the first index, as torch.argmax");

    assert_eq!(
        Sampler::new(SamplingParams { temperature: -1.0, ..Default::default() }).unwrap_err(),
        SamplingError::Temperature(-1.0)
    );
    assert_eq!(Sampler::new(SamplingParams { top_k: Some(0), ..Default::default() }).unwrap_err(), SamplingError::TopK);
    assert!(Sampler::new(SamplingParams { top_p: Some(1.5), ..Default::default() }).is_err());
    assert!(Sampler::new(SamplingParams { min_p: Some(-0.1), ..Default::default() }).is_err());
    assert!(Sampler::new(SamplingParams { repetition_penalty: 0.0, ..Default::default() }).is_err());
    assert_eq!(
        Sampler::new(SamplingParams { frequency_penalty: 2.5, ..Default::default() }).unwrap_err(),
        SamplingError::Penalty { name: "frequency_penalty", value: 2.5 }
    );
    assert!(Sampler::new(SamplingParams { presence_penalty: -2.1, ..Default::default() }).is_err());

    // OpenAI's presence and frequency penalties: logit -= frequency · count + presence, generated tokens only
    let mut l = vec![1.0, 2.0, 3.0, 0.5];
    apply_output_penalties(&mut l, &[2, 2, 0], 0.5, 0.25);
    assert_eq!(l, vec![0.25, 2.0, 2.0, 0.5]);
    // through a greedy sampler: the prompt's token 3 is not penalized, the generated 2 falls below 1
    let penalized = SamplingParams { presence_penalty: 0.5, frequency_penalty: 0.3, ..Default::default() };
    let mut sampler = Sampler::new(penalized).unwrap();
    assert!(!sampler.is_plain_greedy());
    assert_eq!(sampler.sample(&[1.0, 2.0, 3.0, 2.9], &[3, 2, 2, 0], 3), 3);
    assert_eq!(sampler.sample(&[1.0, 2.0, 3.0, 0.5], &[3, 2, 2, 0], 3), 1);
}

#[test]
fn left_padded_batch_rows_match_transformers_and_running_alone() {
    let manifest = manifest();
    let mut rows_checked = 0;
    for name in fixture_names() {
        let floor = manifest["fixtures"][&name]["f32_vs_f64_max_abs"].as_f64().unwrap() as f32;
        let tolerance = (10.0 * floor).max(2e-5).min(1e-3); // as tests/parity.rs
        let dir = fixtures_dir().join(&name);
        let model = BambaModel::<TestBackend>::load(&dir, &Default::default(), Precision::F32).unwrap();
        // prompts of different lengths (13, 5, 1 tokens), so rows carry 0, 8 and 12 pads
        let prompts: Vec<Vec<u32>> = references(&name).into_iter().map(|r| r.ids).collect();
        let lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
        assert!(lengths.iter().min() < lengths.iter().max(), "{name}: prompts of one length test no padding");
        let max_new = 6;
        // Chunks of 1 run pad slots through the decode path (a pad query with no real key before it).
        for chunk in [None, Some(4), Some(1)] {
            let p = GenerateParams { prefill_chunk: chunk, ..greedy_params(max_new, vec![]) };
            let mut samplers: Vec<Sampler> =
                prompts.iter().map(|_| Sampler::new(SamplingParams::default()).unwrap()).collect();
            let batch = model.generate_batch(&prompts, &p, &mut samplers, |_, _| true).unwrap();
            for (i, (prompt, row)) in prompts.iter().zip(&batch).enumerate() {
                let alone = model
                    .generate(prompt, &p, &mut Sampler::new(SamplingParams::default()).unwrap(), |_| true)
                    .unwrap();
                assert_eq!(row.ids, alone.ids, "{name} row {i} chunk {chunk:?}: tokens");
                for (step, (got, want)) in row.step_logits.iter().zip(&alone.step_logits).enumerate() {
                    let diff = max_abs_diff(got, want);
                    assert!(diff <= tolerance, "{name} row {i} step {step} vs alone: {diff:e} > {tolerance:e}");
                }
                rows_checked += 1;
            }
            // and against transformers' own generate() where the fixture records it
            for (i, r) in generate_references(&name).iter().enumerate() {
                let row = &batch[prompts.iter().position(|p| *p == r.prompt).unwrap()];
                let n = r.ids.len().min(max_new);
                assert_eq!(row.ids[..n], r.ids[..n], "{name} generate reference {i} in a batch");
                for (step, (got, want)) in row.step_logits.iter().zip(&r.step_logits).take(n).enumerate() {
                    let diff = max_abs_diff(got, want);
                    assert!(diff <= tolerance, "{name} reference {i} step {step} in a batch: {diff:e}");
                }
            }
        }
    }
    assert!(rows_checked >= 30, "only {rows_checked} rows checked");
}

#[test]
fn seeded_sampling_in_a_batch_equals_each_row_alone() {
    let model =
        BambaModel::<TestBackend>::load(fixtures_dir().join("base"), &Default::default(), Precision::F32).unwrap();
    let sp = SamplingParams { temperature: 1.2, top_p: Some(0.9), seed: 11, ..Default::default() };
    let prompts = vec![vec![5, 6, 7, 8, 9, 10, 11], vec![3], vec![40, 41, 42]];
    let p = greedy_params(10, vec![]);
    let mut samplers: Vec<Sampler> = prompts.iter().map(|_| Sampler::new(sp.clone()).unwrap()).collect();
    let batch = model.generate_batch(&prompts, &p, &mut samplers, |_, _| true).unwrap();
    for (prompt, row) in prompts.iter().zip(&batch) {
        let alone = model.generate(prompt, &p, &mut Sampler::new(sp.clone()).unwrap(), |_| true).unwrap();
        assert_eq!(row.ids, alone.ids);
    }
}

#[test]
fn a_stopped_row_leaves_the_others_running() {
    let model =
        BambaModel::<TestBackend>::load(fixtures_dir().join("base"), &Default::default(), Precision::F32).unwrap();
    let prompts = vec![vec![5, 6, 7], vec![8, 9]];
    let mut samplers: Vec<Sampler> = prompts.iter().map(|_| Sampler::new(SamplingParams::default()).unwrap()).collect();
    let mut seen = [0; 2];
    let out = model
        .generate_batch(&prompts, &greedy_params(8, vec![]), &mut samplers, |r, _| {
            seen[r] += 1;
            r != 0 || seen[0] < 3
        })
        .unwrap();
    assert_eq!((out[0].ids.len(), out[0].finish), (3, FinishReason::Stop));
    assert_eq!((out[1].ids.len(), out[1].finish), (8, FinishReason::Length));
}
