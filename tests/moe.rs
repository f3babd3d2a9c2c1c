//! The MoE router's device top-k against a host sort.

mod common;

use bamba_kernels::reference::moe::top_k;
use burn::tensor::{Tensor, TensorData};
use common::*;

/// The same picks in the same order for k of 1, 3 and every column, on distinct logits and on
/// logits with many ties; with `softmax`, the softmax of the picks.
#[test]
fn top_k_equals_a_host_sort() {
    let device = Default::default();
    let (rows, columns) = (9, 13);
    for modulus in [101, 5] {
        let values: Vec<f32> = (0..rows * columns).map(|i| ((i * 7919) % modulus) as f32 * 0.37 - 17.0).collect();
        let logits = Tensor::<TestBackend, 2>::from_data(TensorData::new(values.clone(), [rows, columns]), &device);
        for k in [1, 3, columns] {
            let (want, want_ids, want_soft) = sorted_top_k(&values, columns, k);
            let (got, got_ids) = top_k(logits.clone(), k, false);
            assert_eq!(got.into_data().to_vec::<f32>().unwrap(), want, "values mod {modulus}, k {k}");
            assert_eq!(got_ids.into_data().to_vec::<i64>().unwrap(), want_ids, "ids mod {modulus}, k {k}");
            let (got, got_ids) = top_k(logits.clone(), k, true);
            let diff = max_abs_diff(&got.into_data().to_vec::<f32>().unwrap(), &want_soft);
            assert!(diff < 1e-6, "softmax mod {modulus}, k {k}: {diff:e}");
            assert_eq!(got_ids.into_data().to_vec::<i64>().unwrap(), want_ids, "softmax ids mod {modulus}, k {k}");
        }
    }
}
