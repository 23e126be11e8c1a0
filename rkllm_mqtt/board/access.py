"""Whether the service user (not whoever runs `check`) may open a file: check is often run as root.

Computed from owner, group and mode bits the way the kernel checks them (owner bits if the user
owns the file, else group bits if one of its groups does, else the other bits), on the file and
on the search bit of every directory above it. ACLs and capabilities are not modelled.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

SERVICE_USER = "rkllm"


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gids: frozenset[int]

    @classmethod
    def named(cls, name: str) -> User:
        """KeyError when the user does not exist."""
        entry = pwd.getpwnam(name)
        groups = {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}
        return cls(name, entry.pw_uid, frozenset(groups | {entry.pw_gid}))

    @classmethod
    def current(cls) -> User:
        uid = os.getuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return cls(name, uid, frozenset({os.getgid(), *os.getgroups()}))


def service_user(name: str | None) -> User:
    """The named user; by default `rkllm` when it exists (the unit's User=), else whoever runs us."""
    if name is not None:
        return User.named(name)
    try:
        return User.named(SERVICE_USER)
    except KeyError:
        return User.current()


_OWNER_BITS = {"r": stat.S_IRUSR, "w": stat.S_IWUSR, "x": stat.S_IXUSR}


def _allowed(user: User, st: os.stat_result, want: str) -> bool:
    if user.uid == 0:  # root passes read/write checks (CAP_DAC_OVERRIDE)
        return True
    if st.st_uid == user.uid:
        shift = 0
    elif st.st_gid in user.gids:
        shift = 3
    else:
        shift = 6
    return all(st.st_mode & (_OWNER_BITS[ch] >> shift) for ch in want)


def can_open(user: User, path: Path, want: str = "r", *, below: Path = Path("/")) -> bool:
    """Whether `user` can open `path` with `want` ("r", "rw") through every directory from `below`
    down (a board's root directory: what lies above a test's fake root does not matter)."""
    try:
        absolute = path.absolute()
        for directory in reversed(absolute.parents):
            if not directory.is_relative_to(below.absolute()):
                continue
            if not _allowed(user, directory.stat(), "x"):
                return False
        return _allowed(user, absolute.stat(), want)
    except OSError:
        return False


def describe(path: Path) -> str:
    """"crw-rw---- root:render", for a message that shows why access failed."""
    try:
        st = path.stat()
    except OSError as err:
        return err.strerror or "cannot stat"
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{stat.filemode(st.st_mode)} {owner}:{group}"
