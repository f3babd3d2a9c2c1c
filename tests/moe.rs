//! The MoE router's device top-k against Burn's sorting `topk_with_indices`.

mod common;

use bamba::model::moe::top_k;
use burn::tensor::{Tensor, TensorData};
use common::*;

/// The same picks, in the same order, for k of 1, 3 and every column.
#[test]
fn top_k_equals_sorting_top_k() {
    let device = Default::default();
    let (rows, experts) = (9, 13);
    let values: Vec<f32> = (0..rows * experts).map(|i| ((i * 7919) % 101) as f32 * 0.37 - 17.0).collect();
    let logits = Tensor::<TestBackend, 2>::from_data(TensorData::new(values, [rows, experts]), &device);
    for k in [1, 3, experts] {
        let (got, got_ids) = top_k(logits.clone(), k);
        let (want, want_ids) = logits.clone().topk_with_indices(k, 1);
        assert_eq!(got.into_data().to_vec::<f32>().unwrap(), want.into_data().to_vec::<f32>().unwrap(), "k {k}");
        assert_eq!(got_ids.into_data().to_vec::<i64>().unwrap(), want_ids.into_data().to_vec::<i64>().unwrap());
    }
}
