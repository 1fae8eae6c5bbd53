#!/usr/bin/env python3
"""Read lorakit's TensorBoard event files with the `tensorboard` Python package and check them.

Usage:
    python tools/reference/read_tensorboard.py PATH [--expected expected.json]

PATH is an event file or a log directory (every `*tfevents*` file in it, as TensorBoard merges a run
and its resumes). For each file, independently of lorakit's Rust reader, the script

1. walks the TFRecord framing and checks both masked CRC-32Cs of every record with
   `tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c`;
2. parses every record as `tensorboard.compat.proto.event_pb2.Event` and checks that the first one
   is `file_version: "brain.Event:2"` with a plausible wall time, and that the others carry
   summaries of `simple_value`s.

Then it loads PATH with both of TensorBoard's loaders, the classic
`event_accumulator.EventAccumulator` (`Scalars(tag)`) and the `plugin_event_accumulator` that the
TensorBoard UI uses (which migrates `simple_value` to scalar tensors through `data_compat`), prints a
summary of every tag and, with `--expected` (default: `PATH/expected.json` when PATH is a directory
holding one), asserts that each loader returns exactly the expected `[step, value]` pairs per tag,
in order (values are float32, compared exactly). `expected.json` is written by the Rust test
`write_event_files_for_python_check` in `crates/lorakit-train/tests/logging.rs`.

Exits non-zero on any mismatch.
"""

import argparse
import json
import os
import struct
import sys
import time

import numpy as np
from tensorboard.backend.event_processing import event_accumulator, plugin_event_accumulator
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tensorboard.util import tensor_util


def check_file(path):
    """Checks framing, CRCs and the first event of one file; returns the number of scalar values."""
    data = open(path, "rb").read()
    pos, events = 0, []
    while pos < len(data):
        assert len(data) - pos >= 12, f"{path}: truncated header at {pos}"
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        (len_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        assert len_crc == masked_crc32c(data[pos : pos + 8]), f"{path}: length CRC at {pos}"
        body = data[pos + 12 : pos + 12 + length]
        assert len(body) == length and pos + 16 + length <= len(data), f"{path}: truncated record at {pos}"
        (data_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
        assert data_crc == masked_crc32c(body), f"{path}: data CRC at {pos}"
        events.append(event_pb2.Event.FromString(body))
        pos += 16 + length
    assert events, f"{path}: no records"
    first = events[0]
    assert first.file_version == "brain.Event:2", f"{path}: first event {first}"
    assert abs(first.wall_time - time.time()) < 10 * 365 * 86400, f"{path}: wall_time {first.wall_time}"
    n = 0
    for e in events[1:]:
        assert e.WhichOneof("what") == "summary", f"{path}: {e}"
        for v in e.summary.value:
            assert v.WhichOneof("value") == "simple_value", f"{path}: {v}"
            n += 1
    print(f"{path}: {len(events)} records, CRCs ok, file_version ok, {n} scalar values")
    return n


def load_classic(path):
    acc = event_accumulator.EventAccumulator(path, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def load_plugin(path):
    acc = plugin_event_accumulator.EventAccumulator(path, size_guidance={plugin_event_accumulator.TENSORS: 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        points = []
        for e in acc.Tensors(tag):
            arr = tensor_util.make_ndarray(e.tensor_proto)
            assert arr.shape == () and arr.dtype == np.float32, (tag, arr.shape, arr.dtype)
            points.append((e.step, float(arr)))
        out[tag] = points
    assert set(acc.PluginTagToContent("scalars")) == set(out), "every tag should be a scalars-plugin tag"
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path")
    ap.add_argument("--expected")
    args = ap.parse_args()

    if os.path.isdir(args.path):
        files = sorted(os.path.join(args.path, f) for f in os.listdir(args.path) if "tfevents" in f)
    else:
        files = [args.path]
    assert files, f"no event files in {args.path}"
    total = sum(check_file(f) for f in files)

    expected_path = args.expected
    if expected_path is None and os.path.isdir(args.path) and os.path.exists(os.path.join(args.path, "expected.json")):
        expected_path = os.path.join(args.path, "expected.json")
    expected = None
    if expected_path:
        raw = json.load(open(expected_path))
        expected = {tag: [(int(s), float(np.float32(v))) for s, v in pts] for tag, pts in raw.items()}
        assert total == sum(len(p) for p in expected.values()), f"{total} values in files, expected.json differs"

    for name, loader in (("EventAccumulator", load_classic), ("plugin_event_accumulator", load_plugin)):
        got = loader(args.path)
        for tag, pts in sorted(got.items()):
            vals = [v for _, v in pts]
            print(f"{name}: {tag}: {len(pts)} points, steps {pts[0][0]}..{pts[-1][0]}, "
                  f"first {vals[0]:.6g}, last {vals[-1]:.6g}")
        if expected is not None:
            assert set(got) == set(expected), f"{name}: tags {sorted(got)} != {sorted(expected)}"
            for tag, pts in expected.items():
                assert got[tag] == pts, f"{name}: {tag}: got {got[tag][:5]}..., expected {pts[:5]}..."
            print(f"{name}: all {len(expected)} tags match {expected_path} exactly")
    print("OK")


if __name__ == "__main__":
    sys.exit(main())
