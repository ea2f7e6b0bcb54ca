"""Find host synchronisations: places where Python waits for a tensor's values.

On an accelerator the host queues kernels and runs ahead; reading a value back stalls it
until every queued kernel has finished. The reads this module sees, as the ATen operators
they dispatch to:

* ``aten._local_scalar_dense``: ``.item()``, ``float(t)``, ``int(t)``, ``bool(t)`` (so
  ``if t:`` and ``assert t``), ``f"{t:.3f}"``;
* operators whose output size depends on the values (``nonzero``, boolean-mask indexing,
  ``masked_select``, ``unique``, ``repeat_interleave`` with tensor repeats);
* copies from an accelerator to the CPU (``.cpu()``, ``.tolist()``, ``.numpy()``,
  ``print(t)``). On a CPU-only machine these are no copy at all, so only the first two
  kinds can be caught there.

:func:`record_host_syncs` records them with the Python stack that caused each, through a
``TorchDispatchMode``: real execution, nothing patched.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

SCALAR_READS = frozenset({aten._local_scalar_dense.default})
VALUE_DEPENDENT_SHAPES = frozenset(
    {
        aten.nonzero.default,
        aten.masked_select.default,
        aten._unique2.default,
        aten.unique_consecutive.default,
        aten.unique_dim.default,
        aten.repeat_interleave.Tensor,
    }
)
COPIES = frozenset({aten._to_copy.default, aten.copy_.default})
STACK_DEPTH = 12


@dataclass(frozen=True)
class HostSync:
    """One operator that made the host wait, and where it was called from."""

    operator: str
    stack: str

    def __str__(self) -> str:
        return f"{self.operator} at\n{self.stack}"


class HostSyncRecorder(TorchDispatchMode):
    """Records every host synchronisation dispatched while it is active (see the module)."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[HostSync] = []

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if is_host_sync(func, args, kwargs):
            stack = "".join(traceback.format_stack(limit=STACK_DEPTH)[:-1])
            self.syncs.append(HostSync(str(func), stack))
        return func(*args, **kwargs)


def is_host_sync(func: Any, args: tuple, kwargs: dict) -> bool:
    """Whether the ATen call ``func(*args, **kwargs)`` reads values back to the host."""
    if func in SCALAR_READS or func in VALUE_DEPENDENT_SHAPES:
        return True
    if func is aten.index.Tensor:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(
            isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in indices
        )
    if func in COPIES:
        return _copies_to_cpu_from_an_accelerator(func, args, kwargs)
    return False


def _copies_to_cpu_from_an_accelerator(func: Any, args: tuple, kwargs: dict) -> bool:
    if func is aten.copy_.default:
        destination, source = args[0], args[1]
        return destination.device.type == "cpu" and _on_accelerator(source)
    source = args[0]
    target = kwargs.get("device")
    return target is not None and torch.device(target).type == "cpu" and _on_accelerator(source)


def _on_accelerator(tensor: Any) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.device.type not in ("cpu", "meta")


@contextmanager
def record_host_syncs() -> Iterator[list[HostSync]]:
    """Collect the host synchronisations of the enclosed code into the yielded list.

    Example::

        with record_host_syncs() as syncs:
            trainer.training_step(model, batch)
        assert not syncs, "\\n".join(map(str, syncs))
    """
    recorder = HostSyncRecorder()
    with recorder:
        yield recorder.syncs
