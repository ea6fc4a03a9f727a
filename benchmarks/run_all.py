"""Run every benchmark: ``python -m benchmarks.run_all [--quick]`` (from the repository root)."""

from __future__ import annotations

import argparse
import importlib
import time

from benchmarks.common import print_table, save

MODULES = ["bench_dedup", "bench_langid", "bench_balance", "bench_tokenizer", "bench_encode_pack"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="a 20k-document subset where the benchmark allows")
    p.add_argument("--only", nargs="*", help="run only these modules")
    args = p.parse_args()
    for name in args.only or MODULES:
        t0 = time.perf_counter()
        rows = importlib.import_module(f"benchmarks.{name}").run(args.quick)
        print_table(f"{name} ({time.perf_counter() - t0:.0f} s)", rows)
        save(name.removeprefix("bench_"), rows)


if __name__ == "__main__":
    main()
