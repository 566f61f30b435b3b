"""Sweep hyperparameters with Ray Tune: every trial is one full distributed training run (``vla-tune``; the program is ``vla.cli.tune``).

This file is what ``ray job submit --working-dir . -- python pipelines/tune.py ...`` runs.
"""

import sys

from vla.cli.tune import main

if __name__ == "__main__":
    sys.exit(main())
