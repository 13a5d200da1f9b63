"""A node's pod-deletion cost: what removing its pod would interrupt.

Kubernetes removes the pods with the lowest `controller.kubernetes.io/pod-deletion-cost` first
when a Deployment shrinks; a node keeps its pod's cost at its work, so idle pods go first and
a pod running agents goes last. The annotation is an int32.
"""

from __future__ import annotations

INT32_MAX = 2**31 - 1


def deletion_cost(running: int, queued: int) -> int:
    """The tasks the node runs plus those queued on its instances, within an int32."""
    return min(max(running, 0) + max(queued, 0), INT32_MAX)
