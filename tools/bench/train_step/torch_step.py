"""PyTorch side of the training-step benchmark: the same step as
crates/lorakit-models/benches/train_step.rs — a full-size UNet (diffusers, random weights),
sd-scripts' LoRA network, batch 1, f32, forward + MSE + backward. One JSON line per measured step.

usage: PYTHONPATH=/path/to/sd-scripts python torch_step.py [steps] [--model sd15|sdxl|flux|sd3] [--latent N]
       [--conv-dim N | --attention-only] [--checkpointing] [--threads N] [--device cpu|cuda]
       [--dtype f32|bf16|f16] [flux: --double N --single N --txt-len N --width N --fp8
       --impl peft|sd-scripts --block-swap N --cpu-offload] [sd3: --mmdit sd35l|sd3m --depth N --txt-len N --fp8
       --weights DIR | --make-weights DIR] [--adamw]

--model sd15 (default): SD1.5's UNet, 77x768 context, rank 16 / alpha 16 plus conv_dim 16 /
conv_alpha 16 (278 modules). --model sdxl: SDXL base 1.0's UNet (diffusers' config, 2,567,463,684
parameters), 77x2048 context, text_embeds (1, 1280) and time_ids (1, 6), rank 16 / alpha 16 on
the Transformer2DModel linears only (722 modules; no conv_dim). --conv-dim N adds conv modules
(0: none, as --attention-only). --latent N: the latent's side (default 64 = 512 px).

--model flux: FLUX.1-dev's transformer at full width (3072, 24 heads) with --double N / --single M
blocks (default 2 and 4; 19 and 38 = the full model), a 16-channel --latent N latent packed into
(N/2)^2 tokens of 64, --txt-len T5 tokens of 4096 (default 512), pooled (1, 768), sigma 0.5,
guidance 1.0; random weights N(0, 0.02) (norm scales 1), made per tensor on the device in the
frozen dtype (no f32 copy of the model; on the CPU in f32). Two implementations:
  --impl peft (default): diffusers' FluxTransformer2DModel + PEFT LoRA rank 16 / alpha 16 on the
    linears equivalent to sd-scripts' lora_flux defaults; diffusers splits q/k/v (and the single
    blocks' linear1 into to_q/to_k/to_v/proj_mlp), so PEFT has more, smaller modules than kohya's
    fused qkv / linear1 (14 per double block and 6 per single block vs 10 and 3) and more LoRA
    parameters (lora_params in each line; lorakit's line has kohya's count).
  --impl sd-scripts: sd-scripts' own library/flux_models.Flux + networks/lora_flux.py (kohya's
    modules exactly, as lorakit), the GPU comparison's reference.
--fp8 (CUDA, bf16/f16 autocast): frozen weights in float8_e4m3fn as fp8_base — sd-scripts casts
the whole model (its norms upcast the scale), PEFT/diffusers only the nn.Linear weights (as
lorakit). --block-swap N (sd-scripts, CUDA): sd-scripts' blocks_to_swap (enable_block_swap +
move_to_device_except_swap_blocks + prepare_block_swap_before_forward). --cpu-offload (sd-scripts,
CUDA, with --checkpointing): its cpu_offload_checkpointing (enable_gradient_checkpointing(
cpu_offload=True): each block's saved inputs in host memory). --width N: a narrower model for
smoke tests.

--model sd3: sd-scripts' own library/sd3_models.MMDiT + networks/lora_sd3.py (the training
reference) at full width — --mmdit sd35l (default: SD3.5 Large, hidden 2432, 38 heads of 64, RMS
q/k norms) or sd3m (SD3 Medium, 1536, 24 heads) — with --depth N joint blocks (default 2; the last
one's context side pre-only). sd-scripts ties the width to the depth (64·depth), so the model is
built for the full depth on the meta device and its block list replaced by N blocks of that width.
Inputs: a 16-channel --latent N latent, timestep 500, pooled (1, 2048), --txt-len text tokens of
4096 (default 333 = 77 CLIP + 256 T5, sd-scripts' SD3 default). LoRA: lora_sd3's default modules
(every linear of the joint blocks), rank 16 / alpha 16. --make-weights DIR writes one random model
(N(0, 0.02), q/k norm scales 1; SAI keys), its LoRA (lora_sd3's init, up N(0, 0.01)) and the
inputs to DIR and exits; --weights DIR loads them (lorakit's bench takes the same option), so both
sides compute the same loss. --fp8 (CUDA): the whole model in float8_e4m3fn, as sd3_train_network.py's
fp8_base casts it (lorakit: the linear weights, as for Flux). --block-swap N (CUDA, --checkpointing):
sd-scripts' blocks_to_swap for the MMDiT (the last N joint blocks in host memory).

--adamw ends each measured step with an AdamW update (torch.optim.AdamW, lr 1e-4, torch's other
defaults) of the LoRA weights. Every line has cpu_s, the process's own user + system CPU seconds
in the step (wall time hides how much of the cores a side used on a shared machine).

--dtype is the frozen UNet's dtype with autocast, as sd-scripts' --mixed_precision runs it (the
LoRA keeps f32 weights; the loss is taken in f32). On CUDA the step is timed after a synchronize
and the JSON line adds torch's peak allocated/reserved GPU memory.
"""
import json, os, resource, sys, time

import torch
from diffusers import UNet2DConditionModel

args = sys.argv[1:]
VALUED = ("--threads", "--device", "--dtype", "--model", "--latent", "--conv-dim", "--double", "--single", "--txt-len",
          "--width", "--impl", "--block-swap", "--mmdit", "--depth", "--weights", "--make-weights")
steps = next((int(a) for i, a in enumerate(args) if a.isdigit() and (i == 0 or args[i - 1] not in VALUED)), 3)
checkpointing = "--checkpointing" in args
threads = int(args[args.index("--threads") + 1]) if "--threads" in args else torch.get_num_threads()
torch.set_num_threads(threads)
device = args[args.index("--device") + 1] if "--device" in args else "cpu"
dtype_name = args[args.index("--dtype") + 1] if "--dtype" in args else "f32"
dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype_name]
model = args[args.index("--model") + 1] if "--model" in args else "sd15"
latent = int(args[args.index("--latent") + 1]) if "--latent" in args else 64
fp8 = "--fp8" in args
opt = lambda name, default: type(default)(args[args.index(name) + 1]) if name in args else default
torch.manual_seed(0)

extra = {}
if model == "flux":
    import contextlib, dataclasses

    impl = opt("--impl", "peft")
    width, txt_len = opt("--width", 3072), opt("--txt-len", 512)
    n_double, n_single, block_swap = opt("--double", 2), opt("--single", 4), opt("--block-swap", 0)
    heads = width // 128
    conv_dim = None
    if fp8 and (device != "cuda" or dtype == torch.float32):
        sys.exit("--fp8 needs --device cuda and --dtype bf16 or f16 (autocast upcasts the fp8 weights per layer)")
    if block_swap and (impl != "sd-scripts" or device != "cuda"):
        sys.exit("--block-swap N is sd-scripts' blocks_to_swap: --impl sd-scripts --device cuda")
    cpu_offload = "--cpu-offload" in args
    if cpu_offload and (impl != "sd-scripts" or device != "cuda" or not checkpointing or block_swap):
        sys.exit("--cpu-offload is sd-scripts' cpu_offload_checkpointing: --impl sd-scripts --device cuda --checkpointing, no --block-swap")
    t0 = time.perf_counter()
    # Built on the meta device, then every parameter made on its device in its storage dtype:
    # no f32 (or bf16, with --fp8) copy of the model ever exists, and no minutes of default init.
    with torch.device("meta"):
        if impl == "peft":
            from diffusers import FluxTransformer2DModel

            flux = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=n_double, num_single_layers=n_single,
                                          attention_head_dim=128, num_attention_heads=heads, joint_attention_dim=4096,
                                          pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
        elif impl == "sd-scripts":
            from library import flux_models  # sd-scripts

            flux = flux_models.Flux(dataclasses.replace(flux_models.configs["dev"].params, hidden_size=width, num_heads=heads,
                                                        depth=n_double, depth_single_blocks=n_single))
        else:
            sys.exit(f"--impl {impl}: expected peft or sd-scripts")
    # sd-scripts' blocks_to_swap: the swapped blocks' weights live on the CPU (as sd-scripts'
    # move_to_device_except_swap_blocks leaves them); the offloader streams them in and out.
    on_cpu = set()
    if block_swap:
        n_sd = block_swap // 2
        n_ss = (block_swap - n_sd) * 2
        on_cpu = {f"double_blocks.{i}." for i in range(n_double - n_sd, n_double)} | \
                 {f"single_blocks.{i}." for i in range(n_single - n_ss, n_single)}
    model_params = 0
    for mod_name, mod in flux.named_modules():
        for name, p in list(mod.named_parameters(recurse=False)):
            full = f"{mod_name}.{name}"
            model_params += p.numel()
            dev = "cpu" if any(full.startswith(c) for c in on_cpu) else device
            # fp8_base: sd-scripts casts the whole model (its RMSNorm upcasts the scale);
            # diffusers' norms cannot take fp8 weights, so PEFT's side (as lorakit) keeps only the
            # nn.Linear weights in fp8.
            store = dtype
            if fp8 and (impl == "sd-scripts" or (isinstance(mod, torch.nn.Linear) and name == "weight")):
                store = torch.float8_e4m3fn
            if p.ndim == 1 and "norm" in full and "linear" not in full and name in ("weight", "scale"):
                t = torch.ones(p.shape, device=dev, dtype=dtype)
            else:
                t = torch.randn(p.shape, device=dev, dtype=dtype).mul_(0.02)
            mod._parameters[name] = torch.nn.Parameter(t.to(store), requires_grad=False)
    if any(b.is_meta for b in flux.buffers()):
        sys.exit("a buffer of the model was left on the meta device")
    if checkpointing:
        # sd-scripts' Flux prints its notices to stdout, which holds only JSON lines here.
        with contextlib.redirect_stdout(sys.stderr):
            if impl == "sd-scripts":
                flux.enable_gradient_checkpointing(cpu_offload=cpu_offload)
            else:
                flux.enable_gradient_checkpointing()
    flux.train()
    if impl == "peft":
        from peft import LoraConfig

        # sd-scripts' lora_flux defaults (every linear of the double and single blocks) in
        # diffusers' names: q/k/v split, linear1 = to_q/to_k/to_v/proj_mlp, linear2 = proj_out.
        double = r"attn\.(to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj|to_out\.0|to_add_out)|ff\.net\.(0\.proj|2)|" \
                 r"ff_context\.net\.(0\.proj|2)|norm1\.linear|norm1_context\.linear"
        single = r"attn\.(to_q|to_k|to_v)|proj_mlp|proj_out|norm\.linear"
        targets = rf"(transformer_blocks\.\d+\.({double})|single_transformer_blocks\.\d+\.({single}))"
        flux.add_adapter(LoraConfig(r=16, lora_alpha=16, init_lora_weights=True, target_modules=targets))
        loras = [m for m in flux.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
        params = []
        for m in loras:
            # PEFT makes the adapter in the base layer's dtype (fp8/bf16): f32 master weights, as
            # in training; A kaiming-uniform as PEFT's default, B non-zero so every branch carries
            # gradient.
            for lin in (m.lora_A["default"], m.lora_B["default"]):
                lin.to(device, dtype=torch.float32)
            torch.nn.init.kaiming_uniform_(m.lora_A["default"].weight, a=5 ** 0.5)
            torch.nn.init.normal_(m.lora_B["default"].weight, std=0.01)
            params += [m.lora_A["default"].weight, m.lora_B["default"].weight]
        n_modules = len(loras)
    else:
        from networks import lora_flux  # sd-scripts

        net = lora_flux.create_network(1.0, 16, 16.0, None, [], flux)
        net.apply_to([], flux, apply_text_encoder=False, apply_unet=True)
        for m in net.unet_loras:
            torch.nn.init.normal_(m.lora_up.weight, std=0.01)
        net.to(device, dtype=torch.float32)
        params = list(net.parameters())
        n_modules = len(net.unet_loras)
        if block_swap:
            with contextlib.redirect_stdout(sys.stderr):
                flux.enable_block_swap(block_swap, torch.device(device))
                flux.move_to_device_except_swap_blocks(torch.device(device))
    for p in params:
        p.requires_grad_(True)
    lora_impl = impl
    print(f"setup {time.perf_counter() - t0:.1f}s, {model_params} flux parameters ({impl}), {n_modules} LoRA modules "
          f"({sum(p.numel() for p in params)} parameters), {threads} threads", file=sys.stderr)

    latents = torch.randn(1, 16, latent, latent)
    # sd-scripts' pack_latents: 2x2 patches, channel-major within a patch.
    img = latents.reshape(1, 16, latent // 2, 2, latent // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, -1, 64).to(device, dtype)
    tokens = img.shape[1]
    target = torch.randn(1, tokens, 64).to(device)
    ids = torch.zeros(latent // 2, latent // 2, 3)
    ids[..., 1] = torch.arange(latent // 2)[:, None]
    ids[..., 2] = torch.arange(latent // 2)[None, :]
    img_ids = ids.reshape(-1, 3).to(device)
    txt = torch.randn(1, txt_len, 4096).to(device, dtype)
    txt_ids = torch.zeros(txt_len, 3, device=device)
    y = torch.randn(1, 768).to(device, dtype)
    sigma = torch.tensor([0.5], device=device)
    guidance = torch.tensor([1.0], device=device)
    extra = {"fp8": fp8, "width": width, "double": n_double, "single": n_single, "tokens": tokens,
             "txt_len": txt_len, "block_swap": block_swap, "cpu_offload": cpu_offload}

    def forward():
        if impl == "peft":
            return flux(hidden_states=img, encoder_hidden_states=txt, pooled_projections=y, timestep=sigma, img_ids=img_ids,
                        txt_ids=txt_ids, guidance=guidance, return_dict=False)[0]
        flux.prepare_block_swap_before_forward()
        return flux(img=img, img_ids=img_ids[None], txt=txt, txt_ids=txt_ids[None], timesteps=sigma, y=y, guidance=guidance)
elif model == "sd3":
    import contextlib
    from safetensors.torch import load_file, save_file

    from library import sd3_models  # sd-scripts
    from networks import lora_sd3  # sd-scripts

    # sd-scripts ties the width to the depth (hidden 64·depth, heads = depth): a full-width model
    # of fewer blocks is the full model's first blocks, the last made pre-only as every MMDiT's is.
    mmdit_name = opt("--mmdit", "sd35l")
    full_depth, pos_max, qk_norm = {"sd35l": (38, 192, "rms"), "sd3m": (24, 192, None)}.get(mmdit_name, (0, 0, None))
    if not full_depth:
        sys.exit(f"--mmdit {mmdit_name}: expected sd35l (SD3.5 Large) or sd3m (SD3 Medium)")
    depth, txt_len = opt("--depth", 2), opt("--txt-len", 333)
    weights_dir, make_weights = opt("--weights", ""), opt("--make-weights", "")
    if fp8 and (device != "cuda" or dtype == torch.float32):
        sys.exit("--fp8 needs --device cuda and --dtype bf16 or f16 (autocast upcasts the fp8 weights per layer)")
    block_swap = opt("--block-swap", 0)
    if block_swap and (device != "cuda" or not checkpointing):
        sys.exit("--block-swap N is sd-scripts' blocks_to_swap: --device cuda --checkpointing")
    # The swapped blocks' weights live on the CPU, as move_to_device_except_swap_blocks leaves them.
    on_cpu = tuple(f"joint_blocks.{i}." for i in range(depth - block_swap, depth)) if block_swap else ()
    t0 = time.perf_counter()
    with torch.device("meta"):
        mmdit = sd3_models.create_sd3_mmdit(sd3_models.SD3Params(
            patch_size=2, depth=full_depth, num_patches=pos_max * pos_max, pos_embed_max_size=pos_max, adm_in_channels=2048,
            qk_norm=qk_norm, x_block_self_attn_layers=[], context_embedder_in_features=4096,
            context_embedder_out_features=64 * full_depth, model_type=mmdit_name), attn_mode="torch")
        mmdit.joint_blocks = torch.nn.ModuleList([
            sd3_models.MMDiTBlock(mmdit.hidden_size, mmdit.num_heads, mlp_ratio=4, attn_mode="torch", qkv_bias=True,
                                  pre_only=i == depth - 1, rmsnorm=False, scale_mod_only=False, swiglu=False,
                                  qk_norm=qk_norm, x_block_self_attn=False) for i in range(depth)])
        mmdit.num_blocks = depth
    width = mmdit.hidden_size
    # The shared weights (--weights DIR, made once by --make-weights DIR): both sides load the same
    # model, LoRA and inputs, so their losses must agree.
    shared = load_file(os.path.join(weights_dir, "mmdit.safetensors")) if weights_dir else None
    gen = torch.Generator().manual_seed(0)
    model_params = 0
    for mod_name, mod in mmdit.named_modules():
        tensors = [(n, p, True) for n, p in mod.named_parameters(recurse=False)] + \
                  [(n, b, False) for n, b in mod.named_buffers(recurse=False)]
        for name, p, is_param in tensors:
            full = f"{mod_name}.{name}" if mod_name else name
            model_params += p.numel()
            # fp8_base: sd3_train_network.py casts the whole MMDiT (`mmdit.to(float8_e4m3fn)`); its
            # RMS norms and position table upcast, autocast upcasts the linears' and conv's weights.
            store = torch.float8_e4m3fn if fp8 else dtype
            dev = "cpu" if full.startswith(on_cpu) and on_cpu else device
            if shared is not None:
                t = shared[full].to(dev, dtype)
            elif full.endswith(("ln_q.weight", "ln_k.weight")):
                t = torch.ones(p.shape, device=dev, dtype=dtype)
            elif make_weights:
                t = torch.randn(p.shape, generator=gen).mul_(0.02)
            else:
                t = torch.randn(p.shape, device=dev, dtype=dtype).mul_(0.02)
            if is_param:
                mod._parameters[name] = torch.nn.Parameter(t.to(store), requires_grad=False)
            else:
                mod._buffers[name] = t.to(store)
    del shared
    if checkpointing:
        mmdit.enable_gradient_checkpointing()
    mmdit.train()
    with contextlib.redirect_stdout(sys.stderr):
        net = lora_sd3.create_network(1.0, 16, 16.0, None, [], mmdit)
        net.apply_to([], mmdit, apply_text_encoder=False, apply_unet=True)
    for m in net.unet_loras:
        torch.nn.init.normal_(m.lora_up.weight, std=0.01)
    if weights_dir:
        net.load_weights(os.path.join(weights_dir, "lora.safetensors"))
    net.to(device, dtype=torch.float32)
    params = list(net.parameters())
    n_modules, lora_impl, conv_dim = len(net.unet_loras), "sd-scripts", None
    if block_swap:
        with contextlib.redirect_stdout(sys.stderr):
            mmdit.enable_block_swap(block_swap, torch.device(device))
            mmdit.move_to_device_except_swap_blocks(torch.device(device))
    for p in params:
        p.requires_grad_(True)
    if weights_dir:
        inputs = load_file(os.path.join(weights_dir, "inputs.safetensors"))
    else:
        inputs = {"x": torch.randn(1, 16, latent, latent), "t": torch.tensor([500.0]), "y": torch.randn(1, 2048),
                  "context": torch.randn(1, txt_len, 4096), "target": torch.randn(1, 16, latent, latent)}
    if make_weights:
        os.makedirs(make_weights, exist_ok=True)
        save_file({k: v.contiguous() for k, v in mmdit.state_dict().items()}, os.path.join(make_weights, "mmdit.safetensors"))
        save_file({k: v.detach().float().contiguous() for k, v in net.state_dict().items()},
                  os.path.join(make_weights, "lora.safetensors"))
        save_file(inputs, os.path.join(make_weights, "inputs.safetensors"))
        print(f"wrote {make_weights}: {model_params} MMDiT parameters, {n_modules} LoRA modules", file=sys.stderr)
        sys.exit(0)
    print(f"setup {time.perf_counter() - t0:.1f}s, {model_params} MMDiT parameters ({mmdit_name}, width {width}, "
          f"{depth} blocks), {n_modules} LoRA modules ({sum(p.numel() for p in params)} parameters), {threads} threads",
          file=sys.stderr)
    sd3_x, sd3_y, sd3_context = (inputs[k].to(device, dtype) for k in ("x", "y", "context"))
    sd3_t = inputs["t"].to(device)  # the timesteps stay f32, as sd-scripts passes them
    target = inputs["target"].to(device)
    extra = {"fp8": fp8, "mmdit": mmdit_name, "width": width, "depth": depth, "tokens": (latent // 2) ** 2,
             "txt_len": sd3_context.shape[1], "shared_weights": bool(weights_dir), "block_swap": block_swap}

    def forward():
        mmdit.prepare_block_swap_before_forward()
        return mmdit(sd3_x, sd3_t, y=sd3_y, context=sd3_context)
else:
    if model == "sd15":
        cfg = dict(sample_size=64, in_channels=4, out_channels=4, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                   up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, block_out_channels=[320, 640, 1280, 1280],
                   layers_per_block=2, attention_head_dim=8, cross_attention_dim=768, norm_num_groups=32)
        context_width, default_conv_dim = 768, 16
    elif model == "sdxl":
        # stabilityai/stable-diffusion-xl-base-1.0/unet/config.json (sd-scripts' DIFFUSERS_SDXL_UNET_CONFIG)
        cfg = dict(sample_size=128, in_channels=4, out_channels=4, down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 2,
                   up_block_types=["CrossAttnUpBlock2D"] * 2 + ["UpBlock2D"], block_out_channels=[320, 640, 1280],
                   layers_per_block=2, attention_head_dim=[5, 10, 20], transformer_layers_per_block=[1, 2, 10],
                   cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
                   addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, norm_num_groups=32)
        context_width, default_conv_dim = 2048, None
    else:
        sys.exit(f"--model {model}: expected sd15, sdxl, flux or sd3")
    t0 = time.perf_counter()
    if device == "cuda":
        # Built on the card in its dtype: no f32 copy of the weights in GPU memory (or minutes of
        # initialisation on the CPU); f32 is what a CPU run builds.
        torch.set_default_dtype(dtype)
        with torch.device(device):
            unet = UNet2DConditionModel(**cfg)
        torch.set_default_dtype(torch.float32)
    else:
        unet = UNet2DConditionModel(**cfg)
    unet.requires_grad_(False)
    unet.to(device, dtype=dtype)
    if checkpointing:
        unet.enable_gradient_checkpointing()
        unet.train()

    from networks import lora  # sd-scripts

    class NoTE(torch.nn.Module):
        pass

    # --attention-only / --conv-dim 0: no conv LoRA (sd-scripts without conv_dim), e.g. to see what
    # LoCon costs.
    conv_dim = int(args[args.index("--conv-dim") + 1]) or None if "--conv-dim" in args else default_conv_dim
    if "--attention-only" in args:
        conv_dim = None
    net = lora.create_network(1.0, 16, 16.0, None, [], unet, conv_dim=conv_dim, conv_alpha=16.0)
    net.apply_to([], unet, apply_text_encoder=False, apply_unet=True)
    for m in net.unet_loras:
        torch.nn.init.normal_(m.lora_up.weight, std=0.01)
    net.to(device, dtype=torch.float32)
    params = [p for p in net.parameters()]
    for p in params:
        p.requires_grad_(True)
    model_params = sum(p.numel() for p in unet.parameters())
    print(f"setup {time.perf_counter() - t0:.1f}s, {model_params} UNet parameters, "
          f"{len(net.unet_loras)} LoRA modules, {threads} threads", file=sys.stderr)

    latents = torch.randn(1, 4, latent, latent).to(device, dtype)
    target = torch.randn(1, 4, latent, latent).to(device)
    context = torch.randn(1, 77, context_width).to(device, dtype)
    timesteps = torch.tensor([500], device=device)
    added = None
    if model == "sdxl":
        # SDXL's micro-conditioning: original size, crop top-left, target size (the latent's pixels).
        px = float(latent * 8)
        added = {"text_embeds": torch.randn(1, 1280).to(device, dtype),
                 "time_ids": torch.tensor([[px, px, 0.0, 0.0, px, px]], device=device)}

    def forward():
        return unet(latents, timesteps, context, added_cond_kwargs=added).sample

    n_modules, lora_impl = len(net.unet_loras), "sd-scripts"
autocast = torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32)
# --adamw: the step ends with torch's AdamW update of the LoRA weights (sd-scripts' default
# optimizer; lr 1e-4, torch's betas / eps / weight decay 0.01, as lorakit's AdamWConfig default).
optimizer = torch.optim.AdamW(params, lr=1e-4) if "--adamw" in args else None


def cpu_seconds():
    """CPU seconds used by the whole machine and by this process so far: a step's difference of
    the two is the CPU time other processes took from the cores meanwhile (other_cpu_s)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    busy = sum(v) - v[3] - v[4]  # all but idle and iowait
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def sync():
    if device == "cuda":
        torch.cuda.synchronize()


for step in range(steps + 1):
    cpu_before = cpu_seconds()
    t = time.perf_counter()
    with autocast:
        pred = forward()
    loss = torch.nn.functional.mse_loss(pred.float(), target)
    sync()
    forward_secs = time.perf_counter() - t
    loss.backward()
    norm = sum(float(p.grad.pow(2).sum()) for p in params if p.grad is not None) ** 0.5
    if optimizer is not None:
        optimizer.step()
    for p in params:
        p.grad = None
    sync()
    secs = time.perf_counter() - t
    cpu_after = cpu_seconds()
    other_cpu = max(0.0, (cpu_after[0] - cpu_before[0]) - (cpu_after[1] - cpu_before[1]))
    extra["cpu_s"] = round(cpu_after[1] - cpu_before[1], 2)  # this process's user + system time in the step
    extra["optimizer"] = "adamw" if optimizer is not None else "none"
    if step > 0:
        row = {"impl": "pytorch", "step": step, "seconds": round(secs, 3), "forward_seconds": round(forward_secs, 3), "loss": round(float(loss), 7),
               "grad_norm": round(norm, 7), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
               "checkpointing": checkpointing, "device": device, "dtype": dtype_name, "model": model, "latent": latent,
               "params": model_params, "lora_modules": n_modules,
               "lora_params": sum(p.numel() for p in params), "lora_impl": lora_impl, "conv_dim": conv_dim or 0, **extra, "loadavg_1m": round(os.getloadavg()[0], 2),
               "other_cpu_s": round(other_cpu, 1)}
        if device == "cuda":
            row["gpu_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
            row["gpu_peak_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20)
        print(json.dumps(row), flush=True)
