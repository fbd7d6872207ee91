"""Where models run and at which precision: one rule for ``monitor run`` and ``monitor train``.

Precision rule (both engines):

- ``fp32`` on a CPU (``int8`` on request, inference only);
- on CUDA, ``auto`` is ``bf16`` only on compute capability >= 8.0 (Ampere and later), where bf16
  matrix units exist; older GPUs (Colab's T4 is 7.5) only *emulate* bf16, which
  ``torch.cuda.is_bf16_supported()`` still reports as supported, so they get ``fp16`` (training adds
  a gradient scaler);
- ``fp32`` is always available on request;
- TF32 stays off for matmuls *and* cuDNN convolutions (``set_matmul_policy``; PyTorch leaves cuDNN's
  TF32 on by default, which would round the patch projection): ``fp32`` means fp32, the reference the
  other precisions are compared with, and the GPU front end's mel matmuls must match the CPU's
  (TF32 would move log-mel values by ~1e-3). bf16/fp16 runs get their speed from autocast, not TF32.
"""

from __future__ import annotations

from monitor.errors import MonitorError

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


def pick_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda``, then ``mps``, then ``cpu``; anything else is returned as given."""
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cuda_capability(device: str = "cuda") -> tuple[int, int] | None:
    """(major, minor) of a CUDA device, or None when ``device`` is not CUDA or none is present."""
    import torch

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(torch.device(device)))  # type: ignore[return-value]


def native_bf16(capability: tuple[int, int] | None) -> bool:
    """bf16 runs natively from compute capability 8.0 on (A100, RTX 30xx, H100, ...)."""
    return capability is not None and capability >= (8, 0)


def resolve_precision(requested: str, device: str, capability: tuple[int, int] | None = None) -> str:
    """The precision a run uses: ``auto`` resolved by the rule above; impossible pairs raise ``MonitorError``.

    ``capability`` defaults to the device's own (pass it to test the rule without a GPU).
    """
    if requested not in PRECISIONS:
        raise MonitorError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    dev = str(device)
    if requested == "auto":
        if dev.startswith("cuda"):
            cap = capability if capability is not None else cuda_capability(dev)
            return "bf16" if native_bf16(cap) else "fp16"
        return "fp32"
    if requested == "int8" and dev != "cpu":
        raise MonitorError("--precision int8 runs on the CPU only; use --device cpu, or --precision auto on a GPU")
    if requested in ("bf16", "fp16") and not dev.startswith("cuda"):
        raise MonitorError(f"--precision {requested} needs a CUDA GPU; on {dev} use fp32" +
                           (" or int8" if dev == "cpu" else ""))
    return requested


def set_matmul_policy() -> None:
    """TF32 off for CUDA matmuls and cuDNN convolutions (the policy above); harmless without a GPU."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def autocast_dtype(precision: str):
    """The ``torch.autocast`` dtype of a resolved precision (None: run in fp32 / int8 as built)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def all_devices(device: str) -> list[str]:
    """The devices a run scores on: every GPU for ``cuda``; a named one (``cuda:1``, ``cpu``) alone."""
    if device == "cuda":
        import torch

        n = torch.cuda.device_count()
        return [f"cuda:{i}" for i in range(n)] if n > 1 else ["cuda"]
    return [device]
