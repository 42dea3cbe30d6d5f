"""Three local nats-servers clustered over loopback routes, JetStream on each (streams with 3 replicas)."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gallery_common.nats_server import EmbeddedNats
from gallery_common.netutil import free_port

CLUSTER = "chaos"


class NatsCluster:
    """Nodes `n0`…`n<size-1>`; `url` lists them all, as a client configured for the cluster would."""

    def __init__(self, root: Path, size: int = 3) -> None:
        routes = [free_port() for _ in range(size)]
        self.nodes: dict[str, EmbeddedNats] = {}
        for i, port in enumerate(routes):
            others = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes if p != port)
            config = (
                f"server_name: n{i}\n"
                f'cluster {{\n  name: {CLUSTER}\n  listen: "127.0.0.1:{port}"\n  routes: [{others}]\n}}\n'
            )
            self.nodes[f"n{i}"] = EmbeddedNats(root / f"n{i}", log_file=root / f"n{i}.log", extra_config=config)

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes.values())

    def start(self) -> NatsCluster:
        # a node waits for its peers before its JetStream is healthy: start them together
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.start(timeout=60), self.nodes.values()))
        return self

    def kill(self, name: str) -> None:
        """SIGKILL one node, as a crashed machine."""
        process = self.nodes[name].process
        assert process is not None
        process.send_signal(signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
