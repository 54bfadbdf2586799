"""Shared fixtures: the tiny offline teacher/student/tokenizer/data set, built once per test session."""

from __future__ import annotations

import pytest

from tests.engine_fixtures import TinySetup, build_tiny_setup


@pytest.fixture(scope="session")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory) -> TinySetup:
    return build_tiny_setup(tmp_path_factory.mktemp("tiny"), n_records=64)
