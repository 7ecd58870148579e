"""`make bench`: the speed benchmarks (issue 5), then the scorer's ceiling and floor and the
five-minute time-to-quality run (issue 4).

    python -m benchmarks.run_all [--quick] [--only speed|quality] [--speed-out DIR]
                                 [time_to_quality options, e.g. --minutes 5 --out DIR]

Each speed benchmark runs in its own fresh process (offscreen Qt), one after the other, and
writes `<speed-out>/<name>.json` (default benchmarks/results/speed/); a summary of every
target goes to the console and to `<speed-out>/summary.md`. `--quick` is a smoke run of
everything at tiny sizes (about two minutes on a quiet machine): it shows that the pipeline
works, not how fast anything is. Run the real thing on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import score, time_to_quality
from benchmarks.score import format_table
from benchmarks.speed_common import load_average

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

# (name, arguments of the full run, arguments of the --quick smoke run)
SPEED: list[tuple[str, list[str], list[str]]] = [
    ("startup", [], ["--runs", "2"]),
    ("forward", [], ["--calls", "200", "--moves", "30"]),
    ("playback", [], ["--seconds", "2"]),
    ("training", [], ["--warmup", "2", "--steps", "5", "--matmul-repeats", "3"]),
    ("sampling", [], ["--ddim-steps", "10", "--ddpm-steps", "20", "--repeats", "1"]),
    ("gui_load", [], ["--seconds", "6", "--idle-seconds", "1"]),
    ("busy", [], ["--seconds", "4", "--repeats", "1"]),
]
QUICK_QUALITY = ["--minutes", "0.05", "--n", "32", "--out", str(RESULTS / "ttq-quick")]
BUDGET_S = {False: 15 * 60, True: 2 * 60}


def run_speed(quick: bool, out: Path) -> tuple[list[tuple[str, float]], list[str]]:
    """Run every speed benchmark in a fresh process. Returns (name, seconds) and failures."""
    env = dict(os.environ)
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    times, failed = [], []
    for name, full, smoke in SPEED:
        command = [sys.executable, "-m", f"benchmarks.speed_{name}", *(smoke if quick else full)]
        command += ["--json", str(out / f"{name}.json")]
        print(f"\n=== speed_{name}: {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        code = subprocess.call(command, cwd=ROOT, env=env)
        times.append((f"speed_{name}", time.perf_counter() - started))
        if code != 0:
            failed.append(f"speed_{name} (exit code {code})")
    return times, failed


def speed_summary(out: Path, quick: bool, load: list[float] | None) -> str:
    """A Markdown table of every target in the speed results found in `out`."""
    rows = []
    for name, _, _ in SPEED:
        path = out / f"{name}.json"
        if not path.is_file():
            rows.append([f"speed_{name}", "(no result)", "", "", ""])
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        for t in data["targets"]:
            goal = f"{'>=' if t['at_least'] else '<'} {t['target']:g} {t['unit']}"
            rows.append(
                [f"speed_{name}", t["name"], f"{t['value']:.3g} {t['unit']}", goal]
                + ["yes" if t["met"] else "NO"]
            )
        if not data["targets"]:
            rows.append([f"speed_{name}", "(reported, no target)", "", "", ""])
    table = format_table(["benchmark", "target", "measured", "goal", "met"], rows)
    label = "smoke run (--quick): not a result" if quick else "full run"
    return f"Speed targets, {label}; load average at start {load}\n\n{table}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a ~2-minute smoke run of it all")
    parser.add_argument("--only", choices=("speed", "quality"), default=None)
    parser.add_argument("--speed-out", type=Path, default=RESULTS / "speed")
    args, quality_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.quick:
        quality_args = QUICK_QUALITY + quality_args  # given options come later and win

    started = time.perf_counter()
    times: list[tuple[str, float]] = []
    failed: list[str] = []
    if args.only != "quality":
        args.speed_out.mkdir(parents=True, exist_ok=True)
        for stale in args.speed_out.glob("*.json"):
            stale.unlink()
        load = load_average()
        times, failed = run_speed(args.quick, args.speed_out)
        summary = speed_summary(args.speed_out, args.quick, load)
        (args.speed_out / "summary.md").write_text(summary, encoding="utf-8")
        print("\n" + summary, flush=True)
    if args.only != "speed":
        print("\n=== quality: score --reference, then time_to_quality", flush=True)
        part = time.perf_counter()
        status = score.main(["--reference"]) or time_to_quality.main(quality_args)
        times.append(("quality (score + time_to_quality)", time.perf_counter() - part))
        if status:
            failed.append(f"quality (exit code {status})")

    total = time.perf_counter() - started
    rows = [[name, f"{seconds:.0f} s"] for name, seconds in times]
    rows.append(["total", f"{total:.0f} s ({total / 60:.1f} min)"])
    print("\n" + format_table(["part", "wall time"], rows))
    if total > BUDGET_S[args.quick]:
        print(f"note: longer than the {BUDGET_S[args.quick] // 60}-minute budget of this run")
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
