"""Safe by default: who may connect, and which files the studio may touch.

- :func:`check_bind`: the studio listens on loopback unless ``--auth`` is given;
- :func:`auth_check`: ``USER:PASSWORD`` or a file of them (constant-time comparison);
- :func:`confine`: a path typed in a form, resolved (symlinks followed) and required to lie in the
  work dir (or, for inputs, in a read root such as the shipped examples);
- :func:`save_upload`: an uploaded file copied into ``<workdir>/uploads`` under a plain name, size checked.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import shutil
from pathlib import Path
from typing import Callable, Iterable

from medtune.errors import AccessError

UPLOADS = "uploads"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1); no DNS lookup."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, auth: str | None) -> None:
    """Refuse a non-loopback ``host`` without ``auth``.

    Raises:
        AccessError: names the host and the two ways out (bind 127.0.0.1, or add ``--auth``).
    """
    if not is_loopback(host) and not auth:
        raise AccessError(f"medtune studio refuses to listen on {host} without --auth: anyone who can reach this "
                          "machine could read your data and start jobs. Use --host 127.0.0.1 (the default; reach it "
                          "through an SSH tunnel), or add --auth USER:PASSWORD or --auth FILE (USER:PASSWORD lines).")


def auth_pairs(spec: str) -> list[tuple[str | None, str]]:
    """``(user, password)`` pairs from ``USER:PASSWORD`` or a file of such lines; user None: a bare token.

    Raises:
        AccessError: an empty spec, a file with no usable line, or text that is neither a file nor ``USER:PASSWORD``.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        pairs = [_pair(ln) for ln in lines if ln and not ln.startswith("#")]
        if not pairs:
            raise AccessError(f"--auth {path}: the file has no USER:PASSWORD line or token")
        return pairs
    if ":" not in spec or not spec.partition(":")[2]:
        raise AccessError(f"--auth {spec!r}: expected USER:PASSWORD or an existing file of USER:PASSWORD lines")
    return [_pair(spec)]


def _pair(line: str) -> tuple[str | None, str]:
    user, sep, password = line.partition(":")
    return (user, password) if sep else (None, line)


def auth_check(spec: str) -> Callable[[str, str], bool]:
    """A gradio ``auth`` callable that accepts the pairs in ``spec`` (see :func:`auth_pairs`)."""
    pairs = auth_pairs(spec)

    def check(user: str, password: str) -> bool:
        ok = False
        for u, p in pairs:  # compare with every pair: the time taken does not tell which user exists
            same_user = u is None or hmac.compare_digest(u.encode(), (user or "").encode())
            ok |= same_user & hmac.compare_digest(p.encode(), (password or "").encode())
        return ok

    return check


def inside(path: Path, root: Path) -> bool:
    """True when the resolved ``path`` is ``root`` or lies under it (both resolved, symlinks followed)."""
    return path.resolve().is_relative_to(root.resolve())


def confine(path: str | Path, workdir: Path, read_roots: Iterable[Path] = (), what: str = "path") -> Path:
    """Resolve ``path`` (relative to the current directory, as the jobs see it) and require it to be inside
    ``workdir`` or one of ``read_roots``.

    Returns:
        The resolved path.

    Raises:
        AccessError: the path escapes (``..``, an absolute path elsewhere, a symlink out); names it and the work dir.
    """
    resolved = Path(path).expanduser().resolve()
    for root in (workdir, *read_roots):
        if resolved.is_relative_to(Path(root).resolve()):
            return resolved
    allowed = ", ".join(str(Path(r)) for r in (workdir, *read_roots))
    raise AccessError(f"{what} {str(path)!r} is outside the studio's work dir ({allowed}); "
                      f"use a path inside {workdir}")


def plain_name(name: str, suffixes: tuple[str, ...] = ()) -> str:
    """A file name without folders or odd characters (``../../x y.yaml`` -> ``x_y.yaml``).

    Raises:
        AccessError: nothing usable is left, or the suffix is not one of ``suffixes``.
    """
    base = re.sub(r"[^\w.\-]+", "_", Path(str(name).replace("\\", "/")).name).lstrip(".")
    if not base:
        raise AccessError(f"{name!r} is not a usable file name")
    if suffixes and not base.lower().endswith(suffixes):
        raise AccessError(f"{base}: expected a file ending in {' or '.join(suffixes)}")
    return base


def save_upload(src: str | Path, workdir: Path, max_mb: float, suffixes: tuple[str, ...] = (),
                name: str | None = None) -> Path:
    """Copy an uploaded file into ``<workdir>/uploads/<plain name>`` (an existing file of that name is replaced).

    Raises:
        AccessError: larger than ``max_mb`` MiB, or a name with the wrong suffix.
    """
    src = Path(src)
    size = src.stat().st_size
    if size > max_mb * 2**20:
        raise AccessError(f"{name or src.name}: {size / 2**20:.1f} MiB is over the studio's upload limit of "
                          f"{max_mb:g} MiB (medtune studio --max-upload-mb)")
    dest = Path(workdir) / UPLOADS / plain_name(name or src.name, suffixes)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest
