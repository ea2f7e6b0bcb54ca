"""The built wheel carries what the library reads at run time: the model card template and
the ``evaluate`` metric modules, which load from an installed wheel offline."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
EVALUATE_MODULE = "hf_kd/evaluate_modules/top_k_accuracy/top_k_accuracy.py"
# Run from the installed wheel: where the module loads from and what it computes.
INSTALLED_CHECK = """
import hf_kd.metrics as metrics
metric = metrics.load_accuracy_metric(2)
print(metrics.TOP_K_ACCURACY_MODULE)
print(metric.compute(predictions=[[0.1, 0.5, 0.4], [0.7, 0.2, 0.1]], references=[2, 2]))
"""


@pytest.mark.slow
def test_wheel_ships_the_card_template_and_the_evaluate_modules(tmp_path):
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
        evaluate_module = archive.read(EVALUATE_MODULE).decode()
    assert template == (REPO_ROOT / "hf_kd" / "templates" / "student_card.md").read_text()
    # the repository's model_cards/ shows the same file
    assert (REPO_ROOT / "model_cards" / "student_card.md").read_text() == template
    assert evaluate_module == (REPO_ROOT / EVALUATE_MODULE).read_text()

    # installed from the wheel, the module loads offline from the installed package
    installed = tmp_path / "installed"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(installed)
    environment = {
        **os.environ,
        "PYTHONPATH": str(installed),
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
    }
    completed = subprocess.run(
        [sys.executable, "-c", INSTALLED_CHECK],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    module_path, result = completed.stdout.strip().splitlines()[-2:]
    assert Path(module_path) == installed / "hf_kd" / "evaluate_modules" / "top_k_accuracy"
    assert result == "{'top2_accuracy': 0.5}"
