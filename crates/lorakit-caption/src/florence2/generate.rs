//! Greedy and beam search as transformers 5.25 `GenerationMixin` runs them for an
//! encoder–decoder with batch 1, with the logits processors a Florence/BART generation config
//! turns on: `no_repeat_ngram_size`, `min_length`, `forced_bos_token_id` (step 1) and
//! `forced_eos_token_id` (the last step). Beam search mirrors the vectorised `_beam_search`
//! (top 2·beams candidates, finished hypotheses scored `sum_logprobs / len^length_penalty`,
//! `early_stopping` true/false/"never", its early-stop heuristic) in f32 like PyTorch.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::Value;

use super::bart::{Bart, Cache};
use super::{read_json, Florence2Error, Result};

/// `early_stopping` of the generation config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyStopping {
    /// Stop as soon as `num_beams` hypotheses are finished.
    True,
    /// Stop when the heuristic says no running beam can beat the finished ones.
    False,
    /// Canonical beam search: only stop when nothing can improve.
    Never,
}

/// The generation settings Florence-2 uses.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// First decoder token.
    pub decoder_start_token_id: u32,
    /// End of sequence.
    pub eos_token_id: u32,
    /// Token forced at step 1, if any.
    pub forced_bos_token_id: Option<u32>,
    /// Token forced at the last step, if any.
    pub forced_eos_token_id: Option<u32>,
    /// Beams (1 = greedy).
    pub num_beams: usize,
    /// Ban repeating n-grams of this size (0 = off).
    pub no_repeat_ngram_size: usize,
    /// EOS is banned before this total decoder length.
    pub min_length: usize,
    /// Exponent of the length normalisation.
    pub length_penalty: f64,
    /// When beam search stops.
    pub early_stopping: EarlyStopping,
}

impl GenerationConfig {
    /// Reads `generation_config.json` when present, falling back to the text config's token
    /// ids and transformers' defaults.
    pub fn load(dir: &Path, config: &Value) -> Result<Self> {
        let path = dir.join("generation_config.json");
        let gen = if path.is_file() { read_json(&path)? } else { Value::Null };
        let text = config.get("text_config").cloned().unwrap_or(Value::Null);
        let id = |k: &str| -> Option<u32> {
            gen.get(k).and_then(Value::as_u64).or_else(|| text.get(k).and_then(Value::as_u64)).map(|v| v as u32)
        };
        let bad = |m: String| Florence2Error::File { path: path.clone(), message: m };
        let early_stopping = match gen.get("early_stopping") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => EarlyStopping::False,
            Some(Value::Bool(true)) => EarlyStopping::True,
            Some(Value::String(s)) if s == "never" => EarlyStopping::Never,
            Some(v) => return Err(bad(format!("early_stopping {v} is not true, false or \"never\""))),
        };
        for unsupported in ["do_sample", "repetition_penalty", "num_beam_groups", "bad_words_ids"] {
            match gen.get(unsupported) {
                None | Some(Value::Null) | Some(Value::Bool(false)) => {}
                Some(v) if v.as_f64() == Some(1.0) || v.as_u64() == Some(1) => {}
                Some(v) => return Err(bad(format!("{unsupported} = {v} is not supported"))),
            }
        }
        Ok(GenerationConfig {
            decoder_start_token_id: id("decoder_start_token_id").unwrap_or(2),
            eos_token_id: id("eos_token_id").unwrap_or(2),
            forced_bos_token_id: id("forced_bos_token_id"),
            forced_eos_token_id: id("forced_eos_token_id"),
            num_beams: gen.get("num_beams").and_then(Value::as_u64).unwrap_or(1).max(1) as usize,
            no_repeat_ngram_size: gen.get("no_repeat_ngram_size").and_then(Value::as_u64).unwrap_or(0) as usize,
            min_length: gen.get("min_length").and_then(Value::as_u64).unwrap_or(0) as usize,
            length_penalty: gen.get("length_penalty").and_then(Value::as_f64).unwrap_or(1.0),
            early_stopping,
        })
    }

    /// The processors over one hypothesis's scores (`seq` = the decoder tokens so far).
    fn process(&self, seq: &[u32], scores: &mut [f32], max_length: usize) {
        let cur = seq.len();
        let n = self.no_repeat_ngram_size;
        if n > 0 && cur + 1 >= n {
            let tail = &seq[cur + 1 - n..];
            for start in 0..=(cur + 1 - n) {
                if start + n > cur {
                    break;
                }
                if &seq[start..start + n - 1] == tail {
                    scores[seq[start + n - 1] as usize] = f32::NEG_INFINITY;
                }
            }
        }
        if cur < self.min_length {
            scores[self.eos_token_id as usize] = f32::NEG_INFINITY;
        }
        let force = |scores: &mut [f32], t: u32| {
            scores.iter_mut().for_each(|s| *s = f32::NEG_INFINITY);
            scores[t as usize] = 0.0;
        };
        if let (1, Some(t)) = (cur, self.forced_bos_token_id) {
            force(scores, t);
        }
        if let Some(t) = self.forced_eos_token_id {
            if cur == max_length - 1 {
                force(scores, t);
            }
        }
    }
}

fn log_softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = x.iter().map(|v| (v - max).exp()).sum();
    let lse = max + sum.ln();
    x.iter().map(|v| v - lse).collect()
}

fn logits_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    let t = logits.dim(1)?;
    Ok(logits.narrow(1, t - 1, 1)?.squeeze(1)?.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?)
}

/// Decoder token ids (start token included, as transformers returns them) for encoder output
/// (1, L, d), at most `max_new_tokens` after the start token.
pub fn generate(
    model: &Bart,
    encoder_out: &Tensor,
    config: &GenerationConfig,
    max_new_tokens: usize,
) -> Result<Vec<u32>> {
    if config.num_beams <= 1 {
        greedy(model, encoder_out, config, max_new_tokens)
    } else {
        beam_search(model, encoder_out, config, max_new_tokens)
    }
}

fn step(model: &Bart, tokens: &[u32], cache: &mut Cache, device: &Device) -> Result<Vec<Vec<f32>>> {
    let ids = Tensor::from_vec(tokens.to_vec(), (tokens.len(), 1), device)?;
    logits_rows(&model.decode(&ids, cache)?)
}

fn greedy(model: &Bart, encoder_out: &Tensor, config: &GenerationConfig, max_new: usize) -> Result<Vec<u32>> {
    let max_length = 1 + max_new;
    let device = encoder_out.device();
    let mut cache = model.new_cache(encoder_out)?;
    let mut seq = vec![config.decoder_start_token_id];
    while seq.len() < max_length {
        let mut scores = step(model, &seq[seq.len() - 1..], &mut cache, device)?.remove(0);
        config.process(&seq, &mut scores, max_length);
        // torch.argmax: the first maximum.
        let mut best = 0;
        for (i, &s) in scores.iter().enumerate() {
            if s > scores[best] {
                best = i;
            }
        }
        seq.push(best as u32);
        if best as u32 == config.eos_token_id {
            break;
        }
    }
    Ok(seq)
}

/// torch.topk order: descending score; ties keep the lower index first.
fn topk(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

fn beam_search(model: &Bart, encoder_out: &Tensor, config: &GenerationConfig, max_new: usize) -> Result<Vec<u32>> {
    let beams = config.num_beams;
    let max_length = 1 + max_new;
    let prompt_len = 1usize;
    let keep = 2 * beams;
    let lp = config.length_penalty;
    let device = encoder_out.device();
    let enc = encoder_out.broadcast_as((beams, encoder_out.dim(1)?, encoder_out.dim(2)?))?.contiguous()?;
    let mut cache = model.new_cache(&enc)?;
    let mut running: Vec<Vec<u32>> = vec![vec![config.decoder_start_token_id]; beams];
    let mut running_scores: Vec<f32> = (0..beams).map(|b| if b == 0 { 0.0 } else { -1e9 }).collect();
    let mut finished: Vec<(Vec<u32>, f32, bool)> = vec![(Vec::new(), -1e9, false); beams];
    let mut heuristic_unsatisfied = true;
    let mut cur_len = prompt_len;
    loop {
        let last: Vec<u32> = running.iter().map(|s| *s.last().expect("non-empty")).collect();
        let rows = step(model, &last, &mut cache, device)?;
        let vocab = rows[0].len();
        let mut acc = Vec::with_capacity(beams * vocab);
        for (b, row) in rows.iter().enumerate() {
            let mut lp_row = log_softmax(row);
            config.process(&running[b], &mut lp_row, max_length);
            acc.extend(lp_row.iter().map(|v| v + running_scores[b]));
        }
        let top = topk(&acc, keep);
        let cand: Vec<(usize, Vec<u32>, f32, bool)> = top
            .iter()
            .map(|&i| {
                let (b, t) = (i / vocab, (i % vocab) as u32);
                let mut s = running[b].clone();
                s.push(t);
                let hits = t == config.eos_token_id || cur_len + 1 >= max_length;
                (b, s, acc[i], hits)
            })
            .collect();
        // Next running beams: the best candidates that did not finish.
        let masked: Vec<f32> = cand.iter().map(|c| c.2 + if c.3 { -1e9 } else { 0.0 }).collect();
        let next = topk(&masked, beams);
        // Finished beams: merge the old ones with the top-`beams` candidates that just finished.
        let all_full = finished.iter().all(|f| f.2) && config.early_stopping == EarlyStopping::True;
        let denom = ((cur_len + 1 - prompt_len) as f64).powf(lp) as f32;
        let mut merged: Vec<(Vec<u32>, f32, bool)> = finished.clone();
        for (j, c) in cand.iter().enumerate() {
            let just = c.3 && j < beams;
            let mut s = c.2 / denom;
            if all_full {
                s += -1e9;
            }
            if !heuristic_unsatisfied {
                s += -1e9;
            }
            if !just {
                s += -1e9;
            }
            merged.push((c.1.clone(), s, just));
        }
        let merged_scores: Vec<f32> = merged.iter().map(|m| m.1).collect();
        finished = topk(&merged_scores, beams).into_iter().map(|i| merged[i].clone()).collect();
        let rows_idx: Vec<u32> = next.iter().map(|&j| cand[j].0 as u32).collect();
        running = next.iter().map(|&j| cand[j].1.clone()).collect();
        running_scores = next.iter().map(|&j| masked[j]).collect();
        cache = cache.select(&Tensor::new(rows_idx.as_slice(), device)?)?;
        cur_len += 1;
        // The early-stop heuristic.
        let best_len = if config.early_stopping == EarlyStopping::Never && lp > 0.0 {
            max_length - prompt_len
        } else {
            cur_len - prompt_len
        };
        let best_possible = running_scores[0] / (best_len as f64).powf(lp) as f32;
        let min_finished = finished.iter().map(|f| f.1).fold(f32::INFINITY, f32::min);
        heuristic_unsatisfied =
            heuristic_unsatisfied && finished.iter().any(|f| best_possible > if f.2 { min_finished } else { -1e9 });
        let open = !(finished.iter().all(|f| f.2) && config.early_stopping == EarlyStopping::True);
        let valid = !cand.iter().all(|c| c.3);
        if !(heuristic_unsatisfied && open && valid) {
            break;
        }
    }
    Ok(finished.swap_remove(0).0)
}
