"""Local copies of remote checkpoints and probe sets (fsspec URLs), kept in a per-user cache.

:func:`local_copy` downloads a file or a whole folder once and fetches an object again only
when the object store says it changed (its ETag or modification time, and its size; see
:func:`object_identity`). The cache is private: ``$NASPROBE_CACHE``, else
``$XDG_CACHE_HOME/nasprobe``, else ``~/.cache/nasprobe``, created with mode 0700 and refused
when another user owns it (a shared folder would let others read private checkpoints or plant
a file before the first download).

The keys a remote folder lists are untrusted: each is normalised and refused when it is
absolute or has a ``..`` part, and every file lands under its download's own folder, checked
after resolving symlinks, so no key writes outside the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import uuid
from pathlib import Path

from nasprobe.errors import NasprobeError

from .storage import checked_path, is_url, location

__all__ = ["cache_dir", "local_copy", "object_identity", "safe_relative_key"]

#: Keys of ``fs.info`` that name one version of an object (first found wins), and keys of its
#: modification time (used where no version tag is given).
_TAGS = ("ETag", "etag", "md5Hash", "generation", "VersionId", "version_id")
_TIMES = ("LastModified", "last_modified", "mtime", "updated", "modified", "created")


def cache_dir() -> Path:
    """The download cache: ``$NASPROBE_CACHE``, else ``$XDG_CACHE_HOME/nasprobe``, else
    ``~/.cache/nasprobe`` (created with mode 0700 on first use)."""
    if os.environ.get("NASPROBE_CACHE"):
        return Path(os.environ["NASPROBE_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "nasprobe"


def _private_cache() -> Path:
    """:func:`cache_dir`, created with mode 0700; refused when another user owns it.

    Raises:
        NasprobeError: the folder cannot be created or belongs to another user.
    """
    root = cache_dir()
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(root, 0o700)
        except FileExistsError:
            pass
        st = os.stat(root)
    except OSError as exc:
        raise NasprobeError(f"{root}: the download cache cannot be created ({exc}); set "
                            "NASPROBE_CACHE to a folder of your own") from exc
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise NasprobeError(f"{root}: the download cache belongs to another user (uid "
                            f"{st.st_uid}), who could read or replace downloaded checkpoints; "
                            "set NASPROBE_CACHE to a folder of your own")
    if not os.environ.get("NASPROBE_CACHE") and st.st_mode & 0o077:
        os.chmod(root, 0o700)  # the default cache is private, whatever the umask made it
    return root


def object_identity(info: dict) -> dict | None:
    """What tells one version of a remote object from another: its size and its ETag (or
    generation, version id), else its modification time; None when the backend reports
    neither (the object is then fetched again whenever it is asked for)."""
    for keys, kind in ((_TAGS, "tag"), (_TIMES, "time")):
        for k in keys:
            if info.get(k) not in (None, ""):
                return {"size": info.get("size"), kind: str(info[k])}
    return None


def safe_relative_key(url: str, key: str) -> str:
    """``key`` (a path relative to a downloaded folder, as the object store lists it)
    normalised: empty and ``.`` parts dropped.

    Raises:
        NasprobeError: an absolute key, or one with a ``..`` part (it would land outside the
            cache), naming the key.
    """
    if key.startswith("/") or "\x00" in key:
        raise NasprobeError(f"{url}: the object key {key!r} is absolute; refused (it would be "
                            "written outside the download cache)")
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if ".." in parts or not parts:
        raise NasprobeError(f"{url}: the object key {key!r} has a '..' part (or no name); "
                            "refused (it would be written outside the download cache)")
    return posixpath.join(*parts)


def local_copy(path: str | os.PathLike) -> Path:
    """A local path for ``path``: itself when local; for a URL, a copy of the file or folder
    downloaded through fsspec into :func:`cache_dir`. An object is fetched again when it is
    missing or its :func:`object_identity` changed; each file appears whole (written to a
    temporary name first); files of a folder that the folder no longer lists are removed.

    Raises:
        NasprobeError: the URL does not exist or cannot be read (the backend's message), or a
            key of the folder would land outside the cache.
    """
    text = checked_path(path)
    if not is_url(text):
        return Path(text)
    text = text.rstrip("/")
    if text in _COPIES and _COPIES[text].is_file():
        return _COPIES[text]  # a file of a folder this process listed and brought up to date
    loc = location(text)
    fs, root = loc.fs, loc.root.rstrip("/")
    try:
        name = root.rsplit("/", 1)[-1]
        if name in ("", ".", ".."):
            raise NasprobeError(f"{text}: names no file or folder")
        entry = _private_cache() / hashlib.sha256(text.encode()).hexdigest()[:16]
        dest = entry / "data" / name
        if fs.isdir(root):
            listed = set()
            for info in fs.find(root, detail=True).values():
                if not info["name"].startswith(root + "/"):
                    raise NasprobeError(f"{text}: the folder listed {info['name']!r}, which "
                                        "is not inside it; refused")
                rel = posixpath.join(name, safe_relative_key(text, info["name"][len(root) + 1:]))
                _fetch(fs, info, entry, rel)
                listed.add(rel)
                _COPIES[f"{text}/{rel[len(name) + 1:]}"] = entry / "data" / rel
            dest.mkdir(parents=True, exist_ok=True)
            _prune(entry, name, listed)
        else:
            _fetch(fs, fs.info(root), entry, name)
    except NasprobeError:
        raise
    except (OSError, ValueError) as exc:
        raise NasprobeError(f"{text}: cannot be read ({exc})") from exc
    return dest


#: URL of a file inside a folder downloaded whole → its copy (each probe job lists the folder
#: again, so a copy is never older than the job that asks for it).
_COPIES: dict[str, Path] = {}


def _inside(entry: Path, rel: str) -> Path:
    """``entry/data/rel``, after checking that its folder, symlinks resolved, is inside
    ``entry/data`` (the cache is private, so only a bug or a hand-made link could break it)."""
    data = entry / "data"
    dest = data / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    real, top = os.path.realpath(dest.parent), os.path.realpath(data)
    if real != top and not real.startswith(top + os.sep):
        raise NasprobeError(f"{dest}: its folder resolves to {real}, outside the download "
                            "cache; refused")
    return dest


def _fetch(fs, info: dict, entry: Path, rel: str) -> None:
    """Bring ``entry/data/rel`` up to date with the remote object ``info`` describes; its
    identity is kept beside it in ``entry/meta`` (one small JSON file per object)."""
    dest = _inside(entry, rel)
    ident = object_identity(info)
    meta = entry / "meta" / f"{hashlib.sha256(rel.encode()).hexdigest()[:32]}.json"
    if ident is not None and not os.path.islink(dest) and dest.is_file() and meta.is_file():
        try:
            if json.loads(meta.read_text()) == ident and dest.stat().st_size == ident["size"]:
                return
        except (OSError, ValueError):
            pass
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.partial")
    try:
        fs.get_file(info["name"], str(tmp))
        os.replace(tmp, dest)  # replaces a link itself, never what it points to
    finally:
        tmp.unlink(missing_ok=True)
    meta.parent.mkdir(exist_ok=True)
    part = meta.with_name(f".{meta.name}.{uuid.uuid4().hex}.partial")
    part.write_text(json.dumps(ident))
    os.replace(part, meta)


def _prune(entry: Path, name: str, listed: set[str]) -> None:
    """Remove the files of a downloaded folder that the remote folder no longer lists (an
    epoch deleted there must not be probed from the cache); never follows links."""
    data = entry / "data"
    for dirpath, _, files in os.walk(data / name):
        for f in files:
            p = Path(dirpath) / f
            rel = p.relative_to(data).as_posix()
            if rel not in listed and not f.endswith(".partial"):
                p.unlink(missing_ok=True)
