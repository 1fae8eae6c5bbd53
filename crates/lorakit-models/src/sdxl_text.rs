//! SDXL's text conditioning exactly as sd-scripts computes it (spec §6.1,
//! `library/strategy_sdxl.py`): two CLIP text encoders, their hidden states side by side as the
//! U-Net's cross-attention context, and the second encoder's projected EOS vector as the pooled
//! input of its size/crop embedding.
//!
//! - Text encoder 1 (OpenAI CLIP ViT-L, [`ClipTextModel`]): its penultimate hidden state
//!   (`hidden_states[11]` of the 12-layer encoder), no final LayerNorm.
//! - Text encoder 2 (OpenCLIP ViT-bigG, [`ClipTextModelWithProjection`]): `hidden_states[-2]`,
//!   no final LayerNorm; pooled = `text_projection(final_layer_norm(last layer))` at each row's
//!   first EOS (`pool_workaround`).
//! - Context = concat on features: (B, 77 | 152 | 227, 768 + 1280); pooled (B, 1280).
//! - Tokenizers: encoder 1 `openai/clip-vit-large-patch14`'s (pads with EOS); encoder 2
//!   laion bigG's with `pad_token_id = 0` ([`ClipTokenizer::new_sdxl_te2`]): pads with id 0
//!   (`!`) but keeps a `!` in the text an ordinary BPE character. diffusers'
//!   `StableDiffusionXLPipeline` differs there: its `tokenizer_2` has the pad token `!`, which
//!   also turns every `!` of a prompt into its own id 0 (`a!b` → `a</w>`, 0, `b</w>` instead of
//!   `a</w> !</w> b</w>`), so generation with diffusers conditions differently on prompts with
//!   `!`; lorakit follows sd-scripts in training and sampling alike.
//! - Long prompts (`max_token_length` 150/225): each tokenizer pads to 152/227 (encoder 1 with
//!   EOS, encoder 2 with `!` = id 0), the ids are cut into 77-id chunks
//!   ([`crate::clip_tokenizer::chunk_for_clip`], with sd-scripts' pad ≠ EOS fix-ups for encoder 2),
//!   every chunk is encoded on its own and the outputs are stitched back to `<BOS>`, each chunk's
//!   inner 75 positions, the last position. sd-scripts' SD2 "copy the next pad state" fix-up is
//!   commented out in its SDXL code and is not applied here either. The pooled vector is the
//!   FIRST chunk's.
//! - `clip_skip` does not exist here: sd-scripts' `verify_sdxl_training_args` only logs
//!   "clip_skip will be unexpected" and the SDXL strategy never reads it.
//! - Weighted captions (`--weighted_captions`, supported for SDXL LoRA training): both encoders'
//!   hidden states are multiplied by their tokens' weights as for SD1/SD2 (no mean rescaling);
//!   the pooled vector is not weighted.
//!
//! Both encoders' LoRA targets are the SD1 CLIP's six linears per layer, under kohya prefixes
//! [`TE1_LORA_PREFIX`] and [`TE2_LORA_PREFIX`]; their module paths are identical
//! (`text_model.encoder.layers.N.self_attn.q_proj` …), so each encoder takes its own
//! [`ForwardCtx`].

use candle_core::Tensor;
use lorakit_nn::lora::LoraTarget;
use lorakit_nn::ForwardCtx;

use crate::checkpoint::SdCheckpoint;
use crate::clip::{
    apply_chunk_weights, stitch_chunks, ClipTextConfig, ClipTextModel, ClipTextModelWithProjection, PromptLayout,
};
use crate::clip_tokenizer::{chunk_weights_for_clip, ClipTokenizer, CLIP_CHUNK_LEN};
use crate::{Error, Result, Weights};

/// kohya's prefix for SDXL's first text encoder (`lora_te1_text_model_encoder_layers_0_…`).
pub const TE1_LORA_PREFIX: &str = "lora_te1";
/// kohya's prefix for SDXL's second text encoder (`lora_te2_text_model_encoder_layers_0_…`).
pub const TE2_LORA_PREFIX: &str = "lora_te2";

/// What the SDXL U-Net is conditioned on.
#[derive(Clone, Debug)]
pub struct TextConditioning {
    /// Cross-attention context (B, L, D1 + D2): encoder 1's and encoder 2's hidden states
    /// concatenated on the feature axis (768 + 1280 = 2048 for SDXL).
    pub context: Tensor,
    /// Encoder 2's projected pooled vector (B, projection_dim = 1280), the start of the U-Net's
    /// `text_embeds`/`y` input (the size/crop embeddings are appended by the U-Net's caller).
    pub pooled: Tensor,
}

/// sd-scripts' three text-encoder outputs for SDXL (`encode_tokens`: `hidden_states1`,
/// `hidden_states2`, `pool2` — also what its text-encoder output cache stores).
#[derive(Clone, Debug)]
pub struct SdxlTextOutput {
    /// Encoder 1's penultimate hidden state, stitched: (B, L, D1).
    pub hidden_states1: Tensor,
    /// Encoder 2's `hidden_states[-2]`, stitched: (B, L, D2).
    pub hidden_states2: Tensor,
    /// Encoder 2's projected pooled vector of each prompt's first chunk: (B, projection_dim).
    pub pool2: Tensor,
}

impl SdxlTextOutput {
    /// The U-Net's conditioning: the two hidden states concatenated on features (encoder 2's
    /// cast to encoder 1's dtype when they differ) and the pooled vector.
    pub fn conditioning(&self) -> candle_core::Result<TextConditioning> {
        let h2 = self.hidden_states2.to_dtype(self.hidden_states1.dtype())?;
        let context = Tensor::cat(&[&self.hidden_states1, &h2], 2)?;
        Ok(TextConditioning { context, pooled: self.pool2.clone() })
    }
}

/// Token ids for both encoders, each (B, n, 77) `u32`: n = 1, 2 or 3 chunks.
#[derive(Clone, Debug)]
pub struct SdxlTokens {
    /// Encoder 1's chunks (padded with EOS).
    pub ids1: Tensor,
    /// Encoder 2's chunks (padded with `!` = id 0, sd-scripts' pad ≠ EOS fix-ups applied).
    pub ids2: Tensor,
}

/// [`SdxlTokens`] with each position's caption weight, (B, n, 77) `f32` per encoder (1.0 at
/// BOS, EOS and padding; spec §6.2).
#[derive(Clone, Debug)]
pub struct SdxlWeightedTokens {
    /// The ids.
    pub tokens: SdxlTokens,
    /// Encoder 1's weights.
    pub weights1: Tensor,
    /// Encoder 2's weights.
    pub weights2: Tensor,
}

/// SDXL's two text encoders and their tokenizers: what training and the generator encode
/// prompts with.
pub struct SdxlTextEncoders {
    /// Text encoder 1 (CLIP ViT-L, `text_encoder/`).
    pub te1: ClipTextModel,
    /// Text encoder 2 (OpenCLIP ViT-bigG with projection, `text_encoder_2/`; boxed so the
    /// pair is not much larger than one encoder where both kinds share an enum).
    pub te2: Box<ClipTextModelWithProjection>,
    /// `openai/clip-vit-large-patch14`'s tokenizer (pads with EOS).
    pub tokenizer1: ClipTokenizer,
    /// `laion/CLIP-ViT-bigG-14-laion2B-39B-b160k`'s tokenizer as sd-scripts sets it up (pads
    /// with `!`, id 0; a `!` in the text is not split off: [`ClipTokenizer::new_sdxl_te2`]).
    pub tokenizer2: ClipTokenizer,
}

impl std::fmt::Debug for SdxlTextEncoders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdxlTextEncoders").field("te1", &self.te1).field("te2", &self.te2).finish_non_exhaustive()
    }
}

impl SdxlTextEncoders {
    /// Pairs two built encoders with SDXL's tokenizers. Refuses an encoder 1 of fewer than two
    /// layers (it has no penultimate layer).
    pub fn new(te1: ClipTextModel, te2: ClipTextModelWithProjection) -> Result<Self> {
        if te1.layers().len() < 2 || te2.text_model().layers().len() < 2 {
            return Err(Error::Invalid(format!(
                "SDXL text encoders need at least 2 layers each (they condition on the penultimate one), got {} and {}",
                te1.layers().len(),
                te2.text_model().layers().len()
            )));
        }
        Ok(SdxlTextEncoders {
            te1,
            te2: Box::new(te2),
            tokenizer1: ClipTokenizer::new()?,
            tokenizer2: ClipTokenizer::new_sdxl_te2()?,
        })
    }

    /// Builds both encoders from their weight stores (diffusers names: `text_model.*`, and
    /// `text_projection.weight` for encoder 2), failing with every missing or mis-shaped tensor.
    pub fn from_weights(
        te1: &Weights,
        te1_config: &ClipTextConfig,
        te2: &Weights,
        te2_config: &ClipTextConfig,
    ) -> Result<Self> {
        let model1 = ClipTextModel::new(te1.view(""), te1_config)?;
        te1.check_complete()?;
        let model2 = ClipTextModelWithProjection::new(te2.view(""), te2_config)?;
        te2.check_complete()?;
        Self::new(model1, model2)
    }

    /// Builds both encoders of an SDXL checkpoint with its configs
    /// ([`SdCheckpoint::text_encoder_config`] / [`SdCheckpoint::text_encoder_2_config`]: a
    /// folder's `config.json`, or a single file's sizes read from its weights), SDXL's
    /// full-size configs where none is given.
    pub fn from_checkpoint(ckpt: &SdCheckpoint) -> Result<Self> {
        let te2 = ckpt.text_encoder_2.as_ref().ok_or_else(|| Error::Checkpoint {
            path: ckpt.path.clone(),
            message: format!("a {} checkpoint has no second text encoder; SDXL needs one", ckpt.family),
        })?;
        let config =
            |value: &Option<serde_json::Value>, fallback: ClipTextConfig, what: &str| -> Result<ClipTextConfig> {
                match value {
                    Some(v) => {
                        let cfg: ClipTextConfig = serde_json::from_value(v.clone()).map_err(|e| Error::Checkpoint {
                            path: ckpt.path.clone(),
                            message: format!("{what} config: {e}"),
                        })?;
                        cfg.validate()
                            .map_err(|e| Error::Checkpoint { path: ckpt.path.clone(), message: e.to_string() })?;
                        Ok(cfg)
                    }
                    None => Ok(fallback),
                }
            };
        let cfg1 = config(&ckpt.text_encoder_config, ClipTextConfig::sdxl_te1(), "text_encoder")?;
        let cfg2 = config(&ckpt.text_encoder_2_config, ClipTextConfig::sdxl_te2(), "text_encoder_2")?;
        Self::from_weights(&ckpt.text_encoder, &cfg1, te2, &cfg2)
    }

    /// Width of the cross-attention context: encoder 1's plus encoder 2's hidden size (2048).
    pub fn context_dim(&self) -> usize {
        self.te1.config().hidden_size + self.te2.config().hidden_size
    }

    /// Width of the pooled vector: encoder 2's projection (1280).
    pub fn pooled_dim(&self) -> usize {
        self.te2.text_projection().frozen().out_features()
    }

    /// The id encoder 2 pools at: the tokenizer's EOS (49407), as sd-scripts passes
    /// `tokenizer2.eos_token_id` — the SDXL config's `eos_token_id = 2` is a placeholder. A
    /// config with another EOS id than 2 (a model with its own vocabulary) is taken at its word.
    pub fn pool_eos_id(&self) -> u32 {
        match self.te2.config().eos_token_id {
            2 => ClipTokenizer::EOS,
            id => id,
        }
    }

    /// Encoder 1's LoRA targets (kohya prefix [`TE1_LORA_PREFIX`]): six linears per layer, 72
    /// for SDXL.
    pub fn te1_lora_targets(&self) -> Vec<LoraTarget> {
        self.te1.lora_targets()
    }

    /// Encoder 2's LoRA targets (kohya prefix [`TE2_LORA_PREFIX`]): six linears per layer, 192
    /// for SDXL.
    pub fn te2_lora_targets(&self) -> Vec<LoraTarget> {
        self.te2.lora_targets()
    }

    /// sd-scripts' `SdxlTokenizeStrategy.tokenize`: each prompt padded/truncated to 77, 152 or
    /// 227 ids by each tokenizer (`max_token_length` None or 75, 150, 225; others refused) and
    /// cut into 77-id chunks. A truncated prompt is logged as a warning.
    pub fn tokenize(&self, prompts: &[&str], max_token_length: Option<usize>) -> Result<SdxlTokens> {
        let (l1, l2) = self.layouts("SdxlTextEncoders::tokenize", prompts.len(), max_token_length)?;
        let (mut ids1, mut ids2) = (Vec::new(), Vec::new());
        let mut n_chunks = 0;
        for prompt in prompts {
            let (a, dropped1) = self.tokenizer1.encode_padded(prompt, l1.max_length, self.tokenizer1.pad_id());
            let (b, dropped2) = self.tokenizer2.encode_padded(prompt, l2.max_length, self.tokenizer2.pad_id());
            self.warn_truncated(&l1, dropped1, &l2, dropped2, prompt);
            let (c1, c2) = (l1.chunk(&a), l2.chunk(&b));
            n_chunks = c1.len();
            ids1.extend(c1.iter().flatten().copied());
            ids2.extend(c2.iter().flatten().copied());
        }
        let shape = (prompts.len(), n_chunks, CLIP_CHUNK_LEN);
        let device = self.te1.device();
        Ok(SdxlTokens { ids1: Tensor::from_vec(ids1, shape, device)?, ids2: Tensor::from_vec(ids2, shape, device)? })
    }

    /// sd-scripts' `SdxlTokenizeStrategy.tokenize_with_weights`: each prompt is its (text,
    /// weight) pieces from `lorakit_dataset::prompt_weights::parse_prompt_attention`, tokenised
    /// per piece by each tokenizer ([`ClipTokenizer::encode_weighted_padded`]) and chunked with
    /// the same rows for ids and weights.
    pub fn tokenize_weighted<S: AsRef<str>>(
        &self,
        prompts: &[Vec<(S, f64)>],
        max_token_length: Option<usize>,
    ) -> Result<SdxlWeightedTokens> {
        let (l1, l2) = self.layouts("SdxlTextEncoders::tokenize_weighted", prompts.len(), max_token_length)?;
        let (mut ids1, mut ids2, mut w1, mut w2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut n_chunks = 0;
        for pieces in prompts {
            let (a, wa, dropped1) =
                self.tokenizer1.encode_weighted_padded(pieces, l1.max_length, self.tokenizer1.pad_id());
            let (b, wb, dropped2) =
                self.tokenizer2.encode_weighted_padded(pieces, l2.max_length, self.tokenizer2.pad_id());
            if dropped1 > 0 || dropped2 > 0 {
                let text: String = pieces.iter().map(|(t, _)| t.as_ref()).collect();
                self.warn_truncated(&l1, dropped1, &l2, dropped2, &text);
            }
            let (c1, c2) = (l1.chunk(&a), l2.chunk(&b));
            n_chunks = c1.len();
            ids1.extend(c1.iter().flatten().copied());
            ids2.extend(c2.iter().flatten().copied());
            w1.extend(chunk_weights_for_clip(&wa).iter().flatten().copied());
            w2.extend(chunk_weights_for_clip(&wb).iter().flatten().copied());
        }
        let shape = (prompts.len(), n_chunks, CLIP_CHUNK_LEN);
        let device = self.te1.device();
        Ok(SdxlWeightedTokens {
            tokens: SdxlTokens {
                ids1: Tensor::from_vec(ids1, shape, device)?,
                ids2: Tensor::from_vec(ids2, shape, device)?,
            },
            weights1: Tensor::from_vec(w1, shape, device)?,
            weights2: Tensor::from_vec(w2, shape, device)?,
        })
    }

    /// sd-scripts' `SdxlTextEncodingStrategy.encode_tokens` on chunked ids (B, n, 77) per
    /// encoder: every chunk encoded on its own, hidden states stitched, pooled vector from each
    /// prompt's first chunk. `ctxs` carry each encoder's LoRA modules (encoder 1, encoder 2).
    pub fn encode_tokens(&self, tokens: &SdxlTokens, ctxs: [&ForwardCtx; 2]) -> Result<SdxlTextOutput> {
        let (b, n, l) = match tokens.ids1.dims() {
            &[b, n, l] if b > 0 && n > 0 && l >= 2 => (b, n, l),
            dims => {
                return Err(Error::Invalid(format!(
                "SDXL token ids must be (batch, chunks, length) with at least one chunk of 2 or more ids, got {dims:?}"
            )))
            }
        };
        if tokens.ids2.dims() != tokens.ids1.dims() {
            return Err(Error::Invalid(format!(
                "SDXL token ids for encoder 2 have shape {:?}, encoder 1's {:?}",
                tokens.ids2.dims(),
                tokens.ids1.dims()
            )));
        }
        let n1 = self.te1.layers().len();
        let h1 = self.te1.hidden_states(&tokens.ids1.reshape((b * n, l))?, n1 - 1, ctxs[0])?;
        let h1 = h1.last().expect("embeddings are always present");
        let out2 = self.te2.forward_pooled_at_eos(&tokens.ids2.reshape((b * n, l))?, self.pool_eos_id(), ctxs[1])?;
        let states2 = &out2.text.hidden_states;
        let h2 = &states2[states2.len() - 2];
        let first_chunks: Vec<u32> = (0..b).map(|i| (i * n) as u32).collect();
        let index = Tensor::from_vec(first_chunks, b, out2.text_embeds.device())?;
        Ok(SdxlTextOutput {
            hidden_states1: stitch_chunks(h1, b, n)?,
            hidden_states2: stitch_chunks(h2, b, n)?,
            pool2: out2.text_embeds.index_select(&index, 0)?,
        })
    }

    /// sd-scripts' `encode_tokens_with_weights`: [`Self::encode_tokens`], then each encoder's
    /// stitched hidden states times its tokens' weights (one chunk: all 77 positions; n chunks:
    /// each chunk's inner 75, the stitched first and last position unchanged). The pooled
    /// vector is not weighted.
    pub fn encode_tokens_weighted(
        &self,
        tokens: &SdxlWeightedTokens,
        ctxs: [&ForwardCtx; 2],
    ) -> Result<SdxlTextOutput> {
        for (w, ids) in [(&tokens.weights1, &tokens.tokens.ids1), (&tokens.weights2, &tokens.tokens.ids2)] {
            if w.dims() != ids.dims() {
                return Err(Error::Invalid(format!(
                    "token weights of shape {:?} do not match the token ids of shape {:?}",
                    w.dims(),
                    ids.dims()
                )));
            }
        }
        let out = self.encode_tokens(&tokens.tokens, ctxs)?;
        Ok(SdxlTextOutput {
            hidden_states1: apply_chunk_weights(&out.hidden_states1, &tokens.weights1)?,
            hidden_states2: apply_chunk_weights(&out.hidden_states2, &tokens.weights2)?,
            pool2: out.pool2,
        })
    }

    /// Tokenises and encodes prompts as sd-scripts' SDXL training does: (B, 77 | 152 | 227,
    /// 2048) context and (B, 1280) pooled vector.
    pub fn encode(
        &self,
        prompts: &[&str],
        max_token_length: Option<usize>,
        ctxs: [&ForwardCtx; 2],
    ) -> Result<TextConditioning> {
        let tokens = self.tokenize(prompts, max_token_length)?;
        Ok(self.encode_tokens(&tokens, ctxs)?.conditioning()?)
    }

    /// [`Self::encode`] for captions with attention weights (`--weighted_captions`): each prompt
    /// is its (text, weight) pieces; see [`Self::encode_tokens_weighted`]. A prompt of one
    /// piece of weight 1.0 gives exactly what [`Self::encode`] gives.
    pub fn encode_weighted<S: AsRef<str>>(
        &self,
        prompts: &[Vec<(S, f64)>],
        max_token_length: Option<usize>,
        ctxs: [&ForwardCtx; 2],
    ) -> Result<TextConditioning> {
        let tokens = self.tokenize_weighted(prompts, max_token_length)?;
        Ok(self.encode_tokens_weighted(&tokens, ctxs)?.conditioning()?)
    }

    /// A prompt and its negative as sd-scripts' SDXL sample images encode them
    /// (`SdxlStableDiffusionLongPromptWeightingPipeline.__call__`): each parsed for A1111
    /// emphasis (`(word:1.2)`, `(word)`, `[word]`, `\(`) and encoded on its own with
    /// [`Self::encode_weighted`] at the training run's `max_token_length` — the training
    /// layout, longer prompts truncated with a warning, and no mean rescaling (unlike SD 1.x/2.x
    /// sampling, where sd-scripts' lpw pipeline rescales). An empty negative is encoded as "",
    /// not zeroed (diffusers' `force_zeros_for_empty_prompt` is not sd-scripts'). Returns
    /// (prompt, negative), each with batch 1.
    pub fn encode_emphasis_pair(
        &self,
        prompt: &str,
        negative: &str,
        max_token_length: Option<usize>,
        ctxs: [&ForwardCtx; 2],
    ) -> Result<(TextConditioning, TextConditioning)> {
        let encode = |text: &str| -> Result<TextConditioning> {
            let pieces = lorakit_dataset::prompt_weights::parse_prompt_attention(text)
                .map_err(|e| Error::Invalid(format!("prompt {text:?}: {e}")))?;
            self.encode_weighted(&[pieces], max_token_length, ctxs)
        };
        Ok((encode(prompt)?, encode(negative)?))
    }

    fn layouts(
        &self,
        caller: &str,
        n_prompts: usize,
        max_token_length: Option<usize>,
    ) -> Result<(PromptLayout, PromptLayout)> {
        Ok((
            PromptLayout::new(caller, n_prompts, &self.tokenizer1, max_token_length)?,
            PromptLayout::new(caller, n_prompts, &self.tokenizer2, max_token_length)?,
        ))
    }

    /// One warning per truncated prompt (encoder 1's count, else encoder 2's: both tokenise
    /// the text alike, so this is a safeguard).
    fn warn_truncated(&self, l1: &PromptLayout, dropped1: usize, l2: &PromptLayout, dropped2: usize, prompt: &str) {
        if dropped1 > 0 {
            l1.warn_truncated(&self.tokenizer1, dropped1, prompt);
        } else if dropped2 > 0 {
            l2.warn_truncated(&self.tokenizer2, dropped2, prompt);
        }
    }
}
