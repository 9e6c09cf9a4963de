"""Every tunable of reconciler, written once: one frozen tree whose defaults the CLI's options read.

`apply` and `watch` build their settings from the same branches, so the same apply behaves the same under both (a
pending replica is reported after ``apply.pending_grace`` seconds whichever command started it). The planner's own
knobs are ``planner.PlanSettings`` (pure core, passed in by the caller); this tree holds the ones of the outer ring.

    settings = dataclasses.replace(DEFAULTS.apply, max_starting=2)   # a copy with one value changed
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Where the gateway (one OpenAI base URL for every model) listens."""

    enabled: bool = True
    host: str | None = None  # None: the host Serve's HTTP proxy binds (loopback on a local cluster)
    port: int | None = None  # None: Serve's HTTP port + port_after_serve
    port_after_serve: int = 1  # so the two endpoints sit side by side
    queue_limit: int = 256  # requests one gateway holds per model while the model has no replica: more get 503
    # Seconds of each model's load history a gateway keeps: the longest window a scaling rule may look back over.
    demand_history: int = 3600

    def listen(self, *, serve_host: str | None, serve_port: int | None) -> tuple[str, int]:
        host = self.host or serve_host or "127.0.0.1"
        if self.port is not None:
            return host, self.port
        return host, (serve_port or 8000) + self.port_after_serve


@dataclass(frozen=True, slots=True)
class ApplySettings:
    """How the executor carries a plan out and waits for it."""

    replica_timeout: float = 600.0  # seconds one replica may take to start (model load included)
    stop_timeout: float = 120.0  # seconds a replica may take to stop
    pending_grace: float = 30.0  # seconds Ray may leave a replica unscheduled before apply reports it pending
    max_starting: int = 4  # replicas starting at once on one node (0: no limit); see executor.steps.batches
    poll: float = 0.25  # a replica that starts in 3 s is seen running within a quarter second
    pending_check: float = 1.0  # seconds between asks for Ray's unschedulable demands (a costlier call)
    drain_timeout: float = 120.0  # seconds a stopping replica's requests in flight through the gateway may take
    gateway: GatewaySettings = field(default_factory=GatewaySettings)  # published to after each phase


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """Options every replica application of reconciler gets."""

    # Serve learns that a replica's process died from a failed health check: every 2 s instead of the default 10 s
    # puts a killed replica back within seconds, for one cheap call per replica per period.
    health_check_period: float = 2.0
    # A stopping replica polls for in-flight requests this often (Serve's default: 2 s): frees its GPU sooner.
    graceful_shutdown_wait_loop: float = 0.5


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """The cluster's apply lock."""

    ttl: float = 15.0  # seconds after which the lock of a dead holder may be taken over; renewed every ttl / 3
    wait_poll: float = 1.0  # a standby (--wait-for-lock) asks this often whether the lock is free


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """Talking to a Ray cluster."""

    # Seconds a command gives an unreachable cluster before it says so: Ray's own driver keeps retrying for minutes.
    connect_timeout: float = 10.0
    http_timeout: float = 30.0  # one call of the dashboard's REST API
    probe_timeout: float = 60.0  # one NVML probe on a node


@dataclass(frozen=True, slots=True)
class DoctorSettings:
    """`reconciler doctor`: how long its probes may take and where its judgements draw the line."""

    probe_timeout: float = 30.0  # one node's probe task (versions, NVML, /dev/shm)
    # Importing vLLM (torch first) in a fresh process: ~6 s on a warm 2-core machine, far more from a cold disk.
    engine_timeout: float = 120.0
    gateway_timeout: float = 5.0  # one GET of a gateway's /healthz
    # Seconds of proven skew between a node and the controller: job runs' times come from the cluster's clock and
    # are judged on the controller's, and the apply lock's expiry is wall-clock time written by one host, read by another.
    clock_warn: float = 1.0
    clock_fail: float = 15.0  # the apply lock's default ttl: a skew this large can hand the lock to two holders
    # vLLM's multiprocess engine and tensor-parallel workers exchange through /dev/shm; Docker's default of 64 MiB
    # fails them at start.
    shm_warn: int = 1 << 30
    shm_fail: int = 128 << 20


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """The watch loop."""

    interval: float = 30.0  # drift timer
    debounce: float = 0.3  # quiet period after the last file change
    max_debounce: float = 3.0  # a file rewritten continuously still gets reconciled this often
    heal: bool = True
    plan_only: bool = False
    retry_base: float = 2.0  # first retry after a temporary failure; doubles up to the interval
    poll: float = 1.0  # cluster probe between drift checks (0: off); only used where a probe is given
    wake_wait: float = 2.0  # longest one wait on the gateways for held requests (bounds how long stopping takes)
    metrics_host: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class RevisionSettings:
    """The record of applies kept in the cluster (`reconciler history`, `rollback`)."""

    keep: int = 50  # revisions kept in the cluster's GCS; the oldest go first
    shown: int = 5  # revisions `status` and the status page list
    page_refresh: int = 5  # seconds between reloads of watch's status page
    git_timeout: float = 10.0  # seconds one `git` call may take to name the commit a spec directory is at


@dataclass(frozen=True, slots=True)
class Settings:
    apply: ApplySettings = field(default_factory=ApplySettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    lease: LeaseSettings = field(default_factory=LeaseSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    revisions: RevisionSettings = field(default_factory=RevisionSettings)
    doctor: DoctorSettings = field(default_factory=DoctorSettings)


DEFAULTS = Settings()
