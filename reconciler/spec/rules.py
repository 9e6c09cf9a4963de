"""Rules that span documents: unique names, references that resolve, models that fit their pool.

They run on every document that passed its own validation, so one run reports every mistake. References to a kind
whose documents could not all be read (a YAML error, a document without a name) are not reported as missing: the
name may well be in the part that could not be read, and that problem is already reported.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from reconciler.settings import DEFAULTS
from reconciler.desired import default_route, is_loopback
from reconciler.quantity import format_bytes
from reconciler.spec.diagnostics import Diagnostic, Position, Severity, error
from reconciler.spec.fields import suggestion
from reconciler.spec.models import ReplicaRange
from reconciler.spec.parsed import Parsed

KINDS = ("Gateway", "Job", "Model", "PriorityClass", "ResourcePool")


@dataclass(frozen=True, slots=True)
class Reference:
    """A name one document uses for another (a model's pool or priority class), as written."""

    kind: str  # the kind referred to
    field_name: str
    name: str
    path: str
    at: Position


@dataclass(frozen=True, slots=True)
class Catalog:
    pools: tuple[Parsed, ...] = ()
    classes: tuple[Parsed, ...] = ()
    models: tuple[Parsed, ...] = ()
    jobs: tuple[Parsed, ...] = ()
    gateways: tuple[Parsed, ...] = ()
    # Names of every document of a kind, including those that failed their own validation.
    names: dict[str, frozenset[str]] = field(default_factory=dict)
    # Kinds for which some document could not be read far enough to know its name.
    incomplete: frozenset[str] = frozenset()
    # Every reference written in a Model, also in Models that failed their own validation.
    references: tuple[Reference, ...] = ()

    def first(self, kind: str, name: str) -> Parsed | None:
        docs = {"Model": self.models, "PriorityClass": self.classes, "ResourcePool": self.pools,
                "Gateway": self.gateways, "Job": self.jobs}[kind]
        return next((d for d in docs if d.name == name), None)

    def pool_named(self, name: str) -> Parsed | None:
        return self.first("ResourcePool", name)


def resolve_pool(model: Parsed, catalog: Catalog) -> Parsed | None:
    """The pool a model or job runs in: the one it names, or the only one there is."""
    if model.spec.pool is not None:
        return catalog.pool_named(model.spec.pool)
    return catalog.pools[0] if len(catalog.pools) == 1 else None


def default_class(catalog: Catalog) -> Parsed | None:
    return next((c for c in catalog.classes if c.spec.default), None)


def _unique_names(catalog: Catalog) -> Iterator[Diagnostic]:
    for docs in (catalog.pools, catalog.classes, catalog.models, catalog.jobs):
        seen: dict[str, Parsed] = {}
        for doc in docs:
            first = seen.setdefault(doc.name, doc)
            if first is not doc:
                yield doc.error(
                    doc.at("metadata", "name"),
                    f"{doc.kind} `{doc.name}` is defined twice (first at {first.where('metadata', 'name')}); "
                    "rename or remove one",
                )


def _missing(kind: str, field_name: str, name: str, catalog: Catalog) -> str:
    defined = sorted(catalog.names.get(kind, frozenset()))
    plural = {"ResourcePool": "pools", "PriorityClass": "priority classes"}[kind]
    close = suggestion(name, defined)
    hint = f" did you mean `{close}`?" if close else ""
    listing = f" {plural} defined: {', '.join(defined)}" if defined else f" no {kind} is defined"
    return f"{field_name} `{name}` does not exist;{hint}{listing}"


def _references(catalog: Catalog) -> Iterator[Diagnostic]:
    for ref in catalog.references:
        if ref.kind not in catalog.incomplete and ref.name not in catalog.names.get(ref.kind, frozenset()):
            yield error(ref.path, ref.at, _missing(ref.kind, ref.field_name, ref.name, catalog))
    if "ResourcePool" in catalog.incomplete:
        return
    pool_names = sorted(catalog.names.get("ResourcePool", frozenset()))
    for model in (*catalog.models, *catalog.jobs):
        if model.spec.pool is not None:
            continue
        if not pool_names:
            what = model.kind.lower()
            yield model.error(model.key("spec"), f"no ResourcePool is defined: add one for this {what} to run in")
        elif len(pool_names) > 1:
            yield model.error(
                model.key("spec"),
                f"`pool` is required when several pools exist: add `pool:` with one of {', '.join(pool_names)}",
            )


def _one_default(catalog: Catalog) -> Iterator[Diagnostic]:
    defaults = [c for c in catalog.classes if c.spec.default]
    for extra in defaults[1:]:
        yield extra.error(
            extra.at("spec", "default"),
            f"PriorityClass `{extra.name}` is marked default, but so is `{defaults[0].name}` "
            f"({defaults[0].where('spec', 'default')}); at most one class may be the default",
        )


def _pools(catalog: Catalog) -> Iterator[Diagnostic]:
    nodes: dict[str, tuple[Parsed, int]] = {}
    unselective: Parsed | None = None
    selectors: dict[tuple[tuple[str, str], ...], Parsed] = {}
    for pool in catalog.pools:
        spec = pool.spec
        for i, inv in enumerate(spec.inventory):
            seen = nodes.setdefault(inv.node, (pool, i))
            if seen != (pool, i):
                other, index = seen
                yield pool.error(
                    pool.at("spec", "inventory", i, "node"),
                    f"node `{inv.node}` is already listed (in pool `{other.name}` at "
                    f"{other.where('spec', 'inventory', index, 'node')}); a node is listed once, in one pool",
                )
            for j, gpu in enumerate(inv.gpus):
                if spec.reserve >= gpu.memory:
                    yield pool.error(
                        pool.at("spec", "inventory", i, "gpus", j, "memory"),
                        f"the {gpu.name} of `{inv.node}` has {format_bytes(gpu.memory)}, no more than the pool's "
                        f"reserve of {format_bytes(spec.reserve)}: nothing would be left for models; lower `reserve`",
                    )
        selector = spec.nodes.selector
        if selector is None:
            if unselective is not None:
                yield pool.error(
                    pool.at("metadata", "name"),
                    f"pools `{unselective.name}` and `{pool.name}` both omit `nodes.selector`; only one pool may "
                    "take the nodes no other pool selects: give this one a selector",
                )
            else:
                unselective = pool
        else:
            key = tuple(sorted(selector.items()))
            first = selectors.setdefault(key, pool)
            if first is not pool:
                yield pool.error(
                    pool.at("spec", "nodes", "selector"),
                    f"pool `{first.name}` has the same selector ({first.where('spec', 'nodes', 'selector')}); "
                    "each pool must select its own nodes",
                )


def _fit(catalog: Catalog) -> Iterator[Diagnostic]:
    for model in catalog.models:
        pool = resolve_pool(model, catalog)
        if pool is None or not pool.spec.inventory:
            continue  # no pool (reported) or nothing known about its GPUs until the cluster is observed
        spec, reserve = model.spec, pool.spec.reserve
        usable = [[g.memory - reserve for g in inv.gpus] for inv in pool.spec.inventory]
        most_gpus = max(len(gpus) for gpus in usable)
        largest = max(max(gpus) for gpus in usable)
        after = f", {format_bytes(largest)} after the {format_bytes(reserve)} reserve" if reserve else ""
        if spec.tensor_parallel > most_gpus:
            yield model.error(
                model.at("spec", "tensorParallel"),
                f"tensorParallel {spec.tensor_parallel} needs {spec.tensor_parallel} GPUs on one node, but the "
                f"largest node of pool `{pool.name}` has {most_gpus}",
            )
        elif isinstance(spec.vram, str):
            pass  # `auto`: sized, and checked against the pool, once the model's files are read (spec.sizes)
        elif spec.vram > largest:
            yield model.error(
                model.at("spec", "vram"),
                f"vram {format_bytes(spec.vram)} does not fit on any GPU of pool `{pool.name}`: the largest has "
                f"{format_bytes(largest + reserve)}{after}",
            )
        elif not any(sum(1 for free in gpus if free >= spec.vram) >= spec.tensor_parallel for gpus in usable):
            yield model.error(
                model.at("spec", "vram"),
                f"no node of pool `{pool.name}` has {spec.tensor_parallel} GPUs with {format_bytes(spec.vram)} "
                "usable each, as tensorParallel and vram ask",
            )
        yield from _spread(model, pool)


def _fixed_replicas(model: Parsed) -> int | None:
    """The replicas a model always wants: its count, the `min` of its range (load decides the rest; what a range's
    `max` asks for is not checked against the pool), None for "max"."""
    replicas = model.spec.replicas
    return replicas.min if isinstance(replicas, ReplicaRange) else replicas


def _spread(model: Parsed, pool: Parsed) -> Iterator[Diagnostic]:
    spec = model.spec
    wanted = _fixed_replicas(model)
    if wanted is None or spec.spread == "none":
        return
    if spec.spread == "gpu":
        room = sum(len(inv.gpus) for inv in pool.spec.inventory) // spec.tensor_parallel
        unit = "GPUs" if spec.tensor_parallel == 1 else f"groups of {spec.tensor_parallel} GPUs"
    else:
        room = len(pool.spec.inventory)
        unit = "nodes"
    if wanted > room:
        at = ("spec", "replicas", "min") if isinstance(spec.replicas, ReplicaRange) else ("spec", "replicas")
        yield model.warning(
            model.at(*at),
            f"spread: {spec.spread} keeps replicas apart, but pool `{pool.name}` has {room} {unit}: "
            f"{wanted - room} of the {wanted} replicas cannot be placed",
        )


def _zero_replicas(catalog: Catalog) -> Iterator[Diagnostic]:
    for model in catalog.models:
        if model.spec.replicas == 0:
            yield model.warning(
                model.at("spec", "replicas"), "replicas is 0: the model is defined but no replica will run"
            )


def _scaling(catalog: Catalog) -> Iterator[Diagnostic]:
    kept = DEFAULTS.apply.gateway.demand_history
    for model in catalog.models:
        scaling = model.spec.scaling
        if scaling is not None and not isinstance(model.spec.replicas, ReplicaRange):
            yield model.error(
                model.key("spec", "scaling"),
                "`scaling` needs a replicas range: write replicas: {min: 0, max: N} to let load decide, "
                "or remove `scaling`",
            )
            continue
        if scaling is None:
            continue
        for key, seconds in (("scaleUpAfter", scaling.scale_up_after), ("scaleDownAfter", scaling.scale_down_after)):
            # The gateways keep this much load history: a longer window is never seen whole, so its rule never acts.
            if seconds > kept:
                yield model.warning(
                    model.at("spec", "scaling", key),
                    f"{key} is {seconds} s, longer than the {kept} s of load history a gateway keeps: this rule "
                    f"would never act; use at most {kept // 60}m",
                )


def route_of(model: Parsed) -> str:
    return model.spec.route if model.spec.route is not None else default_route(model.name)


def _routes(catalog: Catalog) -> Iterator[Diagnostic]:
    seen: dict[str, Parsed] = {}
    for model in catalog.models:
        route = route_of(model)
        first = seen.setdefault(route, model)
        if first is not model and first.name != model.name:
            where = ("spec", "route") if model.spec.route is not None else ("metadata", "name")
            yield model.error(
                model.at(*where),
                f"route `{route}` is already served by model `{first.name}` ({first.where('metadata', 'name')}); "
                "give this model another `route`",
            )


def _jobs_fit(catalog: Catalog) -> Iterator[Diagnostic]:
    for job in catalog.jobs:
        pool = resolve_pool(job, catalog)
        if pool is None or not pool.spec.inventory:
            continue
        spec, reserve = job.spec, pool.spec.reserve
        usable = [[g.memory - reserve for g in inv.gpus] for inv in pool.spec.inventory]
        if not any(sum(1 for free in gpus if free >= spec.vram) >= spec.gpus for gpus in usable):
            most = max(len(gpus) for gpus in usable)
            largest = max(max(gpus) for gpus in usable)
            yield job.error(
                job.at("spec", "gpus" if spec.gpus > most else "vram"),
                f"no node of pool `{pool.name}` has {spec.gpus} GPU{'s' if spec.gpus != 1 else ''} with "
                f"{format_bytes(spec.vram)} usable each (its largest node has {most} GPUs, its largest GPU "
                f"{format_bytes(largest)} usable): lower `vram` or `gpus`, or run the job in another pool",
            )


def _gateway(catalog: Catalog) -> Iterator[Diagnostic]:
    for extra in catalog.gateways[1:]:
        first = catalog.gateways[0]
        yield extra.error(
            extra.at("metadata", "name"),
            f"a second Gateway (`{extra.name}`; the first is `{first.name}` at {first.where('metadata', 'name')}): "
            "the cluster has one gateway; merge their keys into one document",
        )
    if not catalog.gateways:
        return
    gateway = catalog.gateways[0]
    spec = gateway.spec
    if spec.host is not None and not spec.keys and not spec.allow_anonymous and not is_loopback(spec.host):
        yield gateway.error(gateway.at("spec", "host"),
                            f"the gateway would listen on {spec.host}, beyond this machine, and take requests without "
                            "an API key: add `keys` (`reconciler keys new NAME`), listen on 127.0.0.1, or write "
                            "`allowAnonymous: true` if anyone who reaches it may use every model")
    elif spec.host is not None and not spec.keys and not is_loopback(spec.host):
        yield gateway.warning(gateway.at("spec", "allowAnonymous"),
                              f"the gateway listens on {spec.host} without API keys (allowAnonymous): anyone who "
                              "reaches that address may use every model")
    known = sorted(catalog.names.get("Model", frozenset()))
    names: dict[str, int] = {}
    hashes: dict[str, int] = {}
    for i, key in enumerate(gateway.spec.keys):
        first = names.setdefault(key.name, i)
        if first != i:
            yield gateway.error(gateway.at("spec", "keys", i, "name"),
                                f"key name `{key.name}` is used twice (first at "
                                f"{gateway.where('spec', 'keys', first, 'name')}); names must tell keys apart")
        first = hashes.setdefault(key.sha256, i)
        if first != i:
            yield gateway.error(gateway.at("spec", "keys", i, "sha256"),
                                f"key `{key.name}` has the same hash as key `{gateway.spec.keys[first].name}`: "
                                "one key can't have two names; make a new one with `reconciler keys new`")
        if "Model" in catalog.incomplete:
            continue
        for j, model in enumerate(key.models):
            if model != "*" and model not in known:
                close = suggestion(model, known)
                hint = f" did you mean `{close}`?" if close else ""
                yield gateway.error(gateway.at("spec", "keys", i, "models", j),
                                    f"key `{key.name}` names model `{model}`, which does not exist;{hint} "
                                    f"models defined: {', '.join(known) or 'none'}")


RULES = (
    _unique_names, _references, _one_default, _pools, _fit, _jobs_fit, _zero_replicas, _scaling, _routes, _gateway
)


def check(catalog: Catalog, *, capacity: bool = True) -> tuple[Diagnostic, ...]:
    """Every rule's diagnostics. Without `capacity`, a model that its pool's inventory cannot hold is a warning, not
    an error: `reconciler advise` answers exactly that (what to add), so it must read such specs."""
    return tuple(replace(diagnostic, severity=Severity.WARNING) if rule is _fit and not capacity else diagnostic
                 for rule in RULES for diagnostic in rule(catalog))
