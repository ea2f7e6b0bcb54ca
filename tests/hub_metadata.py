"""What the Hub checks in a README's YAML metadata, for the loopback Hub server and card tests.

A subset of the Hub's ``/api/validate-yaml`` rules: the front matter is a YAML mapping,
``tags``/``datasets``/``metrics`` are lists of strings, ``license``/``library_name``/
``pipeline_tag`` are strings, and a ``model-index`` names each model and gives every result a
task type, a dataset type and name, and metrics with a type and a value.
"""

from __future__ import annotations

import re

import yaml

FRONT_MATTER = re.compile(r"^---\s*\n(.*?)\n---\s*(\n|$)", flags=re.DOTALL)


def front_matter(readme: str) -> dict:
    """The YAML metadata block of a README, ``{}`` when there is none."""
    match = FRONT_MATTER.match(readme)
    if match is None:
        return {}
    metadata = yaml.safe_load(match.group(1))
    return metadata if isinstance(metadata, dict) else {}


def metadata_errors(readme: str) -> list[str]:
    """What the Hub's metadata validator would reject in a README's front matter."""
    match = FRONT_MATTER.match(readme)
    if match is None:
        return []
    try:
        metadata = yaml.safe_load(match.group(1))
    except yaml.YAMLError as error:
        return [f"invalid YAML: {error}"]
    if metadata is None:
        return []
    if not isinstance(metadata, dict):
        return ["the metadata must be a YAML mapping"]
    errors = []
    for key in ("tags", "datasets", "metrics"):
        value = metadata.get(key)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(item, str) for item in value)
        ):
            errors.append(f"'{key}' must be a list of strings")
    for key in ("license", "library_name", "pipeline_tag"):
        if key in metadata and not isinstance(metadata[key], str):
            errors.append(f"'{key}' must be a string")
    model_index = metadata.get("model-index")
    if model_index is not None:
        errors.extend(_model_index_errors(model_index))
    return errors


def _model_index_errors(model_index: object) -> list[str]:
    if not isinstance(model_index, list) or not model_index:
        return ["'model-index' must be a non-empty list"]
    errors = []
    for model in model_index:
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            errors.append("each 'model-index' entry needs a string 'name'")
            continue
        results = model.get("results")
        if not isinstance(results, list):
            errors.append(f"'model-index' entry {model['name']!r} needs a list of 'results'")
            continue
        for result in results:
            task = result.get("task", {}) if isinstance(result, dict) else {}
            dataset = result.get("dataset", {}) if isinstance(result, dict) else {}
            metrics = result.get("metrics", []) if isinstance(result, dict) else []
            if not isinstance(task, dict) or not isinstance(task.get("type"), str):
                errors.append("each result needs 'task.type'")
            if not isinstance(dataset, dict) or not all(
                isinstance(dataset.get(key), str) for key in ("type", "name")
            ):
                errors.append("each result needs 'dataset.type' and 'dataset.name'")
            if not isinstance(metrics, list) or not metrics:
                errors.append("each result needs a non-empty list of 'metrics'")
                continue
            for metric in metrics:
                if not (
                    isinstance(metric, dict)
                    and isinstance(metric.get("type"), str)
                    and "value" in metric
                ):
                    errors.append("each metric needs 'type' and 'value'")
    return errors
