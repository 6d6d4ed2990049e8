"""`maco-cxr push`: a model or fine-tuned folder to the Hugging Face Hub, with its model card.

:func:`push_to_hub` uploads every file of the folder (not this package's ``.maco-cxr.json``
marker) and the card (:func:`maco_cxr.cards.model_card`: the folder's own ``README.md`` when a
run wrote one) in ONE commit through ``huggingface_hub`` (the ``.[hub]`` extra), so a
half-pushed model never appears on the Hub. ``dry_run=True`` returns the plan without touching
the network: the files and the card it would upload.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from maco_cxr._atomic import MARKER_NAME
from maco_cxr.cards import CARD_NAME, model_card
from maco_cxr.errors import CheckpointError

__all__ = ["PushPlan", "push_to_hub"]


@dataclass(frozen=True)
class PushPlan:
    """What :func:`push_to_hub` uploads (or, with ``dry_run``, would upload)."""

    repo_id: str
    folder: Path
    files: tuple[str, ...]  # paths in the repository, README.md (the card) included
    card: str
    uploaded: bool
    commit_url: str | None = None


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
) -> PushPlan:
    """Upload ``folder`` (a MaCo model or a fine-tuned run's ``best/``/``final/``) to ``repo_id``
    (``ORG/NAME``) with its model card; the repository is created when absent."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: not a model folder (no config.json); push a model or a run's best/ or final/")
    card = model_card(folder)
    files = sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name not in (MARKER_NAME, CARD_NAME)
    )
    plan = PushPlan(repo_id, folder, (CARD_NAME, *files), card, uploaded=False)
    if dry_run:
        return plan
    try:
        from huggingface_hub import CommitOperationAdd, HfApi
    except ImportError as err:
        raise CheckpointError("pushing needs huggingface_hub: pip install 'maco-cxr[hub]'") from err
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=card.encode())]
    operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
    commit = api.create_commit(
        repo_id,
        operations=operations,
        commit_message=commit_message or f"maco-cxr push of {folder.name}",
        revision=revision,
    )
    return PushPlan(repo_id, folder, plan.files, card, uploaded=True, commit_url=str(getattr(commit, "commit_url", "")))
