"""Child of the training check: run every planned training step in this process, print one JSON line.

Isolated in a subprocess so a crashing CUDA kernel, a driver hang or a segfault in a library is a
finding of the parent, not the end of torchdoctor.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    from torchdoctor.env.base import EnvContext
    from torchdoctor.env.training import collect_training

    facts = collect_training(EnvContext())
    sys.stdout.write(json.dumps(facts) + "\n")  # NaN stays NaN: the parent's json.loads accepts it
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
