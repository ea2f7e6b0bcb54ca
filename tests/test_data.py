"""Loading (digits, imagefolder, saved datasets, the shared CIFAR-100 copy) and transforms."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASS_COLOURS, CORRUPT_FILE_NAME, IMAGES_PER_CLASS
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets import Image as ImageFeature
from PIL import Image
from sklearn.datasets import load_digits

from hf_kd.data import (
    ImageClassificationData,
    ViewReplay,
    build_transforms,
    collate_image_batch,
    load_digits_dataset,
    load_image_dataset,
    load_rgb_image,
)
from hf_kd.preprocessing import ImagePreprocessing

# the shared data folder sits next to the checkout (../shared/data) or higher up
CIFAR100 = next(
    (
        folder / "shared" / "data" / "cifar100"
        for folder in Path(__file__).resolve().parents[1].parents
        if (folder / "shared" / "data" / "cifar100").is_dir()
    ),
    Path("shared-data-not-found"),
)
SMALL = ImagePreprocessing(image_size=(8, 8), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def expected_pixels(
    colour: tuple[int, int, int], preprocessing: ImagePreprocessing
) -> torch.Tensor:
    """A solid image of ``colour`` after scaling to [0, 1] and normalising, shape [3, H, W]."""
    rgb = torch.tensor(colour, dtype=torch.float32) / 255
    normalised = (rgb - torch.tensor(preprocessing.mean)) / torch.tensor(preprocessing.std)
    return normalised.view(3, 1, 1).expand(3, *preprocessing.image_size)


def unnormalise(pixels: torch.Tensor, preprocessing: ImagePreprocessing) -> torch.Tensor:
    """Back to uint8 RGB values, [3, H, W]."""
    mean = torch.tensor(preprocessing.mean).view(3, 1, 1)
    std = torch.tensor(preprocessing.std).view(3, 1, 1)
    return ((pixels * std + mean) * 255).round().to(torch.uint8)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --- digits -----------------------------------------------------------------------------


def test_digits_is_the_real_sklearn_set_with_a_fixed_split() -> None:
    source = load_digits_dataset()
    assert {name: len(split) for name, split in source.items()} == {"train": 1437, "test": 360}
    all_labels = np.concatenate([np.asarray(source[name]["label"]) for name in source])
    np.testing.assert_array_equal(np.bincount(all_labels), np.bincount(load_digits().target))
    test_counts = np.bincount(np.asarray(source["test"]["label"]), minlength=10)
    assert test_counts.min() >= 35 and test_counts.max() <= 37  # stratified 20% of ~180

    image = source["train"][0]["image"]
    assert image.mode == "RGB" and image.size == (32, 32)
    pixels = np.asarray(image)
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])  # gray stored as RGB
    assert pixels.max() > 200 and pixels.min() == 0


def test_digits_layout_and_reproducible_splits() -> None:
    first = load_image_dataset("digits")
    second = load_image_dataset()
    assert isinstance(first, ImageClassificationData)
    assert first.label_names == tuple(str(digit) for digit in range(10))
    assert first.id2label[3] == "3" and first.label2id["7"] == 7
    assert list(first.splits) == ["train", "validation", "test"]
    sizes = {name: len(split) for name, split in first.splits.items()}
    assert sizes == {"train": 1293, "validation": 144, "test": 360}
    assert sum(sizes.values()) == 1797
    for name in first.splits:
        assert first.splits[name].column_names == ["image", "label", "row_index"]
        assert first.splits[name]["row_index"] == second.splits[name]["row_index"]
        assert first.splits[name]["label"] == second.splits[name]["label"]
    train_rows = set(first.splits["train"]["row_index"])
    validation_rows = set(first.splits["validation"]["row_index"])
    assert not train_rows & validation_rows
    assert train_rows | validation_rows == set(range(1437))
    # stratified: every digit in the 144-image validation split, 14 or 15 of each
    validation_counts = np.bincount(np.asarray(first.splits["validation"]["label"]))
    assert validation_counts.min() >= 14 and validation_counts.max() <= 15

    other_seed = load_image_dataset("digits", seed=0)
    assert other_seed.splits["validation"]["row_index"] != first.splits["validation"]["row_index"]
    assert other_seed.splits["test"]["row_index"] == first.splits["test"]["row_index"]


def test_digits_with_test_as_evaluation_split() -> None:
    data = load_image_dataset("digits", eval_split="test")
    assert {name: len(split) for name, split in data.splits.items()} == {
        "train": 1437,
        "validation": 360,
    }


# --- imagefolder and other sources ------------------------------------------------------


@pytest.mark.parametrize("use_builder_name", [False, True])
def test_imagefolder_labels_rgb_and_normalisation(
    image_folder: Path, use_builder_name: bool
) -> None:
    if use_builder_name:
        data = load_image_dataset(
            "imagefolder", data_dir=str(image_folder), validation_fraction=0.25
        )
    else:
        data = load_image_dataset(str(image_folder), validation_fraction=0.25)
    assert data.label_names == tuple(sorted(CLASS_COLOURS))
    assert {name: len(split) for name, split in data.splits.items()} == {
        "train": 9,
        "validation": 3,
    }
    # the validation split is stratified: one image per class
    assert sorted(data.splits["validation"]["label"]) == [0, 1, 2]

    transform = build_transforms(SMALL, train=False)
    for split in data.splits.values():
        transformed = split.with_transform(transform)
        for index in range(len(split)):
            example = transformed[index]
            colour = CLASS_COLOURS[data.label_names[example["labels"]]]
            assert example["pixel_values"].dtype == torch.float32
            assert example["pixel_values"].shape == (3, 8, 8)
            torch.testing.assert_close(
                example["pixel_values"], expected_pixels(colour, SMALL), atol=1e-6, rtol=0
            )


def test_imagefolder_split_folders_are_kept(split_image_folder: Path) -> None:
    data = load_image_dataset(str(split_image_folder))
    sizes = {name: len(split) for name, split in data.splits.items()}
    assert sizes == {
        name: IMAGES_PER_CLASS * len(CLASS_COLOURS) for name in ("train", "validation", "test")
    }

    as_validation = load_image_dataset(str(split_image_folder), eval_split="test")
    assert list(as_validation.splits) == ["train", "validation"]


def test_unlabelled_test_split_is_left_out(tmp_path: Path) -> None:
    image = {"bytes": png_bytes(Image.new("RGB", (4, 4))), "path": None}
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b"])})
    labelled = Dataset.from_dict({"image": [image] * 4, "label": [0, 1, 0, 1]}, features=features)
    unlabelled = Dataset.from_dict({"image": [image] * 2, "label": [-1, -1]}, features=features)
    DatasetDict({"train": labelled, "test": unlabelled}).save_to_disk(str(tmp_path / "saved"))
    data = load_image_dataset(str(tmp_path / "saved"), validation_fraction=0.5)
    assert list(data.splits) == ["train", "validation"]
    with pytest.raises(ValueError, match="eval_split and train_split are both 'train'"):
        load_image_dataset(str(tmp_path / "saved"), eval_split="train")


def test_imagefolder_needs_data_dir() -> None:
    with pytest.raises(ValueError, match="data_dir"):
        load_image_dataset("imagefolder")


def test_saved_dataset_with_string_labels_and_named_columns(tmp_path: Path) -> None:
    images = [png_bytes(Image.new("RGB", (6, 6), (10 * i, 0, 0))) for i in range(6)]
    species = ["owl", "cat", "owl", "cat", "owl", "cat"]
    dataset = Dataset.from_dict(
        {"photo": [{"bytes": b, "path": None} for b in images], "species": species},
        features=Features({"photo": ImageFeature(), "species": Value("string")}),
    )
    DatasetDict({"train": dataset, "test": dataset}).save_to_disk(str(tmp_path / "saved"))

    data = load_image_dataset(
        str(tmp_path / "saved"),
        image_column="photo",
        label_column="species",
        validation_fraction=1 / 3,
    )
    assert data.label_names == ("cat", "owl")
    assert data.splits["test"]["label"] == [1, 0, 1, 0, 1, 0]
    assert isinstance(data.splits["train"].features["label"], ClassLabel)
    assert sorted(data.splits["validation"]["label"]) == [0, 1]


def test_integer_labels_get_numeric_names(tmp_path: Path) -> None:
    image = {"bytes": png_bytes(Image.new("RGB", (4, 4))), "path": None}
    dataset = Dataset.from_dict(
        {"image": [image] * 8, "labels": [0, 3, 0, 3, 0, 3, 0, 3]},
        features=Features({"image": ImageFeature(), "labels": Value("int64")}),
    )
    dataset.save_to_disk(str(tmp_path / "flat"))
    data = load_image_dataset(str(tmp_path / "flat"), validation_fraction=0.25)
    assert data.label_names == ("0", "1", "2", "3")
    assert sorted(data.splits["validation"]["label"]) == [0, 3]


def test_missing_column_names_it_and_the_available_ones(image_folder: Path) -> None:
    with pytest.raises(ValueError, match=r"'species'.*available: \['image', 'label'\]"):
        load_image_dataset(str(image_folder), label_column="species")
    with pytest.raises(ValueError, match=r"'picture'.*available"):
        load_image_dataset(str(image_folder), image_column="picture")
    with pytest.raises(ValueError, match=r"no split 'holdout'.*available: \['train'\]"):
        load_image_dataset(str(image_folder), eval_split="holdout")


def test_dataset_without_image_or_label_column(tmp_path: Path) -> None:
    Dataset.from_dict({"x": [1, 2], "label": [0, 1]}).save_to_disk(str(tmp_path / "no_image"))
    with pytest.raises(ValueError, match=r"no image column.*\['x', 'label'\].*image_column"):
        load_image_dataset(str(tmp_path / "no_image"))
    image = {"bytes": png_bytes(Image.new("RGB", (4, 4))), "path": None}
    Dataset.from_dict(
        {"image": [image], "target": [0]},
        features=Features({"image": ImageFeature(), "target": Value("int64")}),
    ).save_to_disk(str(tmp_path / "no_label"))
    with pytest.raises(ValueError, match=r"no label column.*\['image', 'target'\].*label_column"):
        load_image_dataset(str(tmp_path / "no_label"))


@pytest.mark.skipif(not CIFAR100.is_dir(), reason="shared CIFAR-100 copy not present")
def test_cifar100_columns_detected() -> None:
    data = load_image_dataset(str(CIFAR100))
    assert data.num_labels == 100 and data.label_names[:2] == ("apple", "aquarium_fish")
    sizes = {name: len(split) for name, split in data.splits.items()}
    assert sizes == {"train": 45000, "validation": 5000, "test": 10000}
    example = data.splits["test"].with_transform(build_transforms(SMALL, train=False))[0]
    assert example["pixel_values"].shape == (3, 8, 8)
    assert example["labels"] == data.splits["test"][0]["label"]


# --- decoding errors --------------------------------------------------------------------


def test_corrupt_image_error_names_row_column_and_file(corrupt_image_folder: Path) -> None:
    data = load_image_dataset(str(corrupt_image_folder), validation_fraction=0.25)
    located = [
        (split, position, row)
        for split in data.splits.values()
        for position, (stored, row) in enumerate(
            zip(split["image"], split["row_index"], strict=True)
        )
        if stored["path"].endswith(CORRUPT_FILE_NAME)
    ]
    assert len(located) == 1
    split, position, row = located[0]
    transformed = split.with_transform(build_transforms(SMALL, train=True))
    with pytest.raises(ValueError, match=rf"column 'image', row {row} \(.*{CORRUPT_FILE_NAME}\)"):
        transformed[position]


def test_corrupt_image_bytes_without_row_index() -> None:
    stored = {"bytes": b"\x89PNG\r\n\x1a\n-not-an-image", "path": None}
    transform = build_transforms(SMALL, train=False)
    with pytest.raises(ValueError, match="cannot decode the image in column 'image', batch item 1"):
        transform({"image": [{"bytes": png_bytes(Image.new("RGB", (4, 4))), "path": None}, stored]})
    with pytest.raises(ValueError, match="expected a PIL image"):
        load_rgb_image({"bytes": None, "path": None})


def test_load_rgb_image_modes() -> None:
    transparent = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    half = Image.new("RGBA", (1, 1), (0, 0, 255, 255))
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))  # pure red ink
    assert load_rgb_image(transparent).getpixel((0, 0)) == (255, 255, 255)
    assert load_rgb_image(half).getpixel((0, 0)) == (0, 0, 255)
    assert load_rgb_image(cmyk).getpixel((0, 0)) == (255, 0, 0)
    assert load_rgb_image(Image.new("L", (1, 1), 7)).getpixel((0, 0)) == (7, 7, 7)


# --- training transforms ----------------------------------------------------------------


def halves_image(size: int = 16) -> Image.Image:
    """Left half red, right half blue."""
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[:, : size // 2] = (255, 0, 0)
    pixels[:, size // 2 :] = (0, 0, 255)
    return Image.fromarray(pixels)


def left_column_colours(augment: str, draws: int = 40) -> set[tuple[int, ...]]:
    """Colours at column 4 of a 16x16 halves image over random draws (a shift moves at most 2)."""
    preprocessing = ImagePreprocessing(image_size=(16, 16), mean=(0, 0, 0), std=(1, 1, 1))
    transform = build_transforms(preprocessing, train=True, augment=augment)
    torch.manual_seed(0)
    colours = set()
    for _ in range(draws):
        pixels = unnormalise(
            transform({"image": [halves_image()]})["pixel_values"][0], preprocessing
        )
        colours.add(tuple(pixels[:, 8, 4].tolist()))
    return colours


def test_default_augmentation_flips_and_crop_does_not() -> None:
    assert left_column_colours("default") == {(255, 0, 0), (0, 0, 255)}
    assert left_column_colours("crop") == {(255, 0, 0)}


def test_shift_is_zero_padded_and_at_most_one_eighth() -> None:
    preprocessing = ImagePreprocessing(image_size=(16, 16), mean=(0, 0, 0), std=(1, 1, 1))
    transform = build_transforms(preprocessing, train=True, augment="crop")
    image = Image.new("RGB", (16, 16), (90, 90, 90))
    torch.manual_seed(0)
    shifted = 0
    for _ in range(30):
        pixels = unnormalise(transform({"image": [image]})["pixel_values"][0], preprocessing)
        black_rows = int((pixels.sum(dim=(0, 2)) == 0).sum())
        black_columns = int((pixels.sum(dim=(0, 1)) == 0).sum())
        assert black_rows <= 2 and black_columns <= 2
        assert set(pixels.unique().tolist()) <= {0, 90}
        shifted += black_rows + black_columns > 0
    assert shifted > 0


def test_no_augmentation_equals_evaluation_transform() -> None:
    batch = {"image": [halves_image(20)], "label": [1]}
    torch.manual_seed(0)
    train = build_transforms(SMALL, train=True, augment="none")(batch)
    evaluation = build_transforms(SMALL, train=False)(batch)
    torch.testing.assert_close(train["pixel_values"][0], evaluation["pixel_values"][0])
    assert train["labels"] == evaluation["labels"] == [1]


def test_cached_teacher_logits_pass_through() -> None:
    batch = {"image": [halves_image(8)] * 2, "label": [0, 1], "teacher_logits": [[1, 2], [3, 4]]}
    out = build_transforms(SMALL, train=False)(batch)
    examples = [{key: values[i] for key, values in out.items()} for i in range(2)]
    collated = collate_image_batch(examples)
    assert collated["teacher_logits"].dtype == torch.float32
    assert collated["teacher_logits"].tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_teacher_inputs_come_from_the_same_augmented_view() -> None:
    student = ImagePreprocessing(
        image_size=(8, 8), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear"
    )
    teacher = ImagePreprocessing(image_size=(16, 16))  # ImageNet statistics, bicubic
    transform = build_transforms(student, train=True, teacher_preprocessing=teacher)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(24, 30, 3), dtype=np.uint8))
    torch.manual_seed(0)
    for _ in range(5):
        out = transform({"image": [image], "label": [2]})
        assert out["pixel_values"][0].shape == (3, 8, 8)
        assert out["teacher_pixel_values"][0].shape == (3, 16, 16)
        teacher_view = unnormalise(out["teacher_pixel_values"][0], teacher)
        # the student's input is the teacher's view resized to 8x8 with the student's filter
        teacher_image = Image.fromarray(teacher_view.permute(1, 2, 0).numpy())
        resized = np.asarray(teacher_image.resize((8, 8), Image.Resampling.BILINEAR))
        student_view = unnormalise(out["pixel_values"][0], student).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(student_view, resized)


def test_bad_augment_or_interpolation_fails_early() -> None:
    with pytest.raises(ValueError, match="augment must be one of"):
        build_transforms(SMALL, train=True, augment="mixup")
    with pytest.raises(ValueError, match="interpolation 'area'"):
        build_transforms(ImagePreprocessing(image_size=(8, 8), interpolation="area"), train=False)


def test_missing_image_column_in_batch() -> None:
    with pytest.raises(ValueError, match=r"no column 'image' in the batch; columns: \['img'\]"):
        build_transforms(SMALL, train=False)({"img": [halves_image()]})


# --- collate ----------------------------------------------------------------------------


def test_collate_stacks_tensors_and_labels_as_int64() -> None:
    examples = [
        {
            "pixel_values": torch.full((3, 4, 4), float(i)),
            "teacher_pixel_values": torch.full((3, 6, 6), float(-i)),
            "teacher_logits": torch.tensor([float(i), 0.0]),
            "labels": i,
        }
        for i in range(3)
    ]
    batch = collate_image_batch(examples)
    assert set(batch) == {"pixel_values", "teacher_pixel_values", "teacher_logits", "labels"}
    assert batch["pixel_values"].shape == (3, 3, 4, 4)
    assert batch["teacher_pixel_values"].shape == (3, 3, 6, 6)
    assert batch["labels"].dtype == torch.int64 and batch["labels"].tolist() == [0, 1, 2]
    assert batch["pixel_values"][2].max().item() == 2.0
    assert batch["teacher_logits"][:, 0].tolist() == [0.0, 1.0, 2.0]


def test_collate_rejects_ragged_keys() -> None:
    with pytest.raises(ValueError, match="'labels' is in 1 of 2 examples"):
        collate_image_batch(
            [
                {"pixel_values": torch.zeros(3, 2, 2), "labels": 0},
                {"pixel_values": torch.zeros(3, 2, 2)},
            ]
        )
    with pytest.raises(ValueError, match="empty"):
        collate_image_batch([])


def test_transformed_digits_through_a_dataloader() -> None:
    data = load_image_dataset("digits")
    preprocessing = ImagePreprocessing(image_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    train = data.splits["train"].with_transform(
        build_transforms(preprocessing, train=True, augment="crop")
    )
    loader = torch.utils.data.DataLoader(train, batch_size=16, collate_fn=collate_image_batch)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (16, 3, 32, 32)
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1
    assert batch["labels"].tolist() == data.splits["train"]["label"][:16]


# --- replayed views (for cached teacher logits) ------------------------------------------


def test_replayed_views_repeat_their_pixels_and_differ_between_views() -> None:
    preprocessing = ImagePreprocessing(image_size=(16, 16), mean=(0, 0, 0), std=(1, 1, 1))
    views = ViewReplay(view_size=(16, 16), interpolation="bicubic", num_views=6, seed=3)
    transform = build_transforms(preprocessing, train=True, augment="default", views=views)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8))

    def view(row_index: int, view_index: int) -> torch.Tensor:
        batch = {"image": [image], "row_index": [row_index], "view_index": [view_index]}
        return transform(batch)["pixel_values"][0]

    torch.manual_seed(0)
    first = [view(7, k) for k in range(6)]
    torch.manual_seed(1)  # the global generator plays no part
    again = [view(7, k) for k in range(6)]
    for left, right in zip(first, again, strict=True):
        torch.testing.assert_close(left, right, rtol=0, atol=0)
    distinct = {tuple(pixels.flatten().tolist()) for pixels in first}
    assert len(distinct) > 1  # six seeded draws of 5 x 5 shifts x 2 flips
    # the row is part of the seed: the same image in row 8 gets other views
    assert any(not torch.equal(view(8, k), first[k]) for k in range(6))


def test_replayed_views_need_row_and_view_indices() -> None:
    views = ViewReplay(view_size=(8, 8), interpolation="bicubic", num_views=2)
    transform = build_transforms(SMALL, train=True, augment="crop", views=views)
    with pytest.raises(ValueError, match=r"need the columns \['view_index'\]"):
        transform({"image": [halves_image(8)], "row_index": [0]})
    with pytest.raises(ValueError, match=r"view_index 2 of row 0 is outside \[0, 2\)"):
        transform({"image": [halves_image(8)], "row_index": [0], "view_index": [2]})
    with pytest.raises(ValueError, match="num_views must be >= 1"):
        ViewReplay(view_size=(8, 8), interpolation="bicubic", num_views=0)


def test_cached_teacher_logits_with_random_augmentation_are_refused() -> None:
    batch = {"image": [halves_image(8)], "label": [0], "teacher_logits": [[1.0, 2.0]]}
    with pytest.raises(ValueError, match="augments at random"):
        build_transforms(SMALL, train=True, augment="crop")(batch)
    out = build_transforms(SMALL, train=True, augment="none")(batch)
    assert out["teacher_logits"][0].tolist() == [1.0, 2.0]
