"""What a .rkllm file says about itself before the runtime reads it.

The format is closed; what can be read without the runtime is the size, the platform and toolkit
version where the file carries them as text near its start, and the platform in the name that
community conversions follow ("Qwen2.5-1.5B-Instruct-rk3588-w8a8.rkllm").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_HEAD_BYTES = 1 << 20
_PLATFORM = re.compile(rb"(?i)(?<![a-z0-9])(rk3588|rk3576|rk3562|rv1126b)(?![0-9])")
_TOOLKIT = re.compile(rb"(?i)rkllm[-_ ]toolkit[-_ ]?(?:version)?[: =]*v?(\d+\.\d+\.\d+)")


@dataclass(frozen=True)
class ModelFile:
    size: int
    platform: str | None  # "RK3588"
    platform_from: str | None  # "file header" | "file name"
    toolkit_version: str | None


def read_model(path: Path) -> ModelFile:
    """OSError when the file cannot be read."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(_HEAD_BYTES)
    platform, source = None, None
    match = _PLATFORM.search(head)
    if match:
        platform, source = match.group(1).decode().upper(), "file header"
    else:
        named = _PLATFORM.search(path.name.encode())
        if named:
            platform, source = named.group(1).decode().upper(), "file name"
    toolkit = _TOOLKIT.search(head)
    return ModelFile(size, platform, source, toolkit.group(1).decode() if toolkit else None)
