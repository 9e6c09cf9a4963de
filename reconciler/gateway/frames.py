"""The channel's wire format between the gateway and a replica (``gateway/channel.py``, ``engines/channel.py``).

A frame is a header (``FRAME``: payload bytes, request id, kind) and its payload. The gateway sends ``REQUEST``
(``HEAD_LEN`` bytes giving the JSON head's length, the head: method, path, headers; then the body) and ``CANCEL``
(the client left). The replica answers with ``START`` (JSON: status and headers), ``BODY`` (a piece of the body),
``END``, or ``RESET`` (the answer broke before it ended). Pure: no I/O.
"""

from __future__ import annotations

import json
import struct

FRAME = struct.Struct("!IIB")  # payload bytes, request id, kind
HEAD_LEN = struct.Struct("!I")
REQUEST, CANCEL, START, BODY, END, RESET = 1, 2, 3, 4, 5, 6
MAX_FRAME = 64 << 20  # a frame beyond this is not one the other side sends: the connection is closed
IDS = 1 << 32  # request ids wrap around here


def frame(request: int, kind: int, payload: bytes = b"") -> bytes:
    return FRAME.pack(len(payload), request, kind) + payload


def request_frame(request: int, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    head = json.dumps({"method": method, "path": path, "headers": headers}).encode()
    return frame(request, REQUEST, HEAD_LEN.pack(len(head)) + head + body)


def start_payload(status: int, headers: list[list[str]]) -> bytes:
    return json.dumps({"status": status, "headers": headers}).encode()
