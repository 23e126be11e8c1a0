"""Compile rkllm_sim.c into a stand-in librkllmrt.so, cached, so tests and `demo` need no NPU."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from rkllm_mqtt.errors import SimulatorBuildError

ABIS = ("1.1", "1.2.0", "1.2", "1.3")

SOURCE = Path(__file__).with_name("rkllm_sim.c")

# -DRKLLM_SIM_ABI value per ABI family (rkllm_sim.c explains the numbers).
_ABI_DEFINES = {"1.1": "11", "1.2.0": "120", "1.2": "12", "1.3": "13"}
_CFLAGS = ("-std=gnu11", "-fPIC", "-shared", "-O2", "-pthread", "-Wall", "-Wextra")
_COMPILE_TIMEOUT_S = 120.0
_MODEL_BYTES = b"RKLLM-SIM dummy model: accepted by the rkllm-mqtt simulator only\n"


def default_cache_dir() -> Path:
    """$RKLLM_MQTT_CACHE, else $XDG_CACHE_HOME/rkllm-mqtt, else ~/.cache/rkllm-mqtt."""
    explicit = os.environ.get("RKLLM_MQTT_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "rkllm-mqtt"


def find_compiler() -> list[str]:
    """The compiler command: $CC (may carry words, e.g. "ccache gcc"), else cc, else gcc."""
    from_env = os.environ.get("CC", "").strip()
    if from_env:
        argv = shlex.split(from_env)
        resolved = shutil.which(argv[0])
        if resolved is None:
            raise SimulatorBuildError(
                f"C compiler {argv[0]!r} from $CC not found; install gcc or set CC to a working C compiler"
            )
        return [resolved, *argv[1:]]
    for name in ("cc", "gcc"):
        resolved = shutil.which(name)
        if resolved:
            return [resolved]
    raise SimulatorBuildError(
        "no C compiler found (tried $CC, cc, gcc) to build the RKLLM simulator; "
        "install gcc (e.g. `apt install gcc`) or set CC"
    )


def library_name(source: bytes, abi: str, defines: Sequence[str], compiler: Sequence[str]) -> str:
    """File name that changes whenever anything that shapes the binary changes."""
    compiler_id = list(compiler)
    try:  # an upgraded compiler (same path, new file) must not reuse an old build
        st = os.stat(compiler[0])
        compiler_id += [str(st.st_size), str(st.st_mtime_ns)]
    except OSError:
        pass
    sections = {"abi": [abi], "defines": list(defines), "compiler": compiler_id, "cflags": _CFLAGS}
    digest = hashlib.sha256(source)
    for section, values in sections.items():
        for value in (section, *values):
            data = value.encode()
            digest.update(len(data).to_bytes(8, "little") + data)
    return f"librkllmrt-sim-{abi}-{digest.hexdigest()[:16]}.so"


def build_simulator(abi: str, *, cache_dir: Path | None = None, defines: Sequence[str] = ()) -> Path:
    """Return the simulator library for `abi`, compiling it into the cache if needed.

    Safe when several processes build at once: each compiles to its own temporary file and
    renames it into place, so a reader never sees a half-written library.
    """
    if abi not in _ABI_DEFINES:
        raise SimulatorBuildError(f"unknown simulator ABI {abi!r}; expected one of {ABIS}")
    for define in defines:
        if not define or define.startswith("-") or any(c.isspace() for c in define):
            raise SimulatorBuildError(f"invalid simulator define {define!r}")
    compiler = find_compiler()
    try:
        source = SOURCE.read_bytes()
    except OSError as err:
        raise SimulatorBuildError(f"cannot read simulator source {SOURCE}: {err}") from err
    out_dir = (cache_dir if cache_dir is not None else default_cache_dir()) / "sim"
    target = out_dir / library_name(source, abi, defines, compiler)
    if target.is_file():
        return target
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SimulatorBuildError(f"cannot create simulator cache {out_dir}: {err}") from err

    with tempfile.TemporaryDirectory(prefix=".build-", dir=out_dir) as tmp:
        # The source is compiled from a private copy, so the hash names exactly what was built.
        src_copy = Path(tmp) / SOURCE.name
        src_copy.write_bytes(source)
        tmp_lib = Path(tmp) / target.name
        cmd = [
            *compiler,
            *_CFLAGS,
            f"-DRKLLM_SIM_ABI={_ABI_DEFINES[abi]}",
            *(f"-D{d}" for d in defines),
            str(src_copy),
            "-o",
            str(tmp_lib),
        ]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise SimulatorBuildError(f"running the C compiler failed: {shlex.join(cmd)}: {err}") from err
        if proc.returncode != 0:
            raise SimulatorBuildError(
                f"compiling the RKLLM simulator (ABI {abi}) failed with exit code "
                f"{proc.returncode}: {shlex.join(cmd)}\n{proc.stderr.strip()}"
            )
        os.replace(tmp_lib, target)
    return target


def sim_model_file(cache_dir: Path | None = None) -> Path:
    """A small dummy model file the simulator accepts (any readable, non-empty file works)."""
    out_dir = (cache_dir if cache_dir is not None else default_cache_dir()) / "sim"
    path = out_dir / "model.rkllm"
    if path.is_file() and path.read_bytes() == _MODEL_BYTES:
        return path
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".model-", dir=out_dir)
        with os.fdopen(fd, "wb") as f:
            f.write(_MODEL_BYTES)
        os.replace(tmp, path)
    except OSError as err:
        raise SimulatorBuildError(f"cannot write the simulator model file {path}: {err}") from err
    return path
