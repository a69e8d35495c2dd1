"""Slurm through submitit (slurm/submit.py, realm_fairseq/launch) on a real Slurm cluster: a 2-task CPU (gloo)
realm_pretrain job trains as a local 2-rank run does, a job with a 1-minute time limit is requeued and resumes
from its checkpoint, and a refresh with the submitit launcher runs as Slurm jobs and is swapped in.

.ci/run starts a one-node cluster (../shared/tools/slurm-ci.sh up); where there is no ``sbatch`` the tests
that need Slurm skip. The three jobs are submitted together and run side by side (the cluster advertises
more CPUs than CI has), so that the module costs about the requeued job's two runs.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest
import torch

from realm_fairseq.cli.build_index import build_parser as build_index_parser
from realm_fairseq.cli.train import training_config
from realm_fairseq.launch.submit import SlurmConfig, dry_run_text, training_argv
from realm_fairseq.retrieval.versions import IndexStore

from conftest import ROOT, free_port, run
from test_refresh import ONE_THREAD, SWAP, Training, copy_index, first_index, small_corpus, train_args  # noqa: F401

needs_slurm = pytest.mark.skipif(shutil.which("sbatch") is None,
                                 reason="no Slurm here (sbatch not found); .ci/run starts a one-node cluster")
SUBMIT = [sys.executable, os.path.join(ROOT, "slurm", "submit.py")]
CPU_TASKS = ["--gpus-per-node", "0", "--cpus-per-task", "1", "--time", "5"]
FINAL_STATES = ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "OUT_OF_MEMORY", "NODE_FAIL")


def submit(slurm_args, training, cwd):
    """``python slurm/submit.py SLURM_ARGS -- realm-train TRAINING``: (job id, rank 0's log file)."""
    out = run([*SUBMIT, *slurm_args, "--log-dir", str(cwd / "logs"), "--", "realm-train", *training],
              cwd=cwd, env=ONE_THREAD).stdout
    job_id = re.search(r"submitted job (\d+)", out).group(1)
    log = re.search(r"logs \(rank 0\): (\S+)", out).group(1)
    assert log == str(cwd / "logs" / job_id / f"{job_id}_0_log.out")
    return job_id, log


def sacct(*args) -> str:
    return subprocess.run(["sacct", "-n", "-P", *args], capture_output=True, text=True, check=True).stdout


def wait_until_done(job_id, timeout=300) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = sacct("-X", "-j", job_id, "-o", "State").split()
        if states and states[-1].split()[0] in FINAL_STATES:
            return states[-1]
        time.sleep(2)
    raise AssertionError(f"job {job_id} not done within {timeout}s: {sacct('-X', '-j', job_id)}")


def wait_for_line(path, pattern, timeout=240) -> re.Match:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            match = re.search(pattern, open(path, encoding="utf-8", errors="replace").read())
            if match:
                return match
        time.sleep(1)
    text = open(path, encoding="utf-8", errors="replace").read()[-4000:] if os.path.exists(path) else "(no log)"
    raise AssertionError(f"no /{pattern}/ in {path} within {timeout}s:\n{text}")


def logged_updates(log: str):
    """num_updates of the train_inner lines, in log order (--log-interval 1)."""
    return [int(u) for u in re.findall(r"\| train_inner \|.*?num_updates=(\d+),", log)]


def test_dry_run_prints_the_sbatch_script_and_the_training_command(tmp_path):
    out = run([*SUBMIT, "--nodes", "2", "--gpus-per-node", "8", "--cpus-per-task", "6", "--mem", "200G", "--time", "90",
               "--partition", "gpu", "--account", "lab", "--constraint", "a100", "--qos", "high", "--job-name", "pt",
               "--sbatch", "--exclusive --mail-type=END", "--log-dir", str(tmp_path), "--dry-run",
               "realm-train", "CORPUS", "--task", "realm_pretrain"]).stdout
    for line in ("--nodes=2", "--gpus-per-node=8", "--ntasks-per-node=8", "--cpus-per-task=6", "--mem=200G",
                 "--time=90", "--partition=gpu", "--account=lab", "--constraint=a100", "--qos=high", "--job-name=pt",
                 "--exclusive", "--mail-type=END", "--signal=USR2@120", f"--output={tmp_path}/%j/%j_0_log.out"):
        assert f"#SBATCH {line}\n" in out
    command = re.search(r"^realm-train CORPUS --task realm_pretrain (.*)$", out, re.M).group(1)
    assert re.fullmatch(r"--distributed-world-size 16 --distributed-port \d+", command)
    assert "--kill-on-bad-exit=1" in re.search(r"^srun .*$", out, re.M).group(0)  # a failed rank ends the job
    assert not os.listdir(tmp_path)  # nothing submitted

    proc = run([*SUBMIT, "--gpus-per-node", "0", "realm-train", "C"], check=False)  # a clear error, no traceback
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == (
        "slurm/submit.py: error: --gpus-per-node 0 trains on CPU: add --cpu to the training command")


@pytest.mark.parametrize("slurm, command, message", [
    (dict(), ["python", "train.py"], "starting with one of fairseq-train, realm-train"),
    (dict(gpus_per_node=2), ["realm-train", "C", "--distributed-world-size", "4"],
     "--distributed-world-size 4, but the job has 2 tasks"),
    (dict(gpus_per_node=2), ["realm-train", "C", "--cpu"], "the training command has --cpu"),
    (dict(gpus_per_node=2, tasks_per_node=1), ["realm-train", "C"], "one task per GPU"),
    (dict(), ["realm-train", "C", "--no-save"], "drop --no-save, or pass --max-requeues 0"),
    (dict(sbatch="exclusive"), ["realm-train", "C"], "expected long options"),
])
def test_bad_commands_and_options_get_clear_errors(slurm, command, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        dry_run_text_of(SlurmConfig(**slurm), command)


def dry_run_text_of(cfg, command):
    return dry_run_text(cfg, training_argv(cfg, command)[0])


def test_cpu_ranks_get_gloo_and_a_command_keeps_its_own_distributed_options():
    cpu = SlurmConfig(gpus_per_node=0, tasks_per_node=2, nodes=2)
    argv, world = training_argv(cpu, ["fairseq-train", "C", "--cpu", "--distributed-port", "1234",
                                      "--ddp-backend", "no_c10d"])
    assert world == 4
    assert argv == ["C", "--cpu", "--distributed-port", "1234", "--ddp-backend", "no_c10d",
                    "--distributed-world-size", "4", "--distributed-backend", "gloo"]
    assert training_argv(SlurmConfig(), ["realm-train", "C"]) == (["C", "--distributed-world-size", "1"], 1)


@pytest.fixture(scope="module")
def jobs(small_corpus, first_index, tmp_path_factory):
    """The three Slurm jobs, submitted at once; each test waits for its own."""
    submitted = {}
    # 2 CPU ranks, 6 updates
    root = tmp_path_factory.mktemp("ranks")
    index = copy_index(first_index, root / "index")
    args = train_args(small_corpus, index, "--max-update", "6", "--save-dir", str(root / "ckpt"),
                      "--no-epoch-checkpoints")
    submitted["ranks"] = dict(root=root, index=index, args=args,
                              job=submit([*CPU_TASKS, "--tasks-per-node", "2"], [*args, "--cpu"], root))
    # a 1-minute time limit, warned 10 s before it: two runs (--max-requeues 1)
    root = tmp_path_factory.mktemp("requeue")
    index = copy_index(first_index, root / "index")
    args = train_args(small_corpus, index, "--max-update", "100000", "--save-dir", str(root / "ckpt"),
                      "--no-epoch-checkpoints")
    submitted["requeue"] = dict(root=root, index=index, job=submit(
        [*CPU_TASKS[:-1], "1", "--signal-delay-s", "10", "--max-requeues", "1"], args, root))
    # index refresh every 3 updates, as an array of 2 embedding jobs and a merge job
    root = tmp_path_factory.mktemp("refresh")
    index = copy_index(first_index, root / "index")
    args = train_args(small_corpus, index, "--max-update", "100000", "--no-save", "--refresh-interval-updates", "3",
                      "--refresh-launcher", "submitit", "--refresh-submitit-cluster", "slurm", "--refresh-shards", "2",
                      "--refresh-slurm-cpus-per-job", "1", "--refresh-slurm-mem-gb", "1", "--refresh-slurm-time-min",
                      "5")
    submitted["refresh"] = dict(root=root, index=index,
                                job=submit([*CPU_TASKS, "--max-requeues", "0"], args, root))
    yield submitted
    subprocess.run(["scancel", *(s["job"][0] for s in submitted.values())], check=False)


@needs_slurm
def test_a_submitit_refresh_runs_as_slurm_jobs_and_is_swapped_in(jobs):
    refresh = jobs["refresh"]
    job_id, log = refresh["job"]
    launched = wait_for_line(log, r"index refresh of update (\d+) launched \(submitit job\(s\) (\d+)_0, \d+_1;")
    update, array = launched.groups()
    merge = wait_for_line(log, rf"index refresh of update {update}: shards embedded; merge job (\d+) submitted")
    swap = re.search(SWAP, wait_for_line(log, SWAP).group(0)).groups()
    subprocess.run(["scancel", job_id], check=True)
    assert swap[0] == refresh["index"] and int(swap[1]) == 2 and int(swap[3]) == int(update)
    assert IndexStore(refresh["index"]).manifest(2)["encoder"]["update"] == int(update)
    assert wait_until_done(merge.group(1), timeout=60) == "COMPLETED"  # it may still be exiting after the commit
    states = dict(line.split("|") for line in sacct("-X", "-o", "JobID,State", "-j",
                                                     f"{array},{merge.group(1)}").split())
    assert states == {f"{array}_0": "COMPLETED", f"{array}_1": "COMPLETED", merge.group(1): "COMPLETED"}
    names = set(sacct("-X", "-o", "JobName", "-j", f"{array},{merge.group(1)}").split())
    assert names == {"realm-refresh"}


@needs_slurm
def test_two_cpu_ranks_on_slurm_train_as_a_local_two_rank_run(jobs, tmp_path):
    ranks = jobs["ranks"]
    job_id, log = ranks["job"]
    local_index = copy_index(ranks["index"], tmp_path / "index")  # the same fresh index (the job may be done)
    args = [a.replace(ranks["index"], local_index).replace(str(ranks["root"] / "ckpt"), str(tmp_path / "ckpt"))
            for a in ranks["args"]]
    args += ["--cpu", "--distributed-world-size", "2", "--distributed-backend", "gloo", "--distributed-no-spawn",
             "--distributed-init-method", f"tcp://127.0.0.1:{free_port()}", "--ddp-backend", "legacy_ddp"]
    local = [Training([*args, "--distributed-rank", str(r)], cwd=tmp_path) for r in range(2)]
    assert [rank.finish() for rank in local] == [0, 0]
    assert wait_until_done(job_id) == "COMPLETED"

    text = open(log).read()
    rank1 = open(log.replace("_0_log.out", "_1_log.out")).read()  # the job's second task
    assert "distributed init (rank 0)" in text and "distributed init (rank 1)" in rank1
    slurm_losses = re.findall(r"\| train_inner \|.*? loss=([\d.]+),.*?num_updates=(\d+),", text)
    local_losses = re.findall(r"\| train_inner \|.*? loss=([\d.]+),.*?num_updates=(\d+),", local[0].text)
    assert [u for _, u in slurm_losses] == [str(u) for u in range(1, 7)] and slurm_losses == local_losses
    on_slurm = torch.load(ranks["root"] / "ckpt" / "checkpoint_last.pt", weights_only=False)
    here = torch.load(tmp_path / "ckpt" / "checkpoint_last.pt", weights_only=False)
    assert on_slurm["optimizer_history"][-1]["num_updates"] == here["optimizer_history"][-1]["num_updates"] == 6
    assert on_slurm["model"].keys() == here["model"].keys()
    assert all(torch.allclose(on_slurm["model"][k], here["model"][k]) for k in here["model"])


@needs_slurm
def test_a_job_past_its_time_limit_is_requeued_and_resumes_from_its_checkpoint(jobs):
    requeue = jobs["requeue"]
    job_id, log = requeue["job"]
    assert wait_until_done(job_id, timeout=400) == "FAILED"  # warned again after its one requeue: ends
    text = open(log).read()
    stops = [int(u) for u in re.findall(r"stop requested: saving the checkpoint of update (\d+)", text)]
    assert len(stops) == 2 and 0 < stops[0] < stops[1]
    # requeued once, by submitit's `scontrol requeue`; its "Requeued job" line may be missing: the requeue ends
    # the job step, and with it, at times, scontrol before it returns
    assert "requeued job, run 2 of at most 2: resuming from the last checkpoint" in text
    assert "not requeued: --max-requeues 1 reached" in text
    assert re.search(rf"Loaded checkpoint \S+checkpoint_last.pt \(epoch \d+ @ {stops[0]} updates\)", text)
    assert f"resumed with {requeue['index']}/v1, the index version saved in the checkpoint" in text
    assert logged_updates(text) == list(range(1, stops[1] + 1))  # rising across the requeue, none repeated
    last = torch.load(requeue["root"] / "ckpt" / "checkpoint_last.pt", weights_only=False)
    assert last["optimizer_history"][-1]["num_updates"] == stops[1]
    runs = sacct("-D", "-X", "-j", job_id, "-o", "State").split()
    assert runs[0] == "REQUEUED" and len(runs) == 2


def template_commands(path):
    """The realm-train / realm-build-index command lines of an sbatch template, with its shell variables
    replaced by placeholders (numbers where the command needs them)."""
    with open(path, encoding="utf-8") as f:
        script = f.read().replace("\\\n", " ")
    numbers = {"WORLD": "64", "PORT": "12345", "SHARDS": "16", "SLURM_ARRAY_TASK_ID": "0"}
    script = re.sub(r'"?\$\{?(\w+)\}?"?', lambda m: numbers.get(m.group(1), f"/tmp/{m.group(1).lower()}"), script)
    starts = (re.match(r"\s*(srun(\s+-\S+)*\s+)?(?=realm-(train|build-index)\s)", line) for line in script.splitlines())
    return [shlex.split(m.string[m.end():]) for m in starts if m]


@pytest.mark.parametrize("template", ["pretrain.sbatch", "finetune.sbatch", "build_index.sbatch"])
def test_sbatch_templates_are_valid_scripts_whose_commands_parse(template):
    path = os.path.join(ROOT, "slurm", template)
    subprocess.run(["bash", "-n", path], check=True)
    commands = template_commands(path)
    assert commands, f"{template}: no realm-train or realm-build-index command found"
    for command in commands:
        if command[0] == "realm-train":
            cfg = training_config(command[1:])  # an unknown or misspelt option exits here
            assert cfg.distributed_training.distributed_world_size == 64
        else:
            build_index_parser().parse_args(command[1:])
