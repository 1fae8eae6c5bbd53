//! Helpers shared by the optimizer tests (reading the reference fixtures, copying parameters).
#![allow(dead_code)] // each test file uses a subset

use candle_core::{Device, Tensor, Var};
use lorakit_nn::optim::OptimizerArgs;
use serde_json::Value;

pub fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

pub fn shapes(v: &Value) -> Vec<Vec<usize>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect())
        .collect()
}

pub fn tensor(values: &Value, shape: &[usize]) -> Tensor {
    Tensor::from_vec(f32s(values), shape, &Device::Cpu).unwrap()
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

pub fn fresh_copy(vars: &[Var]) -> Vec<Var> {
    vars.iter().map(|v| Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap()).collect()
}

pub fn args(items: &[&str]) -> OptimizerArgs {
    OptimizerArgs::parse(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
}
