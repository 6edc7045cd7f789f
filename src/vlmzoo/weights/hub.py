"""Hugging Face Hub integration: ``vlmzoo.load``, ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``.

:func:`load` resolves a local path or a Hub repo id to a checkpoint directory and rebuilds the
model with :func:`vlmzoo.weights.format.load_directory`; ``from_pretrained`` is the same call
with a class check. :class:`HubMixin` gives every registered vlmzoo module the methods users know from
transformers and huggingface_hub's ``ModelHubMixin``, on top of vlmzoo's own checkpoint format
(:mod:`vlmzoo.weights.format`): what ``save_pretrained`` writes, ``vlmzoo.load`` reads, and back.

Why not subclass ``huggingface_hub.ModelHubMixin``: importing it costs about 0.2 s after torch
(it pulls in ``HfApi`` and its HTTP stack), and every model module would pay that on the first
``create_encoder``; its ``config.json`` holds ``__init__`` keyword arguments instead of our
``architecture`` + ``config`` document; and its save is neither sharded nor atomic. So the
methods here keep its names and keywords, and huggingface_hub is imported only inside the
calls that need it (``snapshot_download``, ``HfApi``, ``split_torch_state_dict_into_shards``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from vlmzoo.errors import CheckpointError
from vlmzoo.version import __version__
from vlmzoo.weights.format import CHECKPOINT_PATTERNS, DEFAULT_MAX_SHARD_SIZE, load_directory, save

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

M = TypeVar("M", bound="HubMixin")


class HubMixin:
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for a registered vlmzoo module."""

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
        push_to_hub: bool = False,
        repo_id: str | None = None,
        **push_to_hub_kwargs: Any,
    ) -> Path:
        """Save to ``save_directory`` (see :func:`vlmzoo.save`); returns the directory.

        With ``push_to_hub=True`` the saved checkpoint files are then uploaded to ``repo_id``
        (default: the directory's name), with ``push_to_hub_kwargs`` as for :meth:`push_to_hub`.
        """
        directory = save(self, save_directory, max_shard_size=max_shard_size)  # type: ignore[arg-type]
        if push_to_hub:
            _upload(directory, repo_id or directory.resolve().name, **push_to_hub_kwargs)
        return directory

    @classmethod
    def from_pretrained(
        cls: type[M],
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        verify: bool | None = None,
    ) -> M:
        """Load a checkpoint directory or Hub repo id holding a checkpoint of this class
        (:func:`load` with ``expected=cls``).

        A checkpoint of another architecture raises :class:`CheckpointError` naming both
        (checkpoints of subclasses load, since they are instances of this class).
        """
        return load(  # type: ignore[return-value]
            pretrained_model_name_or_path,
            device,
            dtype=dtype,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            force_download=force_download,
            local_files_only=local_files_only,
            verify=verify,
            expected=cls,
        )

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str = "Upload model with vlmzoo",
        private: bool | None = None,
        token: str | None = None,
        branch: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
        delete_patterns: list[str] | str | None = None,
    ) -> str:
        """Save to a temporary directory and upload it to ``repo_id`` in one commit; returns its URL.

        The repo is created if needed. Checkpoint files already in the repo that this save does
        not write (stale shards of a bigger model) are deleted in the same commit, unless
        ``delete_patterns`` says otherwise.
        """
        with tempfile.TemporaryDirectory(prefix="vlmzoo-push-") as tmp:
            directory = save(self, Path(tmp) / "checkpoint", max_shard_size=max_shard_size)  # type: ignore[arg-type]
            return _upload(
                directory,
                repo_id,
                commit_message=commit_message,
                private=private,
                token=token,
                branch=branch,
                create_pr=create_pr,
                delete_patterns=delete_patterns,
            )


def _upload(
    directory: Path,
    repo_id: str,
    *,
    commit_message: str = "Upload model with vlmzoo",
    private: bool | None = None,
    token: str | None = None,
    branch: str | None = None,
    create_pr: bool = False,
    delete_patterns: list[str] | str | None = None,
) -> str:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo.repo_id,
        folder_path=directory,
        commit_message=commit_message,
        revision=branch,
        create_pr=create_pr,
        allow_patterns=CHECKPOINT_PATTERNS,  # the checkpoint only, not other files in the folder
        delete_patterns=CHECKPOINT_PATTERNS if delete_patterns is None else delete_patterns,
    )
    return str(commit)


def load(
    path_or_hub_id: str | os.PathLike,
    device: str | torch.device | None = None,
    *,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
    verify: bool | None = None,
    expected: type | None = None,
) -> nn.Module:
    """Rebuild a saved model; outputs are bit-identical to the saved model's.

    Loading is lean: the parameters are the tensors read from the files (no random
    initialisation, no second copy), cast to ``dtype`` (``None``: the stored dtypes) and placed on
    ``device`` (``None``: the CPU) one tensor at a time; a model that would not fit in the
    device's free memory is refused before anything is allocated.

    ``path_or_hub_id`` is a checkpoint directory, or else a Hugging Face Hub repo id
    (``"owner/name"``) whose checkpoint files are downloaded (``revision``, ``cache_dir``,
    ``token``, ``force_download`` and ``local_files_only`` go to ``snapshot_download``).
    Every file is checked before the model is allocated; ``verify=False`` (or the environment
    variable ``VLMZOO_VERIFY_WEIGHTS=0``) skips the two checks that read every byte: the
    comparison of each file's tensors with the SHA-256 the save recorded, and the scan for NaN
    and inf weights. ``expected``, a class, refuses checkpoints of other architectures.
    """
    directory = resolve(
        path_or_hub_id,
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        force_download=force_download,
        local_files_only=local_files_only,
    )
    return load_directory(directory, device, expected, dtype=dtype, verify=verify)


def resolve(
    path_or_hub_id: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
) -> Path:
    """The local directory of a checkpoint: ``path_or_hub_id`` if it exists, else a Hub download.

    Only a ``str`` that is a valid repo id goes to the Hub (a ``Path`` never does), and only the
    checkpoint files are downloaded.
    """
    path = Path(path_or_hub_id)
    if path.exists():
        return path
    if not isinstance(path_or_hub_id, str):
        raise CheckpointError(f"no such checkpoint directory: {path}")
    if not _is_repo_id(path_or_hub_id):
        raise CheckpointError(
            f"{path_or_hub_id!r} is neither an existing directory nor a Hugging Face Hub repo id "
            "('owner/name')"
        )
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            path_or_hub_id,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            force_download=force_download,
            local_files_only=local_files_only,
            allow_patterns=CHECKPOINT_PATTERNS,
            library_name="vlmzoo",
            library_version=__version__,
        )
    except Exception as e:  # network, auth, missing repo or revision, offline cache miss...
        raise CheckpointError(
            f"{path_or_hub_id!r} is not a local directory, and downloading it from the Hugging Face Hub "
            f"failed: {type(e).__name__}: {e}"
        ) from e
    return Path(local)


def _is_repo_id(text: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True
