"""Time one pix2pix training step in netc and in PyTorch, taking turns, and print both
median step times and their ratio.

Usage: python3 bench/compare.py [--ngf 64] [--ndf 64] [--size 256] [--steps 5] [--rounds 3]
Needs a release build of netc (`cargo build --release`) and PyTorch (`pip install torch`).
PyTorch runs on the CPU with its default thread count.

Each round runs `netc bench` and then the PyTorch script for `--steps` timed steps each.
The medians pool the steps of all rounds. On a shared machine either framework can run
a third slower for tens of seconds at a time. Taking turns exposes both to the same
conditions, where a single run of each can catch a slow spell in only one of them.
"""

import argparse
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_json(command, keys):
    """Runs `command` from the repository root and returns the JSON object it prints, which
    must have every key in `keys`."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    except OSError as error:
        sys.exit(f"failed to start {command[0]}: {error}; build netc with "
                 "`cargo build --release` or pass its path with --netc")
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr}")
    start = result.stdout.find("{")
    try:
        report = json.loads(result.stdout[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        report = None
    if not isinstance(report, dict) or any(key not in report for key in keys):
        sys.exit(f"{' '.join(command)} printed no JSON report with {', '.join(keys)}; "
                 f"its output began: {result.stdout[:200]!r}")
    return report


def median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--ndf", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each framework")
    parser.add_argument("--netc", default=str(ROOT / "target/release/netc"))
    args = parser.parse_args()
    for name in ["steps", "rounds"]:
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    # A relative --netc is taken from the current folder; netc itself runs from the root.
    netc_path = str(pathlib.Path(args.netc).resolve())

    sets = ["--set", f"ngf={args.ngf}", "--set", f"ndf={args.ndf}", "--set", f"size={args.size}"]
    netc_command = [
        netc_path, "bench", "models/pix2pix.net", *sets, "--steps", str(args.steps), "--json"
    ]
    torch_command = [
        sys.executable,
        str(ROOT / "bench/pix2pix_torch.py"),
        f"--ngf={args.ngf}",
        f"--ndf={args.ndf}",
        f"--size={args.size}",
        f"--steps={args.steps}",
    ]
    keys = ["step_seconds", "step_seconds_median"]
    netc_keys = keys + ["adapter", "compile_seconds"]
    torch_keys = keys + ["framework", "threads"]
    netc_steps, torch_steps = [], []
    rounds = "round" if args.rounds == 1 else "rounds"
    steps = "step" if args.steps == 1 else "steps"
    print(f"pix2pix ngf={args.ngf} ndf={args.ndf} size={args.size}, "
          f"{args.rounds} {rounds} of {args.steps} timed {steps} each")
    netc = torch = None
    try:
        for round_index in range(args.rounds):
            netc_round = run_json(netc_command, netc_keys)
            torch_round = run_json(torch_command, torch_keys)
            netc, torch = netc_round, torch_round
            netc_steps += netc["step_seconds"]
            torch_steps += torch["step_seconds"]
            print(
                f"  round {round_index + 1}: netc {netc['step_seconds_median']:.4f} s, "
                f"PyTorch {torch['step_seconds_median']:.4f} s, ratio "
                f"{netc['step_seconds_median'] / torch['step_seconds_median']:.2f}"
            )
    except KeyboardInterrupt:
        if netc is None:
            sys.exit("interrupted before the first round finished")
        print("  interrupted: the figures below pool the finished rounds")
    netc_median, torch_median = median(netc_steps), median(torch_steps)
    print(
        f"  netc    ({netc['adapter']}): {netc_median:.4f} s/step "
        f"(min {min(netc_steps):.4f}, max {max(netc_steps):.4f}), "
        f"compile {netc['compile_seconds']:.2f} s in the last round"
    )
    print(
        f"  PyTorch ({torch['framework']}, {torch['threads']} threads): "
        f"{torch_median:.4f} s/step "
        f"(min {min(torch_steps):.4f}, max {max(torch_steps):.4f})"
    )
    print(f"  ratio netc / PyTorch: {netc_median / torch_median:.2f}")


if __name__ == "__main__":
    main()
