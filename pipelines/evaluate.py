"""Evaluate a trained policy export: closed loop (against random and constant baselines) and offline (``vla-evaluate``; the program is ``vla.cli.evaluate``).

This file is what ``ray job submit --working-dir . -- python pipelines/evaluate.py ...`` runs.
"""

import sys

from vla.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
