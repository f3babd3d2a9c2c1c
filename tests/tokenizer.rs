//! The tokenizer against transformers' AutoTokenizer on the embedded default model's tokenizer.json
//! (encodings with BOS, decodings, streamed text), stop strings, and text-prompt generation against
//! transformers' `generate()` (references in tests/fixtures/tiny_reference.json, made by
//! scripts/train_tiny.py).

mod common;

use bamba::model::{
    BambaModel, Precision, Sampler, SamplingParams, StopStrings, StoppingRows, TextTokenizer, TokenizerError,
};
use common::*;

#[test]
fn encodes_and_decodes_like_transformers() {
    let tok = TextTokenizer::require(&tiny_dir()).unwrap();
    let r = tiny_reference();
    for e in r["encodings"].as_array().unwrap() {
        let text = e["text"].as_str().unwrap();
        assert_eq!(tok.encode(text).unwrap(), json_ids(&e["ids"]), "encoding {text:?}");
    }
    for d in r["decodings"].as_array().unwrap() {
        assert_eq!(tok.decode(&json_ids(&d["ids"])).unwrap(), d["text"].as_str().unwrap());
    }
}

#[test]
fn streamed_text_is_never_cut_inside_a_character() {
    let tok = TextTokenizer::require(&tiny_dir()).unwrap();
    // multi-byte characters split over byte-level tokens: 'ï', '—', CJK, an emoji
    for text in ["naïve café — 東京 🚂!", "line one\nline two\t tab", " leading space"] {
        let ids = tok.encode(text).unwrap();
        let mut stream = tok.stream();
        let mut pieces = Vec::new();
        for &id in &ids {
            if let Some(piece) = stream.push(id).unwrap() {
                assert!(!piece.contains('\u{FFFD}'), "{text:?}: piece {piece:?}");
                pieces.push(piece);
            }
        }
        assert_eq!(pieces.concat(), text);
        assert!(pieces.len() > 3, "{text:?} came out in {} pieces", pieces.len());
    }
}

#[test]
fn stop_strings_hold_back_partial_matches_and_cut_before_the_stop() {
    let mut s = StopStrings::new(vec!["END".into(), "\n\n".into()]).unwrap();
    assert_eq!(s.push("hello E"), ("hello ".to_string(), false));
    assert_eq!(s.push("N"), (String::new(), false));
    assert_eq!(s.push("x"), ("ENx".to_string(), false));
    assert_eq!(s.push(" a\n"), (" a".to_string(), false));
    assert_eq!(s.push("\nmore"), (String::new(), true));
    assert_eq!(s.text(), "hello ENx a");
    let mut s = StopStrings::new(vec!["stop".into()]).unwrap();
    assert_eq!(s.push("no st"), ("no ".to_string(), false));
    assert_eq!(s.finish(), "st");
    assert!(matches!(StopStrings::new(vec![String::new()]), Err(TokenizerError::EmptyStop)));
}

#[test]
fn stopping_rows_stop_each_row_at_its_own_stop_string() {
    let tok = TextTokenizer::require(&tiny_dir()).unwrap();
    let stops = ["world".to_string()];
    let texts = ["hello world and more", "no stop here"].map(|t| tok.encode_plain(t).unwrap());
    let mut rows = StoppingRows::new(&tok, 2, &stops).unwrap();
    let mut shown = [String::new(), String::new()];
    let mut stopped_at = [None, None];
    for (r, ids) in texts.iter().enumerate() {
        for (i, &id) in ids.iter().enumerate() {
            let (piece, goes_on) = rows.push(r, id);
            shown[r].push_str(&piece);
            if !goes_on {
                stopped_at[r] = Some(i);
                break;
            }
        }
    }
    assert!(stopped_at[0].is_some() && stopped_at[1].is_none(), "{stopped_at:?}");
    let generated: Vec<&[u32]> =
        texts.iter().zip(stopped_at).map(|(ids, at)| &ids[..at.map_or(ids.len(), |i| i + 1)]).collect();
    let finals = rows.texts(generated.iter().copied()).unwrap();
    assert_eq!(finals, ["hello ", "no stop here"]);
    for (r, text) in finals.iter().enumerate() {
        assert!(text.starts_with(rows.shown(r)), "row {r}: shown {:?}, final {text:?}", rows.shown(r));
    }
    assert!(matches!(StoppingRows::new(&tok, 1, &[String::new()]), Err(TokenizerError::EmptyStop)));
}

/// A checkpoint's embedding often has more rows than its tokenizer has tokens (padded for the GPU), so a
/// sampler can pick an id the tokenizer does not know: it decodes to nothing (the tokenizers library skips
/// ids it does not know), and the row goes on with the text of the others intact.
#[test]
fn an_id_past_the_tokenizers_vocabulary_shows_nothing_and_the_row_goes_on() {
    let tok = TextTokenizer::require(&tiny_dir()).unwrap();
    let mut rows = StoppingRows::new(&tok, 2, &["world".to_string()]).unwrap();
    let hello = tok.encode_plain("hello world").unwrap();
    let unknown = u32::MAX;
    assert_eq!(rows.push(0, unknown), (String::new(), true));
    let mut shown = String::new();
    let mut goes_on = true;
    for &id in &hello {
        let (piece, on) = rows.push(0, id);
        shown.push_str(&piece);
        goes_on = on;
    }
    assert!(!goes_on, "row 0 meets its stop string after the unknown id");
    assert!(rows.push(1, hello[0]).1, "row 1 is not stopped by row 0");
    let generated: Vec<u32> = [unknown].into_iter().chain(hello.iter().copied()).collect();
    let finals = rows.texts([&generated[..], &hello[..1]]).unwrap();
    assert_eq!(finals[0], "hello ");
    assert!(finals[0].starts_with(&shown), "shown {shown:?}, final {:?}", finals[0]);
    assert_eq!(finals[1], tok.decode(&hello[..1]).unwrap());
}

#[test]
fn tokenizer_errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    assert!(TextTokenizer::from_dir(dir.path()).unwrap().is_none());
    assert!(matches!(TextTokenizer::require(dir.path()), Err(TokenizerError::Missing { .. })));
    std::fs::write(dir.path().join("tokenizer.json"), "{\"model\": {\"type\": \"BPE\"").unwrap();
    let err = TextTokenizer::from_dir(dir.path()).err().unwrap();
    assert!(matches!(err, TokenizerError::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn bos_comes_from_the_post_processor() {
    // transformers 5.24 adds BOS through tokenizer.json's post-processor only (an add_bos_token in
    // tokenizer_config.json does not change PreTrainedTokenizerFast's output): without it, no BOS.
    let dir = tempfile::tempdir().unwrap();
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny_dir().join("tokenizer.json")).unwrap()).unwrap();
    json["post_processor"] = serde_json::Value::Null;
    std::fs::write(dir.path().join("tokenizer.json"), json.to_string()).unwrap();
    let with_bos = TextTokenizer::require(&tiny_dir()).unwrap().encode("Phileas").unwrap();
    let without = TextTokenizer::require(dir.path()).unwrap().encode("Phileas").unwrap();
    assert_eq!((with_bos[0], &with_bos[1..]), (0, without.as_slice()));
}

#[test]
fn text_prompts_generate_what_transformers_generates() {
    let tok = TextTokenizer::require(&tiny_dir()).unwrap();
    let model = BambaModel::<TestBackend>::load(tiny_dir(), &Default::default(), Precision::F32).unwrap();
    for g in tiny_reference()["generations"].as_array().unwrap() {
        let prompt = tok.encode(g["prompt"].as_str().unwrap()).unwrap();
        assert_eq!(prompt, json_ids(&g["prompt_ids"]));
        let expected = json_ids(&g["generated_ids"]);
        let params = greedy_params(expected.len(), vec![]);
        let mut sampler = Sampler::new(SamplingParams::default()).unwrap();
        let out = model.generate(&prompt, &params, &mut sampler, |_| true).unwrap();
        assert_eq!(out.ids, expected, "{}", g["prompt"]);
        assert_eq!(tok.decode(&out.ids).unwrap(), g["text"].as_str().unwrap());
    }
}
