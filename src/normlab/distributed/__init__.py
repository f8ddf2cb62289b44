"""Multi-process training support: batch statistics synchronized across processes.

See :mod:`normlab.distributed.sync`. ``normlab.norms`` never imports this package; it only
calls the ``statistics_sync`` hook this package sets on its layers (DESIGN.md dependency
direction: functional <- norms <- distributed).
"""

from normlab.distributed.sync import (
    StatisticsSync,
    all_gather_with_grad,
    average_running_stats,
    to_sync,
)

__all__ = ["StatisticsSync", "all_gather_with_grad", "average_running_stats", "to_sync"]
