"""What the 2-process test scripts share: their arguments and their per-rank result file.

Each script is run as ``accelerate launch ... SCRIPT --use_cpu --output_dir DIR
--result_file FILE [DistillationArguments flags]`` and writes ``FILE.rank<r>.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser

from hf_kd.arguments import DistillationArguments


@dataclass
class ScriptArguments:
    result_file: str = field(metadata={"help": "Each rank writes RESULT_FILE.rank<r>.json."})
    student: str = field(
        default="vit",
        metadata={"help": "'vit', or 'timm_deit_token': timm's DeiT with a distillation token."},
    )


def parse_arguments() -> tuple[ScriptArguments, DistillationArguments]:
    """The command line; one intra-op thread per process (the cores are shared)."""
    torch.set_num_threads(1)
    return HfArgumentParser((ScriptArguments, DistillationArguments)).parse_args_into_dataclasses()


def write_result(script_args: ScriptArguments, rank: int, result: dict[str, Any]) -> None:
    Path(f"{script_args.result_file}.rank{rank}.json").write_text(json.dumps(result, indent=2))
