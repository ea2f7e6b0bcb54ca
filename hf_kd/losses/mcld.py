"""MCLD: multi-perspective contrastive logit distillation (Wang & Zhou, arXiv 2411.10693).

The paper's equations were not available and no official code is public: the formulation
here is a **reconstruction** from the paper's summary (spec section 6), with every
reconstructed choice exposed as an option.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor

from hf_kd.losses._common import check_choice, check_flag, check_positive
from hf_kd.losses._common import target_mask as label_mask
from hf_kd.losses._contrastive import SIMILARITIES, blocked_info_nce, similarity_embedding
from hf_kd.losses._distributed import GatheredRows, gather_rows_across_ranks
from hf_kd.losses.base import DistillationLoss
from hf_kd.losses.registry import register_loss

MCLD_TERMS = ("instance", "sample", "category")
TARGET_MASK_VARIANTS = ("negatives", "target_entry")
SAMPLE_POSITIVES = ("label", "teacher_prediction")
CATEGORY_CLASSES = ("all", "present")


def row_contrast_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    tau: float = 0.1,
    similarity: str = "pearson",
    target_mask: bool = True,
    target_mask_variant: str = "negatives",
    sample_positives: str = "label",
    symmetric_instance: bool = False,
    gather_across_ranks: bool = False,
    terms: Collection[str] = ("instance", "sample"),
) -> dict[str, Tensor]:
    """The instance-wise and sample-wise terms, both read from one ``[N, M]`` matrix
    ``A_ij = sim(s_i, t_j) / tau`` (``M = N``, or the batch of every rank when gathering).

    ``instance``: ``(1/N) sum_i -log(exp(A_ii) / sum_{j in K(i)} exp(A_ij))`` with
    ``K(i) = {i} u {j : y_j != y_i}`` under the ``negatives`` target mask, else every ``j``.
    ``sample``: ``(1/N) sum_i -(1/|P(i)|) sum_{p in P(i)} log softmax_j(A_i.)_p`` with
    ``P(i) = {j : y_j = y_i}`` (``label``) or ``{j : argmax t_j = argmax t_i}``
    (``teacher_prediction``).
    """
    num_samples, num_classes = student_logits.shape
    mask_target_entry = target_mask and target_mask_variant == "target_entry"
    dropped = label_mask(labels, num_classes) if mask_target_entry else None
    student_rows, _ = similarity_embedding(student_logits, 1, similarity, dropped)
    # 1/tau is folded into the teacher side, which needs no gradient.
    teacher_rows, _ = similarity_embedding(
        teacher_logits.detach(), 1, similarity, dropped, scale=1 / tau
    )
    # The teacher's top-1 class is only read by the teacher_prediction positives.
    if sample_positives == "teacher_prediction":
        teacher_ids = torch.stack((labels, teacher_logits.argmax(dim=1)), dim=1)
    else:
        teacher_ids = labels[:, None]
    if gather_across_ranks:
        gathered = gather_rows_across_ranks(teacher_rows, teacher_ids)
    else:
        gathered = GatheredRows(teacher_rows, teacher_ids, valid=None, offset=0)
    logits = student_rows @ gathered.rows.T
    if gathered.valid is not None:
        logits = logits.masked_fill(~gathered.valid, float("-inf"))
    column = torch.arange(logits.shape[1], device=logits.device)
    own_column = gathered.offset + torch.arange(num_samples, device=logits.device)
    is_own = column[None, :] == own_column[:, None]
    same_class = labels[:, None] == gathered.integers[None, :, 0]
    positive_logits = logits.gather(1, own_column[:, None]).squeeze(1)

    computed = {}
    if "instance" in terms:
        instance_logits = logits
        if target_mask and target_mask_variant == "negatives":
            instance_logits = logits.masked_fill(same_class & ~is_own, float("-inf"))
        student_to_teacher = (instance_logits.logsumexp(dim=1) - positive_logits).mean()
        if symmetric_instance:
            # Student negatives are local: gathering them would need a differentiable gather.
            local_block = instance_logits[:, gathered.offset : gathered.offset + num_samples]
            teacher_to_student = (local_block.logsumexp(dim=0) - positive_logits).mean()
            computed["instance"] = (student_to_teacher + teacher_to_student) / 2
        else:
            computed["instance"] = student_to_teacher
    if "sample" in terms:
        positives = same_class
        if sample_positives == "teacher_prediction":
            positives = teacher_ids[:, None, 1] == gathered.integers[None, :, 1]
        if gathered.valid is not None:
            positives = positives & gathered.valid
        log_probs = logits.log_softmax(dim=1).masked_fill(~positives, 0.0)
        computed["sample"] = -(log_probs.sum(dim=1) / positives.sum(dim=1)).mean()
    return computed


def category_contrast_term(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    tau: float = 0.1,
    similarity: str = "pearson",
    category_classes: str = "all",
    category_block_size: int | None = None,
) -> Tensor:
    """The category-wise term from ``B_cd = sim(S_:c, T_:d) / tau`` (columns over the batch):
    ``(1/|V|) sum_{c in V} -log(exp(B_cc) / sum_d exp(B_cd))``.

    ``V`` holds the classes whose student and teacher columns both have a direction (not
    constant over the batch under ``pearson``); it is 0 when ``V`` is empty. With
    ``category_classes="present"`` anchors and candidates are the classes present in
    ``labels``. Computed in row blocks (see :func:`blocked_info_nce`).
    """
    num_classes = student_logits.shape[1]
    student_columns, student_has_direction = similarity_embedding(student_logits, 0, similarity)
    teacher_columns, teacher_has_direction = similarity_embedding(
        teacher_logits.detach(), 0, similarity, scale=1 / tau
    )
    anchors = (student_has_direction & teacher_has_direction).squeeze(0)
    candidate_bias = None
    if category_classes == "present":
        present = torch.zeros(num_classes, dtype=torch.bool, device=labels.device)
        present[labels] = True
        anchors = anchors & present
        candidate_bias = torch.zeros_like(student_columns[0]).masked_fill(~present, float("-inf"))
    anchor_weights = anchors.to(student_columns.dtype) / anchors.sum().clamp_min(1)
    return blocked_info_nce(
        student_columns, teacher_columns, anchor_weights, candidate_bias, category_block_size
    )


def mcld_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    tau: float = 0.1,
    similarity: str = "pearson",
    target_mask: bool = True,
    target_mask_variant: str = "negatives",
    sample_positives: str = "label",
    symmetric_instance: bool = False,
    category_classes: str = "all",
    category_block_size: int | None = None,
    gather_across_ranks: bool = False,
    terms: Collection[str] = MCLD_TERMS,
) -> dict[str, Tensor]:
    """MCLD's unweighted ``instance``, ``sample`` and ``category`` terms (only those in ``terms``).

    See :class:`MCLDLoss` for the maths and the options.
    """
    computed = {}
    if "instance" in terms or "sample" in terms:
        computed.update(
            row_contrast_terms(
                student_logits,
                teacher_logits,
                labels,
                tau=tau,
                similarity=similarity,
                target_mask=target_mask,
                target_mask_variant=target_mask_variant,
                sample_positives=sample_positives,
                symmetric_instance=symmetric_instance,
                gather_across_ranks=gather_across_ranks,
                terms=terms,
            )
        )
    if "category" in terms:
        computed["category"] = category_contrast_term(
            student_logits,
            teacher_logits,
            labels,
            tau=tau,
            similarity=similarity,
            category_classes=category_classes,
            category_block_size=category_block_size,
        )
    return computed


@register_loss("mcld")
class MCLDLoss(DistillationLoss):
    """Multi-perspective contrastive logit distillation, after Wang and Zhou,
    "Multi-perspective Contrastive Logit Distillation", arXiv 2411.10693 (2024).

    **This formulation is reconstructed.** No official code is public and the paper's
    equations were not available; the paper's summary establishes only that MCLD contrasts
    logits (no projection head, no memory bank) from an instance-wise, a sample-wise and a
    category-wise perspective, with a target mask and a warm-up of the category term.
    Everything else below is hf-kd's choice, each exposed as an option.

    With student and teacher logits ``S, T`` (``[N, C]``, teacher constant), labels ``y``,
    ``A_ij = sim(s_i, t_j) / tau`` over rows and ``B_cd = sim(S_:c, T_:d) / tau`` over
    columns::

        instance = (1/N) sum_i -log( exp(A_ii) / sum_{j in K(i)} exp(A_ij) )
        sample   = (1/N) sum_i -(1/|P(i)|) sum_{p in P(i)} log( exp(A_ip) / sum_j exp(A_ij) )
        category = (1/|V|) sum_{c in V} -log( exp(B_cc) / sum_d exp(B_cd) )
        loss = instance_weight * instance + sample_weight * sample
               + min(epoch / category_warmup_epochs, 1) * category_weight * category

    Options (defaults first):

    * ``similarity``: ``"pearson"`` (centre, L2-normalise, dot; rows centred over classes,
      columns over the batch), ``"cosine"`` or ``"dot"``. ``tau``: the temperature.
    * ``target_mask`` with ``target_mask_variant``: ``"negatives"`` makes
      ``K(i) = {i} u {j : y_j != y_i}`` (same-class samples are not pushed away);
      ``"target_entry"`` instead removes each row's ground-truth class entry before the row
      similarity (both row terms) and keeps every ``j`` in ``K(i)``. ``target_mask=False``:
      ``K(i)`` is the whole batch.
    * ``sample_positives``: ``"label"`` (``P(i) = {j : y_j = y_i}``) or
      ``"teacher_prediction"`` (``P(i) = {j : argmax t_j = argmax t_i}``).
    * ``symmetric_instance``: average the student-to-teacher instance term with the
      teacher-to-student one (anchor ``t_i``, candidates ``s_j``).
    * ``category_classes``: ``"all"`` or ``"present"`` (anchors and candidates restricted to
      the classes in the batch). ``V`` leaves out classes whose column has no direction over
      the batch (constant under ``pearson``); with ``V`` empty the term is 0.
    * ``category_warmup_epochs``: linear ramp of the category term over 1-based,
      possibly fractional epochs (``epoch=None``: finished; 0: no warm-up).
    * ``category_block_size``: rows of the ``[C, C]`` matrix per block (default: about
      8 MiB a block), so memory is ``O(block * C)`` even for ImageNet-21k.
    * ``gather_across_ranks``: all-gather teacher rows and labels from every
      ``torch.distributed`` rank so the row terms contrast against the global batch (no-op
      when not initialised). The category term and the teacher-to-student half of the
      symmetric instance term stay per rank.

    Cost: each side is embedded once; the row terms share one ``[N, N]`` matrix and the
    category term streams one ``[C, C]`` matrix; a term of weight 0 is not computed.
    """

    term_names = MCLD_TERMS

    def __init__(
        self,
        tau: float = 0.1,
        instance_weight: float = 1.0,
        sample_weight: float = 1.0,
        category_weight: float = 1.0,
        category_warmup_epochs: float = 20,
        target_mask: bool = True,
        target_mask_variant: str = "negatives",
        similarity: str = "pearson",
        sample_positives: str = "label",
        symmetric_instance: bool = False,
        category_classes: str = "all",
        category_block_size: int | None = None,
        gather_across_ranks: bool = False,
        *,
        logit_standardization: bool = False,
        check_values: bool = True,
    ):
        super().__init__(logit_standardization=logit_standardization, check_values=check_values)
        self.tau = check_positive("tau", tau)
        self.instance_weight = check_positive("instance_weight", instance_weight, allow_zero=True)
        self.sample_weight = check_positive("sample_weight", sample_weight, allow_zero=True)
        self.category_weight = check_positive("category_weight", category_weight, allow_zero=True)
        self.category_warmup_epochs = check_positive(
            "category_warmup_epochs", category_warmup_epochs, allow_zero=True
        )
        self.target_mask = check_flag("target_mask", target_mask)
        self.target_mask_variant = check_choice(
            "target_mask_variant", target_mask_variant, TARGET_MASK_VARIANTS
        )
        self.similarity = check_choice("similarity", similarity, SIMILARITIES)
        self.sample_positives = check_choice("sample_positives", sample_positives, SAMPLE_POSITIVES)
        self.symmetric_instance = check_flag("symmetric_instance", symmetric_instance)
        self.category_classes = check_choice("category_classes", category_classes, CATEGORY_CLASSES)
        if category_block_size is not None and (
            isinstance(category_block_size, bool)
            or not isinstance(category_block_size, int)
            or category_block_size < 1
        ):
            raise ValueError(
                f"category_block_size must be a positive int or None, got {category_block_size!r}"
            )
        self.category_block_size = category_block_size
        self.gather_across_ranks = check_flag("gather_across_ranks", gather_across_ranks)

    def category_ramp(self, epoch: float | None) -> float:
        """``r(epoch) = min(epoch / category_warmup_epochs, 1)``; 1 when finished or no warm-up."""
        if epoch is None or self.category_warmup_epochs == 0:
            return 1.0
        return min(max(float(epoch), 0.0) / self.category_warmup_epochs, 1.0)

    def term_weights(self, epoch: float | None) -> dict[str, float]:
        return {
            "instance": self.instance_weight,
            "sample": self.sample_weight,
            "category": self.category_ramp(epoch) * self.category_weight,
        }

    def compute_terms(
        self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, epoch: float | None
    ) -> dict[str, Tensor]:
        return mcld_terms(
            student_logits,
            teacher_logits,
            labels,
            tau=self.tau,
            similarity=self.similarity,
            target_mask=self.target_mask,
            target_mask_variant=self.target_mask_variant,
            sample_positives=self.sample_positives,
            symmetric_instance=self.symmetric_instance,
            category_classes=self.category_classes,
            category_block_size=self.category_block_size,
            gather_across_ranks=self.gather_across_ranks,
            terms=self.active_terms(epoch),
        )
