//! The cached paths against the uncached forward (which matches transformers, tests/parity.rs):
//! prefill, chunked prefill with chunk sizes that divide neither the prompt nor the SSD chunk,
//! and token-by-token decode.

mod common;

use bamba::model::cache::CacheError;
use bamba::model::{BambaModel, HybridCache, Precision};
use burn::tensor::{DType, Tensor};
use common::*;

type Model = BambaModel<TestBackend>;

fn load(name: &str) -> Model {
    BambaModel::load(fixtures_dir().join(name), &Default::default(), Precision::F32).unwrap()
}

fn vec3(t: Tensor<TestBackend, 3>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

/// Runs `ids` through the cache in chunks of `chunk`, returning all logits (concatenated).
fn run_chunked(model: &Model, ids: &[u32], chunk: usize, cache: &mut HybridCache<TestBackend>) -> Vec<f32> {
    let mut out = Vec::new();
    for part in ids.chunks(chunk) {
        let t = model.ids_tensor(&[part.to_vec()]).unwrap();
        out.extend(vec3(model.forward_cached(t, cache, false).unwrap()));
    }
    out
}

fn states(cache: &HybridCache<TestBackend>) -> Vec<Vec<f32>> {
    cache
        .layers()
        .iter()
        .map(|l| {
            let mut out = vec![];
            if let Some(s) = l.mamba_state() {
                out.extend(s.ssm.clone().into_data().to_vec::<f32>().unwrap());
                out.extend(s.conv_window.clone().into_data().to_vec::<f32>().unwrap());
            }
            if let Some(kv) = &l.kv {
                let (k, v) = kv.filled();
                out.extend(k.into_data().to_vec::<f32>().unwrap());
                out.extend(v.into_data().to_vec::<f32>().unwrap());
            }
            out
        })
        .collect()
}

const PROMPT: [u32; 19] = [5, 17, 3, 90, 44, 12, 7, 7, 60, 31, 2, 85, 19, 40, 23, 11, 64, 9, 71];

#[test]
fn cached_prefill_chunked_prefill_and_decode_equal_the_uncached_forward() {
    for name in ["base", "groups2_tied", "pure_mamba_clamped", "rope_full_bare_inf", "biases_head_dim"] {
        let model = load(name);
        let expected = vec3(model.forward(model.ids_tensor(&[PROMPT.to_vec()]).unwrap()));
        // f32 noise grows with the logit scale (groups2_tied reaches |24|): measured worst relative
        // difference 1.1e-6 of max |logit|; allow 5e-6.
        let scale = expected.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let tol = 5e-6 * scale;
        let mut worst = 0.0f32;
        let mut one_shot = model.new_cache(1, 32, DType::F32).unwrap();
        let got = run_chunked(&model, &PROMPT, PROMPT.len(), &mut one_shot);
        assert!(max_abs_diff(&got, &expected) < tol, "{name}: cached prefill");
        let reference_states = states(&one_shot);
        for chunk in [1, 2, 5, 7] {
            let mut cache = model.new_cache(1, 32, DType::F32).unwrap();
            let got = run_chunked(&model, &PROMPT, chunk, &mut cache);
            let diff = max_abs_diff(&got, &expected);
            worst = worst.max(diff / scale);
            assert!(diff < tol, "{name}: chunks of {chunk}: logits differ by {diff}");
            for (i, (a, b)) in states(&cache).iter().zip(&reference_states).enumerate() {
                let state_scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                assert!(max_abs_diff(a, b) < 5e-6 * state_scale, "{name}: chunks of {chunk}: layer {i} state");
            }
            assert_eq!(cache.position(), PROMPT.len());
        }
        println!("{name:20} chunked/decode vs one-shot: worst |diff| / max|logit| = {worst:.1e}");
    }
}

#[test]
fn cache_capacity_and_batch_are_checked() {
    let model = load("base");
    let mut cache = model.new_cache(1, 4, DType::F32).unwrap();
    let err = model.forward_cached(model.ids_tensor(&[PROMPT.to_vec()]).unwrap(), &mut cache, true).unwrap_err();
    assert_eq!(err, CacheError::Full { needed: PROMPT.len(), capacity: 4 });
    let err = model.forward_cached(model.ids_tensor(&[vec![1, 2], vec![3, 4]]).unwrap(), &mut cache, true).unwrap_err();
    assert_eq!(err, CacheError::Batch { cache: 1, input: 2 });
}

#[test]
fn reset_cache_replays_identically() {
    let model = load("base");
    let mut cache = model.new_cache(1, 32, DType::F32).unwrap();
    let first = run_chunked(&model, &PROMPT[..9], 4, &mut cache);
    cache.reset();
    let second = run_chunked(&model, &PROMPT[..9], 4, &mut cache);
    assert_eq!(first, second);
}

#[test]
fn bf16_state_is_refused_where_the_backend_has_no_bf16() {
    let model = load("base");
    assert!(matches!(model.new_cache(1, 8, DType::BF16), Err(CacheError::StateDtype { .. })));
}

/// `assume_filled` (bench's `tgN@dD`) gives every Mamba layer a zero state, so that the first timed
/// step is a decode step; that step computes what a first token from a fresh cache computes.
#[test]
fn assumed_context_starts_from_zero_states() {
    let model = load("base");
    let mut fresh = model.new_cache(1, 8, DType::F32).unwrap();
    let mut assumed = model.new_cache(1, 8, DType::F32).unwrap();
    assumed.assume_filled(0).unwrap();
    let mut mamba_layers = 0;
    for layer in assumed.layers() {
        if let Some(state) = &layer.mamba {
            let state = state.as_ref().expect("a zero state");
            let ssm: Vec<f32> = state.ssm.clone().into_data().to_vec().unwrap();
            let window: Vec<f32> = state.conv_window.clone().into_data().to_vec().unwrap();
            assert!(ssm.iter().chain(&window).all(|&v| v == 0.0) && !ssm.is_empty() && !window.is_empty());
            mamba_layers += 1;
        }
    }
    assert!(mamba_layers > 0);
    let token = || model.ids_tensor(&[vec![PROMPT[0]]]).unwrap();
    let expected = vec3(model.forward_cached(token(), &mut fresh, true).unwrap());
    let got = vec3(model.forward_cached(token(), &mut assumed, true).unwrap());
    // The decode step and the chunked scan round differently in f32: measured 1.7e-6.
    let worst = got.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    println!("first step from zero states vs a fresh cache: worst absolute difference {worst:e}");
    assert!(worst <= 1e-4, "first step from zero states differs by {worst}");
}
