"""The loader end to end on small spec sets: messages, positions, cross-document rules, the built desired state."""

import pytest

from reconciler.desired import (
    IMPLICIT_PRIORITY,
    Engine,
    GpuSpec,
    InventoryNode,
    Placement,
    Pool,
    Preemption,
    Spread,
)
from reconciler.spec import Severity, load_spec_files, load_specs

from .specs import klass, load, messages, model, pool

GI = 1 << 30

ISSUE_EXAMPLE = """\
apiVersion: reconciler/v1
kind: ResourcePool
metadata:
  name: homelab
spec:
  placement: binpack
  reserve: 1Gi
  nodes:
    selector: {pool: homelab}
  inventory:
    - node: node-a
      gpus:
        - {name: RTX 3090, memory: 24Gi}
        - {name: RTX 3090, memory: 24Gi}
    - node: node-b
      gpus:
        - {name: RTX 3060, memory: 12Gi}
  disruption:
    maxMoves: 2
---
apiVersion: reconciler/v1
kind: PriorityClass
metadata:
  name: critical
spec:
  value: 100
  preemption: LowerPriority
  preemptible: false
  default: false
---
apiVersion: reconciler/v1
kind: Model
metadata:
  name: qwen-chat
  labels: {team: assistants}
spec:
  pool: homelab
  priorityClass: critical
  engine: vllm
  source: Qwen/Qwen2.5-7B-Instruct-AWQ
  vram: 7Gi
  replicas: 2
  tensorParallel: 1
  spread: gpu
  route: /qwen
  engineArgs:
    max_model_len: 8192
"""


def test_the_issue_example_builds_the_desired_state():
    result = load({"all.yaml": ISSUE_EXAMPLE})
    assert result.ok and result.diagnostics == ()
    desired = result.desired
    assert desired.pools == (
        Pool(
            name="homelab",
            placement=Placement.BINPACK,
            reserve=GI,
            selector=(("pool", "homelab"),),
            inventory=(
                InventoryNode("node-a", (GpuSpec("RTX 3090", 24 * GI), GpuSpec("RTX 3090", 24 * GI))),
                InventoryNode("node-b", (GpuSpec("RTX 3060", 12 * GI),)),
            ),
            max_moves=2,
        ),
    )
    (critical,) = desired.priority_classes
    assert (critical.value, critical.preemptible, critical.default) == (100, False, False)
    (qwen,) = desired.models
    assert qwen.pool == "homelab" and qwen.priority_class == "critical" and qwen.priority == 100
    assert qwen.preemptible is False and qwen.preemption is Preemption.LOWER_PRIORITY
    assert qwen.engine is Engine.VLLM and qwen.vram == 7 * GI and qwen.replicas == 2
    assert qwen.spread is Spread.GPU and qwen.route == "/qwen" and qwen.labels == (("team", "assistants"),)
    assert qwen.engine_args_json == '{"max_model_len":8192}'


def test_defaults_are_filled_in():
    result = load({"a.yaml": [pool(), model("m", replicas="max")]})
    (m,) = result.desired.models
    assert m.pool == "lab"  # the only pool
    assert m.priority_class == IMPLICIT_PRIORITY.name and m.priority == 0
    assert m.engine is Engine.VLLM and m.tensor_parallel == 1 and m.spread is Spread.NONE
    assert m.route == "/m" and m.replicas is None and m.engine_args_json == "{}"
    (p,) = result.desired.pools
    assert p.placement is Placement.BINPACK and p.reserve == 0 and p.selector is None and p.max_moves == 0


def test_models_without_a_class_get_the_default_class():
    result = load({"a.yaml": [pool(), klass("std", 40, default=True), klass("hi", 90), model("b"), model("a")]})
    assert [(m.name, m.priority_class, m.priority) for m in result.desired.models] == [("a", "std", 40), ("b", "std", 40)]
    assert [c.name for c in result.desired.priority_classes] == ["hi", "std"]


def test_models_are_sorted_by_name_whatever_the_file_order():
    result = load({"z.yaml": [model("zeta")], "a.yaml": [pool(), model("alpha")], "m/x.yml": [model("mid")]})
    assert [m.name for m in result.desired.models] == ["alpha", "mid", "zeta"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"replica": 2}, "`replica` is not a field of a Model spec; did you mean `replicas`?"),
        ({"vram": 24}, "`vram`: `24` has no unit: write 24Gi (GiB) or 24G (GB)"),
        ({"vram": "24"}, "`vram`: `24` has no unit: write 24Gi (GiB) or 24G (GB)"),
        ({"engine": "vlm"}, "`engine`: `vlm` is not one of vllm | echo; did you mean `vllm`?"),
        ({"spread": "gpus"}, "`spread`: `gpus` is not one of none | gpu | node; did you mean `gpu`?"),
        ({"replicas": -1}, "`replicas`: replicas must be 0 or more, not -1"),
        ({"replicas": "2"}, '`replicas`: replicas must be a number, not the text "2": remove the quotes'),
        ({"replicas": "all"}, '`replicas`: replicas must be a whole number, "max" or a range {min, max}, not `all`'),
        ({"tensorParallel": 0}, "`tensorParallel`: must be 1 or more, not 0"),
        ({"tensorParallel": 1.5}, "`tensorParallel`: expected a whole number, not `1.5`"),
        ({"route": "chat"}, "`route`: `chat` is not a valid route"),
        ({"route": "/chat/"}, "`route`: `/chat/` is not a valid route"),
        ({"engineArgs": [1]}, "`engineArgs`: expected a mapping, not a list"),
        ({"source": ""}, "`source`: this must not be empty"),
        ({"vram": None}, "`vram`: no value given: write a quantity like 24Gi or 512Mi"),
        ({"engineArgs": {"x": [1, {"y": float("nan")}]}}, "`engineArgs`: `x.1.y` is not a finite number"),
        ({"pool": 5}, "`pool`: a name must be text, not `5`"),
    ],
)
def test_model_field_messages(spec, message):
    result = load({"a.yaml": [pool(), model("m", **spec)]})
    assert not result.ok and result.desired is None
    (error,) = result.errors
    assert error.message.startswith(message)


def test_missing_fields_point_at_the_mapping_that_needs_them():
    text = "apiVersion: reconciler/v1\nkind: Model\nmetadata:\n  labels: {}\nspec:\n  source: x\n"
    assert messages(load({"m.yaml": text, "p.yaml": [pool()]})) == [
        "m.yaml:3:1: error: metadata needs `name`",
        "m.yaml:5:1: error: a Model spec needs `vram`",
    ]


def test_header_problems():
    docs = """\
kind: Model
metadata: {name: a}
spec: {source: x, vram: 1Gi}
---
apiVersion: reconciler/v1
kind: Modle
---
apiVersion: reconciler/v1
metadata: {name: c}
---
apiVersion: 1
kind: 5
---
- a list
"""
    assert messages(load({"m.yaml": docs, "p.yaml": [pool()]})) == [
        "m.yaml:1:1: error: the document needs `apiVersion: reconciler/v1`",
        "m.yaml:6:7: error: kind `Modle` is unknown; did you mean `Model`?",
        "m.yaml:8:1: error: the document needs `kind`: one of Gateway, Job, Model, PriorityClass, ResourcePool",
        "m.yaml:11:13: error: apiVersion `1` is not supported: write reconciler/v1",
        "m.yaml:12:7: error: kind `5` is unknown; use one of Gateway, Job, Model, PriorityClass, ResourcePool",
        "m.yaml:14:1: error: a document must be a mapping with apiVersion, kind, metadata and spec, not a list",
    ]


def test_names_must_be_dns_labels():
    result = load({"a.yaml": [pool(), model("Chat_Bot")]})
    assert messages(result) == [
        "a.yaml:17:9: error: `name`: `Chat_Bot` is not a valid name: use at most 63 lowercase letters, digits and "
        "'-', starting and ending with a letter or digit; for example `chat-bot`"
    ]


def test_names_are_unique_per_kind():
    result = load({"a.yaml": [pool(), model("m"), klass("m", 1)], "b.yaml": [model("m")]})
    assert messages(result) == [
        "b.yaml:4:9: error: Model `m` is defined twice (first at a.yaml:17:9); rename or remove one"
    ]


def test_references_resolve_with_suggestions():
    result = load({"a.yaml": [pool("homelab"), klass("critical", 100), model("m", pool="homelab2", priorityClass="critcal")]})
    assert [d.message for d in result.errors] == [
        "pool `homelab2` does not exist; did you mean `homelab`? pools defined: homelab",
        "priorityClass `critcal` does not exist; did you mean `critical`? priority classes defined: critical",
    ]


def test_pool_is_required_unless_exactly_one_exists():
    two = load({"a.yaml": [pool("a"), pool("b", nodes={"selector": {"x": "y"}}), model("m")]})
    assert [d.message for d in two.errors] == [
        "`pool` is required when several pools exist: add `pool:` with one of a, b"
    ]
    none = load({"a.yaml": [model("m")]})
    assert [d.message for d in none.errors] == ["no ResourcePool is defined: add one for this model to run in"]


def test_a_broken_pool_file_does_not_make_every_reference_an_error():
    result = load({"a.yaml": "apiVersion: [\n", "b.yaml": [model("m", pool="lab")]})
    assert [d.path for d in result.errors] == ["a.yaml"]


def test_at_most_one_default_class():
    result = load({"a.yaml": [pool(), klass("a", 1, default=True), klass("b", 2, default=True)]})
    assert [d.message for d in result.errors] == [
        "PriorityClass `b` is marked default, but so is `a` (a.yaml:19:12); at most one class may be the default"
    ]


def test_capacity_rules():
    inventory = [
        {"node": "n1", "gpus": [{"name": "A", "memory": "24Gi"}, {"name": "B", "memory": "12Gi"}]},
        {"node": "n2", "gpus": [{"name": "C", "memory": "16Gi"}]},
    ]
    result = load(
        {
            "a.yaml": [
                pool(reserve="1Gi", inventory=inventory),
                model("too-big", vram="24Gi"),
                model("too-wide", vram="1Gi", tensorParallel=3),
                model("tp-no-room", vram="16Gi", tensorParallel=2),
                model("fits", vram="23Gi"),
            ]
        }
    )
    assert [d.message for d in result.errors] == [
        "vram 24 GiB does not fit on any GPU of pool `lab`: the largest has 24 GiB, 23 GiB after the 1 GiB reserve",
        "tensorParallel 3 needs 3 GPUs on one node, but the largest node of pool `lab` has 2",
        "no node of pool `lab` has 2 GPUs with 16 GiB usable each, as tensorParallel and vram ask",
    ]


def test_reserve_must_leave_room_on_every_gpu():
    inventory = [{"node": "n1", "gpus": [{"name": "Big", "memory": "24Gi"}, {"name": "Small", "memory": "2Gi"}]}]
    result = load({"a.yaml": [pool(reserve="2Gi", inventory=inventory)]})
    assert [d.message for d in result.errors] == [
        "the Small of `n1` has 2 GiB, no more than the pool's reserve of 2 GiB: nothing would be left for models; "
        "lower `reserve`"
    ]


def test_inventory_nodes_are_unique_across_pools():
    a = pool("a", nodes={"selector": {"p": "a"}}, inventory=[{"node": "n1", "gpus": [{"name": "G", "memory": "8Gi"}]}])
    b = pool("b", nodes={"selector": {"p": "b"}}, inventory=[{"node": "n1", "gpus": [{"name": "G", "memory": "8Gi"}]}])
    result = load({"a.yaml": [a], "b.yaml": [b]})
    assert messages(result) == [
        "b.yaml:10:11: error: node `n1` is already listed (in pool `a` at a.yaml:10:11); a node is listed once, in one pool"
    ]


def test_pools_select_distinct_nodes():
    result = load({"a.yaml": [pool("a"), pool("b", inventory=[])]})
    assert [d.message for d in result.errors] == [
        "pools `a` and `b` both omit `nodes.selector`; only one pool may take the nodes no other pool selects: "
        "give this one a selector"
    ]
    same = load({"a.yaml": [pool("a", nodes={"selector": {"x": "1"}}), pool("b", nodes={"selector": {"x": "1"}}, inventory=[])]})
    assert [d.message.split(" (")[0] for d in same.errors] == ["pool `a` has the same selector"]


def test_routes_are_unique_including_defaults():
    result = load({"a.yaml": [pool(), model("chat"), model("other", route="/chat")]})
    assert [d.message for d in result.errors] == [
        "route `/chat` is already served by model `chat` (a.yaml:17:9); give this model another `route`"
    ]


def test_warnings_do_not_fail():
    result = load({"a.yaml": [pool(), model("idle", replicas=0), model("spread", replicas=3, spread="gpu")]})
    assert result.ok and result.desired is not None
    assert [(d.severity, d.message) for d in result.diagnostics] == [
        (Severity.WARNING, "replicas is 0: the model is defined but no replica will run"),
        (
            Severity.WARNING,
            "spread: gpu keeps replicas apart, but pool `lab` has 2 GPUs: 1 of the 3 replicas cannot be placed",
        ),
    ]


def test_engine_args_are_canonical_json():
    result = load({"a.yaml": [pool(), model("m", engineArgs={"b": [1, {"z": 1, "a": 2}], "a": "é"})]})
    assert result.desired.models[0].engine_args_json == '{"a":"é","b":[1,{"a":2,"z":1}]}'


def test_every_file_is_reported_together():
    result = load(
        {
            "a.yaml": [pool(), model("a", replica=1)],
            "b.yaml": "a: [\n",
            "c.yaml": b"\xff",
            "d.yaml": [model("d", vram="3")],
        }
    )
    assert [d.path for d in result.errors] == ["a.yaml", "b.yaml", "c.yaml", "d.yaml"]


def test_load_spec_files_ignores_other_files_and_needs_some():
    assert load_spec_files({"notes.md": b"# hi", "observed.json": b"{}"}).errors[0].message.startswith(
        "no spec files found"
    )


def test_load_specs_walks_sorted_and_skips_hidden(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "sub" / "m.yml").write_bytes(b"apiVersion: reconciler/v1\nkind: Model\n")
    (tmp_path / ".git" / "x.yaml").write_bytes(b"[")
    (tmp_path / "README.md").write_bytes(b"[")
    result = load_specs(tmp_path)
    assert result.files == ("sub/m.yml",)
    assert [str(d) for d in result.errors] == [
        "sub/m.yml:1:1: error: a Model document needs `metadata`",
        "sub/m.yml:1:1: error: a Model document needs `spec`",
    ]


def test_load_specs_on_a_missing_directory(tmp_path):
    result = load_specs(tmp_path / "nope")
    assert not result.ok and "does not exist" in result.errors[0].message


def test_oversized_file_is_refused_without_reading_it(tmp_path):
    (tmp_path / "big.yaml").write_bytes(b"#" * (2 << 20))
    result = load_specs(tmp_path)
    assert [str(d) for d in result.errors] == [
        "big.yaml:1:1: error: the file is 2 MiB; spec files are limited to 1 MiB: split it into several files"
    ]
