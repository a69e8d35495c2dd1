"""A ``realm_open_qa`` checkpoint from REALM's released open-QA weights, with no training step.

``realm-evaluate``, ``realm-answer`` and :class:`~realm_fairseq.hub.RealmQA` read fairseq checkpoints of
the ``realm_open_qa`` task (paper, section 3.3: a fixed index, a query embedder and a span reader). To
evaluate one of REALM's fine-tuned models (``realm-orqa-nq-openqa``, ``-wq-openqa``) as released, this
builds that task's model exactly as ``realm-train --task realm_open_qa --realm-init WEIGHTS.pt`` would
(fairseq's own parser and task, sizes from the weights) and saves it as fairseq saves a checkpoint,
``--realm-init`` removed (the weights are inside), the architecture REALM's (the ``realm_hf`` form), and
``--span-rule orqa``: answers are predicted as REALM predicts them. It runs fairseq's task and model
registries, as a command does: ``realm-convert-hf --qa-checkpoint`` calls it.
"""
from typing import List, Optional

from omegaconf import OmegaConf, open_dict

from realm_fairseq.atomic_io import atomic_file
from realm_fairseq.models.realm_hf import load_realm_weights

#: ``realm-train`` flags for the sizes a REALM weights file records
_SIZE_ARGS = (("encoder_layers", "--encoder-layers"), ("encoder_embed_dim", "--encoder-embed-dim"),
              ("encoder_ffn_embed_dim", "--encoder-ffn-embed-dim"),
              ("encoder_attention_heads", "--encoder-attention-heads"), ("max_positions", "--max-positions"),
              ("num_segments", "--num-segments"))


def training_args(weights_path: str, corpus: str, index: str, questions: Optional[str] = None,
                  extra: Optional[List[str]] = None) -> List[str]:
    """The ``realm-train`` command line (less the program name) that starts open-QA fine-tuning from REALM
    ``weights_path``, with its sizes."""
    weights = load_realm_weights(weights_path)
    if "span_reader" not in weights["parts"] or "query_embedder" not in weights["parts"]:
        raise ValueError(f"{weights_path}: holds {sorted(weights['parts'])}; an open-QA checkpoint needs a query "
                         f"embedder and a span reader (convert REALM's *-openqa checkpoint)")
    cfg = weights["config"]
    argv = [questions or corpus, "--task", "realm_open_qa", "--corpus", corpus, "--index", index,
            "--criterion", "realm_qa", "--arch", "realm_base", "--realm-init", weights_path,
            "--retriever-projection-dim", str(weights["retriever_projection_dim"]),
            "--span-hidden-dim", str(weights["span_hidden_dim"]),
            "--max-span-len", str(weights.get("max_span_width", 10)), "--dropout", "0", "--attention-dropout", "0"]
    for name, flag in _SIZE_ARGS:
        argv += [flag, str(cfg[name])]
    return argv + list(extra or [])


def write_open_qa_checkpoint(weights_path: str, corpus: str, index: str, out: str, force: bool = False,
                             extra: Optional[List[str]] = None) -> dict:
    """Build the ``realm_open_qa`` model of REALM open-QA weights over ``corpus`` and ``index`` and save it
    as a fairseq checkpoint ``out`` (atomically); returns the model config saved."""
    import realm_fairseq  # noqa: F401  registers the plugin's tasks, models and criterions
    from fairseq import checkpoint_utils, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from realm_fairseq.cli.train import hide_fairseq_internal_warnings

    hide_fairseq_internal_warnings()

    parser = options.get_training_parser()
    extra = ["--span-rule", "orqa", *(extra or [])]  # REALM's released readers were trained to ORQA's rule
    args = options.parse_args_and_arch(parser, training_args(weights_path, corpus, index, extra=extra))
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    with open_dict(cfg.model):
        cfg.model.realm_init = None  # the weights are in the checkpoint: loading it needs no other file
    state = {
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),  # as fairseq's trainer saves it
        "args": None,
        "model": model.state_dict(),
        "criterion": None,
        "optimizer_history": [{"criterion_name": "RealmQACriterion", "optimizer_name": "none",
                               "lr_scheduler_state": {}, "num_updates": 0}],
        "task_state": {},
        "extra_state": {"converted_from": load_realm_weights(weights_path)["sources"]},
        "last_optimizer_state": None,
    }
    with atomic_file(out, force=force) as tmp:
        checkpoint_utils.torch_persistent_save(state, tmp)
    return cfg.model
