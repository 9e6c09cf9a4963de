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
    # None: loopback. Listening beyond this machine is asked for in words (a Gateway spec's `host`), never inherited
    # from Serve's proxy, so a cluster whose proxy binds 0.0.0.0 does not open the base URL to its network by default.
    host: str | None = None
    port: int | None = None  # None: Serve's HTTP port + port_after_serve
    port_after_serve: int = 1  # so the two endpoints sit side by side
    queue_limit: int = 256  # requests one gateway holds per model while the model has no replica: more get 503
    # Seconds of each model's load history a gateway keeps: the longest window a scaling rule may look back over.
    demand_history: int = 3600
    limits: "GatewayLimits" = field(default_factory=lambda: GatewayLimits())

    def listen(self, *, serve_host: str | None, serve_port: int | None) -> tuple[str, int]:
        host = self.host or "127.0.0.1"
        if self.port is not None:
            return host, self.port
        return host, (serve_port or 8000) + self.port_after_serve


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    """What one gateway gives any client before it is a client worth serving: sizes, times and counts.

    Every wait of the request path is bounded by one of these, so a slow or hostile client, or a hung engine, holds a
    connection or a slot for a known time at most."""

    # A request body larger than this is refused (413) before it is read. 4 MiB holds a 128k-token prompt written
    # as text (~0.5 MB) or as token ids (~1 MB) several times over, and a batch of embeddings inputs; it keeps a few
    # hundred concurrent bodies within a few hundred MiB.
    body_bytes: int = 4 << 20
    # Bodies at least this large are parsed on a worker thread: json.loads of a few MiB takes tens of milliseconds,
    # which would stall every other stream on the event loop.
    parse_in_thread_bytes: int = 256 << 10
    # Bytes of request bodies held at once for models with no replica yet or whose every replica is restarting,
    # across models; more get 503.
    held_bytes: int = 256 << 20
    header_timeout: float = 10.0  # seconds from a connection's first byte (or its previous answer) to a whole header
    body_timeout: float = 60.0  # seconds to receive a request body once its headers arrived
    keepalive_timeout: float = 60.0  # an idle client connection is closed after this long
    # A client whose socket stays full this long (it reads none of its answer, or too little to drain it) is let go:
    # a stream, or a whole answer larger than the socket's buffers, would otherwise hold its connection for as long
    # as it likes.
    write_timeout: float = 60.0
    max_connections: int = 4096  # client connections at once; more are closed at once
    upstream_connect: float = 5.0  # seconds to open a connection to a replica
    answer_timeout: float = 600.0  # a non-streaming answer (generation on a CPU can take minutes)
    stream_gap: float = 300.0  # the longest wait for the first chunk of a stream or between two chunks
    # A model whose every replica is restarting (refused connections, engines that answered "dead") holds a request
    # this long for the replacement instead of failing it at once: a client with a normal timeout sees one slow
    # answer. A replica restarts in seconds (echo) to tens of seconds (the tiny LLaMA on vLLM: 37 s on 2 idle cores,
    # bench/recovery.py; 46 s on 2 cores busy with the test suite, where a 45 s hold failed the held requests a
    # moment before the replacement answered). 120 s leaves that start more than twice its time and stays well
    # inside a client's usual timeout (the openai SDK's is 600 s); past it, 503.
    restart_hold: float = 120.0
    # tokensPerMinute is reserved at admission from `max_tokens` (or this, when a request does not say) plus the
    # prompt's bytes / 4 (an upper-side guess of its tokens), and settled from the answer's usage.
    default_max_tokens: int = 1024


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
    # One call to the GCS (its key-value store, its node table). Ray's own calls wait for a GCS that is gone until
    # its reconnect timer (60 s) ends the whole process: a watch must give up first, drop the driver, and reconnect.
    gcs_timeout: float = 10.0
    # Ray ends a driver whose GCS has not answered for this long; its own default, 60 s from the first failed call,
    # ends a watch before its bounded calls have failed and it has let the driver go (Ray's calls without a timeout
    # of their own still end here).
    gcs_lost_exit: float = 300.0


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
class MemorySettings:
    """What replicas really use: reading it, keeping its peaks in the cluster, right-sizing fixed `vram` from them."""

    # All nodes' readings of one observation together (a task per node that runs replicas): a node that does not
    # answer in time leaves its replicas' figures unknown rather than holding up the observation.
    measure_timeout: float = 10.0
    # Kinds of replica (model source, engine, engine args, GPU model, tensorParallel) whose peaks the cluster keeps;
    # the ones seen least recently go first. One kind is about 120 bytes of the cluster's KV store.
    peaks_limit: int = 512
    # Right-sizing adds this fraction to the measured peak. The peak is the highest of the figures read at each
    # observation (a watch cycle, a status), not the high-water mark between them: vLLM allocates weights and KV
    # cache up front, so most of the figure is flat, but activations, the sampler's buffers and the allocator's
    # fragmentation rise and fall under load between readings. A tenth of the peak covers that; an overrun shows
    # that it was not enough (watch logs it) and the suggestion then says by how much to raise.
    margin: float = 0.10
    step: int = 256 << 20  # suggestions round up to quarter-GiB figures, and change a figure by at least this much
    # A figure is lowered only after its peak has been watched this long: a replica that has not served a busy hour
    # has not shown its peak. Raising one needs no wait: a reading above the figure is proof enough.
    min_span: float = 3600.0


@dataclass(frozen=True, slots=True)
class SizingSettings:
    """How `vram: auto` sizes a replica (``reconciler.sizing``)."""

    # Tokens vLLM runs in one forward pass when engineArgs don't say (max_num_batched_tokens); its activation peak
    # grows with it. vLLM's own default is 2048 or 8192 depending on the GPU: the larger one, so an estimate errs high.
    batched_tokens: int = 8192
    max_num_seqs: int = 256  # vLLM's default: the sampler's logits buffer is this many rows of the vocabulary
    # A measured peak is rounded up to this before it replaces the estimate's overhead terms, so a peak that moves
    # by a few MiB does not resize (and so restart) a replica.
    measured_step: int = 256 << 20
    # Sequences of max_model_len tokens the KV cache holds when a model sets no kvCacheTokens. vLLM refuses to start
    # with room for less than one; one is the smallest cache that always starts, and the tokens of one long sequence
    # serve many short ones at once (a chat of 1k tokens in an 8k cache leaves room for seven more).
    default_sequences: int = 1


@dataclass(frozen=True, slots=True)
class Settings:
    apply: ApplySettings = field(default_factory=ApplySettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    lease: LeaseSettings = field(default_factory=LeaseSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    revisions: RevisionSettings = field(default_factory=RevisionSettings)
    doctor: DoctorSettings = field(default_factory=DoctorSettings)
    memory: MemorySettings = field(default_factory=MemorySettings)
    sizing: SizingSettings = field(default_factory=SizingSettings)


DEFAULTS = Settings()

