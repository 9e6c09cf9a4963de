"""Tokens a request may use and did use: the reservation made at admission and the usage read from the answer. Pure.

A key's tokensPerMinute is enforced by reserving before the request goes upstream (so N concurrent requests cannot
all pass on one positive balance) and settling from the answer's ``usage`` afterwards. Streams always ask the engine
for usage (``stream_options.include_usage``); when the client did not ask, the usage-only event is taken out of the
stream, so the client sees what it asked for. Events are read on their boundaries (a blank line), never on the TCP
chunks they happen to arrive in.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_EVENT_END = re.compile(rb"\r?\n\r?\n")
PROMPT_BYTES_PER_TOKEN = 4  # an upper-side guess for text (BPE tokens average ~4 characters of English)


def reservation(body: Mapping[str, Any], body_bytes: int, *, default_max_tokens: int) -> int:
    """Tokens to reserve for a request before its answer says what it used: the prompt's guess plus what it may
    generate (``max_tokens`` / ``max_completion_tokens``, else ``default_max_tokens``; embeddings generate none)."""
    prompt = max(1, body_bytes // PROMPT_BYTES_PER_TOKEN)
    if "input" in body and "messages" not in body and "prompt" not in body:  # embeddings
        return prompt
    asked = body.get("max_completion_tokens", body.get("max_tokens"))
    completion = asked if isinstance(asked, int) and not isinstance(asked, bool) and asked >= 0 else default_max_tokens
    n = body.get("n", 1)
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        completion *= n
    return prompt + completion


def ask_for_usage(body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The body to send upstream and whether the usage event must be stripped from the stream the client gets."""
    if not body.get("stream"):
        return body, False
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return body, False
    options = options if isinstance(options, dict) else {}
    return {**body, "stream_options": {**options, "include_usage": True}}, True


def counts(payload: bytes) -> tuple[int, int]:
    """(prompt, completion) tokens of the ``usage`` objects in a JSON answer or in SSE events; zeros if none.

    Searched, not parsed: an embeddings answer is mostly floats, and decoding it whole for two counters cost more
    than the rest of the gateway's work on the request."""
    prompt = completion = 0
    at = payload.find(b'"usage"')
    while at != -1:
        end = payload.find(b"}", at)
        window = payload[at:end if end != -1 else len(payload)]
        if found := _PROMPT_TOKENS.search(window):
            prompt += int(found.group(1))
        if found := _COMPLETION_TOKENS.search(window):
            completion += int(found.group(1))
        at = payload.find(b'"usage"', at + 7)
    return prompt, completion


def _usage_only(event: bytes) -> bool:
    """An event that carries usage and no choices: the one ``include_usage`` adds at the end of a stream."""
    data = event.strip()
    if not data.startswith(b"data:"):
        return False
    try:
        parsed = json.loads(data[5:])
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("usage") is not None and not parsed.get("choices")


class StreamTap:
    """Reads usage off a stream of server-sent events as it passes, event by event, and strips the usage-only event
    when the client did not ask for it. ``feed`` returns the bytes to send on: whole events only."""

    __slots__ = ("_tail", "strip", "prompt", "completion")

    def __init__(self, *, strip: bool) -> None:
        self._tail = b""
        self.strip = strip
        self.prompt = 0
        self.completion = 0

    def feed(self, chunk: bytes) -> bytes:
        if not self._tail and chunk.endswith(b"\n\n") and b'"usage"' not in chunk:
            return chunk  # whole events without usage: what nearly every chunk of a stream is
        data = self._tail + chunk if self._tail else chunk
        last = None
        for last in _EVENT_END.finditer(data):
            pass
        if last is None:
            self._tail = data
            return b""
        ready, self._tail = data[:last.end()], data[last.end():]
        if b'"usage"' not in ready:
            return ready
        kept = []
        start = 0
        for end in _EVENT_END.finditer(ready):
            event = ready[start:end.end()]
            start = end.end()
            if b'"usage"' in event:
                prompt, completion = counts(event)
                self.prompt, self.completion = self.prompt + prompt, self.completion + completion
                if self.strip and _usage_only(event):
                    continue
            kept.append(event)
        return b"".join(kept)

    def rest(self) -> bytes:
        """What is left after the stream ended (an event the engine never finished)."""
        tail, self._tail = self._tail, b""
        return tail
