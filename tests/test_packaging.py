"""The built wheel carries what the library reads at run time: the model card template."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_the_model_card_template(tmp_path):
    missing = [name for name in ("pip", "setuptools") if importlib.util.find_spec(name) is None]
    if missing:  # the build runs offline, with this environment's build tools
        pytest.skip(f"building a wheel here needs {missing}")
    source = tmp_path / "source"  # a copy, so that the build leaves the checkout untouched
    shutil.copytree(
        REPO_ROOT / "hf_kd", source / "hf_kd", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    command += ["--no-index", "--wheel-dir", str(tmp_path / "wheels"), str(source)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]

    [wheel] = (tmp_path / "wheels").glob("hf_kd-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        template = archive.read("hf_kd/templates/student_card.md").decode()
    assert template == (REPO_ROOT / "hf_kd" / "templates" / "student_card.md").read_text()
    # the repository's model_cards/ shows the same file
    assert (REPO_ROOT / "model_cards" / "student_card.md").read_text() == template
