"""Fixtures of the sizing tests: public configs (facts, committed under fixtures/) and the tiny LLaMA the suite builds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def config(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from reconciler.engines import tinymodel

    return tinymodel.build(tmp_path_factory.mktemp("sizing") / "tiny-llama")
