"""Where bytes live: local paths and fsspec URLs (``s3://``, ``gs://``, ``az://``, ``memory://``).

A :class:`Location` names a folder on a local disk or on an object store and does the few
operations the store needs: read, write (whole objects, atomically), list, and *create
exclusively* — the one atomic step the lock-free store relies on (see docs/store-design.md).
Local paths go through the operating system (``os.link`` of a fully written temporary file,
which fails when the target exists; ``O_CREAT|O_EXCL`` where hard links are not supported),
URLs through fsspec's ``pipe_file(mode="create")`` (``If-None-Match: *`` on S3).
:meth:`Location.exclusive_creates` tests once whether a backend honours it. zarr reads and
writes arrays through its own ``LocalStore`` or ``FsspecStore`` (:meth:`Location.zarr_store`).

A string with ``://`` is always a URL, never a local path; a path that looks like a URL that
lost a slash (``s3:/bucket``, what ``pathlib`` makes of ``s3://bucket``) is refused, so a
URL can never turn into a local folder named ``s3:``. Credentials come from each backend's
own configuration (environment, config files), never from nasprobe.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from nasprobe.errors import NasprobeError, StoreError

__all__ = ["Location", "location", "is_url", "checked_path", "quiet_zarr_warnings",
           "warn_if_not_exclusive"]


def quiet_zarr_warnings() -> None:
    """Inside a ``warnings.catch_warnings()`` block: silence the two warnings zarr gives for
    every nasprobe store, and nothing else. Consolidated metadata is "not part of the Zarr v3
    specification" (nasprobe writes none and reads none), and fixed-width strings (the run,
    layer and kind coordinates) have "no Zarr V3 specification" yet; both are the library's
    notices, not problems of the store."""
    from zarr.errors import UnstableSpecificationWarning, ZarrUserWarning

    warnings.filterwarnings("ignore", category=UnstableSpecificationWarning)
    warnings.filterwarnings("ignore", category=ZarrUserWarning, message=".*[Cc]onsolidated")

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_MANGLED = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:/")  # 2+ letters: not a Windows drive


def is_url(path: str | os.PathLike) -> bool:
    """True for ``scheme://...`` strings (``file://`` included)."""
    return isinstance(path, str) and bool(_URL.match(path))


def checked_path(path: str | os.PathLike) -> str:
    """``path`` as a string, refusing a URL mangled into a path (``s3:/bucket/x``).

    Raises:
        NasprobeError: the path looks like a URL whose ``//`` was collapsed.
    """
    text = os.fspath(path)
    if not is_url(text) and _MANGLED.match(text):
        fixed = re.sub(r"^([^:]+):/+", r"\1://", text)
        raise NasprobeError(f"{text}: looks like a URL with a slash lost (a pathlib.Path of "
                            f"{fixed!r}?); pass the URL as a string, e.g. {fixed}")
    return text


@dataclass(frozen=True)
class Location:
    """A folder, local or behind an fsspec URL. Small and picklable (holds only the text)."""

    url: str

    @property
    def local(self) -> bool:
        """True for a local path (``file://`` URLs included)."""
        return not is_url(self.url) or self.url.startswith("file://")

    @property
    def fs(self):
        """The fsspec filesystem (cached by fsspec per protocol and options)."""
        return self._split()[0]

    @property
    def root(self) -> str:
        """The folder's path as its filesystem spells it (no protocol)."""
        return self._split()[1]

    def _split(self):
        import fsspec

        if not self.local:
            return fsspec.core.url_to_fs(self.url)
        return fsspec.filesystem("file"), self.path().as_posix()

    def path(self) -> Path:
        """The local folder (only for local locations)."""
        if not self.local:
            raise NasprobeError(f"{self.url}: not a local path")
        return Path(self.url[len("file://"):] if self.url.startswith("file://") else self.url)

    def key(self, *parts: str) -> str:
        """The filesystem path of ``parts`` under this folder."""
        return "/".join([self.root.rstrip("/"), *parts])

    def child(self, *parts: str) -> Location:
        """A sub-folder."""
        return Location("/".join([self.url.rstrip("/"), *parts]))

    def __str__(self) -> str:
        return self.url

    def zarr_store(self, read_only: bool = False):
        """Zarr's own store for this folder: ``LocalStore`` or ``FsspecStore``."""
        import zarr.storage

        if self.local:
            return zarr.storage.LocalStore(self.path(), read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self.url, read_only=read_only)

    def exists(self, *parts: str) -> bool:
        """True when the object (or folder) ``parts`` exists (never from a stale listing)."""
        if self.local:  # the operating system's calls, without importing fsspec (10 ms)
            return self.path().joinpath(*parts).exists()
        key = self.key(*parts)
        self.fs.invalidate_cache(key)
        return self.fs.exists(key)

    def read(self, *parts: str) -> bytes | None:
        """The bytes of object ``parts``, or None when it does not exist."""
        try:
            if self.local:
                return self.path().joinpath(*parts).read_bytes()
            return self.fs.cat_file(self.key(*parts))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def read_many(self, keys: list[str]) -> dict[str, bytes | None]:
        """Several objects at once (concurrent requests on object stores): key → bytes/None."""
        if not keys:
            return {}
        if self.local:
            return {k: self.read(*k.split("/")) for k in keys}
        paths = [self.key(k) for k in keys]
        got = self.fs.cat(paths, on_error="return")
        return {k: (None if isinstance(got.get(p), Exception) else got.get(p))
                for k, p in zip(keys, paths)}

    def listdir(self, *parts: str) -> list[str]:
        """Names directly under folder ``parts`` (empty when it does not exist)."""
        try:
            if self.local:
                return sorted(os.listdir(self.path().joinpath(*parts)))
            entries = self.fs.ls(self.key(*parts), detail=False, refresh=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def write(self, data: bytes, *parts: str) -> None:
        """Write object ``parts`` whole; a reader sees the old or the new bytes, never a mix."""
        if self.local:
            target = self.path().joinpath(*parts)
            tmp = _write_beside(target, data)
            os.replace(tmp, target)
        else:
            self.fs.pipe_file(self.key(*parts), data)

    def put_many(self, items: dict[str, bytes]) -> None:
        """Write several objects (key → bytes, keys relative to this folder), each whole; on
        object stores as concurrent requests of one batch."""
        if not items:
            return
        if self.local:
            for k, v in items.items():
                self.write(v, *k.split("/"))
        else:
            self.fs.pipe({self.key(k): v for k, v in items.items()})

    def create(self, data: bytes, *parts: str) -> bool:
        """Create object ``parts`` only if it does not exist yet: of several processes racing,
        exactly one gets True (where the backend makes creates exclusive; see
        :meth:`exclusive_creates`). A local object appears with all its bytes.

        Raises:
            StoreError: the object cannot be written (permissions, a full disk, an object
                store that stays busy), naming it.
        """
        return self._create(data, *parts)[0]

    def _create(self, data: bytes, *parts: str) -> tuple[bool, bool]:
        """(created, exclusively): ``exclusively`` is False where the backend has no
        create-only write and an exists-then-write stood in for it."""
        if self.local:
            return _create_local(self.path().joinpath(*parts), data), True
        key = self.key(*parts)
        for attempt in range(_BUSY_RETRIES):
            try:
                self.fs.pipe_file(key, data, mode="create")
                return True, True
            except FileExistsError:
                return False, True
            except (TypeError, NotImplementedError):
                break  # a backend without create-only writes (no ``mode`` argument)
            except OSError as exc:
                if exc.errno == errno.EBUSY:  # S3 409: another conditional write in flight
                    time.sleep(0.02 * 2 ** attempt)
                    continue
                if exc.errno == errno.ENOSYS:  # S3 501: the server has no If-None-Match
                    break
                raise StoreError(key, f"cannot be written: {exc}") from exc
        else:
            if self.exists(*parts):
                return False, True
            raise StoreError(key, f"the object store answered 'busy' (409) {_BUSY_RETRIES} "
                             "times to a create-only write; try again")
        # Check, then write: not atomic; see exclusive_creates and docs/store-design.md.
        if self.exists(*parts):
            return False, False
        try:
            self.fs.pipe_file(key, data)
        except OSError as exc:
            raise StoreError(key, f"cannot be written: {exc}") from exc
        return True, False

    def exclusive_creates(self) -> str | None:
        """Test, once, that this folder's backend makes :meth:`create` exclusive: one probe
        object is created twice, and the second create must fail. None when it holds, else
        why not (the probe object is removed either way).

        Raises:
            StoreError: the probe object cannot be written.
        """
        name = f".nasprobe-exclusive-{uuid.uuid4().hex}"
        try:
            first, atomic = self._create(b"1", name)
            second, _ = self._create(b"2", name)
        finally:
            self.remove(name)
        if not atomic:
            return "the backend has no create-only write (checked, then written)"
        if not first or second:
            return "a second create-only write of one object succeeded"
        return None

    def remove(self, *parts: str) -> None:
        """Delete object or folder ``parts`` (recursively; a link is removed, never followed);
        nothing happens when it does not exist."""
        if self.local:
            target = self.path().joinpath(*parts)
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
            return
        try:
            self.fs.rm(self.key(*parts), recursive=True)
        except FileNotFoundError:
            pass


#: Create-only writes answered 'busy' (S3's 409 for a conditional write in flight) are tried
#: this many times, with a growing pause (about 5 s in all).
_BUSY_RETRIES = 8


def _write_beside(target: Path, data: bytes) -> Path:
    """A new temporary file beside ``target`` holding ``data`` (its folder made when missing:
    tried first without, since an epoch writes a score of chunks into folders that mostly
    exist, and asking for each costs a system call per folder level)."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    try:
        tmp.write_bytes(data)
    except FileNotFoundError:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
    return tmp


def _create_local(target: Path, data: bytes) -> bool:
    """Exclusive create of a local file: a fully written temporary file hard-linked to the
    target (``os.link`` fails when the target exists, also on NFS; the file appears whole);
    where the file system has no hard links (vfat, many FUSE mounts), ``O_CREAT|O_EXCL``."""
    try:
        tmp = _write_beside(target, data)
    except OSError as exc:
        raise StoreError(target, f"cannot be written: {exc}") from exc
    try:
        os.link(tmp, target)
        return True
    except FileExistsError:
        return False
    except OSError:
        pass  # no hard links here: fall back to an exclusive open
    finally:
        tmp.unlink(missing_ok=True)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o666)
    except FileExistsError:
        return False
    except OSError as exc:
        raise StoreError(target, f"cannot be written: {exc}") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


#: Per process: folder URL → why its create-only writes are not exclusive (None: they are).
_EXCLUSIVE: dict[str, str | None] = {}


def warn_if_not_exclusive(loc: Location) -> str | None:
    """Test once per process whether ``loc``'s backend makes create-only writes exclusive
    (:meth:`Location.exclusive_creates`); where it does not, warn that only one job at a time
    may write there. Returns why not, or None."""
    if loc.url not in _EXCLUSIVE:
        why = _EXCLUSIVE[loc.url] = loc.exclusive_creates()
        if why:
            warnings.warn(f"{loc.url}: create-only writes are not exclusive on this storage "
                          f"({why}); jobs writing this store at the same time could mix runs, "
                          "so run one job at a time on it", stacklevel=3)
    return _EXCLUSIVE[loc.url]


def location(path: str | os.PathLike) -> Location:
    """A :class:`Location` for a local path (made absolute) or a URL (kept as written)."""
    text = checked_path(path)
    if is_url(text):
        return Location(text.rstrip("/") or text)
    return Location(str(Path(text).expanduser().absolute()))
