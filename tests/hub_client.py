"""Push saved students to a Hub endpoint and load them back, as a user's fresh process would.

Run by the Hub tests in a subprocess whose environment points ``huggingface_hub`` at the
loopback server (``HF_ENDPOINT`` etc. are read at import, so a fresh process is the robust
way to aim every library at it; one process serves several students to pay the imports once):

    python tests/hub_client.py --jobs jobs.json --inputs in.safetensors --outputs out_dir

``jobs.json`` is a list of ``{"folder", "repo_id", "timm", "private"}``; a job with
``"push": false`` only pulls a repo pushed earlier, and one with ``"images"`` (image file
paths) also classifies them with ``pipeline("image-classification")``. For job ``i`` it
writes to ``out_dir/i/``: ``logits.safetensors`` (``transformers`` and, for timm students,
``timm`` logits of the ``pixel_values`` in ``--inputs``; with images, the pipeline's scores
``pipeline_probs`` and the softmax of the model's logits of the same images through its
image processor, ``processor_probs``, both ``[N, C]`` in label order) and ``report.json``
(pushed commit URL, repo files, the card's metadata and eval results, the image processor's
preprocessing).
Tests start it with :func:`push_and_pull_in_fresh_process`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import timm
import torch
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

from hf_kd.hub import push_student_to_hub
from hf_kd.models import preprocessing_for

if TYPE_CHECKING:
    from tests.hub_server import LoopbackHub

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_in_fresh_process(hub: LoopbackHub, command: list[str], home: Path) -> None:
    """Run ``command`` in a new interpreter whose Hub libraries all point at ``hub``."""
    env = {
        **os.environ,
        **hub.client_env(home),
        "PYTHONPATH": str(REPO_ROOT),
        "OMP_NUM_THREADS": "1",
    }
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]


def push_and_pull_in_fresh_process(
    hub: LoopbackHub, jobs: list[dict], pixel_values: torch.Tensor, work: Path
) -> list[tuple[dict[str, torch.Tensor], dict]]:
    """Run this script on ``jobs`` against ``hub``; each job's logits and report."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "jobs.json").write_text(json.dumps(jobs))
    save_file({"pixel_values": pixel_values}, work / "inputs.safetensors")
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--jobs",
        str(work / "jobs.json"),
        "--inputs",
        str(work / "inputs.safetensors"),
        "--outputs",
        str(work / "pulled"),
    ]
    run_in_fresh_process(hub, command, work / "home")
    results = []
    for index in range(len(jobs)):
        outputs = work / "pulled" / str(index)
        report = json.loads((outputs / "report.json").read_text())
        results.append((load_file(outputs / "logits.safetensors"), report))
    return results


def assert_same_logits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding: the weights are bit-identical, but tensors loaded from a
    file sit at other memory alignments, which sends CPU BatchNorm down another SIMD path
    (differences of about 1e-8)."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def push_and_pull(job: dict, pixel_values: torch.Tensor, outputs: Path) -> None:
    commit_url = None
    if job.get("push", True):
        commit_url = push_student_to_hub(job["folder"], job["repo_id"], private=job["private"])
    logits = {}
    model = AutoModelForImageClassification.from_pretrained(job["repo_id"]).eval()
    with torch.no_grad():
        logits["transformers"] = model(pixel_values=pixel_values).logits
    if job["timm"]:
        timm_model = timm.create_model(f"hf-hub:{job['repo_id']}", pretrained=True).eval()
        with torch.no_grad():
            logits["timm"] = timm_model(pixel_values)
    processor = AutoImageProcessor.from_pretrained(job["repo_id"])
    preprocessing = preprocessing_for(model, processor)
    if job.get("images"):
        logits.update(classify_images(job["repo_id"], model, processor, job["images"]))
    card = ModelCard.load(job["repo_id"])
    report = {
        "commit_url": commit_url,
        "files": sorted(HfApi().list_repo_files(job["repo_id"])),
        "card_data": card.data.to_dict(),
        "eval_results": [dataclasses.asdict(result) for result in card.data.eval_results or []],
        "card_text": card.text,
        "id2label": {str(key): value for key, value in model.config.id2label.items()},
        "preprocessing": dataclasses.asdict(preprocessing),
    }
    outputs.mkdir(parents=True, exist_ok=True)
    save_file(
        {name: tensor.contiguous() for name, tensor in logits.items()},
        outputs / "logits.safetensors",
    )
    (outputs / "report.json").write_text(json.dumps(report, indent=2))


def classify_images(
    repo_id: str, model: torch.nn.Module, processor: object, paths: list[str]
) -> dict[str, torch.Tensor]:
    """The pipeline's class probabilities of the images, and the softmax of the model's logits
    of the same images through the repo's image processor, both ``[N, C]`` in label order."""
    images = [Image.open(path).convert("RGB") for path in paths]
    classifier = pipeline("image-classification", model=repo_id)
    label_index = {label: index for index, label in model.config.id2label.items()}
    pipeline_probs = torch.zeros(len(images), model.config.num_labels)
    for row, predictions in enumerate(classifier(images, top_k=model.config.num_labels)):
        for prediction in predictions:
            pipeline_probs[row, label_index[prediction["label"]]] = prediction["score"]
    with torch.no_grad():
        inputs = processor(images=images, return_tensors="pt")
        processor_probs = model(**inputs).logits.softmax(dim=-1)
    return {"pipeline_probs": pipeline_probs, "processor_probs": processor_probs}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", required=True)
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--outputs", required=True)
    args = parser.parse_args()
    pixel_values = load_file(args.inputs)["pixel_values"]
    for index, job in enumerate(json.loads(Path(args.jobs).read_text())):
        push_and_pull(job, pixel_values, Path(args.outputs) / str(index))


if __name__ == "__main__":
    main()
