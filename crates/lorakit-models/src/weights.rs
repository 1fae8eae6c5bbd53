//! A named tensor store that model constructors read from, with diffusers key names.
//!
//! Construction never stops at the first missing or mis-shaped tensor: `WeightsView::get` records
//! the problem and hands back a zero tensor of the expected shape (a broadcast, no memory), so a
//! wrong checkpoint produces one error listing the first few problems (`Weights::check_complete`)
//! instead of a fix-one-rerun loop.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use lorakit_nn::{Conv2d, GroupNorm, LayerNorm, Linear};

use crate::Error;

/// Tensors by full key (e.g. `down_blocks.0.resnets.0.conv1.weight`), plus bookkeeping of which
/// keys were read and which were missing or had the wrong shape.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    /// Where the tensors came from, for error messages (a file path or a description).
    source: String,
    read: Mutex<HashSet<String>>,
    problems: Mutex<Vec<WeightProblem>>,
}

/// One tensor a model asked for that the store could not provide as requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightProblem {
    /// The key is absent.
    Missing { name: String },
    /// The key exists with another shape.
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },
}

impl std::fmt::Display for WeightProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightProblem::Missing { name } => write!(f, "{name} (missing)"),
            WeightProblem::Shape { name, expected, found } => {
                write!(f, "{name} (shape {found:?}, model expects {expected:?})")
            }
        }
    }
}

impl Weights {
    /// Wraps already loaded tensors. `source` names their origin in error messages.
    pub fn new(tensors: HashMap<String, Tensor>, source: impl Into<String>) -> Self {
        Weights { tensors, source: source.into(), read: Mutex::default(), problems: Mutex::default() }
    }

    /// Reads every tensor of a `.safetensors` file, converted to `dtype` on `device`.
    pub fn from_safetensors(path: &Path, dtype: DType, device: &Device) -> Result<Self, Error> {
        let tensors = crate::checkpoint::read_safetensors(path, dtype, device)?;
        Ok(Weights::new(tensors, path.display().to_string()))
    }

    /// Where the tensors came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A view that prefixes every requested name with `prefix.` (empty prefix: the root).
    pub fn view(&self, prefix: &str) -> WeightsView<'_> {
        WeightsView { weights: self, prefix: prefix.to_string() }
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// All keys, unordered.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the store holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The tensor under `name`, if any (not recorded as read).
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Adds or replaces a tensor (used when merging LoRA weights into a base model).
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        self.tensors.insert(name.into(), tensor);
    }

    /// Removes and returns a tensor.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    /// Casts every tensor `select(name, tensor)` picks to `dtype` (fp8 base weights, an f32 VAE
    /// beside an f16 model); returns how many were cast.
    pub fn cast_where(&mut self, dtype: DType, select: impl Fn(&str, &Tensor) -> bool) -> Result<usize, Error> {
        let mut n = 0;
        for (name, t) in self.tensors.iter_mut() {
            if t.dtype() != dtype && select(name, t) {
                *t = t.to_dtype(dtype).map_err(|e| Error::Invalid(format!("{}: casting {name}: {e}", self.source)))?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Consumes the store, returning its tensors.
    pub fn into_tensors(self) -> HashMap<String, Tensor> {
        self.tensors
    }

    /// Fails with the first few problems recorded while a model was built from this store.
    pub fn check_complete(&self) -> Result<(), Error> {
        let problems = self.problems.lock().expect("weights problem list poisoned");
        if problems.is_empty() {
            return Ok(());
        }
        Err(Error::BadWeights { origin: self.source.clone(), problems: problems.clone() })
    }

    /// Keys that no model read, sorted (a non-empty list after building a model usually means
    /// the checkpoint has a different configuration than the one assumed).
    pub fn unused(&self) -> Vec<String> {
        let read = self.read.lock().expect("weights read set poisoned");
        let mut unused: Vec<String> = self.tensors.keys().filter(|k| !read.contains(*k)).cloned().collect();
        unused.sort();
        unused
    }

    fn fetch(&self, name: &str, shape: &[usize]) -> candle_core::Result<Tensor> {
        self.read.lock().expect("weights read set poisoned").insert(name.to_string());
        match self.tensors.get(name) {
            Some(t) if t.dims() == shape => return Ok(t.clone()),
            Some(t) => self.problems.lock().expect("weights problem list poisoned").push(WeightProblem::Shape {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: t.dims().to_vec(),
            }),
            None => self
                .problems
                .lock()
                .expect("weights problem list poisoned")
                .push(WeightProblem::Missing { name: name.to_string() }),
        }
        // A broadcast zero: costs no memory, lets construction go on to find further problems.
        let (dtype, device) =
            self.tensors.values().next().map(|t| (t.dtype(), t.device().clone())).unwrap_or((DType::F32, Device::Cpu));
        Tensor::zeros((), dtype, &device)?.broadcast_as(shape)
    }
}

/// A prefix into a `Weights` store; mirrors the module tree (`vb.pp("down_blocks").pp(0)`).
#[derive(Clone)]
pub struct WeightsView<'a> {
    weights: &'a Weights,
    prefix: String,
}

impl<'a> WeightsView<'a> {
    /// The view one level down: `prefix.name`.
    pub fn pp(&self, name: impl std::fmt::Display) -> WeightsView<'a> {
        WeightsView { weights: self.weights, prefix: self.key(&name.to_string()) }
    }

    /// The full key of `name` under this view.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The module path of this view (e.g. `down_blocks.0.attentions.0.proj_in`); LoRA targets
    /// are named after it.
    pub fn path(&self) -> &str {
        &self.prefix
    }

    /// The tensor `prefix.name`, which must have `shape`. Problems are recorded in the store
    /// (see `Weights::check_complete`) and a zero tensor is returned.
    pub fn get(&self, name: &str, shape: &[usize]) -> candle_core::Result<Tensor> {
        self.weights.fetch(&self.key(name), shape)
    }

    /// Whether `prefix.name` is present (for optional tensors such as biases).
    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(&self.key(name))
    }

    /// The store this view reads from.
    pub fn weights(&self) -> &'a Weights {
        self.weights
    }

    /// The linear layer at this path: `weight` (out, in) and, when `bias`, `bias` (out).
    pub fn linear(&self, in_dim: usize, out_dim: usize, bias: bool) -> candle_core::Result<Linear> {
        let weight = self.get("weight", &[out_dim, in_dim])?;
        let bias = if bias { Some(self.get("bias", &[out_dim])?) } else { None };
        Linear::new(self.path(), weight, bias)
    }

    /// The conv layer at this path: `weight` (out, in, k, k), `bias` (out), with stride and
    /// padding.
    pub fn conv2d(
        &self,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> candle_core::Result<Conv2d> {
        let weight = self.get("weight", &[out_channels, in_channels, kernel, kernel])?;
        let bias = self.get("bias", &[out_channels])?;
        Conv2d::new(self.path(), weight, Some(bias), stride, padding)
    }

    /// The LayerNorm at this path (`weight`, `bias` of `dim`).
    pub fn layer_norm(&self, dim: usize, eps: f64) -> candle_core::Result<LayerNorm> {
        Ok(LayerNorm::new(self.get("weight", &[dim])?, Some(self.get("bias", &[dim])?), eps))
    }

    /// The GroupNorm at this path (`weight`, `bias` of `channels`).
    pub fn group_norm(&self, num_groups: usize, channels: usize, eps: f64) -> candle_core::Result<GroupNorm> {
        GroupNorm::new(self.get("weight", &[channels])?, self.get("bias", &[channels])?, num_groups, eps)
    }
}
