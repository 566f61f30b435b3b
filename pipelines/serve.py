"""Serve a trained policy to robots: a Ray Serve application speaking openpi's websocket protocol (``vla-serve``; the program is ``vla.cli.serve``).

This file is what ``ray job submit --working-dir . -- python pipelines/serve.py ...`` runs.
"""

import sys

from vla.cli.serve import main

if __name__ == "__main__":
    sys.exit(main())
