"""Revisions on the session's local Ray cluster, through the command line as people use it: applies recorded with
their git commits, `history`, `history N` with its spec changes, `status`, `rollback N` (and its refusal while
`watch` holds the lock), and watch's status page rendered by a real browser (headless Chromium).

The cluster is shared with other tests that apply too, so revision numbers are taken relative to the newest one
found at the start.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.watch.test_watch_ray import Watcher, running, write_specs

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "examples" / "grafana" / "status-page.png"  # the README's picture: UPDATE_SCREENSHOT=1 writes it again


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"})
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def rows() -> list[dict]:
    return json.loads(cli("history", "--format", "json").stdout)["revisions"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def specs(ray_cluster, tmp_path):
    directory = tmp_path / "specs"
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "ci@example.invalid")
    git(tmp_path, "config", "user.name", "CI")
    yield directory
    write_specs(directory, {})  # leave the shared cluster as found: nothing of ours running
    cli("apply", str(directory), "--yes")


def test_applies_are_recorded_listed_diffed_and_rolled_back(specs):
    before = rows()
    base = before[-1]["revision"] if before else 0
    write_specs(specs, {"alpha": 1})
    one = commit(specs.parent, "One alpha")
    assert f"Recorded as revision {base + 1}" in cli("apply", str(specs), "--yes").stdout
    write_specs(specs, {"alpha": 2})
    two = commit(specs.parent, "Two alphas")
    cli("apply", str(specs), "--yes")
    assert set(running(specs)) == {("alpha", 0), ("alpha", 1)}

    found = rows()[-2:]
    assert [(r["revision"], r["outcome"], r["commit"], r["subject"], r["actions"], r["reason"]) for r in found] == [
        (base + 1, "converged", one, "One alpha", 1, ""),
        (base + 2, "converged", two, "Two alphas", 1, ""),
    ]
    assert found[1]["by"]["command"] == f"reconciler apply {specs}" and found[1]["by"]["pid"] > 0
    assert found[1]["source"].startswith(str(specs))

    shown = cli("history", str(base + 2)).stdout
    assert f"Spec changes from revision {base + 1}:" in shown and "~ Model alpha" in shown
    assert "create" in shown and "alpha[1]" in shown
    status = json.loads(cli("status", str(specs), "--format", "json").stdout)
    assert status["revision"]["revision"] == base + 2 and status["revisions"][0]["revision"] == base + 2
    assert f"revision: {base + 2} (converged" in cli("status", str(specs)).stdout

    # Back to one alpha: the specs of revision base+1, planned against what runs now, recorded as a new revision.
    rolled = cli("rollback", str(base + 1), "--yes")
    assert f"Rolling back to revision {base + 1}" in rolled.stdout
    assert set(running(specs)) == {("alpha", 0)}
    last = rows()[-1]
    assert (last["revision"], last["cause"], last["outcome"], last["actions"], last["commit"]) == (
        base + 3, f"rollback to {base + 1}", "converged", 1, one)


def test_rollback_is_refused_while_watch_holds_the_lock_and_the_page_shows_the_cluster(specs, tmp_path, monkeypatch):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("the status page test needs Chromium: `apt-get install -y chromium` (scripts/setup.sh does it)")
    write_specs(specs, {"alpha": 1, "beta": 1})
    commit(specs.parent, "Alpha and beta")
    port = free_port()
    monkeypatch.chdir(specs.parent)  # the directory as people type it: `reconciler watch specs`
    watcher = Watcher(Path(specs.name), tmp_path / "events.jsonl", "--metrics-port", str(port))
    try:
        watcher.wait_for(lambda e: e["event"] == "applied")
        current = rows()[-1]
        assert current["cause"] == "watch: startup" and current["outcome"] == "converged"
        assert current["by"]["command"].startswith("reconciler watch")

        refused = cli("rollback", str(current["revision"]), "--yes", check=False)
        assert refused.returncode == 1
        assert "rollback refused" in refused.stderr and "Revert the change in git" in refused.stderr
        assert "stop watch" in refused.stderr

        # The page reads the last cycle's observation: wait for one that sees both replicas running.
        page = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            with urllib.request.urlopen(f"{page}/status.json", timeout=10) as response:
                document = json.load(response)
            states = {(r["model"], r["replica"]): r["state"] for r in document["replicas"]}
            if states == {("alpha", 0): "running", ("beta", 0): "running"}:
                break
            assert time.monotonic() < deadline, f"the page never saw both replicas running: {states}"
            time.sleep(1)
        assert document["revision"]["revision"] == current["revision"]
        with urllib.request.urlopen(f"{page}/metrics", timeout=10) as response:
            assert f"reconciler_revision {float(current['revision'])}" in response.read().decode()

        dom, png = _browse(chromium, page + "/", tmp_path)
    finally:
        watcher.stop()

    # What a person sees: every GPU with its bar and replicas, the models, the revisions and the last plan.
    for node, gpus in (("node-a", 2), ("node-b", 1), ("node-c", 1)):
        for gpu in range(gpus):
            assert f'data-gpu="{node}/gpu{gpu}"' in dom
    assert dom.count('class="seg planned"') == 4 and dom.count('class="seg free"') == 4
    for replica in ("alpha[0]", "beta[0]"):
        assert f'data-replica="{replica}"' in dom
    for model in ("alpha", "beta"):
        assert f'data-model="{model}"' in dom
    assert f'data-revision="{current["revision"]}"' in dom and "watch: startup" in dom
    assert "<title>reconciler watch specs</title>" in dom
    assert 'id="last-plan"' in dom and "create" in dom and 'id="jobs"' in dom and 'id="demand"' in dom
    assert "<script" not in dom

    from PIL import Image

    with Image.open(png) as image:
        assert image.size == (1280, 1400)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16) or []
        if os.environ.get("UPDATE_SCREENSHOT"):  # a palette of 64 colours keeps the committed picture small
            SCREENSHOT.parent.mkdir(exist_ok=True)
            image.convert("RGB").quantize(64).save(SCREENSHOT, optimize=True)
    # Not a blank page: many colours, and the planned-VRAM blue of the bars among them.
    assert len(colours) > 50
    assert any(rgb == (0x3F, 0x7F, 0xD9) for _, rgb in colours)


def _browse(chromium: str, url: str, tmp_path: Path) -> tuple[str, Path]:
    """The page's DOM after load, and a screenshot, from headless Chromium with a throwaway profile."""
    png = tmp_path / "page.png"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1280,1400"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "<html" in dom.stdout, dom.stderr[-2000:]
    shot = subprocess.run([*flags, f"--screenshot={png}", url], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert shot.returncode == 0 and png.is_file(), shot.stderr[-2000:]
    return dom.stdout, png
