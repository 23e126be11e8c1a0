"""Callback bytes → text the caller may see: UTF-8 reassembly and stop sequences.

A token can end in the middle of a character (RKLLM splits multi-byte UTF-8 across callbacks), so
bytes go through one incremental decoder per run. Text that could still turn into a stop sequence
is held back until it either completes one (then it and everything after it is dropped) or cannot
anymore, so a caller never receives text that a stop sequence later takes away.
"""

from __future__ import annotations

import codecs


class TextStream:
    """One run's text; not thread-safe (the native callbacks of one run are sequential)."""

    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._pending = ""
        self._parts: list[str] = []
        self.stopped = False  # a stop sequence was found; nothing more is accepted

    @property
    def text(self) -> str:
        """Everything released so far: exactly the concatenation of the returned pieces."""
        return "".join(self._parts)

    def feed(self, data: bytes) -> str:
        """Add one callback's bytes; return the text that can be released now ("" if none)."""
        if self.stopped:
            return ""
        return self._release(self._pending + self._decoder.decode(data), final=False)

    def finish(self, *, complete: bool = True) -> str:
        """End of run: release held-back text and settle a dangling partial character.

        After a run that completed, a partial character means the runtime sent broken UTF-8 and
        becomes U+FFFD; after a run cut short (abort, error, length) the rest of the character
        simply never came, so its bytes are dropped instead of showing a replacement character.
        """
        if self.stopped:
            return ""
        tail = self._decoder.decode(b"", final=True) if complete else ""
        self._decoder.reset()
        return self._release(self._pending + tail, final=True)

    def _release(self, buffer: str, *, final: bool) -> str:
        cut = min((i for i in (buffer.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return self._emit(buffer[:cut])
        hold = 0 if final else self._held_suffix(buffer)
        self._pending = buffer[len(buffer) - hold :]
        return self._emit(buffer[: len(buffer) - hold])

    def _held_suffix(self, buffer: str) -> int:
        """Length of the longest end of `buffer` that is the start of some stop sequence."""
        longest = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _emit(self, piece: str) -> str:
        if piece:
            self._parts.append(piece)
        return piece
