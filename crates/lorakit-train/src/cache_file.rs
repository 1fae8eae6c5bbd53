//! Cache files kept beside the images (latents, text-encoder outputs): a safetensors file whose
//! metadata records what it was made from. A file is used only when every entry of the key
//! matches, so a changed image, caption, size or model never feeds stale tensors to training.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use lorakit_models::lora_inject::to_file_tensor;

use crate::error::{Result, TrainError};

/// Every tensor of the cache file at `path` (f32, on the CPU) when its metadata holds `key`;
/// `None` when it is missing, unreadable or made from something else.
pub fn read(path: &Path, key: &BTreeMap<String, String>) -> Option<HashMap<String, Tensor>> {
    let file = lorakit_lora::safetensors_file::LoraFile::open(path).ok()?;
    if key.iter().any(|(k, v)| file.metadata().get(k) != Some(v)) {
        return None;
    }
    let mut out = HashMap::new();
    for name in file.tensor_names() {
        let info = file.info(name)?;
        let values = file.tensor_f32(name).ok()?;
        out.insert(name.to_string(), Tensor::from_vec(values, info.shape.as_slice(), &Device::Cpu).ok()?);
    }
    Some(out)
}

/// Writes `tensors` (f32) with `key` as metadata, atomically.
pub fn write(path: &Path, key: &BTreeMap<String, String>, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let mut file_tensors = BTreeMap::new();
    for (name, t) in tensors {
        file_tensors.insert(name.to_string(), to_file_tensor(t)?);
    }
    let bytes =
        lorakit_lora::safetensors_file::serialize(&file_tensors, key, lorakit_lora::safetensors_file::Precision::F32)?;
    lorakit_dataset::fs_atomic::write_atomic(path, &bytes).map_err(|e| TrainError::io(path, e))
}

/// Removes temporary files that interrupted cache writes (of processes that have exited) left
/// in the images' folders, before new cache files are written there.
pub fn clean_image_folders<'a>(images: impl Iterator<Item = &'a Path>) {
    let folders: std::collections::BTreeSet<&Path> = images.filter_map(Path::parent).collect();
    for folder in folders {
        if let Err(e) = lorakit_dataset::fs_atomic::clean_stale_temp_files(folder) {
            tracing::warn!("cannot clean stale temporary files in {}: {e}", folder.display());
        }
    }
}
