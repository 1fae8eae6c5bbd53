#!/usr/bin/env python3
"""Regenerates docs/training-options.md from the config structs' doc comments
(crates/lorakit-train/src/config.rs), marking which sd-scripts argument each key is, by looking
for the argument in an sd-scripts checkout (SD_SCRIPTS, default /work/bench/sd-scripts).

Run:  python3 tools/docs/training_options.py   (crates/lorakit-train/tests/options_doc.rs checks
that every key is listed.)
"""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SD = os.environ.get("SD_SCRIPTS", "/work/bench/sd-scripts")
NETWORK_ARGS = {
    "conv_dim", "conv_alpha", "rank_dropout", "module_dropout", "down_lr_weight", "mid_lr_weight", "up_lr_weight",
    "block_lr_zero_threshold", "block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas",
    "loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio",
}
HEADER = """# Training options

Every key of a `lorakit train` config, by section, with the sd-scripts argument it corresponds to.
Keys are named like sd-scripts' arguments; `lorakit train CONFIG --print-config` prints all of them
with their values, `lorakit train CONFIG --dry-run` prints the plan they make, and
`lorakit train --from-kohya FILE` imports an sd-scripts `--config_file` TOML or a kohya_ss GUI JSON
(network_args such as `conv_dim=8` or `down_lr_weight=sine` land on the keys below).
`--set section.key=value` (or a bare key) overrides any of them.

Optimizers (`optimizer.optimizer_type`, case-insensitive; the dotted class paths sd-scripts users
write work too): AdamW, AdamW8bit (PagedAdamW8bit), Lion, Lion8bit (PagedLion8bit), SGDNesterov,
SGDNesterov8bit, Prodigy, Adafactor, AdamWScheduleFree, AdEMAMix (`bitsandbytes.optim.AdEMAMix`),
AdEMAMix8bit (`bitsandbytes.optim.AdEMAMix8bit`), ProdigyPlusScheduleFree
(`prodigyplus.ProdigyPlusScheduleFree`). `optimizer_args` take sd-scripts' `key=value` items with
Python literal values (`betas=0.9,0.999`, `decouple=True`). Each optimizer's update is checked
against its reference implementation (`tools/reference/optim_*_fixture.py`) and resumes bitwise.

Learning-rate schedulers (`optimizer.lr_scheduler`): constant, constant_with_warmup, linear, cosine,
cosine_with_restarts, cosine_with_min_lr, polynomial, inverse_sqrt, warmup_stable_decay,
piecewise_constant, adafactor (set by Adafactor's relative step); schedule-free optimizers ignore
it with a notice.
"""


def sd_sources():
    text = ""
    for root, _, files in os.walk(SD):
        for f in files:
            if f.endswith(".py") and ("library" in root or f == "train_network.py"):
                with open(os.path.join(root, f), errors="ignore") as fh:
                    text += fh.read()
    return text


def main():
    src = open(os.path.join(ROOT, "crates/lorakit-train/src/config.rs")).read()
    sd = sd_sources()
    out = [HEADER]
    pattern = r"((?:///[^\n]*\n)+)(?:#\[[^\n]*\]\n)*pub struct (\w+)Section \{(.*?)\n\}"
    for m in re.finditer(pattern, src, re.S):
        doc, body = m.group(1), m.group(3)
        section = re.search(r"`\[(\w+)\]`", doc).group(1)
        title = re.sub(r"^/// `\[\w+\]`:\s*", "", doc.split("\n")[0])
        out += [f"## [{section}]", "", title[:1].upper() + title[1:], "",
                "| key | type | sd-scripts | what it does |", "|---|---|---|---|"]
        lines = []
        for line in body.split("\n"):
            s = line.strip()
            if s.startswith("///"):
                lines.append(s[3:].strip())
                continue
            fm = re.match(r"pub (\w+): (.*),", s)
            if fm:
                key, ty = fm.group(1), fm.group(2)
                if key in NETWORK_ARGS:
                    name = f"`network_args` `{key}=…`"
                elif re.search(r"[\"']--" + key + r"[\"']", sd):
                    name = f"`--{key}`"
                elif section == "dataset" and re.search(r'"' + key + r'"', sd):
                    name = f"dataset TOML `{key}`"
                else:
                    name = "lorakit only"
                ty = ty.replace("Option<", "").replace(">", "").replace("PathBuf", "path").replace("String", "string")
                text = " ".join(lines).replace("|", "\\|")
                out.append(f"| `{key}` | {ty} | {name} | {text} |")
                lines = []
            elif s and not s.startswith("#["):
                lines = []
        out.append("")
    with open(os.path.join(ROOT, "docs/training-options.md"), "w") as f:
        f.write("\n".join(out))


if __name__ == "__main__":
    main()
