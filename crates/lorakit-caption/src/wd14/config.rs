//! A WD tagger folder's timm `config.json` → the architecture to build and its arguments.
//!
//! The HF v3 files are timm hub configs: `{"architecture": "vit_base_patch16_224",
//! "num_classes": 10861, "model_args": {...}, "pretrained_cfg": {"input_size": [3, 448, 448],
//! ...}}`. timm builds `architecture` with its registered defaults, overridden by
//! `model_args` and `num_classes`; each `<arch>Config::from_timm` does the same for its family.

use serde_json::Value;

use super::convnext::ConvNextConfig;
use super::vit::VitConfig;
use super::Wd14Error;

/// The model a config describes. Adding an architecture = one variant here, one arm in
/// [`Architecture::from_timm`], one in `Model::load` (wd14/mod.rs).
#[derive(Debug, Clone)]
pub enum Architecture {
    /// timm `vit_*` (wd-vit-tagger-v3, wd-vit-large-tagger-v3).
    Vit(VitConfig),
    /// timm `convnext_*` (wd-convnext-tagger-v3).
    ConvNext(ConvNextConfig),
    /// timm `swinv2_*` (wd-swinv2-tagger-v3).
    SwinV2(super::swinv2::SwinV2Config),
    /// timm `eva02_*` (wd-eva02-large-tagger-v3).
    Eva02(super::eva02::Eva02Config),
}

impl Architecture {
    /// Reads `config` (the whole `config.json`); an architecture lorakit cannot build is
    /// refused by name.
    pub fn from_timm(config: &Value) -> Result<Self, Wd14Error> {
        let name = architecture_name(config)?;
        match family(name) {
            "vit" => Ok(Architecture::Vit(VitConfig::from_timm(config)?)),
            "convnext" => Ok(Architecture::ConvNext(ConvNextConfig::from_timm(config)?)),
            "swinv2" => Ok(Architecture::SwinV2(super::swinv2::SwinV2Config::from_timm(config)?)),
            "eva02" => Ok(Architecture::Eva02(super::eva02::Eva02Config::from_timm(config)?)),
            _ => Err(Wd14Error::Config(format!(
                "architecture `{name}` is not supported (lorakit builds the WD v3 taggers: vit_*, convnext_*, \
                 swinv2_*, eva02_*)"
            ))),
        }
    }
}

/// `architecture` of the config.
pub fn architecture_name(config: &Value) -> Result<&str, Wd14Error> {
    config
        .get("architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| Wd14Error::Config("no \"architecture\" string (not a timm hub config.json?)".into()))
}

/// The timm family of an architecture name: the text before the first `_` (`vit`, `convnext`,
/// `swinv2`, `eva02`).
pub fn family(name: &str) -> &str {
    name.split('_').next().unwrap_or(name)
}

/// `num_classes` at the top level (timm's hub loader moves it into the pretrained config).
pub fn num_classes(config: &Value) -> Result<usize, Wd14Error> {
    config
        .get("num_classes")
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .ok_or_else(|| Wd14Error::Config("no \"num_classes\" number".into()))
}

/// `model_args.<key>`, if present and not null.
pub fn model_arg<'a>(config: &'a Value, key: &str) -> Option<&'a Value> {
    config.get("model_args").and_then(|a| a.get(key)).filter(|v| !v.is_null())
}

/// `model_args.<key>` as an unsigned integer, or `default`.
pub fn arg_usize(config: &Value, key: &str, default: usize) -> Result<usize, Wd14Error> {
    match model_arg(config, key) {
        None => Ok(default),
        Some(v) => v
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| Wd14Error::Config(format!("model_args.{key} = {v}: expected a whole number"))),
    }
}

/// `model_args.<key>` as a number, or `default`.
pub fn arg_f64(config: &Value, key: &str, default: f64) -> Result<f64, Wd14Error> {
    match model_arg(config, key) {
        None => Ok(default),
        Some(v) => v.as_f64().ok_or_else(|| Wd14Error::Config(format!("model_args.{key} = {v}: expected a number"))),
    }
}

/// `model_args.<key>` as a bool, or `default`.
pub fn arg_bool(config: &Value, key: &str, default: bool) -> Result<bool, Wd14Error> {
    match model_arg(config, key) {
        None => Ok(default),
        Some(v) => v.as_bool().ok_or_else(|| Wd14Error::Config(format!("model_args.{key} = {v}: expected true/false"))),
    }
}

/// `model_args.<key>` as a string, or `default`.
pub fn arg_str<'a>(config: &'a Value, key: &str, default: &'a str) -> Result<&'a str, Wd14Error> {
    match model_arg(config, key) {
        None => Ok(default),
        Some(v) => v.as_str().ok_or_else(|| Wd14Error::Config(format!("model_args.{key} = {v}: expected a string"))),
    }
}

/// `model_args.<key>` as a list of whole numbers, or `default`.
pub fn arg_usizes(config: &Value, key: &str, default: &[usize]) -> Result<Vec<usize>, Wd14Error> {
    match model_arg(config, key) {
        None => Ok(default.to_vec()),
        Some(v) => v
            .as_array()
            .and_then(|a| a.iter().map(|n| n.as_u64().map(|n| n as usize)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| Wd14Error::Config(format!("model_args.{key} = {v}: expected a list of whole numbers"))),
    }
}

/// How a transformer's tokens become one vector (timm's `global_pool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// Mean over the patch (non-prefix) tokens.
    Avg,
    /// The class token.
    Token,
}

impl Pool {
    /// `model_args.global_pool`, or `default`, for an `arch` (`ViT`, `EVA02`) with or without a
    /// class token.
    pub fn from_timm(config: &Value, default: &str, class_token: bool, arch: &str) -> Result<Self, Wd14Error> {
        match arg_str(config, "global_pool", default)? {
            "avg" => Ok(Pool::Avg),
            "token" if class_token => Ok(Pool::Token),
            "token" => Err(Wd14Error::Config(format!("{arch} global_pool `token` needs class_token"))),
            other => Err(Wd14Error::Config(format!("{arch} global_pool `{other}` is not supported (avg, token)"))),
        }
    }

    /// The pooled (N, D) of tokens `x` (N, prefix + patches, D) whose first `prefix` are not
    /// patches.
    pub fn apply(self, x: &candle_core::Tensor, prefix: usize) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Pool::Avg => x.narrow(1, prefix, x.dim(1)? - prefix)?.mean(1),
            Pool::Token => x.narrow(1, 0, 1)?.squeeze(1),
        }
    }
}

/// The activation named by `act_layer` (timm's names); only the GELUs the WD models use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu` (erf form, timm's default).
    Gelu,
    /// `gelu_tanh` (the WD v3 models: flax's gelu is the tanh approximation).
    GeluTanh,
}

impl Activation {
    /// `model_args.act_layer`, or `default`.
    pub fn from_timm(config: &Value, default: Activation) -> Result<Self, Wd14Error> {
        match model_arg(config, "act_layer") {
            None => Ok(default),
            Some(v) => match v.as_str() {
                Some("gelu") => Ok(Activation::Gelu),
                Some("gelu_tanh") => Ok(Activation::GeluTanh),
                _ => Err(Wd14Error::Config(format!("act_layer {v} is not supported (gelu, gelu_tanh)"))),
            },
        }
    }

    /// Applies it.
    pub fn forward(self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Activation::Gelu => lorakit_nn::activation::gelu(x),
            Activation::GeluTanh => lorakit_nn::activation::gelu_tanh(x),
        }
    }
}

/// The model's square input side: `pretrained_cfg.input_size`, else `model_args.img_size`, else
/// `default` (the architecture's registered size).
pub fn input_size(config: &Value, default: usize) -> Result<usize, Wd14Error> {
    if let Some(size) = config.pointer("/pretrained_cfg/input_size").and_then(Value::as_array) {
        let dims: Vec<u64> = size.iter().filter_map(Value::as_u64).collect();
        return match dims[..] {
            [3, h, w] if h == w && h > 0 => Ok(h as usize),
            _ => Err(Wd14Error::Config(format!(
                "pretrained_cfg.input_size {size:?}: expected [3, S, S] (a square RGB input)"
            ))),
        };
    }
    img_size(config, default)
}

/// `model_args.img_size` (a number or `[S, S]`), or `default`.
pub fn img_size(config: &Value, default: usize) -> Result<usize, Wd14Error> {
    match model_arg(config, "img_size") {
        None => Ok(default),
        Some(v) => {
            if let Some(n) = v.as_u64() {
                return Ok(n as usize);
            }
            match v.as_array().map(|a| a.iter().filter_map(Value::as_u64).collect::<Vec<_>>()).as_deref() {
                Some([h, w]) if h == w => Ok(*h as usize),
                _ => Err(Wd14Error::Config(format!("model_args.img_size = {v}: expected a square size"))),
            }
        }
    }
}
