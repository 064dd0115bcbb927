"""Mixed precision: the autocast dtype of ``fit(amp=...)`` and the autocast context of a step."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = ["AMP_DTYPES", "autocast_context", "resolve_amp_dtype"]


AMP_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                                      "float16": torch.float16}
"""Names accepted by ``fit(amp=...)`` for the autocast dtype."""


def autocast_context(
    device: torch.device, enabled: bool, dtype: torch.dtype | None = None
) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` in ``dtype`` (float16 when None) on CUDA when enabled; bfloat16 autocast also on CPU.

    Otherwise ``nullcontext()``: CPU trains in full precision unless bfloat16 is asked for explicitly.

    Example:
        >>> with autocast_context(torch.device("cpu"), True, torch.bfloat16):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
        >>> with autocast_context(torch.device("cpu"), True):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.float32
    """
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=dtype or torch.float16)
    if enabled and device.type == "cpu" and dtype == torch.bfloat16:
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_amp_dtype(amp: bool | str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``fit(amp=...)`` on ``device``; None means full precision.

    ``None`` or ``True``: on CUDA bfloat16 where the GPU supports it (Ampere and later: no GradScaler needed),
    else float16 (with a GradScaler); full precision on CPU. ``False`` or ``"off"``: full precision.
    ``"bf16"``: bfloat16 autocast (CUDA, or CPU autocast). ``"fp16"``: float16 autocast with a GradScaler, CUDA
    only.

    Example:
        >>> resolve_amp_dtype(None, torch.device("cpu")) is None
        True
        >>> resolve_amp_dtype("bf16", torch.device("cpu"))
        torch.bfloat16
    """
    if amp is None or amp is True:
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp is False or amp == "off":
        return None
    dtype = AMP_DTYPES.get(amp) if isinstance(amp, str) else amp
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"amp={amp!r} is not allowed; allowed: None (auto), True, False, 'off', "
                         f"{sorted(AMP_DTYPES)} or torch.bfloat16 / torch.float16")
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError(f"amp={amp!r} (float16 autocast with a GradScaler) needs a CUDA model, the model is on "
                         f"{device}; allowed there: 'bf16' (CPU bfloat16 autocast) or False")
    return dtype
