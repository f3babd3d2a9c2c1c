//! The causal depthwise conv1d + bias + SiLU on the CPU, continuing a carried window: the math of
//! [`crate::reference::conv::causal_conv1d_silu`] (taps summed oldest first, then the bias) in one pass
//! over rows of channels, without the reference's strided slices.

/// `x · sigmoid(x)`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// # Shapes
/// - `x`: `[batch, len, channels]`, `weight`: `[channels, kernel]`, `bias`: `[channels]`, `window`:
///   `[batch, channels, kernel - 1]` (zeros when `None`) → `y` like `x`, the next window like `window`
pub fn conv(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    window: Option<&[f32]>,
    batch: usize,
    len: usize,
    channels: usize,
) -> (Vec<f32>, Vec<f32>) {
    let kernel = weight.len() / channels.max(1);
    let taps = kernel.saturating_sub(1);
    // Tap-major weights, and each sequence's inputs with the window's positions in front: [taps + len, channels].
    let mut tap_weights = vec![0f32; kernel * channels];
    for c in 0..channels {
        for j in 0..kernel {
            tap_weights[j * channels + c] = weight[c * kernel + j];
        }
    }
    let mut y = vec![0f32; batch * len * channels];
    let mut next_window = vec![0f32; batch * channels * taps];
    let mut padded = vec![0f32; (taps + len) * channels];
    let mut acc = vec![0f32; channels];
    for b in 0..batch {
        for i in 0..taps {
            for c in 0..channels {
                padded[i * channels + c] = window.map_or(0.0, |w| w[(b * channels + c) * taps + i]);
            }
        }
        padded[taps * channels..].copy_from_slice(&x[b * len * channels..(b + 1) * len * channels]);
        for t in 0..len {
            acc.fill(0.0);
            for j in 0..kernel {
                let (w, row) = (
                    &tap_weights[j * channels..(j + 1) * channels],
                    &padded[(t + j) * channels..(t + j + 1) * channels],
                );
                for ((a, &w), &v) in acc.iter_mut().zip(w).zip(row) {
                    *a += v * w;
                }
            }
            let out = &mut y[(b * len + t) * channels..(b * len + t + 1) * channels];
            for (c, (o, &a)) in out.iter_mut().zip(&acc).enumerate() {
                let v = a + bias.map_or(0.0, |bias| bias[c]);
                *o = silu(v);
            }
        }
        for i in 0..taps {
            for c in 0..channels {
                next_window[(b * channels + c) * taps + i] = padded[(len + i) * channels + c];
            }
        }
    }
    (y, next_window)
}
