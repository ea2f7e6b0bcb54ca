"""The teacher-logit cache: values against a live teacher, storage, fingerprint refusals,
replayed augmentation views, top-k reconstruction, batches after shuffling, the CLI."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from datasets import Dataset
from PIL import Image, ImageOps
from transformers import PreTrainedModel

import hf_kd
from hf_kd.data import (
    ImageClassificationData,
    build_transforms,
    collate_image_batch,
    load_image_dataset,
)
from hf_kd.logit_cache import TeacherLogitCache, load_teacher_logit_cache
from hf_kd.logit_cache.__main__ import main as cache_cli
from hf_kd.models import image_processor_for, load_classifier
from hf_kd.preprocessing import ImagePreprocessing
from hf_kd.teacher import check_teacher_matches_student

TEACHER = "test_resnet"  # timm's own tiny test ResNet, random init
ROWS = 32
PREPROCESSING = ImagePreprocessing(
    image_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear"
)
FLOAT16_RELATIVE_ROUNDING = 2.0**-11


def make_teacher(data: ImageClassificationData, seed: int, name: str = TEACHER) -> PreTrainedModel:
    torch.manual_seed(seed)
    model_kwargs = (
        {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1}
        | {"num_attention_heads": 2, "intermediate_size": 64}
        if name == "vit"
        else {}
    )
    return load_classifier(
        name, pretrained=False, id2label=data.id2label, model_kwargs=model_kwargs
    )


def live_logits(teacher: PreTrainedModel, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return teacher.eval()(pixel_values=pixel_values).logits


def plain_pixels(split: Dataset, preprocessing: ImagePreprocessing) -> torch.Tensor:
    return torch.stack(build_transforms(preprocessing, train=False)(split[:])["pixel_values"])


def inverted(split: Dataset) -> Dataset:
    """The same rows and labels with every image's colours inverted (another dataset)."""

    def invert(example: dict) -> dict:
        image = ImageOps.invert(Image.open(io.BytesIO(example["image"]["bytes"])).convert("RGB"))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return {"image": {"bytes": buffer.getvalue(), "path": None}}

    return split.map(invert)


@pytest.fixture(scope="module")
def data() -> ImageClassificationData:
    return load_image_dataset("digits")


@pytest.fixture(scope="module")
def train(data: ImageClassificationData) -> Dataset:
    return data.splits["train"].select(range(ROWS))


@pytest.fixture(scope="module")
def teacher(data: ImageClassificationData) -> PreTrainedModel:
    return make_teacher(data, seed=0)


@pytest.fixture(scope="module")
def student(data: ImageClassificationData) -> PreTrainedModel:
    """A student of the teacher's classes, in the teacher's order."""
    return make_teacher(data, seed=1)


@pytest.fixture(scope="module")
def plain_cache(
    teacher: PreTrainedModel, train: Dataset, tmp_path_factory: pytest.TempPathFactory
) -> TeacherLogitCache:
    """Dense float32 logits of one plain view per row."""
    torch.set_num_threads(1)
    return hf_kd.cache_teacher_logits(
        teacher,
        train,
        preprocessing=PREPROCESSING,
        output_path=tmp_path_factory.mktemp("plain"),
        split_name="train",
        batch_size=12,
        dtype="float32",
    )


# --- values --------------------------------------------------------------------------------


def test_float32_cache_equals_a_live_teacher_forward(
    plain_cache: TeacherLogitCache, teacher: PreTrainedModel, train: Dataset
) -> None:
    live = live_logits(teacher, plain_pixels(train, PREPROCESSING))  # one batch, not 12s
    cached = plain_cache.teacher_logits(train["row_index"])
    assert cached.shape == (ROWS, 1, 10) and cached.dtype == np.float32
    torch.testing.assert_close(torch.from_numpy(cached[:, 0]), live, rtol=1e-5, atol=1e-5)
    assert plain_cache.labels[plain_cache.positions(train["row_index"])].tolist() == train["label"]
    # the stored file is a plain parquet table that `datasets` loads
    stored = Dataset.from_parquet(str(Path(plain_cache.path) / "logits.parquet"))
    assert stored.column_names == ["row_index", "view_index", "label", "logits"]
    assert len(stored) == ROWS and set(stored["view_index"]) == {0}
    first = stored[0]
    position = train["row_index"].index(first["row_index"])
    np.testing.assert_allclose(first["logits"], live[position].numpy(), rtol=1e-5, atol=1e-5)
    metadata = json.loads((Path(plain_cache.path) / "metadata.json").read_text())
    assert metadata["fingerprint"] == plain_cache.fingerprint and len(plain_cache.fingerprint) == 64
    assert metadata["storage"] == {
        "autocast": None,
        "dtype": "float32",
        "num_classes": 10,
        "top_k": None,
    }


def test_float16_cache_holds_the_live_logits_rounded(
    teacher: PreTrainedModel, train: Dataset, tmp_path: Path
) -> None:
    teacher.train()
    cache = hf_kd.cache_teacher_logits(
        teacher, train, preprocessing=PREPROCESSING, output_path=tmp_path, split_name="train"
    )
    assert teacher.training  # the teacher's mode is given back
    assert cache.values.dtype == np.float16
    live = live_logits(teacher, plain_pixels(train, PREPROCESSING)).numpy()
    cached = cache.teacher_logits(train["row_index"])[:, 0]
    assert np.all(np.abs(cached - live) <= FLOAT16_RELATIVE_ROUNDING * np.abs(live) + 1e-6)


def test_top_k_keeps_the_largest_logits_and_the_rest_mass(
    plain_cache: TeacherLogitCache, teacher: PreTrainedModel, train: Dataset, tmp_path: Path
) -> None:
    top_k = 3
    cache = hf_kd.cache_teacher_logits(
        teacher,
        train,
        preprocessing=PREPROCESSING,
        output_path=tmp_path,
        split_name="train",
        dtype="float32",
        top_k=top_k,
    )
    dense = torch.from_numpy(plain_cache.teacher_logits(train["row_index"])[:, 0])
    rebuilt = torch.from_numpy(cache.teacher_logits(train["row_index"])[:, 0])
    kept_values, kept = dense.topk(top_k, dim=1)
    torch.testing.assert_close(rebuilt.gather(1, kept), kept_values)
    dropped = torch.ones_like(dense, dtype=torch.bool).scatter(1, kept, False)
    # every dropped class gets logsumexp(dropped) - log(C - k), below the smallest kept logit
    fill = torch.logsumexp(dense.masked_fill(~dropped, -math.inf), dim=1) - math.log(10 - top_k)
    torch.testing.assert_close(rebuilt[dropped].view(ROWS, -1), fill[:, None].expand(-1, 7))
    assert torch.all(fill <= kept_values[:, -1])
    # at temperature 1: the kept probabilities are exact, the dropped mass is preserved
    true, approx = dense.softmax(dim=1), rebuilt.softmax(dim=1)
    torch.testing.assert_close(approx.gather(1, kept), true.gather(1, kept))
    torch.testing.assert_close((approx * dropped).sum(1), (true * dropped).sum(1))


def test_autocast_runs_the_teacher_in_low_precision_and_is_recorded(
    teacher: PreTrainedModel, train: Dataset, tmp_path: Path
) -> None:
    cache = hf_kd.cache_teacher_logits(
        teacher,
        train,
        preprocessing=PREPROCESSING,
        output_path=tmp_path,
        split_name="train",
        dtype="float32",
        autocast_dtype=torch.bfloat16,
    )
    assert cache.metadata["storage"]["autocast"] == "torch.bfloat16"
    pixel_values = plain_pixels(train, PREPROCESSING)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_precision = live_logits(teacher, pixel_values).float()
    cached = torch.from_numpy(cache.teacher_logits(train["row_index"])[:, 0])
    torch.testing.assert_close(cached, low_precision, rtol=0, atol=1e-6)  # one batch, same maths
    assert (cached - live_logits(teacher, pixel_values)).abs().max() > 1e-4


def test_caching_shows_a_progress_bar_unless_disabled(
    teacher: PreTrainedModel,
    train: Dataset,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    progress_bars_on: None,
) -> None:
    for disable_tqdm in (False, True):
        capsys.readouterr()
        hf_kd.cache_teacher_logits(
            teacher,
            train,
            preprocessing=PREPROCESSING,
            output_path=tmp_path / str(disable_tqdm),
            split_name="train",
            batch_size=12,
            disable_tqdm=disable_tqdm,
        )
        shown = capsys.readouterr().err
        bar = "Caching teacher logits: 100%|"
        assert (bar in shown and f"| {ROWS}/{ROWS} " in shown) != disable_tqdm, shown


# --- reuse and refusal ----------------------------------------------------------------------


def test_cache_is_reused_across_loads_and_students(
    plain_cache: TeacherLogitCache,
    teacher: PreTrainedModel,
    train: Dataset,
    student: PreTrainedModel,
) -> None:
    loads = [
        load_teacher_logit_cache(
            plain_cache.path,
            teacher=teacher,
            dataset_split=split,  # any order of the same rows is the same split
            split_name="train",
            preprocessing=PREPROCESSING,
        )
        for split in (train, train.shuffle(seed=3))
    ]
    for loaded in loads:
        assert loaded.fingerprint == plain_cache.fingerprint
        np.testing.assert_array_equal(loaded.values, plain_cache.values)
        np.testing.assert_array_equal(loaded.row_index, plain_cache.row_index)
    small_student = ImagePreprocessing(image_size=(16, 16), interpolation="bicubic")
    examples = [
        hf_kd.with_cached_teacher_logits(
            train, loaded, student=student, preprocessing=preprocessing
        )[5]
        for loaded, preprocessing in zip(loads, (PREPROCESSING, small_student), strict=True)
    ]
    assert examples[0]["pixel_values"].shape == (3, 32, 32)
    assert examples[1]["pixel_values"].shape == (3, 16, 16)
    torch.testing.assert_close(examples[0]["teacher_logits"], examples[1]["teacher_logits"])
    assert examples[0]["labels"] == examples[1]["labels"] == train[5]["label"]


@pytest.mark.parametrize(
    "change, expected, reported",
    [
        (
            "teacher weights",
            r"teacher weights_sha256: cache [0-9a-f]{12}\.\.\., given",
            {"teacher"},
        ),
        (
            "teacher architecture",
            "teacher class: cache 'TimmWrapperForImageClassification'",
            {"teacher"},
        ),
        ("dataset images", "dataset image_sample_sha256", {"dataset"}),
        (
            "split",
            "dataset num_rows: cache 32, given 16.*split: cache 'train', given 'validation'",
            {"dataset", "split"},
        ),
        (
            "preprocessing",
            r"preprocessing mean: cache \[0.5, 0.5, 0.5\], given \[0.4, 0.4, 0.4\]",
            {"preprocessing"},
        ),
    ],
)
def test_a_cache_made_for_something_else_is_refused(
    change: str,
    expected: str,
    reported: set[str],
    plain_cache: TeacherLogitCache,
    data: ImageClassificationData,
    teacher: PreTrainedModel,
    train: Dataset,
) -> None:
    given = {
        "teacher": teacher,
        "dataset_split": train,
        "split_name": "train",
        "preprocessing": PREPROCESSING,
    }
    if change == "teacher weights":
        given["teacher"] = make_teacher(data, seed=1)
    elif change == "teacher architecture":
        given["teacher"] = make_teacher(data, seed=0, name="vit")
    elif change == "dataset images":  # same row_index and labels, other pixels
        given["dataset_split"] = inverted(train)
    elif change == "split":
        given["dataset_split"] = data.splits["validation"].select(range(16))
        given["split_name"] = "validation"
    else:
        given["preprocessing"] = ImagePreprocessing(
            image_size=(32, 32), mean=(0.4,) * 3, std=(0.5,) * 3, interpolation="bilinear"
        )
    with pytest.raises(ValueError, match="made for another teacher, dataset, split") as error:
        load_teacher_logit_cache(plain_cache.path, **given)
    assert error.match(expected)
    listed = str(error.value).split("differs in: ")[1].split(". Rebuild")[0].split("; ")
    assert {difference.split(" ")[0].rstrip(":") for difference in listed} == reported


def test_attaching_rows_or_labels_the_cache_lacks_is_refused(
    plain_cache: TeacherLogitCache,
    data: ImageClassificationData,
    train: Dataset,
    student: PreTrainedModel,
) -> None:
    relabelled = train.map(
        lambda example, i: {"label": (example["label"] + (i == 4)) % 10}, with_indices=True
    )
    with pytest.raises(ValueError, match=r"1 row\(s\) of the split have other labels"):
        hf_kd.with_cached_teacher_logits(
            relabelled, plain_cache, student=student, preprocessing=PREPROCESSING
        )
    with pytest.raises(ValueError, match=r"no logits for \d+ row\(s\)"):
        hf_kd.with_cached_teacher_logits(
            data.splits["test"].select(range(8)),
            plain_cache,
            student=student,
            preprocessing=PREPROCESSING,
        )


def test_the_students_classes_are_checked_against_the_cached_teachers(
    plain_cache: TeacherLogitCache,
    data: ImageClassificationData,
    teacher: PreTrainedModel,
    train: Dataset,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert plain_cache.teacher_id2label == {int(i): name for i, name in data.id2label.items()}
    # same 10 classes in another order: the cached logit c is another class for the student
    permuted = {index: data.id2label[(index + 1) % 10] for index in range(10)}
    students = {
        "permuted": load_classifier(TEACHER, pretrained=False, id2label=permuted),
        "fewer": load_classifier(TEACHER, pretrained=False, num_labels=7),
    }
    expected = {
        "permuted": "label maps differ at 10 class index(es)",
        "fewer": "the teacher predicts 10 classes but the student 7",
    }
    for name, student in students.items():
        with pytest.raises(
            ValueError, match=re.escape(expected[name])
        ) as live:  # the live path's check and message
            check_teacher_matches_student(teacher, student)
        with pytest.raises(ValueError) as cached:
            hf_kd.with_cached_teacher_logits(
                train, plain_cache, student=student, preprocessing=PREPROCESSING
            )
        assert str(cached.value) == f"the teacher-logit cache at {plain_cache.path}: {live.value}"

    # a cache made before the class names were recorded: the count is still checked
    old = tmp_path / "old"
    shutil.copytree(plain_cache.path, old)
    metadata = json.loads((old / "metadata.json").read_text())
    del metadata["teacher_id2label"]
    (old / "metadata.json").write_text(json.dumps(metadata))
    old_cache = load_teacher_logit_cache(old)
    with caplog.at_level("WARNING", logger="hf_kd.logit_cache.storage"):
        hf_kd.with_cached_teacher_logits(
            train, old_cache, student=students["permuted"], preprocessing=PREPROCESSING
        )
    assert "does not record the teacher's class names" in caplog.text
    with pytest.raises(ValueError, match="the teacher predicts 10 classes but the student 7"):
        hf_kd.with_cached_teacher_logits(
            train, old_cache, student=students["fewer"], preprocessing=PREPROCESSING
        )


# --- augmentation ---------------------------------------------------------------------------


def test_plain_cache_refuses_random_augmentation(
    plain_cache: TeacherLogitCache, train: Dataset, student: PreTrainedModel
) -> None:
    for augment in ("crop", "default"):
        with pytest.raises(ValueError, match="other pixels than the teacher saw"):
            hf_kd.with_cached_teacher_logits(
                train, plain_cache, student=student, preprocessing=PREPROCESSING, augment=augment
            )
    # with the cache's own setting the training transform does not augment
    attached = hf_kd.with_cached_teacher_logits(
        train, plain_cache, student=student, preprocessing=PREPROCESSING, augment="none"
    )
    torch.testing.assert_close(
        torch.stack([attached[i]["pixel_values"] for i in range(4)]),
        plain_pixels(train.select(range(4)), PREPROCESSING),
    )
    # a cached column slipped under a randomly augmenting transform is refused too
    with_column = train.select(range(2)).add_column("teacher_logits", [[0.0] * 10] * 2)
    with pytest.raises(ValueError, match="augments at random"):
        with_column.with_transform(build_transforms(PREPROCESSING, train=True))[0]


def test_replayed_views_give_the_teacher_logits_of_the_pixels_the_student_sees(
    teacher: PreTrainedModel, train: Dataset, tmp_path: Path, student: PreTrainedModel
) -> None:
    num_views = 3
    cache = hf_kd.cache_teacher_logits(
        teacher,
        train,
        preprocessing=PREPROCESSING,
        output_path=tmp_path,
        split_name="train",
        dtype="float32",
        augment="default",
        num_views=num_views,
        view_seed=5,
    )
    views = torch.from_numpy(cache.teacher_logits(train["row_index"]))  # [rows, views, classes]
    assert views.shape == (ROWS, num_views, 10)
    assert (views[:, 1:] - views[:, :1]).abs().amax() > 1e-3  # the views differ
    # a student with the teacher's preprocessing: its pixels are the teacher's input exactly
    attached = hf_kd.with_cached_teacher_logits(
        train.shuffle(seed=0), cache, student=student, preprocessing=PREPROCESSING
    )
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(
        attached, batch_size=16, shuffle=True, collate_fn=collate_image_batch
    )
    for batch in loader:
        assert set(batch) == {"pixel_values", "labels", "teacher_logits"}
        live = live_logits(teacher, batch["pixel_values"])
        torch.testing.assert_close(batch["teacher_logits"], live, rtol=1e-5, atol=1e-5)
    # each access of a row picks one of its cached views at random
    seen = torch.stack([attached[0]["teacher_logits"] for _ in range(12)])
    row = train.shuffle(seed=0)[0]["row_index"]
    row_views = views[train["row_index"].index(row)]
    matches = (seen[:, None] - row_views[None]).abs().amax(dim=2) < 1e-6  # [accesses, views]
    assert torch.all(matches.sum(dim=1) >= 1)
    assert matches.any(dim=0).sum() >= 2


def test_plain_cache_batches_stay_aligned_after_shuffling(
    plain_cache: TeacherLogitCache,
    teacher: PreTrainedModel,
    train: Dataset,
    student: PreTrainedModel,
) -> None:
    attached = hf_kd.with_cached_teacher_logits(
        train.shuffle(seed=1), plain_cache, student=student, preprocessing=PREPROCESSING
    )
    torch.manual_seed(1)
    loader = torch.utils.data.DataLoader(
        attached, batch_size=10, shuffle=True, collate_fn=collate_image_batch
    )
    labels = []
    for batch in loader:
        assert batch["teacher_logits"].dtype == torch.float32
        live = live_logits(teacher, batch["pixel_values"])
        torch.testing.assert_close(batch["teacher_logits"], live, rtol=1e-5, atol=1e-5)
        labels += batch["labels"].tolist()
    assert sorted(labels) == sorted(train["label"])


# --- bad input ------------------------------------------------------------------------------


def test_bad_arguments_are_clear_errors(
    plain_cache: TeacherLogitCache,
    data: ImageClassificationData,
    teacher: PreTrainedModel,
    train: Dataset,
    tmp_path: Path,
) -> None:
    def cache(split: Dataset = train, model: PreTrainedModel = teacher, **kwargs: object) -> None:
        options = {
            "preprocessing": PREPROCESSING,
            "output_path": tmp_path / "bad",
            "split_name": "train",
            **kwargs,
        }
        hf_kd.cache_teacher_logits(model, split, **options)

    with pytest.raises(ValueError, match="dtype must be one of"):
        cache(dtype="bfloat16")
    with pytest.raises(ValueError, match="top_k=10 keeps all of the teacher's 10 classes"):
        cache(top_k=10)
    with pytest.raises(ValueError, match="num_views=4 without augmentation"):
        cache(num_views=4)
    with pytest.raises(ValueError, match="already holds a teacher-logit cache"):
        cache(output_path=plain_cache.path)
    with pytest.raises(ValueError, match=r"no column\(s\) \['row_index'\]"):
        cache(split=train.remove_columns("row_index"))
    with pytest.raises(ValueError, match=r"labels span 0..9 but the teacher predicts 3 classes"):
        cache(model=load_classifier(TEACHER, pretrained=False, num_labels=3))
    loud = make_teacher(data, seed=0)
    with torch.no_grad():
        loud.timm_model.fc.bias.fill_(1e5)
    with pytest.raises(ValueError, match=r"exceed the float16 range.*dtype='float32'"):
        cache(model=loud)
    with pytest.raises(ValueError, match="no teacher-logit cache at"):
        load_teacher_logit_cache(tmp_path / "nothing")
    truncated = tmp_path / "truncated"
    shutil.copytree(plain_cache.path, truncated)
    table = pq.read_table(truncated / "logits.parquet")
    pq.write_table(table.slice(0, ROWS - 1), truncated / "logits.parquet")
    with pytest.raises(ValueError, match="is inconsistent"):
        load_teacher_logit_cache(truncated)


# --- command line ---------------------------------------------------------------------------


def test_command_line_caches_a_saved_teacher(
    data: ImageClassificationData,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    teacher = make_teacher(data, seed=2)
    image_processor_for(teacher, PREPROCESSING)  # stored with the model: its preprocessing
    teacher.save_pretrained(tmp_path / "teacher")
    output = tmp_path / "cache"
    argv = [
        "--teacher_model_name_or_path",
        str(tmp_path / "teacher"),
        "--split",
        "validation",
        "--output_path",
        str(output),
        "--dtype",
        "float32",
        "--device",
        "cpu",
    ]
    made = cache_cli(argv)
    validation = data.splits["validation"]
    reloaded = load_teacher_logit_cache(
        output,
        teacher=load_classifier(str(tmp_path / "teacher")),
        dataset_split=validation,
        split_name="validation",
        preprocessing=PREPROCESSING,
    )
    assert reloaded.fingerprint == made.fingerprint
    assert reloaded.metadata["source"] == {
        "dataset": "digits",
        "teacher": str(tmp_path / "teacher"),
    }
    live = live_logits(teacher, plain_pixels(validation, PREPROCESSING))
    cached = torch.from_numpy(reloaded.teacher_logits(validation["row_index"])[:, 0])
    torch.testing.assert_close(cached, live, rtol=1e-5, atol=1e-5)
    with pytest.raises(SystemExit):
        cache_cli(["--help"])
    manual = capsys.readouterr().out
    for option in ("--teacher_model_name_or_path", "--top_k", "--num_views", "--augment"):
        assert option in manual
