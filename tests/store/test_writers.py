"""Many writers, one folder: a server and command-line writers at once lose nothing acknowledged
(issue 15, acceptance 1; the benchmark repeats it: bench/updates.py --writers-rounds 20)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ..conftest import MODELS
from ..writers import run_round

pytestmark = pytest.mark.model  # every test here runs a pretrained CNN


def test_a_server_and_cli_writers_at_once_lose_nothing(two_indexes: dict[str, Path],
                                                       tmp_path: Path) -> None:
    base = Path(shutil.copytree(two_indexes[MODELS[1]], tmp_path / "base"))  # colour histogram
    out = run_round(base, tmp_path)
    assert not out.problems, "\n".join(out.problems)
    assert out.posted >= 24 and out.entries == out.posted + 3
