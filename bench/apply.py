"""Apply of examples/homelab to convergence: reconciler vs a plain declarative PUT of the same Serve config.

Starts a local cluster shaped like the example's inventory (the `reconciler up` supervisor), then in one run:

1. `reconciler apply` (observe, plan, phased apply, wait until every replica runs), timed end to end;
2. removes everything, then PUTs the very Serve config reconciler ended with in one request (what `serve deploy`
   does) and times until every application is RUNNING;
3. removes everything and runs the reconciler apply once more (the first run paid for cold worker start-up).

    python bench/apply.py [--specs examples/homelab] [--json]

Prints the seconds of each and stops the cluster. Timings depend heavily on the machine's load: compare figures
of one run only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def _wait_empty(cluster) -> None:
    details = cluster.serve_details()
    base = {k: details[k] for k in ("proxy_location", "http_options") if details.get(k)}
    cluster.put_serve_config({**base, "applications": []})
    cluster.wait_serve(lambda d: not d.get("applications"), timeout=300)


def _reconciler_apply(cluster, desired) -> tuple[float, int]:
    from reconciler.executor.progress import Progress
    from reconciler.executor.run import Executor
    from reconciler.settings import ApplySettings
    from reconciler.planner import plan

    start = time.monotonic()
    observed = cluster.observe(desired)
    the_plan = plan(desired, observed)
    report = Executor(cluster, settings=ApplySettings(pending_grace=120), progress=Progress(live=False)).apply(the_plan)
    elapsed = time.monotonic() - start
    if not report.ok:
        raise SystemExit(f"reconciler apply failed: {[o.message for o in report.failed]}")
    return elapsed, len(the_plan.actions)


def _plain_put(cluster, config: dict) -> float:
    names = {app["name"] for app in config["applications"]}
    start = time.monotonic()
    cluster.put_serve_config(config)
    details = cluster.wait_serve(
        lambda d: names <= set(d.get("applications") or {})
        and all(d["applications"][n]["status"] == "RUNNING" for n in names),
        timeout=900,
    )
    elapsed = time.monotonic() - start
    if not all(details["applications"][n]["status"] == "RUNNING" for n in names):
        raise SystemExit("the plain PUT did not converge in 900 s")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", type=Path, default=Path(__file__).resolve().parents[1] / "examples" / "homelab")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    from reconciler.adapter import localcluster
    from reconciler.adapter.cluster import Cluster, Endpoint
    from reconciler.spec import load_specs

    result = load_specs(args.specs)
    if not result.ok:
        raise SystemExit("\n".join(map(str, result.diagnostics)))
    desired = result.desired
    with tempfile.TemporaryDirectory(prefix="reconciler-bench-") as tmp:
        state_file = Path(tmp) / "cluster.json"
        t0 = time.monotonic()
        state = localcluster.start(localcluster.spec_from_desired(desired), state_file, timeout=300)
        cluster_start = time.monotonic() - t0
        token = Path(state["auth_token_path"]).read_text().strip()
        cluster = Cluster(
            Endpoint(
                address=state["address"],
                token=token,
                token_path=state["auth_token_path"],
                dashboard_url=state["dashboard_url"],
                http_url=state["http_url"],
                local=True,
            )
        )
        try:
            first, actions = _reconciler_apply(cluster, desired)
            details = cluster.serve_details()
            ours = [a["deployed_app_config"] for a in details["applications"].values()]
            base = {k: details[k] for k in ("proxy_location", "http_options") if details.get(k)}
            config = {**base, "applications": ours}
            _wait_empty(cluster)
            plain = _plain_put(cluster, config)
            _wait_empty(cluster)
            second, _ = _reconciler_apply(cluster, desired)
            t = time.monotonic()
            observed = cluster.observe(desired)
            observe_s = time.monotonic() - t
        finally:
            cluster.close()
            localcluster.stop_pid(state["pid"])
    figures = {
        "specs": str(args.specs),
        "applications": len(config["applications"]),
        "replicas": len(observed.replicas),
        "actions": actions,
        "cluster_start_s": round(cluster_start, 1),
        "reconciler_apply_first_s": round(first, 1),
        "plain_put_s": round(plain, 1),
        "reconciler_apply_second_s": round(second, 1),
        "observe_s": round(observe_s, 3),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key:>28}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
