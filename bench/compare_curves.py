"""Print the mean of each loss term per window of steps for one or more losses.csv files.

Usage: python3 bench/compare_curves.py [--window 100] [--terms g_l1,g_gan] NAME=FILE ...

Each FILE has netc's losses.csv columns (step, epoch, lr, one column per loss term,
seconds_per_step), as `netc run --train` and `bench/pix2pix_torch.py --train` write them.
The output is one Markdown table per loss term, one row per window and one column per
file. Then, for each file after the first and each term, it prints the mean absolute
difference per step from the first file and the correlation of the per-step values. These
show how closely two runs on the same data order follow each other row for row. Last
comes the mean seconds per step of each file.
"""

import argparse
import csv
import statistics


def read_rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def window_means(rows, term, window):
    """Return {first step of the window: mean of `term`} over consecutive `window` steps."""
    groups = {}
    for row in rows:
        first = (int(row["step"]) - 1) // window * window + 1
        groups.setdefault(first, []).append(float(row[term]))
    return {first: statistics.fmean(values) for first, values in sorted(groups.items())}


def print_step_differences(runs, terms):
    """Print each run's per-step mean |difference| from the first run and the correlation."""
    (first_name, first_rows), others = runs[0], runs[1:]
    if not others:
        return
    print(f"\nper step against {first_name}: mean |difference| (correlation)\n")
    print("| run | " + " | ".join(terms) + " |")
    print("|---" * (len(terms) + 1) + "|")
    for name, rows in others:
        count = min(len(rows), len(first_rows))
        cells = []
        for term in terms:
            ours = [float(row[term]) for row in first_rows[:count]]
            theirs = [float(row[term]) for row in rows[:count]]
            difference = statistics.fmean(abs(a - b) for a, b in zip(ours, theirs))
            try:
                correlation = f"{statistics.correlation(ours, theirs):.2f}"
            except statistics.StatisticsError:  # fewer than 2 rows, or a constant column
                correlation = "undefined"
            cells.append(f"{difference:.3g} ({correlation})")
        print(f"| {name} | " + " | ".join(cells) + " |")


def parse_run(text):
    name, separator, path = text.partition("=")
    if not separator or not name or not path:
        raise argparse.ArgumentTypeError(f"invalid run {text!r}: expected NAME=FILE")
    return name, path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=parse_run, metavar="NAME=FILE")
    parser.add_argument("--window", type=int, default=100, help="steps per window")
    parser.add_argument(
        "--terms", default="g_l1,g_gan,d_real,d_fake", help="comma-separated loss columns"
    )
    args = parser.parse_args()

    runs = [(name, read_rows(path)) for name, path in args.runs]
    names = [name for name, _ in runs]
    for term in args.terms.split(","):
        means = [window_means(rows, term, args.window) for _, rows in runs]
        firsts = sorted(set().union(*means))
        print(f"\nmean {term} per {args.window}-step window\n")
        print("| steps | " + " | ".join(names) + " |")
        print("|---" * (len(names) + 1) + "|")
        for first in firsts:
            cells = [f"{m[first]:.4g}" if first in m else "" for m in means]
            print(f"| {first}-{first + args.window - 1} | " + " | ".join(cells) + " |")

    print_step_differences(runs, args.terms.split(","))

    print("\nmean seconds per step (the first step included)\n")
    for name, rows in runs:
        seconds = statistics.fmean(float(row["seconds_per_step"]) for row in rows)
        print(f"  {name}: {seconds:.4f} s over {len(rows)} steps")


if __name__ == "__main__":
    main()
