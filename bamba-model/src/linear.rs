//! A bias-optional linear layer that keeps the checkpoint's PyTorch `[out, in]` layout.
//!
//! The product goes through [`BambaOps::linear_no_bias`]: GPU backends run their GEMV kernel at decode and
//! Burn's matmul on the transposed view (no copy) otherwise, which is also the faster matmul layout on
//! CUDA in Burn 0.21 (3× faster than an `[in, out]` buffer; `shared/docs/performance.md`).

use bamba_kernels::BambaOps;
use burn::tensor::Tensor;

use crate::loader::{LoadError, WeightReader};
use crate::norm::RmsNorm;

/// `y = x · Wᵀ + b`, with `W` stored `[out, in]`.
#[derive(Debug, Clone)]
pub struct Linear<B: BambaOps> {
    /// `[out, in]`.
    pub weight: Tensor<B, 2>,
    /// `[out]`.
    pub bias: Option<Tensor<B, 1>>,
}

impl<B: BambaOps> Linear<B> {
    /// Reads `{prefix}.weight` `[outputs, inputs]` and, when `bias`, `{prefix}.bias` `[outputs]`.
    pub fn load(
        w: &mut WeightReader<'_, B>,
        prefix: &str,
        inputs: usize,
        outputs: usize,
        bias: bool,
    ) -> Result<Self, LoadError> {
        Self::load_scaled(w, prefix, inputs, outputs, bias, 1.0)
    }

    /// [`Self::load`] of `scale · (x · Wᵀ + b)`: the weight and bias multiplied by `scale` in f32 as
    /// they are read ([`WeightReader::tensor_scaled`]), so a multiplier after the layer costs nothing
    /// and fused decode kernels still apply.
    pub fn load_scaled(
        w: &mut WeightReader<'_, B>,
        prefix: &str,
        inputs: usize,
        outputs: usize,
        bias: bool,
        scale: f64,
    ) -> Result<Self, LoadError> {
        Self::load_scaled_apart(w, prefix, [inputs, outputs], bias, scale, scale)
    }

    /// Rows `first..first + outputs` of the bias-free weight `name` stored as `[stored_rows, inputs]`:
    /// one half of a fused projection such as `gate_up_proj`.
    pub fn load_rows(
        w: &mut WeightReader<'_, B>,
        name: &str,
        [stored_rows, inputs]: [usize; 2],
        first: usize,
        outputs: usize,
    ) -> Result<Self, LoadError> {
        Ok(Linear { weight: w.tensor_rows(name, &[stored_rows, inputs], first, [outputs, inputs])?, bias: None })
    }

    /// Like [`Linear::load_scaled`] with a separate scale for the bias: a multiplier on the layer's
    /// input scales the weight alone (`W(s·x) + b`), one on its output both.
    pub fn load_scaled_apart(
        w: &mut WeightReader<'_, B>,
        prefix: &str,
        [inputs, outputs]: [usize; 2],
        bias: bool,
        weight_scale: f64,
        bias_scale: f64,
    ) -> Result<Self, LoadError> {
        Ok(Linear {
            weight: w.tensor_scaled(&format!("{prefix}.weight"), [outputs, inputs], weight_scale)?,
            bias: if bias { Some(w.tensor_scaled(&format!("{prefix}.bias"), [outputs], bias_scale)?) } else { None },
        })
    }

    /// `residual + forward(x)`, or `forward(x)` without a residual.
    ///
    /// # Shapes
    /// - `x`: `[..., in]`, `residual`: `[..., out]` → `[..., out]`
    pub fn forward_maybe_residual<const D: usize>(
        &self,
        x: Tensor<B, D>,
        residual: Option<Tensor<B, D>>,
    ) -> Tensor<B, D> {
        match residual {
            Some(residual) => self.forward_residual(x, residual),
            None => self.forward(x),
        }
    }

    /// # Shapes
    /// - `x`: `[..., in]` → `[..., out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dims = x.dims();
        let inputs = dims[D - 1];
        let rows = dims[..D - 1].iter().product();
        let outputs = self.weight.dims()[0];
        let mut out_dims = dims;
        out_dims[D - 1] = outputs;
        let y = B::linear_no_bias(x.reshape([rows, inputs]), self.weight.clone()).reshape(out_dims);
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze::<D>(),
            None => y,
        }
    }

    /// `forward(norm(x))`: a layer's pre-norm and its first projection, one fused launch at decode when
    /// there is no bias and the norm rounds before its weight ([`BambaOps::rms_norm_linear`]).
    ///
    /// # Shapes
    /// - `x`: `[batch, len, in]` → `[batch, len, out]`
    pub fn forward_normed(&self, norm: &RmsNorm<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
        if self.bias.is_some() || !norm.fusable() {
            return self.forward(norm.forward(x));
        }
        let [batch, len, inputs] = x.dims();
        let outputs = self.weight.dims()[0];
        let x = x.reshape([batch * len, inputs]);
        B::rms_norm_linear(x, norm.weight.clone(), norm.eps, self.weight.clone()).reshape([batch, len, outputs])
    }

    /// `residual + forward(x)`: an output projection with the residual add after it, one fused
    /// launch at decode when there is no bias ([`BambaOps::linear_residual`]). A residual of another
    /// dtype than `x` (an f32 stream) gets the product cast to its dtype, then the add.
    ///
    /// # Shapes
    /// - `x`: `[..., in]`, `residual`: `[..., out]` → `[..., out]`
    pub fn forward_residual<const D: usize>(&self, x: Tensor<B, D>, residual: Tensor<B, D>) -> Tensor<B, D> {
        if residual.dtype() != x.dtype() {
            // An f32 residual stream (Mamba2): the product in the compute dtype, the add in f32.
            let dtype = residual.dtype();
            return residual + self.forward(x).cast(dtype);
        }
        if self.bias.is_some() {
            return residual + self.forward(x);
        }
        let dims = residual.dims();
        let (inputs, outputs) = (x.dims()[D - 1], dims[D - 1]);
        let rows = dims[..D - 1].iter().product();
        let x = x.reshape([rows, inputs]);
        B::linear_residual(x, self.weight.clone(), residual.reshape([rows, outputs])).reshape(dims)
    }
}

/// A low-rank adapter `up(down(x))` added to a projection's output, applied as two products (not
/// folded into the projection, whose weights other layers share): Zamba2's per-use adapters.
#[derive(Debug, Clone)]
pub struct Lora<B: BambaOps> {
    /// `[in] → [rank]`.
    pub down: Linear<B>,
    /// `[rank] → [out]`.
    pub up: Linear<B>,
}

impl<B: BambaOps> Lora<B> {
    /// Reads `{prefix}.0.weight` `[rank, in]` and `{prefix}.1.weight` `[out, rank]` (an `nn.Sequential`),
    /// the second times `scale` (a multiplier of the projection it joins).
    pub fn load(
        w: &mut WeightReader<'_, B>,
        prefix: &str,
        [inputs, rank, outputs]: [usize; 3],
        scale: f64,
    ) -> Result<Self, LoadError> {
        Ok(Lora {
            down: Linear::load(w, &format!("{prefix}.0"), inputs, rank, false)?,
            up: Linear::load_scaled(w, &format!("{prefix}.1"), rank, outputs, false, scale)?,
        })
    }

    /// # Shapes
    /// - `x`: `[..., in]` → `[..., out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.up.forward(self.down.forward(x))
    }
}
