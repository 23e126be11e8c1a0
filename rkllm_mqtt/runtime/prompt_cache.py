"""Prompt cache files on disk: a warm start prefills nothing that an earlier run already did.

What the runtime documents (RKLLM SDK manual of release-v1.3.0, §3.2.9; rkllm.h of every release
since 1.1.0): a run whose RKLLMInferParam carries RKLLMPromptCacheParam{save_prompt_cache = 1,
prompt_cache_path} saves its prefill to that file; rkllm_load_prompt_cache(handle, path) loads one,
and the runtime then reuses the part of a later input that is the same as the cache "from the
start"; rkllm_release_prompt_cache drops it before another is loaded.

What it does not say, so this module does not trust the file: what a file from another model or
runtime version does (it may crash, not fail), or whether a truncated file is noticed. So each
cache file is named and keyed by the model file, the runtime version and a hash of the prefix,
and has a JSON sidecar with its size and SHA-256; a file whose sidecar is missing, unreadable or
does not match is deleted, never loaded. Files the daemon did not write (other names) are left
alone and never loaded. The directory is bounded in files and bytes, least recently used first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_FORMAT = 1
_SUFFIX = ".prompt-cache"
_SIDECAR = ".json"
_NAME = re.compile(r"^[A-Za-z0-9._-]+\.[0-9a-f]{16}\.prompt-cache$")


@dataclass(frozen=True)
class Prefix:
    """What a run puts before its own turn: the system segment the KV cache and the file hold.

    `system`/`prompt_prefix`/`prompt_postfix` are the rkllm_set_chat_template arguments (or, when
    the system text travels inside the prompt, `system` alone with `in_prompt`), `tools` the JSON
    given to rkllm_set_function_tools.
    """

    system: str
    prompt_prefix: str | None = None
    prompt_postfix: str | None = None
    tools: str | None = None
    in_prompt: bool = False

    def digest(self) -> str:
        text = json.dumps([self.system, self.prompt_prefix, self.prompt_postfix, self.tools,
                           self.in_prompt], ensure_ascii=False)
        return _sha256_text(text)

    def to_json(self) -> dict[str, Any]:
        return {"system": self.system, "prompt_prefix": self.prompt_prefix,
                "prompt_postfix": self.prompt_postfix, "tools": self.tools,
                "in_prompt": self.in_prompt}

    @classmethod
    def from_json(cls, data: Any) -> Prefix | None:
        if not isinstance(data, dict) or not isinstance(data.get("system"), str):
            return None
        optional = {k: data.get(k) for k in ("prompt_prefix", "prompt_postfix", "tools")}
        if any(v is not None and not isinstance(v, str) for v in optional.values()):
            return None
        return cls(data["system"], prompt_prefix=optional["prompt_prefix"],
                   prompt_postfix=optional["prompt_postfix"], tools=optional["tools"],
                   in_prompt=bool(data.get("in_prompt")))


def _sha256_text(text: str) -> str:
    import hashlib  # here, not at the top: it loads libcrypto (~3.7 MB RSS), paid only with a cache

    return hashlib.sha256(text.encode()).hexdigest()


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unlink(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class PromptCacheStore:
    """The cache directory of one model and runtime version (`runtime.prompt_cache_dir`)."""

    def __init__(self, directory: str | os.PathLike[str], *, model: str, runtime_version: str,
                 max_files: int, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.runtime_version = runtime_version
        model_path = Path(model)
        try:
            st = model_path.stat()
            model_id: list[Any] = [model_path.name, st.st_size, st.st_mtime_ns]
        except OSError:
            model_id = [model_path.name]
        self._identity = {"format": _FORMAT, "model": model_id, "runtime_version": runtime_version}
        self._stem = re.sub(r"[^A-Za-z0-9._-]", "_", f"{model_path.stem}.{runtime_version}")

    def _key(self, prefix: Prefix) -> str:
        text = json.dumps([self._identity, prefix.digest()])
        return _sha256_text(text)[:16]

    def path_for(self, prefix: Prefix) -> Path:
        return self.directory / f"{self._stem}.{self._key(prefix)}{_SUFFIX}"

    def _sidecar(self, path: Path) -> Path:
        return path.with_name(path.name + _SIDECAR)

    def ensure_directory(self) -> bool:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            log.warning("prompt cache directory %s is not usable (%s); warm start is off",
                        self.directory, err)
            return False
        return True

    # -- reading -------------------------------------------------------------------------------

    def valid(self, prefix: Prefix) -> Path | None:
        """The file for `prefix` when its sidecar vouches for it; a bad pair is deleted."""
        path = self.path_for(prefix)
        sidecar = self._sidecar(path)
        if not path.exists() and not sidecar.exists():
            return None
        problem = self._check(path, sidecar, prefix)
        if problem is not None:
            log.warning("prompt cache %s: %s; deleted", path.name, problem)
            _unlink(path, sidecar)
            return None
        with contextlib.suppress(OSError):
            os.utime(sidecar)  # least recently used goes first
        return path

    def _check(self, path: Path, sidecar: Path, prefix: Prefix) -> str | None:
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            return f"no readable sidecar ({err.__class__.__name__})"
        if not isinstance(meta, dict) or meta.get("identity") != self._identity:
            return "written for another model, runtime version or format"
        if meta.get("prefix_sha256") != prefix.digest():
            return "written for another prefix"
        try:
            size = path.stat().st_size
        except OSError:
            return "the cache file is missing"
        if size != meta.get("size") or size == 0:
            return f"size {size} does not match the sidecar ({meta.get('size')})"
        if _sha256(path) != meta.get("sha256"):
            return "checksum does not match the sidecar (corrupt)"
        return None

    def last_used(self) -> Prefix | None:
        """The prefix of the most recently used valid-looking file of this model and runtime."""
        best: tuple[float, Prefix] | None = None
        for sidecar in self.directory.glob(f"{self._stem}.*{_SUFFIX}{_SIDECAR}"):
            try:
                meta = json.loads(sidecar.read_text(encoding="utf-8"))
                mtime = sidecar.stat().st_mtime
            except (OSError, ValueError):
                continue
            if not isinstance(meta, dict) or meta.get("identity") != self._identity:
                continue
            prefix = Prefix.from_json(meta.get("prefix"))
            if prefix is not None and (best is None or mtime > best[0]):
                best = (mtime, prefix)
        return best[1] if best else None

    def forget(self, prefix: Prefix) -> None:
        """Delete the pair for `prefix` (the runtime refused to load it)."""
        path = self.path_for(prefix)
        _unlink(path, self._sidecar(path))

    # -- writing -------------------------------------------------------------------------------

    def temporary_path(self, prefix: Prefix) -> Path:
        """Where a run saves; `commit` moves it into place once the run has returned."""
        path = self.path_for(prefix)
        return path.with_name(f"{path.name}.tmp{os.getpid()}")

    def commit(self, prefix: Prefix) -> Path | None:
        """Vouch for the file a run just saved (sidecar written last), then enforce the bounds."""
        path, temporary = self.path_for(prefix), self.temporary_path(prefix)
        try:
            size = temporary.stat().st_size
        except OSError:
            log.warning("the runtime saved no prompt cache at %s", temporary)
            return None
        if size == 0 or size > self.max_bytes:
            log.warning("prompt cache of %d bytes not kept (limit %d)", size, self.max_bytes)
            _unlink(temporary)
            return None
        sidecar = self._sidecar(path)
        meta = {"identity": self._identity, "prefix_sha256": prefix.digest(), "size": size,
                "sha256": _sha256(temporary), "prefix": prefix.to_json()}
        try:
            os.replace(temporary, path)
            staged = sidecar.with_name(sidecar.name + f".tmp{os.getpid()}")
            staged.write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
            os.replace(staged, sidecar)
        except OSError as err:
            log.warning("could not keep the prompt cache %s: %s", path, err)
            _unlink(path, sidecar, temporary)
            return None
        self._enforce_bounds(keep=path)
        return path

    def discard(self, prefix: Prefix) -> None:
        _unlink(self.temporary_path(prefix))

    def _enforce_bounds(self, keep: Path) -> None:
        entries: list[tuple[float, int, Path]] = []
        for path in self.directory.iterdir():
            if not _NAME.match(path.name):
                continue  # not ours: never touched
            sidecar = self._sidecar(path)
            try:
                entries.append((sidecar.stat().st_mtime, path.stat().st_size, path))
            except OSError:
                _unlink(path)  # a cache file nobody vouches for
        entries.sort()
        total = sum(size for _, size, _ in entries)
        count = len(entries)
        for _, size, path in entries:
            if count <= self.max_files and total <= self.max_bytes:
                break
            if path == keep:
                continue
            log.info("prompt cache %s evicted (bounds: %d files, %d bytes)", path.name,
                     self.max_files, self.max_bytes)
            _unlink(path, self._sidecar(path))
            count -= 1
            total -= size
