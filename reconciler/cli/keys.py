"""`reconciler keys new NAME`: a fresh API key for the gateway, printed once, and the spec entry that admits it.

The specs hold only the key's SHA-256, so they can be committed; the key itself is shown here and nowhere else.
"""

from __future__ import annotations

import argparse
import secrets

from reconciler.errors import UserError

KEY_BYTES = 32


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "keys",
        help="make an API key for the gateway",
        description="Make a new random API key for the gateway's base URL. The key is printed once; the YAML entry "
        "printed with it holds only the key's SHA-256 hash and goes under `spec.keys` of your Gateway document.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION")
    new = actions.add_parser("new", help="print a new key and its spec entry",
                             description="Print a new random key and the `spec.keys` entry (with its hash) to commit.")
    new.add_argument("name", metavar="NAME", help="who holds the key (lowercase letters, digits and '-')")
    new.add_argument("--models", default="*", metavar="M1,M2",
                     help='comma-separated models the key may use (default "*": all)')
    new.set_defaults(handler=run_new)
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)


def entry(name: str, digest: str, models: list[str]) -> str:
    listed = ", ".join(f'"{m}"' if m == "*" else m for m in models)
    return f"    - name: {name}\n      sha256: {digest}\n      models: [{listed}]\n"


def run_new(args: argparse.Namespace) -> int:
    from reconciler.gateway.keys import KEY_PREFIX, digest
    from reconciler.spec.fields import _name

    try:
        _name(args.name)
        models = [m.strip() for m in args.models.split(",") if m.strip()] or ["*"]
        for model in models:
            if model != "*":
                _name(model)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
    print(f"API key for {args.name} (shown once; give it to its holder, don't commit it):\n\n  {key}\n")
    print("Add this entry under `spec.keys` of your Gateway document (the hash is safe to commit):\n")
    print(entry(args.name, digest(key), models), end="")
    return 0
