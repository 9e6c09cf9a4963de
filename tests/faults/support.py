"""What the fault tests share: running the CLI as a user would, and judging what it said."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

POOL = """\
apiVersion: reconciler/v1
kind: ResourcePool
metadata: {{name: homelab}}
spec:
  nodes:
    selector: {{pool: homelab}}
  inventory:
{inventory}
"""

MODEL = """\
---
apiVersion: reconciler/v1
kind: Model
metadata: {{name: {name}}}
spec:
  engine: echo
  source: test/{name}
  vram: {vram}
  replicas: {replicas}
"""


def write_specs(directory: Path, models: dict[str, int], *, vram: str = "2Gi",
                inventory: tuple[tuple[str, tuple[str, ...]], ...] = (
                    ("node-a", ("24Gi", "24Gi")), ("node-b", ("12Gi",)), ("node-c", ("16Gi",)))) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rows = "\n".join(
        f"    - {{node: {node}, gpus: [{', '.join(f'{{name: sim, memory: {m}}}' for m in gpus)}]}}"
        for node, gpus in inventory
    )
    (directory / "pool.yaml").write_text(POOL.format(inventory=rows))
    text = "".join(MODEL.format(name=n, vram=vram, replicas=r) for n, r in models.items())
    temp = directory / ".models.yaml.swp"
    temp.write_text(text)
    temp.rename(directory / "models.yaml")
    return directory


# Where the session's cluster is announced to the processes tests start; a test of a cluster of its own drops them.
SESSION_CLUSTER_ENV = ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")


def reconciler(*args: str, cwd: Path | None = None, timeout: float = 300, own_cluster: bool = False,
               ) -> subprocess.CompletedProcess:
    """`reconciler ARGS` as a process. With ``own_cluster``, it finds the cluster `reconciler up` started in
    ``cwd``, not the session's."""
    env = {k: v for k, v in os.environ.items() if not (own_cluster and k in SESSION_CLUSTER_ENV)}
    return subprocess.run([sys.executable, "-m", "reconciler", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd, env={**env, "NO_COLOR": "1"})


def clean_refusal(result: subprocess.CompletedProcess, *, must_say: str = "") -> str:
    """Exit 1, no traceback, and one `error:` line: one sentence that names what went wrong. Returns it."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    message = errors[0]
    assert must_say in message, message
    return message


def one_sentence(message: str) -> bool:
    """At most one full stop that ends a sentence (a period before a space or the end), none inside numbers or
    paths; a semicolon may join the advice to it."""
    return len(re.findall(r"\.(?=\s|$)", message.removeprefix("error: "))) <= 1
