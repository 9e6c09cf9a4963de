"""Reading spec files: reconciler's reader (positions, duplicate keys, budgets) side by side with PyYAML's libyaml
loader (a plain `yaml.load` with CSafeLoader, no checks at all) on the same bytes. Run: `python bench/specread.py`.

Files: the one that took half a minute (one flow list of 500,000 integers, just under the 1 MiB limit: refused on
the value budget), the largest list within the budget, and 500 Model documents as people write them.
"""

from __future__ import annotations

import time

import yaml

from reconciler.spec.source import MAX_WRITTEN, read_documents


def flow_list(count: int) -> bytes:
    return ("junk: [" + ",".join("1" for _ in range(count)) + "]\n").encode()


def models(count: int) -> bytes:
    return "".join(
        f"---\napiVersion: reconciler/v1\nkind: Model\nmetadata: {{name: m{i}}}\nspec:\n  engine: echo\n"
        f"  source: test/m{i}\n  vram: 2Gi\n  replicas: 1\n"
        for i in range(count)
    ).encode()


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    cases = [
        ("500,000-integer flow list (refused)", flow_list(500_000)),
        (f"{MAX_WRITTEN - 10:,}-integer flow list", flow_list(MAX_WRITTEN - 10)),
        ("500 Model documents", models(500)),
    ]
    print(f"{'file':<38} {'KiB':>6} {'reconciler s':>13} {'libyaml s':>10} {'ratio':>6}  outcome")
    for name, content in cases:
        ours = best_of(lambda: read_documents("f.yaml", content))
        peer = best_of(lambda: list(yaml.load_all(content, Loader=yaml.CSafeLoader)))
        result = read_documents("f.yaml", content)
        outcome = result.diagnostics[0].message[:60] if result.diagnostics else f"{len(result.documents)} document(s)"
        print(f"{name:<38} {len(content) / 1024:>6.0f} {ours:>13.3f} {peer:>10.3f} {ours / peer:>6.2f}  {outcome}")


if __name__ == "__main__":
    main()
