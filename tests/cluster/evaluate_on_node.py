"""``pipelines/evaluate.py`` on a 2-node Ray cluster whose tasks all run on the worker node.

    python tests/cluster/evaluate_on_node.py NODE_CACHE_DIR [evaluate.py arguments]

Runs in its own process (its own cluster, apart from the test session's): a head with no CPU
(this driver) and one worker node whose processes cache downloads in ``NODE_CACHE_DIR``
(``VLA_CACHE_DIR`` set on that node only), as another machine's disk would. Exits with
``pipelines/evaluate.py``'s status.
"""

from __future__ import annotations

import os
import sys
import tempfile

import ray
from ray.cluster_utils import Cluster


def main(node_cache: str, argv: list[str]) -> int:
    # Its own temp dir: the cluster's address file must not make other processes' ray.init() join it.
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 0, "temp_dir": tempfile.mkdtemp(prefix="vla-evalnode-")})
    try:
        cluster.add_node(num_cpus=2, env_vars={"VLA_CACHE_DIR": node_cache})
        cluster.wait_for_nodes()
        os.environ["RAY_ADDRESS"] = cluster.address
        from vla.cli import evaluate

        return evaluate.main(argv)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
