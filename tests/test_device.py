"""The one precision rule shared by ``monitor run`` and ``monitor train`` (monitor.device)."""

from __future__ import annotations

import pytest
import torch

from monitor.device import autocast_dtype, native_bf16, resolve_precision
from monitor.errors import MonitorError


@pytest.mark.parametrize("cap, want", [((7, 5), "fp16"), ((7, 0), "fp16"), ((8, 0), "bf16"), ((8, 6), "bf16"),
                                       ((9, 0), "bf16")])
def test_auto_on_cuda_is_bf16_only_from_capability_8(cap, want):
    # a T4 (7.5) reports is_bf16_supported() through emulation; the rule must still pick fp16 there
    assert resolve_precision("auto", "cuda", capability=cap) == want
    assert native_bf16(cap) is (want == "bf16")


def test_cpu_defaults_and_refusals():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("int8", "cpu") == "int8"
    assert resolve_precision("fp32", "cuda", capability=(9, 0)) == "fp32"
    for bad, dev in (("int8", "cuda"), ("bf16", "cpu"), ("fp16", "cpu"), ("fp8", "cpu")):
        with pytest.raises(MonitorError):
            resolve_precision(bad, dev, capability=(9, 0))


def test_autocast_dtypes():
    assert autocast_dtype("bf16") is torch.bfloat16
    assert autocast_dtype("fp16") is torch.float16
    assert autocast_dtype("fp32") is None and autocast_dtype("int8") is None


def test_training_amp_follows_the_same_rule():
    from monitor.train.optim import amp_dtype

    assert amp_dtype("auto", "cpu") is None
    assert amp_dtype("off", "cuda") is None
