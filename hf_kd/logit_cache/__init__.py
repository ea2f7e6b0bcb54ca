"""Cached teacher logits: run the teacher once, then train any number of students without it.

1. :func:`cache_teacher_logits` (:mod:`.building`) runs the teacher over a dataset split and
   writes its logits, keyed by ``row_index``, to a directory that ``datasets`` loads
   (:mod:`.storage`: dense float16/float32 or top-k, plus a metadata file);
2. :func:`load_teacher_logit_cache` reads it back and refuses it, naming what differs, when it
   was made for another teacher, dataset, split or preprocessing (:mod:`.fingerprint`);
3. :func:`with_cached_teacher_logits` (:mod:`.attach`) gives a training split a transform
   whose examples carry ``teacher_logits``, replaying the cached augmented views exactly.

``python -m hf_kd.logit_cache --help`` is the command line (:mod:`.__main__`).
"""

from hf_kd.logit_cache.attach import with_cached_teacher_logits
from hf_kd.logit_cache.building import cache_teacher_logits
from hf_kd.logit_cache.fingerprint import dataset_identity, teacher_identity
from hf_kd.logit_cache.storage import TeacherLogitCache, load_teacher_logit_cache

__all__ = [
    "TeacherLogitCache",
    "cache_teacher_logits",
    "dataset_identity",
    "load_teacher_logit_cache",
    "teacher_identity",
    "with_cached_teacher_logits",
]
