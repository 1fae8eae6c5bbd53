#!/usr/bin/env python3
"""Reference fixture for lorakit-dataset's validation split (crates/lorakit-dataset/src/validation_split.rs).

sd-scripts holds validation images out with `split_train_val` (library/train_util.py:142-178 of
sd-scripts 48d368f): it shuffles each non-regularisation subset's sorted image list with Python's
global `random` (seeded by accelerate's `set_seed(seed)`, i.e. `random.seed(seed)`), or with a
throw-away `random.seed(validation_seed)` when the dataset sets one, then keeps
`paths[0:ceil(n * (1 - split))]` for training and `paths[n - round(n * split):]` for validation.
The training datasets are all built first, then the validation datasets
(library/config_util.py: generate_dataset_group_by_blueprint), so without a validation_seed the
validation shuffles continue the global state after every training shuffle.

This script checks, with plain CPython (no third-party packages):
  - CPython's Mersenne Twister: `random.seed(int)` then getrandbits(32), getrandbits(k) for other k,
    random() (as its IEEE-754 bits) and randrange(n) (= `_randbelow(n)`), for several seeds;
  - `random.shuffle(list(range(n)))` for several n and seeds;
  - the split counts `ceil(n * (1 - split))` and `round(n * split)` (half-to-even), ties included;
  - whole runs simulating sd-scripts' dataset construction (training pass, then validation pass)
    with the split positions recorded as indices into each subset's sorted list.

Writes tests/fixtures/reference/validation_split/cases.json.

Run:  python3 tools/reference/validation_split_fixture.py   (CPython 3.11; any 3.9+ gives the same)
"""

import json
import math
import os
import random
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "reference", "validation_split", "cases.json")

SEEDS = [0, 1, 42, 2**32 - 1, 2**32 + 5, 12345678901234, 2**64 - 1]
SHUFFLE_NS = [0, 1, 2, 3, 10, 37]
RANDBELOW_NS = [1, 2, 3, 10, 37, 1000, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 10**12, 2**53 + 3, 2**64 - 1]
GETRANDBITS_KS = [1, 7, 31, 32, 33, 40, 53, 63, 64]
SPLITS = [0.1, 0.15, 0.2, 0.25, 1 / 3, 0.5, 0.7, 1.0]


def f64_bits(x):
    return struct.unpack("<Q", struct.pack("<d", x))[0]


# --- sd-scripts library/train_util.py:142-178 (48d368f), logging dropped -----------------------
def split_train_val(paths, sizes, is_training_dataset, validation_split, validation_seed):
    dataset = list(zip(paths, sizes))
    if validation_seed is not None:
        prevstate = random.getstate()
        random.seed(validation_seed)
        random.shuffle(dataset)
        random.setstate(prevstate)
    else:
        random.shuffle(dataset)

    paths, sizes = zip(*dataset)
    paths = list(paths)
    sizes = list(sizes)
    # Split the dataset between training and validation
    if is_training_dataset:
        # Training dataset we split to the first part
        split = math.ceil(len(paths) * (1 - validation_split))
        return paths[0:split], sizes[0:split]
    else:
        # Validation dataset we split to the second part
        split = len(paths) - round(len(paths) * validation_split)
        return paths[split:], sizes[split:]
# -----------------------------------------------------------------------------------------------


def load_subset(ds, subset, is_training_dataset):
    """The split part of DreamBoothDataset.__init__'s load_dreambooth_dir (train_util.py:2045-2057)."""
    img_paths = list(range(subset["n"]))  # positions in the sorted list stand in for the paths
    sizes = [None] * len(img_paths)
    if ds["validation_split"] > 0.0:
        if subset["is_reg"] is True:
            if is_training_dataset is False:
                img_paths = []
                sizes = []
        else:
            img_paths, sizes = split_train_val(
                img_paths, sizes, is_training_dataset, ds["validation_split"], ds["validation_seed"]
            )
    return img_paths


def run_scenario(scenario):
    """config_util.generate_dataset_group_by_blueprint after train_network's set_seed(args.seed)."""
    random.seed(scenario["seed"])
    train = []
    for ds in scenario["datasets"]:
        train.append([load_subset(ds, s, True) for s in ds["subsets"]])
    validation = []
    for ds in scenario["datasets"]:
        vs = ds["validation_split"]
        if vs < 0.0 or vs > 1.0 or vs == 0.0:
            validation.append(None)  # no validation dataset for this one
            continue
        validation.append([load_subset(ds, s, False) for s in ds["subsets"]])
    return train, validation


def ds(split, seed, *subsets):
    return {
        "validation_split": split,
        "validation_split_bits": f64_bits(split),
        "validation_seed": seed,
        "subsets": [{"n": n, "is_reg": reg} for n, reg in subsets],
    }


SCENARIOS = [
    ("no validation_seed, three subsets (train/val overlap)", 42, [ds(0.2, None, (10, False), (7, False), (5, False))]),
    ("validation_seed, two subsets", 1234, [ds(0.25, 7, (10, False), (6, False))]),
    ("two datasets, one with and one without validation_seed", 0,
     [ds(0.3, 99, (8, False), (5, False)), ds(0.2, None, (12, False), (9, False))]),
    ("reg subset between training subsets", 2**32, [ds(0.2, None, (10, False), (6, True), (8, False))]),
    ("split 1.0, with and without seed", 3, [ds(1.0, None, (5, False), (4, False)), ds(1.0, 11, (6, False))]),
    ("subsets of one image", 77, [ds(0.5, None, (1, False), (3, False), (1, False))]),
    ("dataset without split between two with split", 5,
     [ds(0.2, None, (10, False)), ds(0.0, None, (10, False), (4, True)), ds(0.1, 0, (20, False))]),
    ("larger subsets, 0.15", 2024, [ds(0.15, None, (100, False), (37, False))]),
    ("seed with validation_seed equal to the run seed", 42, [ds(0.2, 42, (10, False), (7, False))]),
]


def main():
    assert sys.implementation.name == "cpython", "the reference is CPython's random module"

    rng_cases = []
    for seed in SEEDS:
        random.seed(seed)
        g32 = [random.getrandbits(32) for _ in range(5)]
        floats = [random.random() for _ in range(5)]
        below = [[n, random.randrange(n)] for n in RANDBELOW_NS]
        bits = [[k, random.getrandbits(k)] for k in GETRANDBITS_KS]
        after = random.getrandbits(32)
        rng_cases.append({
            "seed": seed,
            "getrandbits32": g32,
            "random_bits": [f64_bits(x) for x in floats],
            "random": floats,
            "randbelow": below,
            "getrandbits": bits,
            "then_getrandbits32": after,
        })

    shuffle_cases = []
    for seed in SEEDS:
        for n in SHUFFLE_NS:
            random.seed(seed)
            x = list(range(n))
            random.shuffle(x)
            shuffle_cases.append({"seed": seed, "n": n, "shuffled": x, "next_getrandbits32": random.getrandbits(32)})

    count_cases = []
    ties = 0
    for split in SPLITS:
        for n in range(0, 21):
            train = math.ceil(n * (1 - split))
            val = round(n * split)
            if n * split - math.floor(n * split) == 0.5:
                ties += 1
            count_cases.append({"n": n, "split": split, "split_bits": f64_bits(split), "train": train, "validation": val})
    assert ties > 0
    # the ties the brief names
    assert round(10 * 0.25) == 2 and round(6 * 0.25) == 2

    scenario_cases = []
    for name, seed, datasets in SCENARIOS:
        train, validation = run_scenario({"seed": seed, "datasets": datasets})
        scenario_cases.append({"name": name, "seed": seed, "datasets": datasets, "train": train, "validation": validation})
        overlap = 0
        for t, v in zip(train, validation):
            if v is None:
                continue
            for ts, vs in zip(t, v):
                overlap += len(set(ts) & set(vs))
        print(f"{name}: overlap {overlap}")

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    doc = {
        "source": "CPython %s random module; sd-scripts 48d368f library/train_util.py:142-178 split_train_val"
        % sys.version.split()[0],
        "rng": rng_cases,
        "shuffle": shuffle_cases,
        "split_counts": count_cases,
        "scenarios": scenario_cases,
    }
    with open(OUT, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
