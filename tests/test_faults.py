"""Faults and what survives them (issue 17, part B), on real files and real ``realm-train`` runs: a
training killed with SIGKILL while it saves leaves every checkpoint whole and resumes; a torn
``checkpoint_last.pt`` is named and skipped for the newest intact checkpoint; checkpoints load with
``weights_only=True`` and never import an ``encoder_class`` nobody chose; ``--force`` and ``--out`` never
destroy an input; CLI errors are one line naming the file and what was expected."""
import gc
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from fairseq import checkpoint_utils

from realm_fairseq import checkpoints
from realm_fairseq.checkpoints import CheckpointError
from realm_fairseq.cli import evaluate
from realm_fairseq.data import BlockCorpus, InputError
from realm_fairseq.data.corpus_builder import CorpusConfig, prepare_corpus
from realm_fairseq.data.documents import read_tsv
from realm_fairseq.data.questions import read_questions, squad_questions
from realm_fairseq.data.vocab import Vocab
from realm_fairseq.models import loading

from conftest import BIN, VOCAB, WIKI, run

ICT = ["--task", "realm_ict", "--arch", "realm_tiny", "--retriever-pooling", "mean", "--criterion", "realm_ict",
       "--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "fixed", "--batch-size", "32",
       "--query-max-len", "32", "--valid-percent", "10", "--cpu", "--num-workers", "0", "--no-progress-bar",
       "--log-format", "simple", "--log-interval", "1", "--required-batch-size-multiple", "1", "--seed", "1"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PATH=BIN + os.pathsep + os.environ["PATH"])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("faults") / "corpus")
    prepare_corpus([WIKI], VOCAB, out, CorpusConfig(workers=1, salient_spans="regex", no_progress=True,
                                                   max_documents=12))
    return out


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """A save dir of 4 ICT updates saved every 2: checkpoint_1_2, checkpoint_1_4, _best and _last."""
    save = str(tmp_path_factory.mktemp("trained") / "ckpt")
    train(corpus, save, 4)
    return save


def train(corpus, save, max_update, *extra, check=True):
    return run(["realm-train", corpus, *ICT, "--save-dir", save, "--max-update", str(max_update),
                "--save-interval-updates", "2", *extra], check=check, env=ENV)


def copy_of(save, tmp_path):
    return shutil.copytree(save, str(tmp_path / "ckpt"))


def assert_one_line_error(proc, prog, *fragments):
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{prog}: error: "), proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in last, last


# --- checkpoints: kills, torn files, safe loading ---------------------------------------------------------

def kill_during_a_save(corpus, save, timeout=120):
    """Start a training that saves after every update; SIGKILL it the moment a copy over the
    checkpoint_last.pt of an earlier save is being written. Returns the temporary files the kill left."""
    proc = subprocess.Popen([f"{BIN}/realm-train", corpus, *ICT, "--save-dir", save, "--max-update", "1000",
                             "--save-interval-updates", "1"], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            names = os.listdir(save) if os.path.isdir(save) else []
            if "checkpoint_last.pt" in names and any(n.startswith(".checkpoint_last.pt.tmp-") for n in names):
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.001)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training ended before a save could be interrupted"
    return [n for n in os.listdir(save) if checkpoints.TMP_INFIX in n]


def test_a_kill_during_a_save_leaves_every_checkpoint_whole_and_training_resumes(corpus, tmp_path):
    save = str(tmp_path / "ckpt")
    for _ in range(3):  # the kill lands mid-write almost always; retry the rare one that came after the rename
        left = kill_during_a_save(corpus, save)
        if left:
            break
    assert left, "no kill landed while checkpoint_last.pt was being written"
    files = checkpoints.checkpoint_files(save)
    assert files and all(checkpoints.damage(p) is None for p in files), [(p, checkpoints.damage(p)) for p in files]
    updates = checkpoints.read_state(os.path.join(save, "checkpoint_last.pt"))["optimizer_history"][-1]["num_updates"]

    proc = train(corpus, save, updates + 1)
    log = proc.stdout + proc.stderr
    assert f"(epoch 1 @ {updates} updates)" in log and "checkpoint_last.pt" in log, log[-3000:]
    assert "removed" in log and "left by a save that was interrupted" in log
    assert not [n for n in os.listdir(save) if checkpoints.TMP_INFIX in n]


def test_a_torn_checkpoint_last_is_named_and_training_resumes_from_the_newest_intact_one(corpus, trained,
                                                                                          tmp_path):
    save = copy_of(trained, tmp_path)
    last = os.path.join(save, "checkpoint_last.pt")
    with open(last, "r+b") as f:  # a copy cut short, as fairseq's in-place copy left it under kill -9
        f.truncate(os.path.getsize(last) // 2)
    os.utime(os.path.join(save, "checkpoint_best.pt"), (0, 0))  # the newest intact one: checkpoint_1_4.pt
    proc = train(corpus, save, 5)
    log = proc.stdout + proc.stderr
    assert f"{last} is damaged (truncated" in log, log[-3000:]
    assert f"resuming from {os.path.join(save, 'checkpoint_1_4.pt')}" in log
    assert "checkpoint_1_4.pt (epoch 1 @ 4 updates)" in log
    assert checkpoints.read_state(last)["optimizer_history"][-1]["num_updates"] == 5


def test_resume_refuses_when_no_checkpoint_is_intact(corpus, trained, tmp_path):
    save = copy_of(trained, tmp_path)
    for path in checkpoints.checkpoint_files(save):
        os.truncate(path, 1000)
    assert_one_line_error(train(corpus, save, 5, check=False), "realm-train", "cannot resume",
                          "checkpoint_last.pt: truncated", "no intact checkpoint in")
    named = os.path.join(save, "checkpoint_1_2.pt")  # --restore-file names the file: no fallback, a clear refusal
    assert_one_line_error(train(corpus, save, 5, "--restore-file", named, check=False), "realm-train",
                          f"{named}: truncated", "expected a whole checkpoint")


def test_a_save_that_cannot_be_written_names_the_file_and_leaves_nothing_half_written(corpus, tmp_path):
    """A real write failure in every save: the file size limit (EFBIG) stands in for a full disk (ENOSPC);
    torch.save reports both only as "unexpected pos N vs M"."""
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (30 << 20, 30 << 20))  # a checkpoint is 49 MB

    save = str(tmp_path / "ckpt")
    proc = subprocess.run([f"{BIN}/realm-train", corpus, *ICT, "--save-dir", save, "--max-update", "4",
                           "--save-interval-updates", "2"], capture_output=True, text=True, env=ENV,
                          preexec_fn=limit_file_size)
    assert_one_line_error(proc, "realm-train", f"{save}/checkpoint_1_2.pt: File too large")
    assert os.listdir(save) == []


def test_checkpoints_load_weights_only(trained, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = str(tmp_path / "evil.pt")
    state = checkpoints.read_state(os.path.join(trained, "checkpoint_1_2.pt"))
    torch.save({**state, "extra_state": {"payload": Payload()}}, evil)
    with pytest.raises(CheckpointError, match="evil.pt: holds an object safe loading refuses .*system"):
        checkpoint_utils.load_checkpoint_to_cpu(evil)
    assert not marker.exists()
    tensors = str(tmp_path / "tensors.pt")
    torch.save({"weight": torch.zeros(2)}, tensors, _use_new_zipfile_serialization=False)  # torch's legacy format
    assert checkpoints.damage(tensors) is None and checkpoints.read_state(tensors)["weight"].tolist() == [0, 0]
    with pytest.raises(CheckpointError, match="tensors.pt: a torch file of dict, not a fairseq checkpoint"):
        checkpoint_utils.load_checkpoint_to_cpu(tensors)


def mapped(path: str) -> bool:
    """Whether this process maps ``path`` into memory."""
    with open("/proc/self/maps") as f:
        return any(line.rstrip().endswith(os.path.abspath(path)) for line in f)


def test_a_checkpoint_read_for_its_towers_is_memory_mapped_and_checked_alike(trained, tmp_path):
    """--realm-init and realm-build-index --checkpoint read a checkpoint's towers memory-mapped (the optimizer's
    state is not read); the weights are the same and the same loads are refused."""
    path = os.path.join(trained, "checkpoint_1_2.pt")
    whole = checkpoint_utils.load_checkpoint_to_cpu(path)
    state = loading.checkpoint_state(path)
    assert mapped(path)
    assert state["model"].keys() == whole["model"].keys()
    assert all(torch.equal(state["model"][k], whole["model"][k]) for k in whole["model"])
    del state
    gc.collect()
    assert not mapped(path)  # not kept: a replaced checkpoint's disk space is not held
    foreign = str(tmp_path / "foreign.pt")
    whole = checkpoints.read_state(path)
    whole["cfg"]["model"]["encoder_class"] = "some_module:Encoder"
    checkpoints.save_state(whole, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: its encoder_class 'some_module:Encoder' is not one"):
        loading.checkpoint_state(foreign)


def test_a_checkpoint_names_no_encoder_class_that_would_import_code(trained, tmp_path, monkeypatch):
    module = "realm_fault_test_encoder"
    (tmp_path / f"{module}.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    state = checkpoints.read_state(os.path.join(trained, "checkpoint_1_2.pt"))
    state["cfg"]["model"]["encoder_class"] = f"{module}:Encoder"
    path = str(tmp_path / "foreign.pt")
    checkpoints.save_state(state, path)
    with pytest.raises(CheckpointError, match=f"foreign.pt: its encoder_class '{module}:Encoder' is not one of "
                                              f"this plugin's encoders.*REALM_TRUSTED_ENCODER_CLASSES"):
        checkpoint_utils.load_checkpoint_to_cpu(path)
    assert not (tmp_path / "imported").exists() and module not in sys.modules
    # the user's choice: an override, or the class listed as trusted
    overridden = checkpoint_utils.load_checkpoint_to_cpu(path, arg_overrides={"encoder_class": "transformer"})
    assert overridden["cfg"]["model"]["encoder_class"] == "transformer"
    monkeypatch.setenv("REALM_TRUSTED_ENCODER_CLASSES", f"{module}:Encoder")
    assert checkpoint_utils.load_checkpoint_to_cpu(path)["cfg"]["model"]["encoder_class"] == f"{module}:Encoder"
    monkeypatch.delenv("REALM_TRUSTED_ENCODER_CLASSES")
    # the readers' own encoder class, inside --reader-encoder's JSON
    state["cfg"]["model"]["encoder_class"] = "transformer"
    state["cfg"]["model"]["reader_encoder"] = json.dumps({"encoder_class": f"{module}:Encoder"})
    checkpoints.save_state(state, path)
    with pytest.raises(CheckpointError, match=f"foreign.pt: its reader_encoder's encoder_class '{module}:Encoder' "
                                              f"is not one of this plugin's encoders"):
        checkpoint_utils.load_checkpoint_to_cpu(path)
    assert not (tmp_path / "imported").exists() and module not in sys.modules
    assert checkpoint_utils.load_checkpoint_to_cpu(path, arg_overrides={"reader_encoder": "{}"})


def test_saves_are_committed_by_rename(tmp_path):
    path = str(tmp_path / "checkpoint_last.pt")
    checkpoints.save_state({"model": {"w": torch.ones(3)}}, path)
    before = os.stat(path).st_ino
    checkpoint_utils.PathManager.copy(path, str(tmp_path / "checkpoint_best.pt"), overwrite=True)
    checkpoint_utils.torch_persistent_save({"model": {"w": torch.zeros(3)}}, path)
    assert os.stat(path).st_ino != before  # a new file renamed over the old one, not rewritten in place
    assert checkpoints.read_state(str(tmp_path / "checkpoint_best.pt"))["model"]["w"].tolist() == [1, 1, 1]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_best.pt", "checkpoint_last.pt"]


# --- outputs that must not destroy inputs -----------------------------------------------------------------

def test_force_replaces_only_a_corpus_that_holds_no_input(corpus, tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"id": "a", "title": "A", "text": "Some text about 1999 and more. " * 20}) + "\n")
    cfg = CorpusConfig(workers=1, no_progress=True, force=True)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="folder exists and is not a CORPUS .*--force replaces only a CORPUS"):
        prepare_corpus([str(docs)], VOCAB, str(folder), cfg)
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    with pytest.raises(FileExistsError, match="a_file exists and is not a CORPUS directory"):
        prepare_corpus([str(docs)], VOCAB, str(a_file), cfg)
    out = tmp_path / "out"
    prepare_corpus([str(docs)], VOCAB, str(out), cfg)
    shutil.copy(docs, out / "docs.jsonl")
    with pytest.raises(FileExistsError, match="out holds the input .*docs.jsonl; --force would delete it"):
        prepare_corpus([str(out / "docs.jsonl")], VOCAB, str(out), cfg)
    assert (folder / "keep.txt").read_text() == "mine" and a_file.read_text() == "mine"
    assert (out / "docs.jsonl").exists()
    prepare_corpus([str(docs)], VOCAB, str(out), cfg)  # a CORPUS holding no input: replaced
    assert not (out / "docs.jsonl").exists() and len(BlockCorpus(str(out))) >= 1


def test_evaluate_out_never_overwrites_an_input_and_is_checked_before_any_work(corpus, trained, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "who?", "answer": ["x"]}\n')
    base = ["--questions", str(questions), "--checkpoint", os.path.join(trained, "checkpoint_last.pt")]
    cases = [
        (str(questions), "is the --questions file"),
        (os.path.join(trained, "checkpoint_last.pt"), "is the --checkpoint file"),
        (os.path.join(corpus, "predictions.jsonl"), "is inside the --corpus directory"),
        (str(tmp_path), "is a directory"),
        (str(tmp_path / "missing" / "p.jsonl"), "cannot write in"),
    ]
    for out, expected in cases:
        with pytest.raises(SystemExit, match=expected):
            evaluate.cli_main([*base, "--corpus", corpus, "--out", out])
    assert questions.read_text() == '{"question": "who?", "answer": ["x"]}\n'
    assert sorted(os.listdir(tmp_path)) == ["q.jsonl"]  # no .tmp left


# --- one-line errors and the silent cases -----------------------------------------------------------------

def test_cli_errors_are_one_line_naming_the_file(corpus, trained, tmp_path):
    damaged = shutil.copytree(corpus, str(tmp_path / "damaged"))
    os.truncate(os.path.join(damaged, "blocks.bin"), 1000)
    assert_one_line_error(run(["realm-corpus-stats", damaged], check=False), "realm-corpus-stats",
                          "blocks.bin: truncated", "realm-prepare-corpus")
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("not a checkpoint")
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "who?", "answer": ["x"]}\n')
    assert_one_line_error(run(["realm-evaluate", "--questions", str(questions), "--checkpoint",
                               str(not_a_checkpoint)], check=False),
                          "realm-evaluate", "notes.pt: truncated or not a torch checkpoint")
    answer = subprocess.run([f"{BIN}/realm-answer", "--checkpoint", os.path.join(trained, "checkpoint_last.pt")],
                            input=b"who?\nwhat \xff?\n", capture_output=True, env=ENV)
    assert_one_line_error(subprocess.CompletedProcess(answer.args, answer.returncode, answer.stdout.decode(),
                                                      answer.stderr.decode()),
                          "realm-answer", "standard input, line 2, byte 6: invalid UTF-8")
    empty_index = tmp_path / "index"
    empty_index.mkdir()
    trainer = ["realm-train", corpus, "--task", "realm_pretrain", "--arch", "realm_tiny", "--criterion",
               "realm_mlm", "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "4", "--cpu", "--no-save",
               "--index", str(empty_index)]
    assert_one_line_error(run(trainer, check=False, env=ENV), "realm-train",
                          f"{empty_index} holds no committed index version")
    debug = run(trainer + ["--debug"], check=False, env=ENV)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_unterminated_tsv_quote_is_reported_at_the_line_it_opens(tmp_path):
    tsv = tmp_path / "p.tsv"
    tsv.write_text('id\ttext\ttitle\n1\tfine\tA\n2\t"never closed\tB\n3\tthird\tC\n')
    with pytest.raises(InputError, match=r"p.tsv, line 3: a quoted field opened on this line closes only on line "
                                         r"4; expected one passage a line"):
        list(read_tsv(str(tsv)))


def test_a_repeated_dpr_header_is_skipped_with_a_warning(tmp_path, caplog):
    tsv = tmp_path / "p.tsv"
    tsv.write_text("id\ttext\ttitle\n1\tone\tA\nid\ttext\ttitle\n2\ttwo\tB\n")
    assert [d.id for d in read_tsv(str(tsv))] == ["1", "2"]
    assert "p.tsv, line 3: the DPR header again (files concatenated?); skipped" in caplog.text


def test_a_vocab_of_special_symbols_only_is_refused(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n[unused0]\n")
    with pytest.raises(InputError, match="vocab.txt: vocab holds only special symbols"):
        Vocab.load(str(vocab))


def test_questions_with_both_answer_fields_or_empty_text_are_refused(tmp_path):
    both = tmp_path / "both.jsonl"
    both.write_text('{"question": "a?", "answer": ["x"]}\n{"question": "b?", "answer": ["x"], "answers": ["y"]}\n')
    with pytest.raises(InputError, match='both.jsonl, line 2: has both "answer" and "answers"; expected one'):
        read_questions(str(both))
    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps({"data": [{"title": "T", "paragraphs": [
        {"context": "c", "qas": [{"id": "q1", "question": "  ", "answers": [{"text": "c"}]}]}]}]}))
    with pytest.raises(InputError, match=r'data\[0\].paragraphs\[0\].qas\[0\]: "question" is empty'):
        squad_questions(str(squad))
    answer = run(["realm-answer", "--checkpoint", "unused.pt", ""], check=False)
    assert_one_line_error(answer, "realm-answer", "question 1 is empty")
