"""MCLD (reconstructed, spec 6.2/6.3) against explicit loops, its invariances and its scaling."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hf_kd.losses import build_loss
from hf_kd.losses.mcld import category_contrast_term, mcld_terms

from .inputs import random_batch
from .mcld_reference import reference_mcld

LABELS = torch.tensor([0, 1, 0, 2, 1, 0])  # classes 3 and 4 absent, repeated classes present

OPTION_SETS = [
    {},
    {"similarity": "cosine"},
    {"similarity": "dot", "tau": 2.0},
    {"tau": 0.5},
    {"target_mask": False},
    {"target_mask_variant": "target_entry"},
    {"sample_positives": "teacher_prediction"},
    {"symmetric_instance": True},
    {"category_classes": "present"},
    {"category_classes": "present", "category_block_size": 2, "similarity": "cosine"},
]


def option_id(options: dict) -> str:
    return ",".join(f"{key}={value}" for key, value in options.items()) or "default"


def no_warmup_loss(**options: object):
    return build_loss("mcld", category_warmup_epochs=0, **options)


@pytest.mark.parametrize("options", OPTION_SETS, ids=option_id)
def test_mcld_matches_explicit_loops(options: dict) -> None:
    student, teacher, _ = random_batch(6, 5, seed=7)
    output = no_warmup_loss(**options)(student, teacher, LABELS)
    reference_options = {k: v for k, v in options.items() if k != "category_block_size"}
    expected = reference_mcld(student, teacher, LABELS, **reference_options)
    for name in ("instance", "sample", "category"):
        assert output.terms[name].item() == pytest.approx(expected[name], rel=1e-10), name
    assert output.loss.item() == pytest.approx(sum(expected.values()), rel=1e-10)


def test_constant_columns_are_left_out_of_the_category_mean() -> None:
    student, teacher, _ = random_batch(6, 5, seed=8)
    student[:, 2] = 1.5
    teacher[:, 4] = -0.5
    output = no_warmup_loss()(student, teacher, LABELS)
    expected = reference_mcld(student, teacher, LABELS)
    assert output.terms["category"].item() == pytest.approx(expected["category"], rel=1e-10)


def test_single_sample_has_no_category_signal() -> None:
    """Every column is constant over a batch of one: the category term is 0, with no gradient."""
    student, teacher, labels = random_batch(1, 5, seed=9)
    student.requires_grad_(True)
    output = no_warmup_loss()(student, teacher, labels)
    output.terms["category"].backward()
    assert output.terms["category"].item() == 0.0
    assert torch.equal(student.grad, torch.zeros_like(student))
    assert torch.isfinite(output.loss)


def test_weights_and_category_warmup_combine_the_terms() -> None:
    student, teacher, labels = random_batch(6, 5, seed=10)
    loss_fn = build_loss(
        "mcld",
        instance_weight=0.5,
        sample_weight=2.0,
        category_weight=3.0,
        category_warmup_epochs=20,
    )
    for epoch, ramp in ((5, 0.25), (10.5, 0.525), (20, 1.0), (40, 1.0), (None, 1.0)):
        output = loss_fn(student, teacher, labels, epoch=epoch)
        terms = output.terms
        expected = 0.5 * terms["instance"] + 2.0 * terms["sample"] + ramp * 3.0 * terms["category"]
        assert output.loss.item() == pytest.approx(expected.item(), rel=1e-12)
        assert loss_fn.term_weights(epoch)["category"] == pytest.approx(ramp * 3.0)


@pytest.mark.parametrize(
    ("weights", "computed"),
    [
        ({"category_weight": 0.0}, {"instance", "sample"}),
        ({"instance_weight": 0.0, "sample_weight": 0.0}, {"category"}),
        ({"sample_weight": 0.0}, {"instance", "category"}),
    ],
)
def test_terms_of_weight_zero_are_not_computed(weights: dict, computed: set) -> None:
    student, teacher, labels = random_batch(6, 5, seed=11)
    output = build_loss("mcld", **weights)(student, teacher, labels)
    assert set(output.terms) == computed
    full = build_loss("mcld")(student, teacher, labels)
    for name in computed:
        assert output.terms[name].item() == pytest.approx(full.terms[name].item(), rel=1e-12)


@pytest.mark.parametrize("options", OPTION_SETS, ids=option_id)
def test_invariant_to_permuting_batch_and_classes_consistently(options: dict) -> None:
    student, teacher, _ = random_batch(6, 5, seed=12)
    labels = LABELS
    loss_fn = no_warmup_loss(**options)
    original = loss_fn(student, teacher, labels)
    generator = torch.Generator().manual_seed(0)
    rows = torch.randperm(6, generator=generator)
    classes = torch.randperm(5, generator=generator)
    new_label_of = torch.argsort(classes)  # class c moves to column new_label_of[c]
    permuted = loss_fn(
        student[rows][:, classes], teacher[rows][:, classes], new_label_of[labels[rows]]
    )
    for name, value in original.terms.items():
        assert permuted.terms[name].item() == pytest.approx(value.item(), rel=1e-10), name


@pytest.mark.parametrize("category_classes", ["all", "present"])
def test_blocked_category_term_equals_the_full_one(category_classes: str) -> None:
    student, teacher, labels = random_batch(8, 37, seed=13)
    values, gradients = [], []
    for block_size in (None, 37, 5, 1):
        leaf = student.clone().requires_grad_(True)
        value = category_contrast_term(
            leaf,
            teacher,
            labels,
            category_classes=category_classes,
            category_block_size=block_size,
        )
        value.backward()
        values.append(value)
        gradients.append(leaf.grad)
    for value, gradient in zip(values[1:], gradients[1:], strict=True):
        torch.testing.assert_close(value, values[0], rtol=1e-12, atol=0)
        torch.testing.assert_close(gradient, gradients[0], rtol=1e-10, atol=1e-14)


def test_gather_across_ranks_without_a_process_group_is_the_plain_result() -> None:
    assert not dist.is_initialized()
    student, teacher, labels = random_batch(6, 5, seed=14)
    plain = mcld_terms(student, teacher, labels)
    gathered = mcld_terms(student, teacher, labels, gather_across_ranks=True)
    for name, value in plain.items():
        assert torch.equal(gathered[name], value), name


GATHER_OPTION_SETS = [{}, {"sample_positives": "teacher_prediction", "target_mask": False}]


def gather_worker(rank: int, world_size: int, rendezvous: str, data: dict, results: str) -> None:
    """One rank: its slice of the batch, MCLD's row terms with teacher rows from every rank."""
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world_size)
    start, stop = data["bounds"][rank]
    outputs = []
    for options in GATHER_OPTION_SETS:
        student = data["student"][start:stop].clone().requires_grad_(True)
        loss_fn = build_loss("mcld", category_weight=0.0, gather_across_ranks=True, **options)
        output = loss_fn(student, data["teacher"][start:stop], data["labels"][start:stop])
        output.loss.backward()
        outputs.append(
            {
                "terms": {name: value.detach() for name, value in output.terms.items()},
                "grad": student.grad,
            }
        )
    torch.save(outputs, f"{results}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_gloo_ranks_contrast_against_the_whole_batch(tmp_path) -> None:
    """Ranks of unequal size (3 and 5 rows), gathering teacher rows and labels: the size-
    weighted mean of their losses, and their gradients, equal one process on the whole batch."""
    student, teacher, _ = random_batch(8, 5, seed=15)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2, 3])
    bounds = [(0, 3), (3, 8)]
    data = {"student": student, "teacher": teacher, "labels": labels, "bounds": bounds}
    rendezvous = f"file://{tmp_path}/rendezvous"
    mp.spawn(gather_worker, args=(2, rendezvous, data, str(tmp_path)), nprocs=2, join=True)
    per_rank = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    for index, options in enumerate(GATHER_OPTION_SETS):
        whole = student.clone().requires_grad_(True)
        reference = build_loss("mcld", category_weight=0.0, **options)(whole, teacher, labels)
        reference.loss.backward()
        for name, value in reference.terms.items():
            combined = sum(
                (stop - start) / 8 * per_rank[rank][index]["terms"][name]
                for rank, (start, stop) in enumerate(bounds)
            )
            torch.testing.assert_close(combined, value.detach(), rtol=1e-12, atol=0)
        for rank, (start, stop) in enumerate(bounds):
            # (n_r / N) * L_r is rank r's share of the whole-batch loss.
            torch.testing.assert_close(
                (stop - start) / 8 * per_rank[rank][index]["grad"],
                whole.grad[start:stop],
                rtol=1e-10,
                atol=1e-14,
            )


@pytest.mark.parametrize("options", [*OPTION_SETS, {"gather_across_ranks": True}], ids=option_id)
def test_gradcheck_every_option(options: dict) -> None:
    student, teacher, _ = random_batch(6, 5, seed=16)
    loss_fn = no_warmup_loss(**options)
    student.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda logits: loss_fn(logits, teacher, LABELS).loss, (student,), eps=1e-6, atol=1e-7
    )


def test_a_constant_float32_column_is_degenerate_despite_rounding() -> None:
    """Centring nine float32 copies of 0.3 (not exact in binary) leaves rounding noise of
    about 1e-7, which must not be normalised up to a unit vector."""
    student, teacher, _ = random_batch(9, 5, seed=17, dtype=torch.float32)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2, 3, 4])
    student[:, 1] = 0.3
    output = no_warmup_loss()(student, teacher, labels)
    student64 = student.double()
    student64[:, 1] = 0.3  # exactly constant in float64 as well
    expected = reference_mcld(student64, teacher.double(), labels)
    assert output.terms["category"].item() == pytest.approx(expected["category"], rel=1e-5)
