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
    temp.write_text(text or "{}\n")
    temp.rename(directory / "models.yaml")
    return directory


def reconciler(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict[str, str] | None = None,
               ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reconciler", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd,
                          env={**os.environ, "NO_COLOR": "1", **(env or {})})


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
