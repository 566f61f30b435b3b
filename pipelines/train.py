"""Train a VLA policy with Ray Train + FSDP2 (``vla-train``; the program is ``vla.cli.train``).

This file is what ``ray job submit --working-dir . -- python pipelines/train.py ...`` runs.
"""

import sys

from vla.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
