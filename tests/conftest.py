"""Shared test helpers: the reference fixtures in ../shared (skipped when absent)."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(os.path.dirname(ROOT), "shared", "fixtures", "original")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def fixture_path(*parts: str) -> str:
    """Path inside ../shared/fixtures/original; skips the test when it is absent."""
    path = os.path.join(FIXTURES, *parts)
    if not os.path.exists(path):
        pytest.skip(f"reference fixture {path} is absent (../shared not laid out)")
    return path


def load_fixture_json(*parts: str):
    with open(fixture_path(*parts)) as f:
        return json.load(f)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end tests (run in CI too)")
