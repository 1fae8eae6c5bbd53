#!/usr/bin/env python3
"""Time kohya-ss/sd-scripts' DreamBooth dataset preparation, exactly as train_network.py does it.

This is the reference side of the `lorakit dataset check` benchmark. It imports the real
sd-scripts code (``--sd-scripts PATH``, a checkout/export outside the lorakit repo) and
replays the dataset part of ``NetworkTrainer.train()`` (train_network.py) for an SD1.5
LoRA run equivalent to::

    accelerate launch train_network.py --pretrained_model_name_or_path <model> \\
        --train_data_dir DIR --resolution 512 --train_batch_size 1 \\
        --enable_bucket --min_bucket_reso 256 --max_bucket_reso 1024 --bucket_reso_steps 64 \\
        --caption_extension .txt --network_module networks.lora --output_dir <tmp>

The timed region (time.perf_counter, after every import has finished) is, in order:

1. ``train_util.verify_training_args(args)`` and ``train_util.prepare_dataset_args(args, True)``
2. ``set_seed(args.seed)``
3. ``LatentsCachingStrategy.set_strategy(SdSdxlLatentsCachingStrategy(True, ...))`` -- what
   ``NetworkTrainer.get_latents_caching_strategy`` returns for SD1.x; dataset construction uses
   it to look for ``*_sd.npz`` latent caches next to the images
4. ``BlueprintGenerator(ConfigSanitizer(True, True, args.masked_loss, True))`` +
   ``config_util.generate_dreambooth_subsets_config_by_subdirs(train_data_dir, reg_data_dir)`` +
   ``blueprint_generator.generate(user_config, args)``
5. ``config_util.generate_dataset_group_by_blueprint(...)``: builds the DreamBoothDataset
   (globs images, reads every caption file) and calls ``make_buckets()`` (reads every image
   size with ``imagesize``, falling back to PIL, then assigns buckets)
6. ``len(train_dataset_group)`` check, ``NetworkTrainer.assert_extra_args`` (which calls
   ``verify_bucket_reso_steps(64)``) and ``train_dataset_group.set_current_strategies()``

Not included: the tokenizer strategy (``SdTokenizeStrategy`` downloads/loads the CLIP
tokenizer -- model setup, not dataset preparation), accelerator and model loading.

Each repeat parses a fresh argument namespace and rebuilds everything from scratch in the
same process. ``--cache_info`` stays off, and the script refuses to run (or, with
``--clean``, deletes them first) if ``metadata_cache.json`` or ``*.npz`` files exist in the
subset folders, so every repeat reads all headers and captions again (OS page cache is warm
after the first run).

Prints one JSON object on stdout; sd-scripts' own log/progress output goes to stderr.
"""

from __future__ import annotations

import time

T_PROCESS_START = time.perf_counter()

import argparse
import glob
import json
import os
import platform
import statistics
import sys
import tempfile
from collections import Counter


def parse_cli():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sd-scripts", required=True, help="path to an sd-scripts checkout/export")
    ap.add_argument("--train-data-dir", required=True, help="DreamBooth parent dir (contains N_name folders)")
    ap.add_argument("--reg-data-dir", default=None, help="optional regularization images parent dir")
    ap.add_argument("--resolution", default="512", help="'512' or 'W,H' (default 512)")
    ap.add_argument("--batch-size", type=int, default=1, help="train_batch_size (default 1)")
    ap.add_argument("--min-bucket-reso", type=int, default=256)
    ap.add_argument("--max-bucket-reso", type=int, default=1024)
    ap.add_argument("--bucket-reso-steps", type=int, default=64)
    ap.add_argument("--no-bucket", action="store_true", help="do not pass --enable_bucket")
    ap.add_argument("--caption-extension", default=".txt")
    ap.add_argument("--repeat", type=int, default=1, help="how many times to prepare the dataset (default 1)")
    ap.add_argument("--seed", type=int, default=42, help="training --seed (default 42)")
    ap.add_argument("--clean", action="store_true", help="delete metadata_cache.json / *.npz caches before each repeat")
    ap.add_argument("--quiet", action="store_true", help="set sd-scripts' console log level to WARNING")
    ap.add_argument("--out", help="also write the JSON result to this file")
    ap.add_argument(
        "--dump-images",
        help="write every image's path (relative to the data dir), repeats, size, bucket and caption "
        "to this JSON file, for compare_images.py",
    )
    return ap.parse_args()


def cache_files(dirs):
    found = []
    for d in dirs:
        if d is None or not os.path.isdir(d):
            continue
        for sub in sorted(os.listdir(d)):
            p = os.path.join(d, sub)
            if not os.path.isdir(p):
                continue
            found += glob.glob(os.path.join(glob.escape(p), "metadata_cache.json"))
            found += glob.glob(os.path.join(glob.escape(p), "*.npz"))
    return found


def main() -> int:
    cli = parse_cli()
    sd_scripts = os.path.abspath(cli.sd_scripts)
    data_dir = os.path.abspath(cli.train_data_dir)
    reg_dir = os.path.abspath(cli.reg_data_dir) if cli.reg_data_dir else None
    if not os.path.isfile(os.path.join(sd_scripts, "train_network.py")):
        print(f"error: {sd_scripts} does not look like sd-scripts (no train_network.py)", file=sys.stderr)
        return 2
    if not os.path.isdir(data_dir):
        print(f"error: {data_dir} is not a directory", file=sys.stderr)
        return 2

    # sd-scripts' logging goes to stderr (rich); keep anything that prints to stdout off our JSON
    real_stdout = sys.stdout
    sys.stdout = sys.stderr

    sys.path.insert(0, sd_scripts)
    t_imp0 = time.perf_counter()
    import torch  # noqa: F401  (imported by train_network anyway; here to report the version)
    import train_network  # the real entry point module: same imports, init_ipex(), setup_logging()
    from accelerate.utils import set_seed
    from library import config_util, strategy_base, strategy_sd, train_util
    from library.config_util import BlueprintGenerator, ConfigSanitizer
    from library.utils import setup_logging
    t_imp1 = time.perf_counter()

    parser = train_network.setup_parser()
    trainer = train_network.NetworkTrainer()
    out_dir = tempfile.mkdtemp(prefix="sdscripts_prep_out_")
    argv = [
        "--pretrained_model_name_or_path", "runwayml/stable-diffusion-v1-5",  # never loaded here
        "--train_data_dir", data_dir,
        "--resolution", cli.resolution,
        "--train_batch_size", str(cli.batch_size),
        "--caption_extension", cli.caption_extension,
        "--network_module", "networks.lora",
        "--output_dir", out_dir,
        "--seed", str(cli.seed),
    ]
    if reg_dir:
        argv += ["--reg_data_dir", reg_dir]
    if not cli.no_bucket:
        argv += [
            "--enable_bucket",
            "--min_bucket_reso", str(cli.min_bucket_reso),
            "--max_bucket_reso", str(cli.max_bucket_reso),
            "--bucket_reso_steps", str(cli.bucket_reso_steps),
        ]
    if cli.quiet:
        argv += ["--console_log_level", "WARNING"]

    seconds = []
    result_group = None
    for _ in range(max(1, cli.repeat)):
        # __main__ of train_network.py
        args = parser.parse_args(argv)
        train_util.verify_command_line_training_args(args)
        args = train_util.read_config_from_file(args, parser)
        assert not args.cache_info, "cache_info must stay off for this benchmark"

        leftovers = cache_files([data_dir, reg_dir])
        if leftovers:
            if cli.clean:
                for p in leftovers:
                    os.remove(p)
            else:
                print(
                    f"error: {len(leftovers)} cache files (metadata_cache.json / *.npz) found, e.g. {leftovers[0]}; "
                    "use --clean to delete them",
                    file=sys.stderr,
                )
                return 3
        setup_logging(args, reset=True)  # as NetworkTrainer.train() does (honours --console_log_level)
        # strategies are process-global singletons that refuse to be set twice: reset them so
        # every repeat starts like a fresh train_network.py process
        strategy_base.LatentsCachingStrategy._strategy = None
        strategy_base.TokenizeStrategy._strategy = None

        t0 = time.perf_counter()
        # ---- NetworkTrainer.train(), dataset part -------------------------------------------
        train_util.verify_training_args(args)
        train_util.prepare_dataset_args(args, True)
        use_dreambooth_method = args.in_json is None
        assert use_dreambooth_method and args.dataset_config is None and args.dataset_class is None
        set_seed(args.seed)

        # NetworkTrainer.get_latents_caching_strategy() for SD1.x/2.x
        latents_caching_strategy = strategy_sd.SdSdxlLatentsCachingStrategy(
            True, args.cache_latents_to_disk, args.vae_batch_size, args.skip_cache_check
        )
        strategy_base.LatentsCachingStrategy.set_strategy(latents_caching_strategy)

        blueprint_generator = BlueprintGenerator(ConfigSanitizer(True, True, args.masked_loss, True))
        user_config = {
            "datasets": [
                {"subsets": config_util.generate_dreambooth_subsets_config_by_subdirs(args.train_data_dir, args.reg_data_dir)}
            ]
        }
        blueprint = blueprint_generator.generate(user_config, args)
        train_dataset_group, val_dataset_group = config_util.generate_dataset_group_by_blueprint(blueprint.dataset_group)
        if len(train_dataset_group) == 0:
            print("error: no data found", file=sys.stderr)
            return 4
        if args.cache_latents:
            assert train_dataset_group.is_latent_cacheable()
        trainer.assert_extra_args(args, train_dataset_group, val_dataset_group)  # verify_bucket_reso_steps(64)
        train_dataset_group.set_current_strategies()
        if val_dataset_group is not None:
            val_dataset_group.set_current_strategies()
        # --------------------------------------------------------------------------------------
        t1 = time.perf_counter()
        seconds.append(t1 - t0)
        result_group = train_dataset_group

    # ---- summary (not timed) --------------------------------------------------------------------
    images = 0
    buckets = Counter()
    buckets_with_repeats = Counter()
    image_sizes_missing = 0
    ar_errors = []
    for ds in result_group.datasets:
        images += len(ds.image_data)
        for info in ds.image_data.values():
            if info.image_size is None or info.image_size[0] <= 0:
                image_sizes_missing += 1
            key = f"{info.bucket_reso[0]}x{info.bucket_reso[1]}"
            buckets[key] += 1
            buckets_with_repeats[key] += info.num_repeats
        if getattr(ds, "bucket_info", None):
            ar_errors.append(float(ds.bucket_info.get("mean_img_ar_error", 0.0)))

    def bucket_sort_key(k):
        w, h = k.split("x")
        return (int(w), int(h))

    med = statistics.median(seconds)
    result = {
        "tool": "sd-scripts",
        "what": "train_network.py DreamBooth dataset preparation (SD1.5, enable_bucket)",
        "train_data_dir": data_dir,
        "seconds": [round(s, 6) for s in seconds],
        "median_seconds": round(med, 6),
        "min_seconds": round(min(seconds), 6),
        "images": images,
        "images_per_second_median": round(images / med, 1) if med > 0 else None,
        "images_per_second_best": round(images / min(seconds), 1) if min(seconds) > 0 else None,
        "images_with_repeats": int(result_group.num_train_images),
        "reg_images_with_repeats": int(result_group.num_reg_images),
        "batches": len(result_group),
        "bucket_count": len(buckets),
        "buckets": {k: buckets[k] for k in sorted(buckets, key=bucket_sort_key)},
        "buckets_with_repeats": {k: buckets_with_repeats[k] for k in sorted(buckets_with_repeats, key=bucket_sort_key)},
        "mean_img_ar_error": ar_errors[0] if len(ar_errors) == 1 else ar_errors,
        "image_sizes_unreadable": image_sizes_missing,
        "settings": {
            "resolution": cli.resolution,
            "batch_size": cli.batch_size,
            "enable_bucket": not cli.no_bucket,
            "min_bucket_reso": cli.min_bucket_reso,
            "max_bucket_reso": cli.max_bucket_reso,
            "bucket_reso_steps": cli.bucket_reso_steps,
            "caption_extension": cli.caption_extension,
        },
        "import_seconds": round(t_imp1 - t_imp0, 3),
        "process_seconds_until_summary": round(time.perf_counter() - T_PROCESS_START, 3),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sd_scripts": sd_scripts,
    }
    try:
        os.rmdir(out_dir)
    except OSError:
        pass

    if cli.dump_images:
        dump = []
        for ds in result_group.datasets:
            for info in ds.image_data.values():
                dump.append(
                    {
                        "path": os.path.relpath(info.absolute_path, data_dir),
                        "repeats": info.num_repeats,
                        "is_reg": bool(info.is_reg),
                        "size": list(info.image_size),
                        "bucket": list(info.bucket_reso),
                        "caption": info.caption,
                    }
                )
        with open(cli.dump_images, "w", encoding="utf-8") as f:
            json.dump({"images": dump}, f, ensure_ascii=False)

    sys.stdout = real_stdout
    text = json.dumps(result, indent=2)
    print(text)
    if cli.out:
        with open(cli.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
