"""The v1 spec format as pydantic models: one document model per kind, field names in camelCase as users write them.

These models check the shape of one document; rules that span documents (references, uniqueness, capacity) live in
``reconciler.spec.rules``. The JSON Schemas in ``schemas/`` are generated from these classes.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator
from pydantic.alias_generators import to_camel

from reconciler.desired import Engine
from reconciler.spec.durations import Duration, format_duration
from reconciler.spec.fields import (
    Boolean,
    JsonMapping,
    ModelSelector,
    Name,
    NonEmptyText,
    Quantity,
    Replicas,
    Route,
    Sha256,
    StringMap,
    Vram,
    choice,
    integer,
)
from reconciler.spec.jobfields import EnvMap, Schedule, WorkingDir
from reconciler.spec.scalingfields import COUNT, RANGE, RangeMax, replicas_kind, scaling_default

API_VERSION = "reconciler/v1"

PlacementName = choice("binpack", "spread", description="binpack: fewest GPUs in use; spread: balance VRAM use.")
PreemptionName = choice(
    "LowerPriority", "Never", description="LowerPriority: may evict lower-priority replicas; Never: never evicts."
)
EngineName = choice(*map(str, Engine), description="vllm, or echo: a tiny OpenAI-compatible test server.")
SpreadName = choice("none", "gpu", "node", description="gpu | node: replicas of this model never share one.")
AnyInteger = integer()
NonNegativeInteger = integer(minimum=0)
PositiveInteger = integer(minimum=1)


class _Spec(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,
        # Editors show the title: the name as written in YAML, not pydantic's "Apiversion".
        field_title_generator=lambda name, info: info.alias or name,
    )
    # How messages name a value of this class ("`replica` is not a field of a Model spec").
    label: ClassVar[str] = "this mapping"


class Metadata(_Spec):
    label: ClassVar[str] = "metadata"
    name: Name = Field(description="Unique per kind: lowercase letters, digits and '-', at most 63 characters.")
    labels: StringMap = Field(default_factory=dict, description="Free-form text labels.")
    annotations: StringMap = Field(default_factory=dict, description="Free-form notes for people and tools.")


class Gpu(_Spec):
    label: ClassVar[str] = "a GPU"
    name: NonEmptyText = Field(description="The GPU model as people call it, e.g. RTX 3090.")
    memory: Quantity = Field(description="Total memory of the GPU.")


class InventoryNode(_Spec):
    label: ClassVar[str] = "an inventory node"
    node: Name = Field(description="The node's name (Ray label reconciler.io/node); unique across all pools.")
    gpus: list[Gpu] = Field(min_length=1, description="The node's GPUs, in device-index order.")


class NodeSelection(_Spec):
    label: ClassVar[str] = "`nodes`"
    selector: StringMap | None = Field(
        default=None,
        description="Ray node labels a node must carry to belong to the pool; omitted: every GPU node no other "
        "pool selects.",
    )


class Disruption(_Spec):
    label: ClassVar[str] = "`disruption`"
    max_moves: NonNegativeInteger = Field(
        default=0, description="Running replicas one apply may move to make room (0: never move)."
    )


class ResourcePoolSpec(_Spec):
    label: ClassVar[str] = "a ResourcePool spec"
    placement: PlacementName = "binpack"
    reserve: Quantity = Field(default=0, description="VRAM kept free on every GPU of the pool.")
    nodes: NodeSelection = Field(default_factory=NodeSelection)
    inventory: list[InventoryNode] = Field(
        default_factory=list,
        description="The GPUs assumed when they cannot be observed: simulation, offline plans, CI.",
    )
    disruption: Disruption = Field(default_factory=Disruption)


class PriorityClassSpec(_Spec):
    label: ClassVar[str] = "a PriorityClass spec"
    value: AnyInteger = Field(description="Higher wins.")
    preemption: PreemptionName = "LowerPriority"
    preemptible: Boolean = Field(default=True, description="false: replicas of this class are never evicted.")
    default: Boolean = Field(default=False, description="The class of models that name none; at most one.")


class ReplicaRange(_Spec):
    label: ClassVar[str] = "a replicas range"
    min: NonNegativeInteger = Field(description="The fewest replicas kept; 0 unloads the model while it is idle.")
    max: RangeMax = Field(description="The most replicas load may ask for.")

    @model_validator(mode="after")
    def _ordered(self) -> ReplicaRange:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}: make max at least {self.min}")
        return self


ReplicasOrRange = Annotated[
    Annotated[Replicas, Tag(COUNT)] | Annotated[ReplicaRange, Tag(RANGE)], Discriminator(replicas_kind)
]


def _seconds(name: str, description: str) -> Any:
    """A duration field of `scaling` whose default is the one ``desired.Scaling`` holds, shown as users write it."""
    return Field(default=format_duration(scaling_default(name)), validate_default=True, description=description)


class ScalingSpec(_Spec):
    label: ClassVar[str] = "`scaling`"
    target_in_flight: PositiveInteger = Field(
        default=scaling_default("target_in_flight"),
        description="Requests in flight per replica above which another replica is wanted.",
    )
    scale_up_after: Duration = _seconds("scale_up_after", "Sustained load before a replica is added.")
    scale_down_after: Duration = _seconds(
        "scale_down_after", "Sustained low load before a replica is removed (never below min)."
    )
    idle_after: Duration = _seconds("idle_after", "No request at all for this long: scale to min (0 unloads the model).")
    load_timeout: Duration = _seconds("load_timeout", "The longest a request waits for a replica to start.")


class ModelSpec(_Spec):
    label: ClassVar[str] = "a Model spec"
    pool: Name | None = Field(default=None, description="The ResourcePool; required unless exactly one exists.")
    priority_class: Name | None = Field(default=None, description="The PriorityClass; default: the default class.")
    engine: EngineName = "vllm"
    source: NonEmptyText = Field(description="Model id or local path, handed to the engine.")
    vram: Vram = Field(
        description="Per replica and per GPU: weights + KV cache + overhead; auto: sized from the model's files."
    )
    kv_cache_tokens: PositiveInteger | None = Field(
        default=None,
        description="Tokens the KV cache holds across all sequences, for `vram: auto`; default: one max_model_len "
        "sequence, the least vLLM starts with.",
    )
    replicas: ReplicasOrRange = Field(
        default=1,
        description='A whole number >= 0; "max": as many as fit; or a range {min, max}: load decides within it.',
    )
    tensor_parallel: PositiveInteger = Field(
        default=1, description="GPUs per replica, all on one node."
    )
    spread: SpreadName = "none"
    route: Route | None = Field(default=None, description="HTTP route prefix; default /<name>.")
    engine_args: JsonMapping = Field(default_factory=dict, description="Passed through to the engine.")
    scaling: ScalingSpec | None = Field(
        default=None,
        description="How load moves the count within a replicas range; a field left out takes its default.",
    )


class JobSpec(_Spec):
    label: ClassVar[str] = "a Job spec"
    pool: Name | None = Field(default=None, description="The ResourcePool; required unless exactly one exists.")
    priority_class: Name | None = Field(default=None, description="The PriorityClass; default: the default class.")
    vram: Quantity = Field(description="Per GPU, as for models.")
    gpus: PositiveInteger = Field(default=1, description="GPUs of one node the job runs on.")
    entrypoint: NonEmptyText = Field(description="The shell command that runs the job.")
    working_dir: WorkingDir | None = Field(
        default=None, description="A folder relative to the spec directory, shipped with the job."
    )
    env: EnvMap = Field(default_factory=dict, description="Environment variables of the job.")
    retries: NonNegativeInteger = Field(
        default=0, description="Failed runs retried with exponential backoff; preemptions don't count."
    )
    active_deadline: Duration | None = Field(default=None, description="A run is killed and failed past this.")
    schedule: Schedule | None = Field(
        default=None, description="Cron (UTC): a new run each time; without it, one run per spec revision."
    )


class KeyLimits(_Spec):
    label: ClassVar[str] = "`limits`"
    requests_per_minute: PositiveInteger | None = Field(
        default=None, description="Requests this key may start per minute, per gateway; omitted: no limit."
    )
    concurrent_requests: PositiveInteger | None = Field(
        default=None, description="Requests of this key in progress at once, per gateway; omitted: no limit."
    )
    tokens_per_minute: PositiveInteger | None = Field(
        default=None,
        description="Prompt plus completion tokens per minute, per gateway, counted from the answers' usage; "
        "omitted: no limit.",
    )


class ApiKey(_Spec):
    label: ClassVar[str] = "an API key"
    name: Name = Field(description="Who holds the key; the only part of it that logs and metrics show.")
    sha256: Sha256 = Field(description="SHA-256 of the key, hex (`reconciler keys new NAME` prints it).")
    models: list[ModelSelector] = Field(
        default_factory=lambda: ["*"], min_length=1, description='Models the key may use, or "*" for all.'
    )
    limits: KeyLimits = Field(default_factory=KeyLimits)


class GatewaySpec(_Spec):
    label: ClassVar[str] = "a Gateway spec"
    host: NonEmptyText | None = Field(
        default=None,
        description="Address the gateway listens on; default 127.0.0.1 (this machine only). An address beyond "
        "loopback needs `keys`, or `allowAnonymous: true`.",
    )
    port: PositiveInteger | None = Field(default=None, description="Port; default: Serve's HTTP port + 1.")
    keys: list[ApiKey] = Field(
        default_factory=list, description="API keys; with at least one, every request needs one of them."
    )
    allow_anonymous: Boolean = Field(
        default=False,
        description="true: serve without keys on an address beyond loopback (anyone who reaches it may use every "
        "model). Without it, such a Gateway is refused.",
    )


class _Document(_Spec):
    api_version: Literal["reconciler/v1"] = Field(description=f"Always {API_VERSION}.")
    metadata: Metadata


class ModelDocument(_Document):
    """A reconciler/v1 Model: one model served with a number of replicas."""

    label: ClassVar[str] = "a Model document"
    kind: Literal["Model"]
    spec: ModelSpec


class PriorityClassDocument(_Document):
    """A reconciler/v1 PriorityClass: who may evict whom."""

    label: ClassVar[str] = "a PriorityClass document"
    kind: Literal["PriorityClass"]
    spec: PriorityClassSpec


class ResourcePoolDocument(_Document):
    """A reconciler/v1 ResourcePool: a set of GPU nodes and how to pack them."""

    label: ClassVar[str] = "a ResourcePool document"
    kind: Literal["ResourcePool"]
    spec: ResourcePoolSpec


class JobDocument(_Document):
    """A reconciler/v1 Job: batch work on GPUs, placed with the models by priority."""

    label: ClassVar[str] = "a Job document"
    kind: Literal["Job"]
    spec: JobSpec


class GatewayDocument(_Document):
    """A reconciler/v1 Gateway: the one OpenAI base URL for every model, and the API keys it accepts."""

    label: ClassVar[str] = "a Gateway document"
    kind: Literal["Gateway"]
    spec: GatewaySpec


DOCUMENTS: dict[str, type[_Spec]] = {
    "Job": JobDocument,
    "Gateway": GatewayDocument,
    "Model": ModelDocument,
    "PriorityClass": PriorityClassDocument,
    "ResourcePool": ResourcePoolDocument,
}

AnyDocument = Annotated[
    GatewayDocument | JobDocument | ModelDocument | PriorityClassDocument | ResourcePoolDocument,
    Field(discriminator="kind"),
]
