"""The paper behind each distillation method: display name, one-line summary and BibTeX.

Keyed by the loss registry name (``hf_kd.losses.available_losses()``). Model cards cite the
method's papers, plus logit standardisation when it was switched on.
"""

from __future__ import annotations

from dataclasses import dataclass

BIBTEX: dict[str, str] = {
    "hinton2015distilling": """@article{hinton2015distilling,
  title   = {Distilling the Knowledge in a Neural Network},
  author  = {Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff},
  journal = {arXiv preprint arXiv:1503.02531},
  year    = {2015}
}""",
    "zhao2022decoupled": """@inproceedings{zhao2022decoupled,
  title     = {Decoupled Knowledge Distillation},
  author    = {Zhao, Borui and Cui, Quan and Song, Renjie and Qiu, Yiyu and Liang, Jiajun},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and
               Pattern Recognition (CVPR)},
  pages     = {11953--11962},
  year      = {2022}
}""",
    "chi2023normkd": """@article{chi2023normkd,
  title   = {NormKD: Normalized Logits for Knowledge Distillation},
  author  = {Chi, Zhihao and Zheng, Tu and Li, Hengjia and Yang, Zheng and Wu, Boxi and
             Lin, Binbin and Cai, Deng},
  journal = {arXiv preprint arXiv:2308.00520},
  year    = {2023}
}""",
    "sun2024refined": """@article{sun2024refined,
  title   = {Knowledge Distillation with Refined Logits},
  author  = {Sun, Wujie and Chen, Defang and Lyu, Siwei and Chen, Genlang and Chen, Chun and
             Wang, Can},
  journal = {arXiv preprint arXiv:2408.07703},
  year    = {2024}
}""",
    "wang2024multi": """@article{wang2024multi,
  title   = {Multi-perspective Contrastive Logit Distillation},
  author  = {Wang, Qi and Zhou, Jinjia},
  journal = {arXiv preprint arXiv:2411.10693},
  year    = {2024}
}""",
    "sun2024logit": """@inproceedings{sun2024logit,
  title     = {Logit Standardization in Knowledge Distillation},
  author    = {Sun, Shangquan and Ren, Wenqi and Li, Jingzhi and Wang, Rui and Cao, Xiaochun},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and
               Pattern Recognition (CVPR)},
  pages     = {15731--15740},
  year      = {2024}
}""",
    "touvron2021training": """@inproceedings{touvron2021training,
  title     = {Training data-efficient image transformers \\& distillation through attention},
  author    = {Touvron, Hugo and Cord, Matthieu and Douze, Matthijs and Massa, Francisco and
               Sablayrolles, Alexandre and J{\\'e}gou, Herv{\\'e}},
  booktitle = {Proceedings of the 38th International Conference on Machine Learning (ICML)},
  pages     = {10347--10357},
  year      = {2021}
}""",
}

LOGIT_STANDARDIZATION_CITATION = "sun2024logit"
DISTILLATION_TOKEN_CITATION = "touvron2021training"


@dataclass(frozen=True)
class MethodInfo:
    """How a card names and cites a distillation method.

    ``reconstructed`` marks a method whose equations were rebuilt from its paper's public
    summary because neither its code nor its method section was available (MCLD).
    """

    display_name: str
    summary: str
    citation_keys: tuple[str, ...]
    reconstructed: bool = False


METHODS: dict[str, MethodInfo] = {
    "kd": MethodInfo(
        "KD",
        "vanilla knowledge distillation: KL divergence between temperature-softened teacher "
        "and student probabilities (Hinton et al., 2015)",
        ("hinton2015distilling",),
    ),
    "dkd": MethodInfo(
        "DKD",
        "decoupled knowledge distillation: separately weighted target-class (TCKD) and "
        "non-target-class (NCKD) terms (Zhao et al., CVPR 2022)",
        ("zhao2022decoupled",),
    ),
    "normkd": MethodInfo(
        "NormKD",
        "KD with a per-sample temperature proportional to the standard deviation of each "
        "sample's logits (Chi et al., arXiv 2308.00520)",
        ("chi2023normkd",),
    ),
    "normkd_dkd": MethodInfo(
        "NormKD + DKD",
        "DKD computed with NormKD's per-sample temperatures (Chi et al., arXiv 2308.00520)",
        ("chi2023normkd", "zhao2022decoupled"),
    ),
    "rld": MethodInfo(
        "RLD",
        "refined logit distillation: sample-confidence (SCD) and masked-correlation (MCD) "
        "terms that stop a wrong teacher from misleading the student (Sun et al., "
        "arXiv 2408.07703)",
        ("sun2024refined",),
    ),
    "mcld": MethodInfo(
        "MCLD",
        "multi-perspective contrastive logit distillation: instance-, sample- and "
        "category-wise contrastive losses on logits with a target mask (Wang & Zhou, "
        "arXiv 2411.10693)",
        ("wang2024multi",),
        reconstructed=True,
    ),
    "hard": MethodInfo(
        "hard distillation",
        "cross-entropy against the teacher's top-1 class, DeiT's hard distillation "
        "(Touvron et al., ICML 2021)",
        ("touvron2021training",),
    ),
}


def method_info(method: str) -> MethodInfo:
    """The card entry of ``method``; a user-registered loss gets a generic entry, no citation."""
    return METHODS.get(
        method, MethodInfo(method, f"the `{method}` loss registered by the user", citation_keys=())
    )


def citations_for(
    method: str, *, logit_standardization: bool = False, distillation_token: bool = False
) -> list[str]:
    """BibTeX entries to cite for ``method``, plus the LS paper when it was used and DeiT's
    when the student has a distillation token."""
    keys = list(method_info(method).citation_keys)
    if logit_standardization:
        keys.append(LOGIT_STANDARDIZATION_CITATION)
    if distillation_token and DISTILLATION_TOKEN_CITATION not in keys:
        keys.append(DISTILLATION_TOKEN_CITATION)
    return [BIBTEX[key] for key in keys]
