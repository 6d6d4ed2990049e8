"""Named checkpoints and the download cache: which files have names, where they live, and a
resumable, verified HTTP download (torch-free, so the CLI can check a ``--model`` name at once).

:data:`NAMED_CHECKPOINTS` records, per name, where its authors publish the file, its licence
terms and how a copy is verified; :mod:`maco_cxr.hub` does the verifying and converting.

:func:`cache_dir` is ``$MACO_CXR_CACHE``, else ``$XDG_CACHE_HOME/maco-cxr``, else
``~/.cache/maco-cxr``. :func:`download` fetches a URL into ``<file>.part`` beside its
destination, continuing a partial file with an HTTP range request (a server that ignores the
range starts it again), and publishes the file by one rename only after ``verify`` accepted it:
a file in the cache is always whole and checked; a download that fails verification is removed
(the ``.part`` is this module's own file), so nothing damaged stays behind.

Written on :mod:`urllib` rather than a client library: a range request, a progress bar and an
atomic rename are all a checkpoint download needs, and the default install stays small. Google
Drive links (the official MaCo weights) need its confirm-token dance, which ``gdown`` (the
``.[download]`` extra) implements; :func:`download` uses it for ``drive.google.com`` URLs.
"""

from __future__ import annotations

import difflib
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from maco_cxr.errors import CheckpointError

__all__ = [
    "NAMED_CHECKPOINTS",
    "OFFLINE_VARIABLES",
    "PART_SUFFIX",
    "NamedCheckpoint",
    "cache_dir",
    "download",
    "is_offline",
    "named_checkpoint",
]

OFFLINE_VARIABLES = ("MACO_CXR_OFFLINE", "HF_HUB_OFFLINE")
"""Either set to 1 (or true/yes) forbids downloads: only files already in the cache are used."""

PART_SUFFIX = ".part"
_CHUNK = 1 << 20
_DRIVE = re.compile(r"https://drive\.google\.com/file/d/([\w-]+)")


@dataclass(frozen=True)
class NamedCheckpoint:
    """A checkpoint known by name: where its authors publish it, its licence terms, and how a
    downloaded copy is verified (``sha256`` where a digest is known, else the shape signature of
    the :data:`KNOWN_CHECKPOINTS` entry ``known_checkpoint``, or, for the MAE initialisation, the
    ViT-B/16 encoder's shapes). ``kind``: ``"maco"`` loads as a model; ``"mae-init"`` is a
    pre-training initialisation (``runtime.init_mae=NAME``)."""

    name: str
    description: str
    file_name: str
    url: str | None
    source: str
    licence: str
    kind: Literal["maco", "mae-init"]
    sha256: str | None = None
    known_checkpoint: str | None = None

    @property
    def verified_by(self) -> str:
        """How a copy is checked, in words (for errors and ``maco-cxr download --list``)."""
        if self.sha256 is not None:
            return f"SHA-256 {self.sha256}"
        if self.kind == "mae-init":
            return "no digest published: checked by its shapes (a ViT-B/16 MAE encoder, 12 blocks of width 768)"
        return f"no digest published: checked by its shapes (the {self.known_checkpoint!r} signature)"


NAMED_CHECKPOINTS: dict[str, NamedCheckpoint] = {
    entry.name: entry
    for entry in (
        NamedCheckpoint(
            name="maco-base",
            description="the released MaCo maco.pth (Huang et al., Nature Communications 2024): ViT-B/16 at "
            "224 px, BERT 768 x 6 layers, MAE decoder 768 x 4 predicting 32x32 patches of the 448 px image",
            file_name="maco.pth",
            url="https://drive.google.com/file/d/1B87JuLJnjh_CoQpjT7RWGTp6alfXV8_0",
            source="the official MaCo README (github:SZUHvern/MaCo), its pre-trained model link",
            licence="released with the MaCo code (MIT); trained on MIMIC-CXR, whose PhysioNet credentialed "
            "licence governs the data: research use",
            kind="maco",
            known_checkpoint="maco-official",
        ),
        NamedCheckpoint(
            name="mae-vit-base",
            description="the MAE ImageNet ViT-B/16 initialisation MaCo pre-training starts from",
            file_name="mae_pretrain_vit_base.pth",
            url="https://drive.google.com/file/d/1LZwbPUKmQum5fYDWbJ7iVXdrYFNtff3X",
            source="the official MaCo README (github:SZUHvern/MaCo), its MAE initialisation link",
            licence="MAE weights by Meta (github:facebookresearch/mae): CC BY-NC 4.0, non-commercial",
            kind="mae-init",
        ),
        NamedCheckpoint(
            name="official-maco-tiny",
            description="the tiny random-weight test fixture saved by the official MaCo code",
            file_name="maco.pth",
            url=None,
            source="tests/assets/official-maco-tiny/maco.pth in the maco-cxr repository (see its README)",
            licence="MIT (random weights written by the official code)",
            kind="maco",
            sha256="d45c167d896141d80d60541740732a0604d8bc80a1167dd1665d110016732652",
            known_checkpoint="official-maco-tiny",
        ),
    )
}


def named_checkpoint(name: str) -> NamedCheckpoint:
    """The :data:`NAMED_CHECKPOINTS` entry ``name``; an unknown name is an error listing the known ones."""
    if name in NAMED_CHECKPOINTS:
        return NAMED_CHECKPOINTS[name]
    near = difflib.get_close_matches(name, list(NAMED_CHECKPOINTS), n=1)
    hint = f"did you mean {near[0]}? " if near else ""
    raise CheckpointError(f"{name!r} is not a named checkpoint; {hint}known names: {', '.join(NAMED_CHECKPOINTS)}")


def cache_dir() -> Path:
    """The cache root: ``$MACO_CXR_CACHE``, else ``$XDG_CACHE_HOME/maco-cxr``, else ``~/.cache/maco-cxr``."""
    if os.environ.get("MACO_CXR_CACHE"):
        return Path(os.environ["MACO_CXR_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "maco-cxr"


def is_offline() -> bool:
    """True when ``MACO_CXR_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to a true value."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in OFFLINE_VARIABLES)


def download(
    url: str,
    destination: Path,
    *,
    verify: Callable[[Path], None],
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``destination`` (resuming ``destination.part``), call ``verify`` on the
    whole file (it raises to refuse it) and publish it by a rename; returns ``destination``.

    Raises :class:`~maco_cxr.errors.CheckpointError` naming the URL on an HTTP error, a broken
    connection (the partial file is kept, so calling again resumes) or a refused file (removed).
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + PART_SUFFIX)
    drive = _DRIVE.match(url)
    if drive:
        _download_from_drive(drive.group(1), url, part)
    else:
        _download_http(url, part, progress=progress, timeout=timeout)
    try:
        verify(part)
    except Exception:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, destination)
    return destination


def _download_http(url: str, part: Path, *, progress: bool, timeout: float) -> None:
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - the URL is the registry's or the user's
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the partial file is already whole: let verify judge it
            return
        raise CheckpointError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        raise CheckpointError(f"{url}: cannot connect ({err})") from err
    with response:
        resumed = have > 0 and response.status == 206
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with (
            part.open("ab" if resumed else "wb") as handle,
            tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=part.name, disable=not progress) as bar,
        ):
            try:
                while chunk := response.read(_CHUNK):
                    handle.write(chunk)
                    bar.update(len(chunk))
            except (OSError, ValueError) as err:
                raise CheckpointError(
                    f"{url}: the connection broke after {part.stat().st_size} bytes ({err}); run the same "
                    "command again to resume the download"
                ) from err
    got = part.stat().st_size
    if total is not None and got < total:
        raise CheckpointError(
            f"{url}: the server sent {got} of {total} bytes; run the same command again to resume the download"
        )


def _download_from_drive(file_id: str, url: str, part: Path) -> None:
    try:
        import gdown
    except ImportError as err:
        raise CheckpointError(
            f"{url} is a Google Drive link, which needs gdown: pip install 'maco-cxr[download]'"
        ) from err
    try:
        gdown.download(id=file_id, output=str(part), quiet=False, resume=True)
    except Exception as err:  # gdown raises its own types and plain exceptions
        raise CheckpointError(f"{url}: the Google Drive download failed ({type(err).__name__}: {err})") from err
    if not part.is_file():
        raise CheckpointError(f"{url}: the Google Drive download wrote no file")
