//! LayerNorm and GroupNorm composed from differentiable ops.
//!
//! candle's fused `layer_norm`/`LayerNorm` record no backward (gradients silently stop), so both
//! norms are written out; statistics are computed in f32 whatever the activation dtype.

use candle_core::{DType, Result, Tensor, D};

/// Layer normalisation over the last dimension with an affine weight and bias (plain tensors).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl LayerNorm {
    /// `weight`/`bias` have the size of the normalised (last) dimension.
    pub fn new(weight: Tensor, bias: Option<Tensor>, eps: f64) -> Self {
        LayerNorm { weight: weight.detach(), bias: bias.map(|b| b.detach()), eps }
    }

    /// Normalises `x` over its last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32.max_precision(dtype))?;
        let mean = xf.mean_keepdim(D::Minus1)?;
        let centred = xf.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?.to_dtype(dtype)?;
        let y = normed.broadcast_mul(&self.weight)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Group normalisation of (B, C, …) activations with per-channel affine weight and bias.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    num_groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// `weight`/`bias` have C elements; C must be divisible by `num_groups`.
    pub fn new(weight: Tensor, bias: Tensor, num_groups: usize, eps: f64) -> Result<Self> {
        let channels = weight.dims1()?;
        if num_groups == 0 || channels % num_groups != 0 {
            candle_core::bail!("GroupNorm: {channels} channels cannot be split into {num_groups} groups")
        }
        Ok(GroupNorm { weight: weight.detach(), bias: bias.detach(), num_groups, eps })
    }

    /// Normalises each group of channels over the channels and all spatial positions.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        if dims.len() < 2 || dims[1] != self.weight.dims()[0] {
            candle_core::bail!("GroupNorm over {} channels got input of shape {dims:?}", self.weight.dims()[0])
        }
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32.max_precision(dtype))?.reshape((dims[0], self.num_groups, ()))?;
        let mean = xf.mean_keepdim(D::Minus1)?;
        let centred = xf.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?.to_dtype(dtype)?.reshape(dims.as_slice())?;
        let mut affine_shape = vec![1usize; dims.len()];
        affine_shape[1] = dims[1];
        normed
            .broadcast_mul(&self.weight.reshape(affine_shape.as_slice())?)?
            .broadcast_add(&self.bias.reshape(affine_shape.as_slice())?)
    }
}

/// Picks the wider of two float dtypes (f64 stays f64, everything else computes in f32).
trait MaxPrecision {
    fn max_precision(self, other: DType) -> DType;
}

impl MaxPrecision for DType {
    fn max_precision(self, other: DType) -> DType {
        if other == DType::F64 {
            DType::F64
        } else {
            self
        }
    }
}
