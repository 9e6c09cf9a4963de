"""Watch reads the spec directory every cycle and parses it again only when its bytes changed."""

from pathlib import Path

from reconciler.watch.specload import SpecLoader

POOL = """\
apiVersion: reconciler/v1
kind: ResourcePool
metadata: {name: p}
spec:
  inventory:
    - {node: n, gpus: [{name: sim, memory: 24Gi}]}
"""

MODEL = """\
apiVersion: reconciler/v1
kind: Model
metadata: {name: m}
spec: {engine: echo, source: s, vram: 2Gi, replicas: %s, pool: p}
"""


def test_unchanged_bytes_give_the_same_result_and_any_change_is_read(tmp_path: Path):
    (tmp_path / "pool.yaml").write_text(POOL)
    (tmp_path / "model.yaml").write_text(MODEL % 1)
    load = SpecLoader(tmp_path)
    first = load()
    assert first.ok and first.desired.model("m").replicas == 1
    assert load() is first  # nothing changed: not parsed again

    # Same size, same second: only the bytes differ, and that is enough.
    (tmp_path / "model.yaml").write_text(MODEL % 2)
    second = load()
    assert second is not first and second.desired.model("m").replicas == 2

    (tmp_path / "extra.yaml").write_text("kind: [\n")
    broken = load()
    assert not broken.ok and any(d.path == "extra.yaml" for d in broken.diagnostics)
    (tmp_path / "extra.yaml").unlink()
    assert load().desired == second.desired


def test_a_missing_directory_is_reported_not_cached(tmp_path: Path):
    load = SpecLoader(tmp_path / "gone")
    assert not load().ok
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / "pool.yaml").write_text(POOL)
    assert load().ok
