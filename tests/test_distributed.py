"""Data parallelism with the real launchers: 2 CPU processes (gloo) under `accelerate launch` and
`torchrun`, training a tiny model on the real offline data (both stages) and building a sharded
index.

Each launch runs `_JOB`, which calls the `zse-sbir` CLI entry point (one or more commands in
a row) and records, per rank, the process group size and which triplets its DataLoader loaded.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from zse_hf import ZseModel, ZseProcessor, cli

from conftest import assert_same_state, tiny_config

pytestmark = pytest.mark.slow  # needs the real QuickDraw / Tux Paint data

BATCH, STEPS, WORLD = 2, 4, 2
LAUNCH_TIMEOUT_S = 240

_JOB = textwrap.dedent("""
    import json, os, sys
    import torch
    from zse_hf import cli
    from zse_hf.data import TripletDataset

    record = {"pid": os.getpid(), "world": None, "triplets": []}
    load = TripletDataset.__getitem__

    def recording(self, index):
        if record["world"] is None:
            dist = torch.distributed
            record["world"] = dist.get_world_size() if dist.is_initialized() else 1
        record["triplets"].append(int(index))
        return load(self, index)

    TripletDataset.__getitem__ = recording
    if os.environ.get("SKEW_RANK") == os.environ.get("RANK"):  # this rank's clock jumps ahead after the start
        import time, types
        from zse_hf.training import trainer as training
        reads = []

        def skewed():
            reads.append(1)
            return time.monotonic() + (0 if len(reads) == 1 else 1e6)

        training.time = types.SimpleNamespace(monotonic=skewed, time=time.time)
    code = 0
    for argv in json.loads(sys.argv[1]):
        code = code or cli.main(argv)
    with open(sys.argv[2] + f"-rank{os.environ.get('RANK', 0)}.json", "w") as f:
        json.dump(record, f)
    sys.exit(code)
""")


def _launch(launcher: str, commands: list[list[str]], record: str, tmp_path, **env) -> list[dict]:
    """Run `_JOB` with `commands` in 2 processes (extra environment `env`); returns each rank's record."""
    job = tmp_path / "job.py"
    job.write_text(_JOB)
    if launcher == "accelerate":
        head = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(WORLD),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    else:
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    proc = subprocess.Popen([*head, str(job), json.dumps(commands), str(tmp_path / record)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{launcher} run did not end within {LAUNCH_TIMEOUT_S} s:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    records = [json.loads((tmp_path / f"{record}-rank{r}.json").read_text()) for r in range(WORLD)]
    assert len({r["pid"] for r in records}) == WORLD, "the ranks must be separate processes"
    return records


def _rank_stream(rank: int, steps: range) -> list[int]:
    """Triplets of `rank` at `steps`: global step s holds triplets [s W B, (s + 1) W B), rank r the r-th batch."""
    return [i for s in steps for i in range((s * WORLD + rank) * BATCH, (s * WORLD + rank + 1) * BATCH)]


def _log(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _check_best(run) -> None:
    best = run / "best"
    names = {p.name for p in best.iterdir()}
    assert {"model.safetensors", "config.json", "processor_config.json", "training_summary.json"} <= names
    assert not (run / "best.tmp").exists()
    summary = json.loads((best / "training_summary.json").read_text())
    assert summary["processes"] == WORLD and summary["stopped_at_step"] == STEPS
    ZseModel.from_pretrained(best)  # complete and loadable


@pytest.fixture(scope="module")
def index_inputs(tmp_path_factory):
    """A tiny ZSE model folder and a folder of 9 photos."""
    root = tmp_path_factory.mktemp("index_inputs")
    torch.manual_seed(0)
    model = ZseModel(tiny_config(initializer_range=0.5))
    model.save_pretrained(root / "model")
    ZseProcessor.from_config(model.config).save_pretrained(root / "model")
    (root / "photos").mkdir()
    rng = np.random.default_rng(0)
    for i in range(9):
        Image.fromarray(rng.integers(0, 256, (50 + 3 * i, 64, 3), dtype=np.uint8)).save(root / "photos" / f"p{i}.png")
    return root / "model", root / "photos"


def test_two_process_training_and_index(tiny_backbone, index_inputs, tmp_path):
    train = ["train", "--config", "tiny", "--backbone", tiny_backbone, "--batch-size", str(BATCH),
             "--max-steps", str(STEPS), "--eval-steps", "1", "--save-steps", "2"]
    model_dir, photos = index_inputs
    index = ["index", str(photos), "--model", str(model_dir), "--out", str(tmp_path / "shards"), "--shard", "auto",
             "--quiet", "--num-workers", "0"]

    relation = ["train-relation", "--model", str(tmp_path / "straight" / "best"), "--out", str(tmp_path / "relation"),
                "--top-k", "3", "--batch-size", "4", "--max-steps", "2", "--eval-steps", "1", "--save-steps", "1",
                "--val-classes", "3", "--val-sketches-per-class", "2", "--sketches-per-class", "2"]

    # accelerate launch: a straight run, the relation stage on its model (same process group), the sharded index
    straight = _launch("accelerate", [[*train, "--out", str(tmp_path / "straight")], relation, index], "straight",
                       tmp_path)
    for rank, rec in enumerate(straight):
        assert rec["world"] == WORLD
        assert rec["triplets"] == _rank_stream(rank, range(STEPS))  # distinct batches, no replay
    assert sorted(straight[0]["triplets"] + straight[1]["triplets"]) == list(range(STEPS * WORLD * BATCH))
    log = _log(tmp_path / "straight")
    assert [r["step"] for r in log if "loss" in r] == list(range(1, STEPS + 1))  # one line per step, not per rank
    assert [r["step"] for r in log if "eval_mAP@all" in r] == list(range(1, STEPS + 1))
    _check_best(tmp_path / "straight")
    stage = json.loads((tmp_path / "relation" / "best" / "training_summary.json").read_text())["relation_stage"]
    assert stage["processes"] == WORLD and stage["stopped_at_step"] == 2
    assert [r["step"] for r in _log(tmp_path / "relation") if "eval_rn_mAP@all" in r] == [1, 2]  # validated once
    assert {"rng_state_0.pth", "rng_state_1.pth", "zse_checkpoint_complete"} <= \
        {p.name for p in (tmp_path / "relation" / "checkpoint-2").iterdir()}

    # torchrun: rank 1's clock passes --time-limit after step 1, rank 0's never: both stop there; then --resume
    split = tmp_path / "split"
    first = _launch("torchrun", [[*train, "--out", str(split), "--time-limit", "3600"]], "first", tmp_path,
                    SKEW_RANK="1")
    assert sorted(p.name for p in split.glob("checkpoint-*")) == ["checkpoint-1"]
    for rank, rec in enumerate(first):
        assert rec["world"] == WORLD and rec["triplets"][:BATCH] == _rank_stream(rank, range(1))
    assert {"rng_state_0.pth", "rng_state_1.pth", "zse_checkpoint_complete"} <= \
        {p.name for p in (split / "checkpoint-1").iterdir()}
    rest = _launch("torchrun", [[*train, "--out", str(split), "--resume"]], "rest", tmp_path)
    for rank, rec in enumerate(rest):
        assert rec["triplets"] == _rank_stream(rank, range(1, STEPS))  # continues where it stopped
    assert [r["step"] for r in _log(split) if "loss" in r] == list(range(1, STEPS + 1))  # no repeated steps
    _check_best(split)
    assert_same_state(load_file(split / "checkpoint-4" / "model.safetensors"),
                      load_file(tmp_path / "straight" / "checkpoint-4" / "model.safetensors"))

    # the merged 2-process index equals a one-process build, byte for byte (but its creation time)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main(["index", str(photos), "--model", str(model_dir), "--out", str(tmp_path / "single"),
                         "--quiet", "--num-workers", "0", "--token-codec", "fp16"]) == 0  # the shards' default
    finally:
        torch.set_num_threads(threads)
    shards = [str(tmp_path / "shards" / f"shard-{r}-of-{WORLD}") for r in range(WORLD)]
    assert cli.main(["merge-index", *shards, "--out", str(tmp_path / "merged")]) == 0
    single = sorted(p.name for p in (tmp_path / "single").iterdir())
    assert single == sorted(p.name for p in (tmp_path / "merged").iterdir())
    for name in single:
        a, b = (tmp_path / "single" / name).read_bytes(), (tmp_path / "merged" / name).read_bytes()
        if name == "manifest.json":
            a, b = ({k: v for k, v in json.loads(x).items() if k != "created"} for x in (a, b))
        assert a == b, name

