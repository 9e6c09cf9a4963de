"""Property tests: random valid specs load to the desired state built directly from the same choices, and random
mutations of valid specs (deleted keys, wrong types, bad quantities, junk bytes) only ever produce diagnostics."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.desired import (
    IMPLICIT_PRIORITY,
    DesiredState,
    Engine,
    GpuSpec,
    InventoryNode,
    Model,
    Placement,
    Pool,
    Preemption,
    PriorityClass,
    Scaling,
    Spread,
    canonical_json,
    desired_to_json,
)
from reconciler.spec import Diagnostic, Severity, load_spec_files

from .specs import dump

MI = 1 << 20
# Drawn from a fixed seed, no example database: CI sees the same examples each run, so a failure is a bug.
PROFILE = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow])

# Text as people write it. Control characters and Unicode line separators are left out: ruamel's emitter writes NEL
# raw inside quoted scalars, where YAML folds it, so such text would not survive the dump this test makes.
texts = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"))
names = st.from_regex(r"\A[a-z][a-z0-9-]{0,10}[a-z0-9]\Z")
label_keys = st.from_regex(r"\A[a-z][a-z0-9./-]{0,12}\Z")
label_values = st.text(texts, max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(texts, max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(label_keys, inner, max_size=3),
    max_leaves=8,
)


def spellings(n_bytes: int) -> st.SearchStrategy[str]:
    """Ways people write the same amount of memory, all of them exactly `n_bytes`."""
    mib = n_bytes // MI
    options = [f"{mib}Mi", f"{mib}MiB", f"{mib}mib", f"{n_bytes}B", f"{mib * 1024}Ki"]
    if mib % 1024 == 0:
        options += [f"{mib // 1024}Gi", f"{mib // 1024}GiB", f"{mib // 1024}gib", f"{mib // 1024} GiB"]
    if mib % 512 == 0:
        options.append(f"{mib / 1024}Gi")
    return st.sampled_from(options)


DURATION_FIELDS = (("scaleUpAfter", "scale_up_after"), ("scaleDownAfter", "scale_down_after"),
                   ("idleAfter", "idle_after"), ("loadTimeout", "load_timeout"))


@st.composite
def scalings(draw: Any) -> tuple[Scaling, dict[str, int], dict[str, Any]]:
    """A replicas range with some scaling fields written: the Scaling it means, the range and the scaling as YAML."""
    low = draw(st.integers(0, 3))
    high = draw(st.integers(max(low, 1), 6))
    written: dict[str, Any] = {}
    values: dict[str, int] = {}
    if draw(st.booleans()):
        values["target_in_flight"] = written["targetInFlight"] = draw(st.integers(1, 64))
    for key, attribute in DURATION_FIELDS:
        if draw(st.booleans()):
            amount = draw(st.integers(1, 90))
            unit, size = draw(st.sampled_from([("s", 1), ("m", 60), ("h", 3600)]))
            written[key] = f"{amount}{unit}"
            values[attribute] = amount * size
    return Scaling(min=low, max=high, **values), {"min": low, "max": high}, written


@st.composite
def spec_sets(draw: st.DrawFn) -> tuple[dict[str, bytes], DesiredState]:
    """A valid spec directory and the desired state it must load to, derived from the same random choices."""
    pool_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    node_names = iter(draw(st.lists(names, min_size=9, max_size=9, unique=True)))
    documents: list[tuple[str, dict[str, Any]]] = []
    pools: list[Pool] = []
    for i, name in enumerate(pool_names):
        reserve = draw(st.sampled_from([0, 512 * MI, 1024 * MI]))
        inventory = []
        written_nodes = []
        for _ in range(draw(st.integers(1, 3))):
            node = next(node_names)
            gpus = [draw(st.sampled_from([8, 12, 16, 24, 80])) * 1024 * MI for _ in range(draw(st.integers(1, 4)))]
            inventory.append(InventoryNode(node=node, gpus=tuple(GpuSpec(name=f"GPU {g // MI}", memory=g) for g in gpus)))
            written_nodes.append(
                {"node": node, "gpus": [{"name": f"GPU {g // MI}", "memory": draw(spellings(g))} for g in gpus]}
            )
        # One pool may go without a selector; the others select their own label.
        selector = None if i == 0 and draw(st.booleans()) else {"pool": name}
        placement = draw(st.sampled_from(["binpack", "spread"]))
        max_moves = draw(st.integers(0, 5))
        spec: dict[str, Any] = {"inventory": written_nodes}
        if selector is not None:
            spec["nodes"] = {"selector": selector}
        if reserve or draw(st.booleans()):
            spec["reserve"] = "0" if reserve == 0 else draw(spellings(reserve))
        if placement != "binpack" or draw(st.booleans()):
            spec["placement"] = placement
        if max_moves or draw(st.booleans()):
            spec["disruption"] = {"maxMoves": max_moves}
        documents.append(
            ("pools.yaml", {"apiVersion": "reconciler/v1", "kind": "ResourcePool", "metadata": {"name": name}, "spec": spec})
        )
        pools.append(
            Pool(
                name=name,
                placement=Placement(placement),
                reserve=reserve,
                selector=None if selector is None else tuple(sorted(selector.items())),
                inventory=tuple(inventory),
                max_moves=max_moves,
            )
        )

    classes: list[PriorityClass] = []
    default_index = draw(st.none() | st.integers(0, 2))
    for i, name in enumerate(draw(st.lists(names, max_size=3, unique=True))):
        klass = PriorityClass(
            name=name,
            value=draw(st.integers(-1000, 1000)),
            preemption=draw(st.sampled_from(list(Preemption))),
            preemptible=draw(st.booleans()),
            default=i == default_index,
        )
        classes.append(klass)
        spec = {"value": klass.value}
        if klass.preemption is not Preemption.LOWER_PRIORITY or draw(st.booleans()):
            spec["preemption"] = str(klass.preemption)
        if not klass.preemptible or draw(st.booleans()):
            spec["preemptible"] = klass.preemptible
        if klass.default or draw(st.booleans()):
            spec["default"] = klass.default
        documents.append(
            ("classes.yml", {"apiVersion": "reconciler/v1", "kind": "PriorityClass", "metadata": {"name": name}, "spec": spec})
        )
    fallback = next((c for c in classes if c.default), IMPLICIT_PRIORITY)

    models: list[Model] = []
    for name in draw(st.lists(names, max_size=5, unique=True)):
        pool = draw(st.sampled_from(pools))
        most = max(len(n.gpus) for n in pool.inventory)
        tp = draw(st.integers(1, most))
        # Small enough for every GPU of the pool, so the capacity rules always pass.
        smallest = min(g.memory for n in pool.inventory for g in n.gpus) - pool.reserve
        vram = draw(st.integers(1, smallest // MI)) * MI
        klass = draw(st.none() | st.sampled_from(classes)) if classes else None
        effective = klass or fallback
        replicas = draw(st.none() | st.integers(0, 6))
        engine = draw(st.sampled_from(list(Engine)))
        spread = draw(st.sampled_from(list(Spread)))
        route = draw(st.none() | st.just(f"/api/{name}"))
        labels = draw(st.dictionaries(label_keys, label_values, max_size=3))
        engine_args = draw(st.dictionaries(label_keys, json_values, max_size=3))
        source = draw(st.text(texts, min_size=1, max_size=20).filter(str.strip))
        spec = {"source": source, "vram": draw(spellings(vram)), "engine": str(engine)}
        if len(pools) > 1 or draw(st.booleans()):
            spec["pool"] = pool.name
        if klass is not None:
            spec["priorityClass"] = klass.name
        if replicas != 1 or draw(st.booleans()):
            spec["replicas"] = "max" if replicas is None else replicas
        scaling = draw(st.none() | scalings())
        if scaling is not None:
            scaling, spec["replicas"], written = scaling
            replicas = scaling.min
            if written or draw(st.booleans()):
                spec["scaling"] = written
        if tp != 1 or draw(st.booleans()):
            spec["tensorParallel"] = tp
        if spread is not Spread.NONE or draw(st.booleans()):
            spec["spread"] = str(spread)
        if route is not None:
            spec["route"] = route
        if engine_args:
            spec["engineArgs"] = engine_args
        metadata: dict[str, Any] = {"name": name}
        if labels:
            metadata["labels"] = labels
        documents.append(
            (f"models/{name}.yaml", {"apiVersion": "reconciler/v1", "kind": "Model", "metadata": metadata, "spec": spec})
        )
        models.append(
            Model(
                name=name,
                pool=pool.name,
                priority_class=effective.name,
                priority=effective.value,
                preemption=effective.preemption,
                preemptible=effective.preemptible,
                engine=engine,
                source=source,
                vram=vram,
                replicas=replicas,
                tensor_parallel=tp,
                spread=spread,
                route=route or f"/{name}",
                labels=tuple(sorted(labels.items())),
                engine_args_json=canonical_json(engine_args),
                scaling=scaling,
            )
        )

    by_file: dict[str, list[dict[str, Any]]] = {}
    for path, document in documents:
        by_file.setdefault(path, []).append(document)
    files = {path: dump(*docs) for path, docs in by_file.items()}
    desired = DesiredState(
        pools=tuple(sorted(pools, key=lambda p: p.name)),
        priority_classes=tuple(sorted(classes, key=lambda c: c.name)),
        models=tuple(sorted(models, key=lambda m: m.name)),
    )
    return files, desired


@PROFILE
@given(spec_sets())
def test_valid_specs_load_to_the_state_built_directly(case):
    files, expected = case
    result = load_spec_files(files)
    assert result.errors == (), [str(d) for d in result.errors]
    assert all(d.severity is Severity.WARNING for d in result.diagnostics)
    assert desired_to_json(result.desired) == desired_to_json(expected)
    assert result.desired == expected


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _set(root: Any, path: tuple, value: Any, delete: bool = False) -> None:
    parent = root
    for part in path[:-1]:
        parent = parent[part]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value


junk = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)
bad_quantities = st.sampled_from(["24", 24, "24g", "-1Gi", "1e9", ".nan", "Gi", "", "24Xi", "9999999999E", "1.5.2Gi"])


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, bytes]:
    files, _ = draw(spec_sets())
    path = draw(st.sampled_from(sorted(files)))
    from ruamel.yaml import YAML

    documents = list(YAML(typ="safe", pure=True).load_all(files[path]))
    for _ in range(draw(st.integers(1, 3))):
        doc = draw(st.sampled_from(documents))
        target = draw(st.sampled_from(_paths(doc)[1:]))
        action = draw(st.sampled_from(["delete", "junk", "quantity"]))
        doc_copy = copy.deepcopy(doc)
        try:
            _set(doc_copy, target, draw(bad_quantities if action == "quantity" else junk), delete=action == "delete")
        except (KeyError, IndexError, TypeError):
            continue
        documents[documents.index(doc)] = doc_copy
    content = dump(*documents)
    if draw(st.booleans()):
        offset = draw(st.integers(0, len(content)))
        content = content[:offset] + draw(st.binary(min_size=1, max_size=8)) + content[offset:]
    if draw(st.booleans()):
        content = content[: draw(st.integers(0, len(content)))]
    return {**files, path: content}


@PROFILE
@given(mutated())
def test_mutations_only_ever_produce_diagnostics(files):
    result = load_spec_files(files)  # must not raise
    assert all(isinstance(d, Diagnostic) and d.message and d.line >= 0 and d.col >= 0 for d in result.diagnostics)
    assert all(str(d).startswith(f"{d.path}:") for d in result.diagnostics)
    assert (result.desired is None) == bool(result.errors)
    assert list(result.diagnostics) == sorted(result.diagnostics, key=lambda d: d.sort_key)
