"""The decode-once path: augmentation distributions, exact agreement with the PIL path,
replayed views with cached teacher logits, the caches' refusal rules, a Trainer run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

import hf_kd
from hf_kd.data import (
    DecodedImages,
    DeviceViews,
    ViewReplay,
    build_transforms,
    collate_decoded_batch,
    decode_split,
    load_image_dataset,
    prepare_image_split,
)
from hf_kd.data.device_views import (
    IMAGES_COLUMN,
    VIEW_PARAMS_COLUMN,
    apply_view_params,
    random_view_params,
    replayed_view_params,
)
from hf_kd.data.transforms import ViewAugmentation, _apply_augmentation
from hf_kd.preprocessing import ImagePreprocessing
from hf_kd.trainer import DistillationTrainer
from tests.distill_helpers import make_args, tiny_vit

ROWS = 24
PREPROCESSING = ImagePreprocessing(
    image_size=(32, 32), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), interpolation="bilinear"
)
DRAWS = 20_000
# a binomial count's tolerance: 5 standard deviations, a false alarm about once in 1.7 million
SIGMAS = 5.0


@pytest.fixture(scope="module")
def split() -> Dataset:
    return load_image_dataset("digits").splits["train"].select(range(ROWS))


@pytest.fixture(scope="module")
def decoded_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("decoded")


def binomial_tolerance(count: int, probability: float) -> float:
    return SIGMAS * math.sqrt(count * probability * (1 - probability))


# --- augmentation distributions ----------------------------------------------------------


@pytest.mark.parametrize("view_size", [(32, 32), (24, 40)])
def test_fresh_shifts_are_uniform_over_the_allowed_range_and_flips_fair(view_size) -> None:
    params = random_view_params(DRAWS, view_size, "default", torch.Generator().manual_seed(0))
    pad_y, pad_x = round(view_size[0] / 8), round(view_size[1] / 8)
    for column, pad in ((0, pad_x), (1, pad_y)):
        counts = torch.bincount(params[:, column] + pad, minlength=2 * pad + 1)
        assert len(counts) == 2 * pad + 1  # never beyond the padding
        expected = DRAWS / (2 * pad + 1)
        # every offset in [-pad, pad] as often as a fair die: each count within its binomial
        assert (counts.float() - expected).abs().max() < binomial_tolerance(
            DRAWS, 1 / (2 * pad + 1)
        )
    flips = int(params[:, 2].sum())
    assert abs(flips - DRAWS / 2) < binomial_tolerance(DRAWS, 0.5)


def test_crop_never_flips_and_none_never_moves() -> None:
    crop = random_view_params(2000, (32, 32), "crop")
    assert not crop[:, 2].any() and crop[:, :2].abs().max() == 4
    assert not random_view_params(100, (32, 32), "none").any()


def test_replayed_views_share_the_distributions_and_the_pil_draws() -> None:
    views = ViewReplay(view_size=(32, 32), interpolation="bilinear", num_views=4, seed=3)
    rows = np.repeat(np.arange(DRAWS // 4), 4)
    params = replayed_view_params(views, "default", rows, np.tile(np.arange(4), DRAWS // 4))
    counts = torch.bincount(params[:, 0] + 4, minlength=9)
    assert len(counts) == 9
    assert (counts.float() - DRAWS / 9).abs().max() < binomial_tolerance(DRAWS, 1 / 9)
    assert abs(int(params[:, 2].sum()) - DRAWS / 2) < binomial_tolerance(DRAWS, 0.5)
    again = replayed_view_params(views, "default", rows[:50], np.tile(np.arange(4), 13)[:50])
    assert torch.equal(again, params[:50])  # the same (row, view) gives the same view


def test_device_shift_and_flip_are_the_pixels_of_pil_crop_and_transpose() -> None:
    images = torch.randint(0, 256, (64, 3, 16, 12), dtype=torch.uint8)
    params = random_view_params(64, (16, 12), "default", torch.Generator().manual_seed(1))
    shifted = apply_view_params(images, params)
    for index in range(64):
        left, top, flip = params[index].tolist()
        view = Image.fromarray(images[index].permute(1, 2, 0).numpy())
        expected = _apply_augmentation(view, ViewAugmentation(left, top, bool(flip)))
        assert np.array_equal(shifted[index].permute(1, 2, 0).numpy(), np.asarray(expected))


# --- decode once: the same tensors as the PIL path, cached on disk -------------------------


@pytest.mark.parametrize("size", [(32, 32), (20, 28)])
def test_decoded_evaluation_tensors_equal_the_pil_paths(split, decoded_dir, size) -> None:
    preprocessing = ImagePreprocessing(
        image_size=size, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), interpolation="bicubic"
    )
    common = {"train": False, "preprocessing": preprocessing, "cache_dir": decoded_dir}
    pil = prepare_image_split(split, data_path="pil", **common)
    decoded = prepare_image_split(split, data_path="decoded", **common)
    assert (pil.data_path, decoded.data_path) == ("pil", "decoded")
    expected = pil.collator([pil.dataset[index] for index in range(ROWS)])
    batch = decoded.collator(decoded.dataset.__getitems__(list(range(ROWS))))
    assert VIEW_PARAMS_COLUMN not in batch  # evaluation does not augment
    built = DeviceViews(preprocessing)(batch)
    torch.testing.assert_close(built["pixel_values"], expected["pixel_values"], rtol=0, atol=1e-6)
    assert torch.equal(built["labels"], expected["labels"])


def test_the_decoded_cache_is_keyed_by_fingerprint_and_size(split, tmp_path) -> None:
    first = decode_split(split, (32, 32), "bilinear", cache_dir=tmp_path)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"  # no partial file left
    files[0].chmod(0o444)  # a second decode reads it and writes nothing
    again = decode_split(split, (32, 32), "bilinear", cache_dir=tmp_path)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert sorted(tmp_path.iterdir()) == files
    decode_split(split, (16, 16), "bilinear", cache_dir=tmp_path)  # another size
    decode_split(split.select(range(ROWS - 1)), (32, 32), "bilinear", cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 3
    assert first.images.dtype == torch.uint8 and first.images.shape == (ROWS, 3, 32, 32)
    assert first.row_index.tolist() == split["row_index"]


def test_auto_decodes_within_the_budget_and_uses_pil_beyond(split, decoded_dir) -> None:
    common = {"train": True, "preprocessing": PREPROCESSING, "cache_dir": decoded_dir}
    needed_mb = ROWS * 3 * 32 * 32 / 2**20
    fits = prepare_image_split(split, memory_budget_mb=needed_mb, **common)
    too_big = prepare_image_split(split, memory_budget_mb=needed_mb * 0.99, **common)
    assert (fits.data_path, too_big.data_path) == ("decoded", "pil")
    assert isinstance(fits.dataset, DecodedImages)


def test_a_training_batch_is_built_by_indexing_with_fresh_views(split, decoded_dir) -> None:
    decoded = decode_split(split, (32, 32), "bilinear", cache_dir=decoded_dir)
    dataset = DecodedImages(decoded, train=True, augment="default")
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=8, shuffle=True, collate_fn=collate_decoded_batch
    )
    batch = next(iter(loader))
    assert batch[IMAGES_COLUMN].dtype == torch.uint8 and batch[IMAGES_COLUMN].shape[0] == 8
    assert batch[VIEW_PARAMS_COLUMN].shape == (8, 3)
    positions = [
        int(torch.nonzero((decoded.images == image).all(dim=(1, 2, 3)))[0])
        for image in batch[IMAGES_COLUMN]
    ]
    assert batch["labels"].tolist() == decoded.labels[positions].tolist()


# --- replayed views and the teacher-logit cache ------------------------------------------


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return hf_kd.models.load_classifier(
        "test_resnet", pretrained=False, id2label={i: str(i) for i in range(10)}
    )


def _cache(teacher, split, tmp_path: Path, data_path: str, decoded_dir: Path):
    return hf_kd.cache_teacher_logits(
        teacher,
        split,
        preprocessing=PREPROCESSING,
        output_path=tmp_path / data_path,
        split_name="train",
        dtype="float32",
        augment="default",
        num_views=3,
        view_seed=7,
        data_path=data_path,
        decoded_cache_dir=decoded_dir,
    )


def test_replayed_decoded_views_carry_the_teacher_logits_of_exactly_those_pixels(
    teacher, split, tmp_path, decoded_dir
) -> None:
    cache = _cache(teacher, split, tmp_path, "decoded", decoded_dir)
    decoded = decode_split(split, (32, 32), "bilinear", cache_dir=decoded_dir)
    dataset = hf_kd.with_cached_teacher_logits(
        DecodedImages(decoded, train=True, augment="default"), cache, student=teacher
    )
    views = DeviceViews(PREPROCESSING)
    pil = build_transforms(PREPROCESSING, train=True, augment="default", views=cache.views)
    for _ in range(3):  # random views each time; each must match its cached logits
        batch = views(dataset.__getitems__(list(range(ROWS))))
        with torch.inference_mode():
            live = teacher.eval()(pixel_values=batch["pixel_values"]).logits
        torch.testing.assert_close(batch["teacher_logits"], live, rtol=1e-4, atol=1e-4)
    # the same view on the PIL path has the same pixels: view k of row r is one view
    params = dataset.__getitems__([5])[VIEW_PARAMS_COLUMN]
    for view_index in range(3):
        expected = replayed_view_params(
            cache.views, "default", [split[5]["row_index"]], [view_index]
        )
        if torch.equal(expected, params):
            pixels = pil({**split[5:6], "view_index": [view_index]})["pixel_values"][0]
            built = views({IMAGES_COLUMN: decoded.images[5:6], VIEW_PARAMS_COLUMN: params})
            torch.testing.assert_close(built["pixel_values"][0], pixels, rtol=0, atol=1e-6)


def test_a_cache_is_refused_on_the_other_data_path(teacher, split, tmp_path, decoded_dir) -> None:
    decoded_cache = _cache(teacher, split, tmp_path, "decoded", decoded_dir)
    pil_cache = _cache(teacher, split, tmp_path, "pil", decoded_dir)
    assert (decoded_cache.data_path, pil_cache.data_path) == ("decoded", "pil")
    assert decoded_cache.fingerprint != pil_cache.fingerprint
    decoded = DecodedImages(
        decode_split(split, (32, 32), "bilinear", cache_dir=decoded_dir), train=True
    )
    with pytest.raises(ValueError, match=r"made on the 'pil' data path.*data_path='decoded'"):
        hf_kd.with_cached_teacher_logits(decoded, pil_cache, student=teacher)
    with pytest.raises(ValueError, match=r"made on the 'decoded' data path.*data_path='pil'"):
        hf_kd.with_cached_teacher_logits(
            split, decoded_cache, student=teacher, preprocessing=PREPROCESSING
        )
    relabelled = split.map(lambda row: {"label": (row["label"] + 1) % 10})
    other = DecodedImages(
        decode_split(relabelled, (32, 32), "bilinear", cache_dir=decoded_dir), train=True
    )
    with pytest.raises(ValueError, match="other labels"):
        hf_kd.with_cached_teacher_logits(other, decoded_cache, student=teacher)
    # the cache's shifts were drawn for 32x32 views: 16x16 ones would get other pixels
    smaller = DecodedImages(
        decode_split(split, (16, 16), "bilinear", cache_dir=decoded_dir), train=True
    )
    with pytest.raises(ValueError, match=r"decoded at \(16, 16\).*views are \(32, 32\)"):
        hf_kd.with_cached_teacher_logits(smaller, decoded_cache, student=teacher)


# --- a Trainer run through the decoded path ------------------------------------------------


def pattern_split(rows: int, num_classes: int = 5, size: int = 16) -> Dataset:
    """Each class a fixed random colour pattern, each image it plus noise: learnable fast."""
    generator = np.random.default_rng(0)
    templates = generator.integers(0, 256, (num_classes, size, size, 3))
    labels = np.arange(rows) % num_classes
    noisy = templates[labels] + generator.normal(0, 30, (rows, size, size, 3))
    images = [Image.fromarray(image.clip(0, 255).astype(np.uint8)) for image in noisy]
    features = Features(
        {
            "image": ImageFeature(),
            "label": ClassLabel(num_classes=num_classes),
            "row_index": Value("int64"),
        }
    )
    split = Dataset.from_dict(
        {"image": images, "label": labels.tolist(), "row_index": list(range(rows))},
        features=features,
    )
    return split.cast_column("image", ImageFeature(decode=False))


def test_distillation_through_the_decoded_path_lowers_the_loss(tmp_path, decoded_dir) -> None:
    preprocessing = ImagePreprocessing(image_size=(16, 16), interpolation="bilinear")
    train = prepare_image_split(
        pattern_split(80),
        train=True,
        preprocessing=preprocessing,
        augment="crop",
        data_path="decoded",
        cache_dir=decoded_dir,
    )
    student, teacher = tiny_vit(seed=0), tiny_vit(seed=1)
    teacher.config.id2label = student.config.id2label
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(
            tmp_path,
            num_train_epochs=12,
            learning_rate=3e-3,
            per_device_train_batch_size=16,
            logging_steps=10,
        ),
        train_dataset=train.dataset,
        data_collator=train.collator,
        student_preprocessing=preprocessing,
    )
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0]
