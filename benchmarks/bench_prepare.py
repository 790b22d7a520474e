"""Prepare: streaming Arrow writes against building the whole split in memory.

``fusynth.data.prepare`` streams decoded samples into Arrow files split by split
(``Dataset.from_generator``). The alternative, collecting every row and calling
``Dataset.from_list``, is simpler; this measures what streaming buys. Each variant
runs in its own process so peak resident memory is its own.

    .venv/bin/python benchmarks/bench_prepare.py --n 400 --size 512

Prints wall time and peak RSS per variant and their ratios (in-memory / streaming).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(variant: str, source: str, out: str) -> None:
    import datasets

    from fusynth.data.prepare import decode_sample, prepare
    from fusynth.data.readers import FORMATS, ReaderOptions
    from fusynth.data.schema import FEATURES

    datasets.disable_progress_bars()
    start = time.perf_counter()
    if variant == "streaming":
        prepare("metadata", source, out)
    else:
        samples = FORMATS["metadata"](Path(source), ReaderOptions())
        rows = [decode_sample(s, "train") for s in samples]
        datasets.DatasetDict(
            {"train": datasets.Dataset.from_list(rows, features=FEATURES)}
        ).save_to_disk(out)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"variant": variant, "seconds": seconds, "peak_rss_mb": peak_mb}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return 0
    from fusynth.data.phantom_cohort import write_phantom_source

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source"
        write_phantom_source(source, n=args.n, size=args.size, seed=0)
        results = {}
        for variant in ("streaming", "in-memory"):
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    variant,
                    str(source),
                    str(Path(tmp) / variant),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    s, m = results["streaming"], results["in-memory"]
    print(f"{args.n} phantom frames at {args.size} px")
    print(f"{'variant':<10} {'seconds':>8} {'peak RSS MB':>12}")
    for r in (s, m):
        print(f"{r['variant']:<10} {r['seconds']:>8.2f} {r['peak_rss_mb']:>12.0f}")
    print(
        f"in-memory / streaming: time x{m['seconds'] / s['seconds']:.2f}, "
        f"peak memory x{m['peak_rss_mb'] / s['peak_rss_mb']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
