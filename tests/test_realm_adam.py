"""The ``realm_adam`` optimizer in fairseq's trainer: the retriever's parameters move at
``--retriever-lr-scale`` times the reader's learning rate (0 freezes them), the reader's as with ``adam``; a
resumed run keeps its own scale; fp16's flattened parameters are refused with the flag that keeps the tags;
fairseq's composite optimizer groups by the same tag."""
import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.optim.fp16_optimizer import FP16Optimizer
from fairseq.trainer import Trainer
from omegaconf import open_dict

from realm_fairseq.models.embedder import TOWERS
from realm_fairseq.optim.realm_adam import param_groups

from test_realm_pretrain import index_dir, pretrain_args, setup  # noqa: F401 (fixtures)


def realm_trainer(wiki_corpus, index_dir, *extra) -> Trainer:
    """fairseq's Trainer of a realm_pretrain run (realm_tiny, lr 1e-3) with the ``extra`` options."""
    args = pretrain_args(wiki_corpus, index_dir, "--retrieval-topk", "2", *extra)
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), args))
    torch.manual_seed(1)
    task = tasks.setup_task(cfg.task)
    return Trainer(cfg, task, task.build_model(cfg.model), task.build_criterion(cfg.criterion))


def weights(trainer: Trainer) -> dict:
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


def one_update(wiki_corpus, index_dir, *extra):
    """The model's parameters before and after one update (the same batch for every option)."""
    trainer = realm_trainer(wiki_corpus, index_dir, *extra)
    before = weights(trainer)
    batches = trainer.get_train_iterator(epoch=1).next_epoch_itr(shuffle=False)
    trainer.train_step([next(batches)])
    return before, weights(trainer), trainer


def is_retriever(name: str) -> bool:
    return name.split(".")[0] in TOWERS


def test_the_retriever_moves_at_its_scale_and_the_reader_as_with_adam(wiki_corpus, index_dir):
    before, adam, _ = one_update(wiki_corpus, index_dir)
    start, quarter, trainer = one_update(wiki_corpus, index_dir, "--optimizer", "realm_adam",
                                         "--retriever-lr-scale", "0.25")
    _, frozen, _ = one_update(wiki_corpus, index_dir, "--optimizer", "realm_adam", "--retriever-lr-scale", "0")
    assert trainer.get_lr() == 1e-3  # the scheduled rate, as fairseq logs it
    assert sorted(g["lr"] for g in trainer.optimizer.param_groups) == [0.25e-3, 1e-3]
    names = sorted(before)
    assert any(is_retriever(n) for n in names) and any(not is_retriever(n) for n in names)
    for name in names:
        assert torch.equal(start[name], before[name])  # the same start
        step, scaled = adam[name] - before[name], quarter[name] - before[name]
        assert step.abs().max() > 0, name  # one step of Adam moves every parameter by about the rate
        named = {"rtol": 1e-3, "atol": 1e-8, "msg": lambda m, name=name: f"{name}: {m}"}
        if is_retriever(name):
            torch.testing.assert_close(scaled, 0.25 * step, **named)
            assert torch.equal(frozen[name], before[name]), name
        else:
            torch.testing.assert_close(scaled, step, **named)
            torch.testing.assert_close(frozen[name], adam[name], **named)


def test_a_resumed_run_trains_at_its_own_scale(wiki_corpus, index_dir, tmp_path):
    *_, trainer = one_update(wiki_corpus, index_dir, "--optimizer", "realm_adam", "--retriever-lr-scale", "0.25")
    checkpoint = str(tmp_path / "checkpoint_last.pt")
    trainer.consolidate_optimizer()  # as fairseq's checkpoint_utils.save_checkpoint does first
    trainer.save_checkpoint(checkpoint, {})
    resumed = realm_trainer(wiki_corpus, index_dir, "--optimizer", "realm_adam", "--retriever-lr-scale", "0.5")
    resumed.load_checkpoint(checkpoint)
    assert resumed.get_num_updates() == 1
    saved = trainer.optimizer.state_dict()["state"]
    assert saved and all(torch.equal(resumed.optimizer.state_dict()["state"][i]["exp_avg"], s["exp_avg"])
                         for i, s in saved.items())  # Adam's moments come back
    assert [(g["lr_scale"], g["lr"]) for g in resumed.optimizer.param_groups] == [(1.0, 1e-3), (0.5, 0.5e-3)]


def test_fp16_parameters_keep_their_tags_unless_flattened(wiki_corpus, index_dir):
    """fairseq's --fp16 trains fp32 copies of the parameters: one per parameter, tags copied, with
    --fp16-no-flatten-grads (and --bf16); otherwise one flat tensor without tags (it needs CUDA to build),
    which realm_adam refuses rather than train the retriever at the reader's rate."""
    trainer = realm_trainer(wiki_corpus, index_dir, "--optimizer", "realm_adam", "--retriever-lr-scale", "0.1",
                            "--fp16-no-flatten-grads")
    model = trainer.model.half()  # as fairseq's trainer converts it, the parameters stay the same objects
    if torch.cuda.is_available():
        model = model.cuda()
    params = list(model.parameters())
    with open_dict(trainer.cfg):
        trainer.cfg.common.fp16 = True
    fp16 = FP16Optimizer.build_optimizer(trainer.cfg, params)
    retriever = sum(p.numel() for name, p in model.named_parameters() if is_retriever(name))
    assert [(g["lr_scale"], sum(p.numel() for p in g["params"])) for g in fp16.fp32_optimizer.param_groups] \
        == [(1.0, sum(p.numel() for p in params) - retriever), (0.1, retriever)]
    message = (r"--retriever-lr-scale 0.1: no parameter is tagged as the retriever's \(with --fp16, add "
               r"--fp16-no-flatten-grads")
    with pytest.raises(ValueError, match=message):
        param_groups([torch.nn.Parameter(torch.zeros(3))], 0.1)  # what the flat parameter is to it
    if torch.cuda.is_available():
        with open_dict(trainer.cfg):
            trainer.cfg.common.fp16_no_flatten_grads = False
        with pytest.raises(ValueError, match=message):
            FP16Optimizer.build_optimizer(trainer.cfg, params)


def test_a_negative_scale_is_refused(wiki_corpus, index_dir):
    trainer = realm_trainer(wiki_corpus, index_dir, "--optimizer", "realm_adam", "--retriever-lr-scale", "-1")
    with pytest.raises(ValueError, match="--retriever-lr-scale -1.0: expected 0 or more"):
        trainer.optimizer


def test_fairseqs_composite_optimizer_groups_by_the_same_tag(wiki_corpus, index_dir):
    """fairseq's composite optimizer (a config, as fairseq-hydra-train gives it) with groups ``default`` and
    ``retriever``: each embedder parameter is in the retriever's group, at its rate."""
    trainer = realm_trainer(wiki_corpus, index_dir, "--lr-scheduler", "pass_through")

    def group(lr: float) -> dict:
        return {"optimizer": {"_name": "adam", "lr": [lr]}, "lr_scheduler": {"_name": "fixed", "lr": [lr]}}

    with open_dict(trainer.cfg):
        trainer.cfg.optimizer = {"_name": "composite", "groups": {"default": group(1e-3), "retriever": group(1e-4)}}
    retriever = {id(p) for name, p in trainer.model.named_parameters() if is_retriever(name)}
    by_rate = {g["lr"]: {id(p) for p in g["params"]} for g in trainer.optimizer.param_groups}
    assert by_rate[1e-4] == retriever
    assert by_rate[1e-3] == {id(p) for p in trainer.model.parameters()} - retriever
