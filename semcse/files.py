"""Atomic file and folder writing: readers, and a rerun after a kill at any moment, see the old file
(or folder) or the new one, never half of one."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import IO, Any, Iterator

import settings


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside `path` to write; on success fsync it and rename it over `path`.
    On an error the temporary file is removed and `path` is untouched."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename:
            raise
        raise OSError(e.errno, e.strerror or str(e), path) from e  # a full disk: name the file it hit
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_folder(path: str) -> Iterator[str]:
    """Yield `path.tmp` to fill; on success fsync every file in it and swap it in for `path` with two
    renames (path -> path.old, path.tmp -> path), so a crash leaves the old folder or the new one
    (recover_interrupted_folder puts path.old back if a kill fell between the renames). On an error,
    a full disk or Ctrl-C, the temporary folder is removed and `path` is untouched."""
    path = path.rstrip("/")
    tmp, old = path + ".tmp", path + ".old"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        yield tmp
        for d, _, names in os.walk(tmp):  # on disk before the swap: a power cut leaves no folder of empty files
            for name in [*names, "."]:
                fd = os.open(os.path.join(d, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(path):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def recover_interrupted_folder(path: str) -> None:
    """A kill between atomic_folder's two renames leaves only path.old, the previous complete folder:
    put it back."""
    path = path.rstrip("/")
    if not os.path.exists(path) and os.path.isdir(path + ".old"):
        os.replace(path + ".old", path)


def write_json_atomic(path: str, obj: Any, **dump_kwargs: Any) -> str:
    """Write `obj` as JSON through atomic_write: the old file or the new, never half."""
    with atomic_write(path) as f:
        json.dump(obj, f, **dump_kwargs)
    return path


def save_settings(folder: str, cfg: settings.Config | None = None, **extra: Any) -> str:
    """Write the resolved settings (secrets removed) to folder/settings.json atomically."""
    os.makedirs(folder, exist_ok=True)
    return write_json_atomic(os.path.join(folder, "settings.json"), settings.public_settings(cfg, **extra),
                             indent=2, sort_keys=True)
