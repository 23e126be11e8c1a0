"""Loading librkllmrt.so and deciding which ABI family it speaks.

Nothing here runs at import: the package must import (and most tests run) without the library.
Symbols tell 1.1 / 1.2.0 / 1.2.1+ apart; 1.2.1+ and 1.3.0 export the same names, so only a version
string in the file can separate them. When neither settles it we stop and name `runtime.abi`,
because guessing wrong is a segfault on the user's board.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import re
from dataclasses import dataclass
from types import ModuleType

from rkllm_mqtt.errors import AbiDetectionError, RuntimeLoadError
from rkllm_mqtt.runtime import abi_1_1, abi_1_2, abi_1_2_0, abi_1_3
from rkllm_mqtt.runtime.api import RkllmApi

FAMILIES: dict[str, ModuleType] = {
    "1.1": abi_1_1,
    "1.2.0": abi_1_2_0,
    "1.2": abi_1_2,
    "1.3": abi_1_3,
}
log = logging.getLogger(__name__)

ABI_CHOICES = '"1.1" (1.1.0-1.1.4), "1.2.0", "1.2" (1.2.1-1.2.3) or "1.3" (1.3.0)'

# "rkllm-runtime version: 1.2.3" (what the runtime logs at init), "librkllmrt v1.2.3", ...
# Only labelled versions count: a bare "1.2.3" in a binary could be anything.
_VERSION_PATTERN = re.compile(
    rb"(?i)rkllm[ _-]?(?:runtime|rt)[ _-]?(?:version[ :=]*v?|v)(\d+)\.(\d+)\.(\d+)([a-z]+\d*)?"
)


@dataclass(frozen=True)
class LoadedLibrary:
    lib: ctypes.CDLL
    path: str  # the file actually loaded
    abi: str
    runtime_version: str | None
    module: ModuleType  # the family module (abi_1_1 ...)
    functions: RkllmApi  # the family's bound functions, attributes named like the C functions


def load_library(path: str) -> ctypes.CDLL:
    """dlopen the runtime; RuntimeLoadError (naming runtime.library) when that is impossible."""
    try:
        return ctypes.CDLL(path)
    except OSError as err:
        raise RuntimeLoadError(
            f"cannot load the RKLLM runtime {path!r}: {err} (check runtime.library)"
        ) from err


def library_file(lib: ctypes.CDLL, path: str) -> str:
    """The file the dynamic loader picked, also for a bare name found through the search path."""
    if os.sep in path and os.path.exists(path):
        return os.path.realpath(path)

    class DlInfo(ctypes.Structure):
        _fields_ = [
            ("dli_fname", ctypes.c_char_p),
            ("dli_fbase", ctypes.c_void_p),
            ("dli_sname", ctypes.c_char_p),
            ("dli_saddr", ctypes.c_void_p),
        ]

    try:
        dladdr = ctypes.CDLL(None).dladdr
        dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
        dladdr.restype = ctypes.c_int
        symbol = ctypes.cast(lib["rkllm_init"], ctypes.c_void_p)
        info = DlInfo()
        if dladdr(symbol, ctypes.byref(info)) and info.dli_fname:
            return os.path.realpath(os.fsdecode(info.dli_fname))
    except (AttributeError, OSError):
        pass
    return path


def symbol_family(lib: ctypes.CDLL, file: str) -> str | None:
    """"1.1", "1.2.0" or "1.2+" (1.2.1-1.3.0) when the exports are exactly one family's whole
    function list; None when they match no family completely (a trimmed build, or 1.0.x, which
    exports a subset of 1.1's names with other layouts): then only a version string can tell."""

    def exports(name: str) -> bool:
        try:
            lib[name]
        except AttributeError:
            return False
        return True

    if not exports("rkllm_init") or not exports("rkllm_run"):
        raise RuntimeLoadError(
            f"{file} is not an RKLLM runtime (it does not export rkllm_init/rkllm_run); "
            "check runtime.library"
        )
    names = {family: {fn.name for fn in module.FUNCTIONS} for family, module in FAMILIES.items()}
    exported = {name for name in set().union(*names.values()) if exports(name)}
    if exported == names["1.2"]:  # 1.3.0 exports the same names
        return "1.2+"
    if exported in (names["1.2.0"], names["1.1"]):
        return "1.2.0" if exported == names["1.2.0"] else "1.1"
    return None


def runtime_versions(file: str) -> set[str]:
    """Every labelled runtime version in the library file (usually one, or none)."""
    found: set[str] = set()
    try:
        with open(file, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for match in _VERSION_PATTERN.finditer(data):
                major, minor, patch, suffix = (g.decode() if g else "" for g in match.groups())
                found.add(f"{int(major)}.{int(minor)}.{int(patch)}{suffix.lower()}")
    except (OSError, ValueError):  # unreadable, or empty (mmap of 0 bytes)
        pass
    return found


def family_of_version(version: str) -> str | None:
    """The ABI family of a release number; None for releases we do not support or cannot place."""
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", version)
    if not match:  # e.g. 1.2.1b1, between 1.2.0 and 1.2.1 in layout
        return None
    major, minor, patch = (int(g) for g in match.groups())
    if (major, minor) == (1, 1):
        return "1.1"
    if (major, minor) == (1, 2):
        return "1.2.0" if patch == 0 else "1.2"
    if (major, minor) == (1, 3):
        return "1.3"
    return None


def _evidence(lib: ctypes.CDLL, file: str) -> tuple[str | None, str | None, set[str]]:
    """(symbol family, the one labelled version or None, all labelled versions)."""
    versions = runtime_versions(file)
    return symbol_family(lib, file), (next(iter(versions)) if len(versions) == 1 else None), versions


def _fits(symbols: str | None, family: str) -> bool:
    """Whether a version's family agrees with the exports (incomplete exports contradict nothing)."""
    return symbols is None or symbols == family or (symbols == "1.2+" and family in ("1.2", "1.3"))


def _detect(lib: ctypes.CDLL, file: str) -> tuple[str, str | None]:
    symbols, version, versions = _evidence(lib, file)
    family = family_of_version(version) if version else None
    if family is not None and _fits(symbols, family):
        return family, version
    if version is None and len(versions) <= 1 and symbols in ("1.1", "1.2.0"):
        return symbols, None
    if len(versions) > 1:
        seen = f"it contains several version strings ({', '.join(sorted(versions))})"
    elif version:
        seen = f"its version string says {version}, which does not fit its exported functions"
    elif symbols == "1.2+":
        seen = ("it exports the 1.2.1+ functions, which 1.2.1-1.2.3 and 1.3.0 share, and carries "
                "no runtime version string")
    else:
        seen = ("its exported functions match no release's complete list and it carries no "
                "runtime version string")
    raise AbiDetectionError(f"cannot tell the ABI of {file}: {seen}; set runtime.abi to {ABI_CHOICES}")


def detect_abi(path: str) -> str:
    """The ABI family of the library at `path` ("1.1" | "1.2.0" | "1.2" | "1.3")."""
    lib = load_library(path)
    return _detect(lib, library_file(lib, path))[0]


def _check_explicit(abi: str, lib: ctypes.CDLL, file: str) -> str | None:
    """Refuse an explicit runtime.abi that the library's own version string contradicts."""
    symbols, version, _ = _evidence(lib, file)
    actual = family_of_version(version) if version else None
    if actual is not None and actual != abi:
        raise AbiDetectionError(
            f'runtime.abi is "{abi}" but {file} says it is runtime version {version}; '
            f'set runtime.abi to "{actual}" or "auto"'
        )
    # Symbols are weaker evidence than the library's own version string (a trimmed or patched build
    # may export more or fewer entry points), so an explicit choice that they contradict is trusted
    # and only logged.
    if not _fits(symbols, abi):
        log.warning('runtime.abi is "%s" but the symbols of %s look like %s; using "%s" as configured',
                    abi, file, symbols, abi)
    return version


def open_library(path: str, abi: str) -> LoadedLibrary:
    """Load, choose the family (`abi` = "auto" or a family name) and bind every function."""
    lib = load_library(path)
    file = library_file(lib, path)
    if abi == "auto":
        abi, version = _detect(lib, file)
    elif abi in FAMILIES:
        version = _check_explicit(abi, lib, file)
    else:
        raise AbiDetectionError(f"runtime.abi {abi!r} is not one of \"auto\", {ABI_CHOICES}")
    module = FAMILIES[abi]
    return LoadedLibrary(lib, file, abi, version, module, module.bind(lib, file))
