"""record_host_syncs: real ATen calls seen through a TorchDispatchMode."""

from __future__ import annotations

import torch

from hf_kd.host_sync import record_host_syncs


def test_the_recorder_sees_value_reads_and_nothing_else():
    values = torch.randn(8, requires_grad=True)
    with record_host_syncs() as syncs:
        loss = (values.exp() * 2).sum()
        loss.backward()
        torch.isfinite(values).sum()
    assert syncs == []
    with record_host_syncs() as syncs:
        values.sum().item()
        bool(values.sum() > 0)
        f"{values[0]:.3f}"
        values[values > 0]
        values.nonzero()
    operators = [sync.operator for sync in syncs]
    assert operators == [
        "aten._local_scalar_dense.default",  # .item()
        "aten._local_scalar_dense.default",  # bool()
        "aten._local_scalar_dense.default",  # format
        "aten.index.Tensor",  # boolean mask
        "aten.nonzero.default",
    ]
    assert "test_the_recorder_sees_value_reads" in syncs[0].stack
