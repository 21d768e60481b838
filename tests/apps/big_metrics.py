"""``python big_metrics.py ARGS``: ``python -m fastfork run ARGS`` whose ``/metrics``
answer is larger than a loopback connection's buffers (about 4 MB), so that a
client that does not read it leaves most of it unsent in the primary.

The cluster's own registry gets one more collector, of ``PADDING_SAMPLES``
samples with long labels; nothing else changes.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from fastfork.cli import main
from fastfork.operations import metrics

PADDING_SAMPLES = 6000           # of about 1 KB each: a 6 MB answer


class Padding:
    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        family = GaugeMetricFamily("test_padding", "Bytes that make the answer large.",
                                   labels=["pad"])
        for i in range(PADDING_SAMPLES):
            family.add_metric([f"{i:01000d}"], i)
        yield family


_registry_for = metrics.registry_for


def registry_for(cluster):
    registry = _registry_for(cluster)
    registry.register(Padding())
    return registry


metrics.registry_for = registry_for

if __name__ == "__main__":
    sys.exit(main(["run"] + sys.argv[1:]))
