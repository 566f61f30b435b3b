"""Convert robot episodes into the Parquet format, or validate a dataset (``vla-prepare-data``; the program is ``vla.cli.prepare_data``).

This file is what ``ray job submit --working-dir . -- python pipelines/prepare_data.py ...`` runs.
"""

import sys

from vla.cli.prepare_data import main

if __name__ == "__main__":
    sys.exit(main())
