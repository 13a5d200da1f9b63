"""In a Kubernetes pod, the node keeps its pod's deletion cost at its work.

When a Deployment shrinks (KEDA lowering the replicas: deploy/kubernetes/), Kubernetes removes
the pods with the lowest `controller.kubernetes.io/pod-deletion-cost` first, so a node that
keeps the annotation at `core.deletion_cost` (the tasks it runs plus those queued on its
instances) is removed after the idle ones. The duty runs only in a pod: the API server's
address in `KUBERNETES_SERVICE_HOST`/`_PORT` and a service-account token mounted. It PATCHes
its own pod, named by `server.node` (the manifest sets it from the pod's name), with that
token, checking the server against the account's CA, and only when the cost changed.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from claude_hooks.core.deletion_cost import deletion_cost
from claude_hooks.service.loop import Loop
from claude_hooks.store.faults import fault_reason, is_storage_fault
from claude_hooks.store.nodes import NodeLoad

log = logging.getLogger(__name__)

ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# Seconds between looks at the node's work: a pod that has just started a task is priced
# within this, long before the scaler's stabilization window lets a replica go.
INTERVAL = 2.0
TIMEOUT = 10.0

# What to do about an answer the API server refuses, by status.
_ADVICE = {
    401: "the service account's token was refused",
    403: "the pod's service account may not patch pods: apply the Role and RoleBinding of "
    "deploy/kubernetes/rbac.yaml",
    404: "server.node must be the pod's name (deploy/kubernetes/deployment.yaml sets it "
    "from metadata.name)",
}


@dataclass(frozen=True, slots=True)
class Cluster:
    """Where the API server answers and how this pod's service account proves itself."""

    api_url: str
    token_file: Path
    ca_file: Path
    namespace: str


def in_cluster(environ: Mapping[str, str], account: Path = ACCOUNT) -> Cluster | None:
    """The cluster this process runs in as a pod, or None outside one."""
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    port = environ.get("KUBERNETES_SERVICE_PORT", "")
    token, ca = account / "token", account / "ca.crt"
    if not host or not port or not token.is_file() or not ca.is_file():
        return None
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    namespace = (account / "namespace").read_text().strip()
    return Cluster(f"https://{host}:{port}", token, ca, namespace)


class PodCostError(Exception):
    """The API server refused the annotation."""


class PodCost(Loop):
    """The duty: every `interval` seconds, the node's work as its pod's deletion cost."""

    def __init__(
        self,
        cluster: Cluster,
        pod: str,
        load: Callable[[], Awaitable[NodeLoad]],
        interval: float = INTERVAL,
    ) -> None:
        super().__init__("pod-deletion-cost", interval, first=0)
        self.cluster = cluster
        self.pod = pod
        self.load = load
        self.written: int | None = None  # the cost the pod has, as far as this node knows
        self._complaint: str | None = None
        context = ssl.create_default_context(cafile=str(cluster.ca_file))
        self._client = httpx.AsyncClient(base_url=cluster.api_url, verify=context, timeout=TIMEOUT)

    async def run_once(self) -> None:
        try:
            found = await self.load()
        except Exception as exc:
            if not is_storage_fault(exc):
                raise
            # The database is away: `/readyz` and the storage faults say so; the pod keeps
            # the cost it has until the next look.
            log.debug("pod deletion cost: %s", fault_reason(exc))
            return
        cost = deletion_cost(found.running, found.queued)
        if cost == self.written:
            return
        try:
            await self.annotate(cost)
        except (httpx.HTTPError, PodCostError) as exc:
            complaint = str(exc) or type(exc).__name__
            if complaint != self._complaint:  # said once, not at every pass
                log.warning("cannot set pod %s's deletion cost: %s", self.pod, complaint)
                self._complaint = complaint
            return
        self.written, self._complaint = cost, None

    async def annotate(self, cost: int) -> None:
        """PATCH the pod's annotation (a JSON merge patch: other annotations stay)."""
        # Read at each write: the kubelet rotates a projected token in place.
        token = self.cluster.token_file.read_text().strip()
        body = {"metadata": {"annotations": {ANNOTATION: str(cost)}}}
        answer = await self._client.patch(
            f"/api/v1/namespaces/{self.cluster.namespace}/pods/{self.pod}",
            content=orjson.dumps(body),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/merge-patch+json",
                "Accept": "application/json",
            },
        )
        if answer.status_code >= 400:
            raise PodCostError(
                f"the API server answered {answer.status_code} ({_message(answer)}); "
                + _ADVICE.get(answer.status_code, "see the API server's message")
            )

    async def stop(self) -> None:
        await super().stop()
        await self._client.aclose()


def _message(answer: httpx.Response) -> str:
    """The `message` of the API server's Status object, else the start of its body."""
    try:
        status = orjson.loads(answer.content)
    except orjson.JSONDecodeError:
        status = None
    if isinstance(status, dict) and isinstance(status.get("message"), str):
        return str(status["message"])[:300]
    return answer.text[:300] or "no body"
