//! Every kind of bad checkpoint gives a typed error that names the problem, never a panic.

mod common;

use std::collections::HashMap;
use std::path::Path;

use bamba::model::{BambaModel, LoadError, Precision};
use common::*;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

fn load(dir: &Path) -> Result<BambaModel<TestBackend>, LoadError> {
    BambaModel::<TestBackend>::load(dir, &Default::default(), Precision::F32)
}

/// Rewrites `file` through `edit`, which sees and returns (name, dtype, shape, bytes) entries.
fn rewrite(file: &Path, edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) {
    let bytes = std::fs::read(file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut entries: Vec<_> =
        st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    edit(&mut entries);
    let views: HashMap<String, TensorView> =
        entries.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, file).unwrap();
}

const NORM: &str = "model.layers.0.input_layernorm.weight";

#[test]
fn missing_tensor() {
    let dir = copy_fixture("base");
    rewrite(&dir.path().join("model.safetensors"), |e| e.retain(|t| t.0 != NORM));
    let err = load(dir.path()).unwrap_err();
    assert!(matches!(&err, LoadError::Missing { name, .. } if name == NORM), "{err}");
}

#[test]
fn unexpected_tensor() {
    let dir = copy_fixture("base");
    rewrite(&dir.path().join("model.safetensors"), |e| {
        e.push(("model.layers.0.extra".into(), Dtype::F32, vec![2], vec![0; 8]))
    });
    let err = load(dir.path()).unwrap_err();
    assert!(matches!(&err, LoadError::Unexpected { names } if names == &["model.layers.0.extra"]), "{err}");
}

#[test]
fn nemotron_mtp_head_is_ignored_and_a_missing_expert_is_named() {
    // Nemotron 3 checkpoints carry a multi-token-prediction head (`mtp.*`) that transformers ignores.
    let dir = copy_fixture("nemotron_h_moe");
    rewrite(&dir.path().join("model.safetensors"), |e| {
        e.push(("mtp.layers.0.norm.weight".into(), Dtype::F32, vec![2], vec![0; 8]));
        e.push(("backbone.mtp_like".into(), Dtype::F32, vec![2], vec![0; 8]));
    });
    let err = load(dir.path()).unwrap_err();
    assert!(matches!(&err, LoadError::Unexpected { names } if names == &["backbone.mtp_like"]), "{err}");
    rewrite(&dir.path().join("model.safetensors"), |e| {
        e.retain(|t| t.0 != "backbone.mtp_like" && t.0 != "backbone.layers.1.mixer.experts.7.up_proj.weight")
    });
    let err = load(dir.path()).unwrap_err();
    let want = "backbone.layers.1.mixer.experts.7.up_proj.weight";
    assert!(matches!(&err, LoadError::Missing { name, .. } if name == want), "{err}");
}

#[test]
fn bias_present_while_config_says_none_is_unexpected() {
    let dir = copy_fixture("base"); // mamba_proj_bias = false
    rewrite(&dir.path().join("model.safetensors"), |e| {
        e.push(("model.layers.0.mamba.out_proj.bias".into(), Dtype::F32, vec![32], vec![0; 128]))
    });
    assert!(matches!(load(dir.path()).unwrap_err(), LoadError::Unexpected { .. }));
}

#[test]
fn mis_shaped_tensor() {
    let dir = copy_fixture("base");
    rewrite(&dir.path().join("model.safetensors"), |e| {
        let t = e.iter_mut().find(|t| t.0 == NORM).unwrap();
        t.2 = vec![16, 2];
    });
    let err = load(dir.path()).unwrap_err();
    assert!(
        matches!(&err, LoadError::Shape { name, expected, found, .. } if name == NORM && expected == &[32] && found == &[16, 2]),
        "{err}"
    );
    assert!(err.to_string().contains("model.safetensors"), "names the file: {err}");
}

#[test]
fn mistyped_tensor() {
    let dir = copy_fixture("base");
    rewrite(&dir.path().join("model.safetensors"), |e| {
        let t = e.iter_mut().find(|t| t.0 == NORM).unwrap();
        t.1 = Dtype::I32;
    });
    let err = load(dir.path()).unwrap_err();
    assert!(matches!(&err, LoadError::Dtype { name, dtype, .. } if name == NORM && dtype == "I32"), "{err}");
}

#[test]
fn truncated_file() {
    let dir = copy_fixture("base");
    let file = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(matches!(err, LoadError::Safetensors { .. }), "{err}");
    std::fs::write(&file, &bytes[..5]).unwrap();
    assert!(matches!(load(dir.path()).unwrap_err(), LoadError::Safetensors { .. }));
}

#[test]
fn missing_shard_and_bad_index() {
    let dir = copy_fixture("bf16_sharded");
    assert!(load(dir.path()).is_ok(), "the intact copy loads");
    std::fs::remove_file(dir.path().join("model-00002-of-00004.safetensors")).unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(matches!(&err, LoadError::Io { path, .. } if path.ends_with("model-00002-of-00004.safetensors")), "{err}");

    let dir = copy_fixture("bf16_sharded");
    std::fs::write(dir.path().join("model.safetensors.index.json"), "{\"weight_map\": 3}").unwrap();
    assert!(matches!(load(dir.path()).unwrap_err(), LoadError::Index { .. }));

    // The index claims a tensor lives in a shard that does not hold it.
    let dir = copy_fixture("bf16_sharded");
    let index_file = dir.path().join("model.safetensors.index.json");
    let mut index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index_file).unwrap()).unwrap();
    let map = index["weight_map"].as_object_mut().unwrap();
    let (name, file) = map.iter().next().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).unwrap();
    let other = ["model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors"]
        .into_iter()
        .find(|f| *f != file)
        .unwrap();
    map.insert(name.clone(), other.into());
    std::fs::write(&index_file, index.to_string()).unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(matches!(&err, LoadError::Missing { name: n, file: Some(_) } if *n == name), "{err}");
}

#[test]
fn no_weights_and_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures_dir().join("base/config.json"), dir.path().join("config.json")).unwrap();
    assert!(matches!(load(dir.path()).unwrap_err(), LoadError::NoWeights(_)));
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    assert!(matches!(load(dir.path()).unwrap_err(), LoadError::Config(_)));
}

#[test]
fn tied_checkpoint_needs_no_lm_head_and_untied_one_does() {
    assert!(load(&fixtures_dir().join("groups2_tied")).is_ok());
    let dir = copy_fixture("base");
    rewrite(&dir.path().join("model.safetensors"), |e| e.retain(|t| t.0 != "lm_head.weight"));
    let err = load(dir.path()).unwrap_err();
    assert!(matches!(&err, LoadError::Missing { name, .. } if name == "lm_head.weight"), "{err}");
}
