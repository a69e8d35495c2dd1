"""How fairseq 0.12 writes, reads and resumes checkpoints once this plugin is imported: safely.

fairseq writes the first checkpoint of a save by rename but *copies* it to the others
(``checkpoint_last.pt``, ``checkpoint_best.pt``) in place, so a kill during a save can leave a truncated
``checkpoint_last.pt``; it loads with a bare ``torch.load`` (whatever torch's default is) and resumes
from ``checkpoint_last.pt`` even when that file is damaged. :func:`install` replaces, in
``fairseq.checkpoint_utils`` only:

- ``torch_persistent_save`` and the copy, by writes committed by rename (:mod:`realm_fairseq.checkpoints`);
- ``load_checkpoint_to_cpu``, by one that loads with ``weights_only=True``, names a damaged file,
  refuses a checkpoint whose ``encoder_class`` would import a module nobody chose
  (:func:`realm_fairseq.models.encoder.untrusted_encoder_class`), and applies an override of a task or
  model option the checkpoint was saved before (fairseq drops it silently: it sets only saved keys);
- ``load_checkpoint`` (the resume), by one that clears unfinished temporary files and, when
  ``checkpoint_last.pt`` is damaged, says so and resumes from the newest intact checkpoint of the save
  directory, or refuses when there is none.

fairseq's legacy ``argparse.Namespace`` configs (its argparse models, such as RoBERTa) are allowed to
weights-only loading.
"""
import argparse
import json
import logging
import os

import torch
from fairseq import checkpoint_utils
from fairseq.dataclass.utils import overwrite_args_by_name
from fairseq.file_io import PathManager
from fairseq.models import ARCH_MODEL_NAME_REGISTRY, MODEL_DATACLASS_REGISTRY
from fairseq.tasks import TASK_DATACLASS_REGISTRY
from omegaconf import OmegaConf, open_dict

from realm_fairseq import checkpoints
from realm_fairseq.checkpoints import CheckpointError

logger = logging.getLogger(__name__)

_fairseq_torch_persistent_save = checkpoint_utils.torch_persistent_save
_fairseq_load_checkpoint = checkpoint_utils.load_checkpoint


def install() -> None:
    """Replace fairseq's checkpoint writing, reading and resuming (see the module docstring)."""
    torch.serialization.add_safe_globals([argparse.Namespace])
    checkpoint_utils.torch_persistent_save = torch_persistent_save
    checkpoint_utils.PathManager = RenamingPathManager
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
    checkpoint_utils.load_checkpoint = load_checkpoint


def torch_persistent_save(obj, filename, async_write: bool = False):
    if async_write or not isinstance(filename, str) or PathManager.path_requires_pathmanager(filename):
        return _fairseq_torch_persistent_save(obj, filename, async_write)
    checkpoints.save_state(obj, filename)


class RenamingPathManager(PathManager):
    """fairseq's PathManager, but a local copy is committed by rename."""

    @staticmethod
    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if PathManager.path_requires_pathmanager(dst_path):
            return PathManager.copy(src_path, dst_path, overwrite)
        if os.path.exists(dst_path) and not overwrite:
            return False
        checkpoints.copy_atomically(src_path, dst_path)
        return True


def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False, mmap: bool = False):
    """fairseq's ``load_checkpoint_to_cpu`` for local files, read by :func:`checkpoints.read_state`
    (``mmap``: tensors memory-mapped, read when used)."""
    state = checkpoints.read_state(PathManager.get_local_path(path), mmap=mmap)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: a torch file of {type(state).__name__}, not a fairseq checkpoint")
    check_encoder_classes(state, path, arg_overrides or {})
    if state.get("args") is not None and arg_overrides is not None:
        for name, value in arg_overrides.items():
            setattr(state["args"], name, value)
    if state.get("cfg") is not None:
        state["cfg"] = OmegaConf.create(state["cfg"], flags={"allow_objects": True})
        if arg_overrides is not None:
            override_options(state["cfg"], arg_overrides)
    return checkpoint_utils._upgrade_state_dict(state)


def override_options(cfg, overrides: dict) -> None:
    """fairseq's ``overwrite_args_by_name``, and also the options of the saved task and model that the saved
    ``cfg`` lacks (options added since it was saved): fairseq would drop those overrides, and the option
    would take its default when the task is set up."""
    overwrite_args_by_name(cfg, overrides)
    for section, fields in option_fields(cfg).items():
        missing = {k: v for k, v in overrides.items() if k in fields and k not in cfg[section]}
        with open_dict(cfg[section]):
            for key, value in missing.items():
                cfg[section][key] = value


def option_fields(cfg) -> dict:
    """The option names of the saved config's task and model (``{"task": {...}, "model": {...}}``), as their
    registered dataclasses define them today; a task or model not registered has none."""
    names = {"task": TASK_DATACLASS_REGISTRY.get(section_name(cfg.get("task"))),
             "model": MODEL_DATACLASS_REGISTRY.get(ARCH_MODEL_NAME_REGISTRY.get(section_name(cfg.get("model"))))}
    return {section: set(dc.__dataclass_fields__) for section, dc in names.items() if dc is not None}


def section_name(section):
    """The ``_name`` of a config section (a task, or a model's architecture), None when it has none."""
    return section.get("_name") if section is not None else None


def check_encoder_classes(state: dict, path: str, arg_overrides: dict) -> None:
    """Refuse a checkpoint whose model names an ``*encoder_class`` that would import code nobody chose
    (one the user overrides is theirs)."""
    from realm_fairseq.models.encoder import TRUSTED_ENV, untrusted_encoder_class

    model = (state.get("cfg") or {}).get("model") or state.get("args")
    fields = vars(model) if isinstance(model, argparse.Namespace) else dict(model or {})
    for key, name in encoder_classes(fields, arg_overrides):
        if untrusted_encoder_class(name):
            raise CheckpointError(
                f"{path}: its {key} {name!r} is not one of this plugin's encoders, and loading it would import "
                f"{name.partition(':')[0]}; if you trust that module, import it first (--user-dir) or list "
                f"{name} in ${TRUSTED_ENV}")


def encoder_classes(fields: dict, arg_overrides: dict):
    """(option, class name) of every encoder class a saved model config names and the user does not override:
    ``*encoder_class`` options, and ``encoder_class`` inside the readers' ``reader_encoder`` JSON."""
    for key, name in fields.items():
        if key.endswith("encoder_class") and key not in arg_overrides and isinstance(name, str):
            yield key, name
    readers = fields.get("reader_encoder") if "reader_encoder" not in arg_overrides else None
    try:
        name = json.loads(readers).get("encoder_class") if isinstance(readers, str) else None
    except (json.JSONDecodeError, AttributeError):  # not a JSON object: building the model says so
        name = None
    if isinstance(name, str):
        yield "reader_encoder's encoder_class", name


def load_checkpoint(cfg, trainer, **passthrough_args):
    """fairseq's resume (``checkpoint_utils.load_checkpoint``), from the newest intact checkpoint when
    ``checkpoint_last.pt`` is damaged."""
    if trainer.data_parallel_rank == 0:
        for path in checkpoints.remove_unfinished(cfg.save_dir):
            logger.info("removed %s, left by a save that was interrupted", path)
    fallback = resume_fallback(cfg, trainer.checkpoint_suffix or "")
    if fallback is not None:
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.restore_file, cfg.finetune_from_model = fallback, None
    return _fairseq_load_checkpoint(cfg, trainer, **passthrough_args)


def resume_fallback(cfg, suffix: str):
    """The checkpoint to resume from instead of a damaged ``checkpoint_last.pt``; None when it is whole, absent,
    or another ``--restore-file`` is named. Raises :class:`CheckpointError` when no checkpoint is intact."""
    if cfg.restore_file != "checkpoint_last.pt":
        return None
    last = os.path.join(cfg.save_dir, f"checkpoint_last{suffix}.pt")
    reason = checkpoints.damage(last) if os.path.exists(last) else None
    if reason is None:
        return None
    intact, damaged = checkpoints.newest_intact(cfg.save_dir, suffix)
    named = "; ".join(f"{p}: {r}" for p, r in damaged)
    if intact is None:
        raise CheckpointError(f"cannot resume: {named}; no intact checkpoint in {cfg.save_dir} (move the damaged "
                              f"files away to start over)")
    logger.warning("%s is damaged (%s): resuming from %s, the newest intact checkpoint in %s", last, reason,
                   intact, cfg.save_dir)
    return intact
