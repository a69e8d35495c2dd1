"""The plugin loads into fairseq from any directory, and a CORPUS is a standard fairseq dataset:
fairseq's own masked_lm trains on its blocks, stops, and resumes from its checkpoint on torch 2.13."""
import os
import re

from realm_fairseq.data import BlockCorpus
from realm_fairseq.cli.train import PLUGIN_DIR, with_hydra_user_dir, with_user_dir

from conftest import ROOT, run

TINY_MLM = [
    "--task", "masked_lm", "--train-subset", "blocks", "--valid-subset", "blocks",
    "--arch", "roberta_base", "--encoder-layers", "1", "--encoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2",
    "--max-positions", "290", "--tokens-per-sample", "290", "--sample-break-mode", "complete",
    "--criterion", "masked_lm", "--optimizer", "adam", "--lr", "1e-3", "--lr-scheduler", "fixed",
    "--batch-size", "4", "--required-batch-size-multiple", "1", "--max-valid-steps", "1",
    "--cpu", "--num-workers", "0", "--no-progress-bar", "--log-interval", "1", "--log-format", "simple",
    "--seed", "1",
]


def logged_updates(log: str):
    return [int(n) for n in re.findall(r"\| num_updates (\d+)", log) + re.findall(r"num_updates=(\d+)", log)]


def test_fairseq_train_help_with_the_installed_plugin_dir(tmp_path):
    out = run(["fairseq-train", "--user-dir", PLUGIN_DIR, "--help"], cwd=tmp_path).stdout
    assert "--user-dir" in out and "--task" in out


def test_console_scripts_start_from_any_directory(tmp_path):
    assert "--task" in run(["realm-train", "--help"], cwd=tmp_path).stdout
    assert "hydra_train is powered by Hydra" in run(["realm-hydra-train", "--help"], cwd=tmp_path).stdout


def test_realm_train_help_lists_the_chosen_task_model_and_criterion_options_with_defaults(tmp_path):
    out = run(["realm-train", "--task", "realm_pretrain", "--criterion", "realm_mlm", "--arch", "realm_tiny",
               "--help"], cwd=tmp_path).stdout
    flat = " ".join(out.split())
    assert "data CORPUS directory from realm-prepare-corpus" in flat  # the task's
    assert "--masking {salient_span,random_token,random_span}" in flat
    assert re.search(r"--retrieval-topk RETRIEVAL_TOPK blocks retrieved per example.{0,400}?\(default: 8\)", flat)
    assert re.search(r"--retriever-warmup-updates RETRIEVER_WARMUP_UPDATES.{0,400}?\(default: 0\)", flat)
    assert "--encoder-embed-dim" in flat  # the model's
    qa = " ".join(run(["realm-train", "--task", "realm_open_qa", "--criterion", "realm_qa", "-h"],
                      cwd=tmp_path).stdout.split())
    assert re.search(r"--max-span-len MAX_SPAN_LEN longest answer span.{0,400}?\(default: 10\)", qa)


def test_wrappers_add_the_plugin_dir_once():
    assert with_user_dir(["data"]) == ["data", "--user-dir", PLUGIN_DIR]
    assert with_user_dir(["data", "--user-dir", "/x"]) == ["data", "--user-dir", "/x"]
    assert with_hydra_user_dir(["task.data=x"]) == ["task.data=x", f"common.user_dir={PLUGIN_DIR}"]
    assert with_hydra_user_dir(["common.user_dir=/x"]) == ["common.user_dir=/x"]


def test_masked_lm_trains_on_blocks_and_resumes(wiki_corpus, tmp_path):
    save = str(tmp_path / "ckpt")
    # plain fairseq-train may abort at exit on torch 2.13 unless prefetching is off (see
    # realm_fairseq.cli.train.exit_after_success); realm-train needs no such flag
    first = run(["fairseq-train", wiki_corpus, "--user-dir", PLUGIN_DIR, *TINY_MLM, "--save-dir", save,
                 "--max-update", "3", "--data-buffer-size", "0"], cwd=tmp_path)
    num_blocks = len(BlockCorpus(wiki_corpus))
    assert f"loaded {num_blocks:,} examples from: {wiki_corpus}/blocks" in first.stderr + first.stdout
    assert max(logged_updates(first.stdout + first.stderr)) == 3
    assert os.path.exists(os.path.join(save, "checkpoint_last.pt"))

    second = run(["realm-train", wiki_corpus, *TINY_MLM, "--save-dir", save, "--max-update", "6"],
                 cwd=tmp_path)
    log = second.stdout + second.stderr
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 3 updates\)", log), log[-3000:]
    assert min(logged_updates(log)) == 4 and max(logged_updates(log)) == 6
    # fairseq-train warns about fairseq's own calls to hydra and torch at every start; realm-train does not
    assert "hydra.experimental.initialize() is no longer experimental" in first.stdout + first.stderr
    assert "Warning" not in log, log[:3000]


def test_hydra_train_reports_a_bad_input_in_one_line(tmp_path):
    proc = run(["realm-hydra-train", "--config-dir", os.path.join(ROOT, "examples", "realm", "config", "pretrain"),
                "--config-name", "small_cpu", f"task.data={tmp_path / 'no-corpus'}", f"task.index={tmp_path / 'no'}"],
               cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert re.search(rf"^realm-hydra-train: error: .*{tmp_path / 'no-corpus'}", proc.stderr, re.M), proc.stderr[-2000:]


def test_hydra_train_runs_a_yaml_config(wiki_corpus, tmp_path):
    proc = run(["realm-hydra-train", "--config-dir", os.path.join(ROOT, "tests", "configs"),
                "--config-name", "masked_lm_blocks", f"task.data={wiki_corpus}",
                f"checkpoint.save_dir={tmp_path / 'ckpt'}"], cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert f"'user_dir': '{PLUGIN_DIR}'" in log
    assert max(logged_updates(log)) == 3
    assert os.path.exists(tmp_path / "ckpt" / "checkpoint_last.pt")
