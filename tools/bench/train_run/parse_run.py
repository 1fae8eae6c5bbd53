"""One JSON line for one finished training run: per-step wall times from the run's own log
(lorakit: <logging_dir>/<timestamp>/log.jsonl; sd-scripts: the TensorBoard event file under
--logging_dir), steady-state seconds per step = median of the step-to-step wall_time differences
after the first SKIP steps, and peak RSS / wall time from `/usr/bin/time -v`.

usage: python parse_run.py IMPL VARIANT ROUND LOG_DIR TIME_V_FILE LOADAVG_AT_START [SKIP]
"""
import glob, json, os, re, statistics, sys

impl, variant, rnd, log_dir, time_file, load = sys.argv[1:7]
skip = int(sys.argv[7]) if len(sys.argv) > 7 else 2

if impl == "lorakit":
    path = sorted(glob.glob(os.path.join(log_dir, "**", "log.jsonl"), recursive=True))[-1]
    rows = [r for r in map(json.loads, open(path)) if "loss/current" in r]  # not the epoch-summary row
    walls = {r["step"]: r["wall_time"] for r in rows}
    losses = {r["step"]: r.get("loss/current") for r in rows}
else:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    path = sorted(glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True))[-1]
    walls, losses = {}, {}
    for ev in EventFileLoader(path).Load():
        for v in ev.summary.value:
            if v.tag == "loss/current":
                walls[ev.step] = ev.wall_time
                losses[ev.step] = float(v.tensor.float_val[0]) if v.tensor.float_val else v.simple_value
steps = sorted(walls)
diffs = [walls[b] - walls[a] for a, b in zip(steps, steps[1:])]  # diffs[i] = duration of step steps[i+1]
steady = diffs[max(skip - 1, 0):]
text = open(time_file).read()
rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text).group(1)
secs = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.split(":"))))
status = int(re.search(r"Exit status: (\d+)", text).group(1))
print(json.dumps({
    "impl": impl, "variant": variant, "round": int(rnd), "exit_status": status,
    "s_per_step_median": round(statistics.median(steady), 2) if steady else None,
    "step_seconds": [round(d, 2) for d in diffs], "steps_skipped": skip,
    "setup_to_first_step_s": round(walls[steps[0]] - (os.path.getmtime(time_file) - secs), 1) if steps else None,
    "process_wall_s": round(secs, 1), "peak_rss_mb": round(rss_kb / 1024),
    "loss": [round(losses[s], 4) if losses[s] is not None else None for s in steps],
    "loadavg_at_start": load, "log": path}))
