"""Per-key limits: requests per minute, requests at once, tokens per minute. Pure: the caller passes the time.

Requests and tokens per minute are token buckets that hold a minute's allowance and refill continuously, so a key
may burst up to its limit and then goes at the limit's pace. Tokens are reserved before a request goes upstream (its
prompt's guess plus what it may generate, ``usage.reservation``) and settled from the answer's usage: a request is
admitted only while the bucket is above zero, so however requests interleave, the tokens admitted never exceed the
allowance plus one reservation. Limits are per gateway: with a gateway on each of N nodes, a key could get up to N
times its limit.

Limits are read from the key on every call, so a changed limit takes effect on the next request; the state (what
was spent) is kept by key name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from reconciler.desired import ApiKey
from reconciler.gateway.errors import GatewayError


@dataclass
class _Bucket:
    level: float
    at: float

    def refill(self, *, capacity: int, now: float) -> None:
        self.level = min(float(capacity), self.level + (now - self.at) * capacity / 60.0)
        self.at = now

    def wait(self, *, capacity: int, need: float) -> int:
        """Whole seconds until the bucket holds `need`."""
        return max(1, math.ceil((need - self.level) * 60.0 / capacity))


def _too_many(key: ApiKey, what: str, retry_after: int) -> GatewayError:
    return GatewayError(429, f"the key `{key.name}` is over its limit of {what}; retry in {retry_after}s",
                        type="rate_limit_error", code="rate_limit_exceeded", retry_after=retry_after)


class Limiter:
    def __init__(self) -> None:
        self.active: dict[str, int] = {}
        self._requests: dict[str, _Bucket] = {}
        self._tokens: dict[str, _Bucket] = {}

    def admit(self, key: ApiKey, now: float) -> GatewayError | None:
        """Take one request of `key` in, or say why not (429 with Retry-After). Admitted requests must `release`."""
        if key.concurrent_requests is not None and self.active.get(key.name, 0) >= key.concurrent_requests:
            return _too_many(key, f"{key.concurrent_requests} concurrent requests", 1)
        requests = None
        if key.requests_per_minute is not None:
            rpm = key.requests_per_minute
            requests = self._requests.setdefault(key.name, _Bucket(float(rpm), now))
            requests.refill(capacity=rpm, now=now)
            if requests.level < 1:
                return _too_many(key, f"{rpm} requests per minute", requests.wait(capacity=rpm, need=1))
        if key.tokens_per_minute is not None:
            tpm = key.tokens_per_minute
            tokens = self._tokens.setdefault(key.name, _Bucket(float(tpm), now))
            tokens.refill(capacity=tpm, now=now)
            if tokens.level <= 0:
                return _too_many(key, f"{tpm} tokens per minute", tokens.wait(capacity=tpm, need=1))
        if requests is not None:
            requests.level -= 1
        self.active[key.name] = self.active.get(key.name, 0) + 1
        return None

    def release(self, key: ApiKey) -> None:
        self.active[key.name] = max(0, self.active.get(key.name, 0) - 1)

    def reserve(self, key: ApiKey, tokens: int, now: float) -> GatewayError | None:
        """Set ``tokens`` aside for one admitted request of ``key`` (429 when its bucket is spent); ``settle`` later."""
        if key.tokens_per_minute is None:
            return None
        tpm = key.tokens_per_minute
        bucket = self._tokens.setdefault(key.name, _Bucket(float(tpm), now))
        bucket.refill(capacity=tpm, now=now)
        if bucket.level <= 0:
            return _too_many(key, f"{tpm} tokens per minute", bucket.wait(capacity=tpm, need=1))
        bucket.level -= tokens
        return None

    def settle(self, key: ApiKey, *, reserved: int, used: int, now: float) -> None:
        """Replace a request's reservation with what its answer used (the reservation stands when usage is unknown)."""
        if key.tokens_per_minute is None:
            return
        bucket = self._tokens.setdefault(key.name, _Bucket(float(key.tokens_per_minute), now))
        bucket.refill(capacity=key.tokens_per_minute, now=now)
        bucket.level = min(float(key.tokens_per_minute), bucket.level + reserved - used)

    def charge(self, key: ApiKey, tokens: int, now: float) -> None:
        """Count the tokens an answer used against the key's tokens per minute."""
        if key.tokens_per_minute is None or tokens <= 0:
            return
        bucket = self._tokens.setdefault(key.name, _Bucket(float(key.tokens_per_minute), now))
        bucket.refill(capacity=key.tokens_per_minute, now=now)
        bucket.level -= tokens
