"""Time one pix2pix training step in netc and in PyTorch, one after the other, and print
both median step times and their ratio.

Usage: python3 bench/compare.py [--ngf 64] [--ndf 64] [--size 256] [--steps 5]
Needs a release build of netc (`cargo build --release`) and PyTorch (`pip install torch`).
PyTorch runs on the CPU with its default thread count.
"""

import argparse
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_json(command):
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr}")
    start = result.stdout.index("{")
    return json.loads(result.stdout[start:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--ndf", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--netc", default=str(ROOT / "target/release/netc"))
    args = parser.parse_args()

    sets = ["--set", f"ngf={args.ngf}", "--set", f"ndf={args.ndf}", "--set", f"size={args.size}"]
    netc = run_json(
        [args.netc, "bench", "models/pix2pix.net", *sets, "--steps", str(args.steps), "--json"]
    )
    torch = run_json(
        [
            sys.executable,
            str(ROOT / "bench/pix2pix_torch.py"),
            f"--ngf={args.ngf}",
            f"--ndf={args.ndf}",
            f"--size={args.size}",
            f"--steps={args.steps}",
        ]
    )
    ratio = netc["step_seconds_median"] / torch["step_seconds_median"]
    print(f"pix2pix ngf={args.ngf} ndf={args.ndf} size={args.size}, {args.steps} timed steps")
    print(
        f"  netc    ({netc['adapter']}): {netc['step_seconds_median']:.4f} s/step "
        f"(min {netc['step_seconds_min']:.4f}, max {netc['step_seconds_max']:.4f}), "
        f"compile {netc['compile_seconds']:.2f} s"
    )
    print(
        f"  PyTorch ({torch['framework']}, {torch['threads']} threads): "
        f"{torch['step_seconds_median']:.4f} s/step "
        f"(min {torch['step_seconds_min']:.4f}, max {torch['step_seconds_max']:.4f})"
    )
    print(f"  ratio netc / PyTorch: {ratio:.2f}")


if __name__ == "__main__":
    main()
