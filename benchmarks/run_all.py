"""`make bench`: the scorer's ceiling and floor, then the five-minute time-to-quality run.

python -m benchmarks.run_all [time_to_quality options, e.g. --minutes 5 --out DIR]
"""

from __future__ import annotations

import sys

from benchmarks import score, time_to_quality


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    status = score.main(["--reference"])
    return status or time_to_quality.main(args)


if __name__ == "__main__":
    sys.exit(main())
