"""Entry point of the CIFAR-100 benchmark (:mod:`benchmarks.cifar100`): accuracy of every
distillation method under one budget, each model kept Hub-ready, their linear-probe transfer
and publishing. ``python benchmarks/accuracy.py --help`` lists the stages and flags."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cifar100.cli import main

if __name__ == "__main__":
    main()
