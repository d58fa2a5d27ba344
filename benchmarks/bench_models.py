"""Training and inference throughput of the Compact Transformers: the same as `cct bench`.

    python benchmarks/bench_models.py --output benchmarks/results/cpu.json
    python benchmarks/bench_models.py --help

See benchmarks/README.md for what is measured and how to read the table.
"""

from __future__ import annotations

import argparse
import sys

from compact_transformers.benchmark import add_bench_arguments, run_bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_models.py", description=__doc__.splitlines()[0])
    add_bench_arguments(parser)
    try:
        return run_bench(parser.parse_args(argv))
    except ValueError as error:  # bad input: one line, like the cct command
        print(f"bench_models.py: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
