"""Training: presets, exact resume, kill-safe checkpoints, validation on training classes only."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    Dinov2Config,
    Dinov2Model,
    TrainerCallback,
    TrainingArguments,
    ViTConfig,
    ViTModel,
)

from zse_hf.data import load_split
from zse_hf.training import (
    COMPLETE_MARKER,
    PRESETS,
    RunFolderError,
    TrainConfig,
    build_datasets,
    build_model,
    last_complete_checkpoint,
    load_train_config,
    prepare_run_folder,
    train,
    trim_log,
)

pytestmark = pytest.mark.slow  # needs the real QuickDraw / Tux Paint data


def _cfg(backbone, **kw):
    base = dict(backbone=backbone, image_size=56, relation_grid=2, freeze_blocks=1, batch_size=3, max_steps=4,
                eval_steps=2, save_steps=2, val_classes=3, val_sketches_per_class=2, pseudo_sketch_prob=0.5)
    base.update(kw)
    return TrainConfig(**base)


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_resume_is_exact(tiny_backbone, tmp_path):
    cfg = _cfg(tiny_backbone)
    train(cfg, tmp_path / "straight")
    train(cfg, tmp_path / "split", callbacks=[StopAt(2)])
    assert last_complete_checkpoint(tmp_path / "split").name == "checkpoint-2"
    from zse_hf.training import export_best

    early = export_best(tmp_path / "split")  # a stopped run still yields a usable model folder
    assert json.loads((early / "training_summary.json").read_text())["global_step"] == 2
    with open(tmp_path / "split" / "metrics.jsonl", "a") as f:  # logged before a kill, after checkpoint-2
        f.write(json.dumps({"step": 4, "loss": 99.0}) + "\n")
    train(cfg, tmp_path / "split", resume=True)
    split_log = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"] == 99.0) for r in split_log if "loss" in r] == [(2, False), (4, False)]
    a = load_file(tmp_path / "straight" / "checkpoint-4" / "model.safetensors")
    b = load_file(tmp_path / "split" / "checkpoint-4" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_mAP@all" in r for r in log) and any("loss" in r for r in log)
    best = tmp_path / "straight" / "best"
    assert (best / "model.safetensors").exists() and (best / "processor_config.json").exists()
    summary = json.loads((best / "training_summary.json").read_text())
    assert summary["stopped_at_step"] == 4 and summary["best_checkpoint"]
    assert summary["global_step"] == int(summary["best_checkpoint"].split("-")[-1])


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_summary_records_the_stamps_it_trained_on_with_portable_paths(tiny_backbone, tmp_path, monkeypatch):
    from zse_hf.data.stamps import load_stamp_review

    monkeypatch.chdir(tmp_path)
    cfg = _cfg(tiny_backbone, max_steps=2, stamp_pair_prob=0.5, stamp_negative_prob=0.5)
    train(cfg, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "best" / "training_summary.json").read_text())
    assert summary["best_checkpoint"] == "checkpoint-2"
    assert not [s for s in _strings(summary) if s.startswith("/")]  # no machine's absolute paths
    review = {r["stamp_path"]: r for r in load_stamp_review()}
    stamps = summary["stamps"]
    assert len(stamps) + len(summary["stamps_withheld"]) == sum(r["kind"] == "photo" for r in review.values())
    for stamp in stamps:
        row = review[stamp["path"]]
        assert row["kind"] == "photo" and not row["unseen_concept"] and stamp["sha256"] == row["sha256"]
    from zse_hf.training import export_best

    exported = json.loads((export_best(tmp_path / "run") / "training_summary.json").read_text())
    assert exported["stamps"] == stamps and exported["stamps_withheld"] == summary["stamps_withheld"]
    assert exported["config"] == summary["config"]  # a stopped run's export records the same recipe
    train(_cfg(tiny_backbone, max_steps=2), tmp_path / "plain")
    assert "stamps" not in json.loads((tmp_path / "plain" / "best" / "training_summary.json").read_text())


def test_val_fold_validates_on_that_fold(tiny_backbone):
    from zse_hf.data import train_val_split

    fit, val = train_val_split(seed=0, fold="3/5")
    _, val_q, val_g = build_datasets(_cfg(tiny_backbone, val_fold="3/5", val_classes=10))
    assert val_q.classes == val and set(val_g.class_names) <= set(val)
    with pytest.raises(ValueError, match="fold"):
        _cfg(tiny_backbone, val_fold="5/5")


def test_frozen_blocks_do_not_change(tiny_backbone, tmp_path):
    cfg = _cfg(tiny_backbone, max_steps=2, freeze_blocks=1)
    train(cfg, tmp_path / "run")
    start = load_file(f"{tiny_backbone}/model.safetensors")
    end = load_file(tmp_path / "run" / "checkpoint-2" / "model.safetensors")
    frozen = [k for k in end if k.startswith("encoder.backbone.encoder.layer.0.")]
    assert frozen
    moved = [k for k in end if k.startswith("encoder.backbone.encoder.layer.1.")]
    assert any(not torch.equal(end[k], _start(start, k)) for k in moved)
    for k in frozen:
        assert torch.equal(end[k], _start(start, k)), k


def _start(start, key):
    name = key.removeprefix("encoder.backbone.")
    legacy = (name.replace("attention.q_proj", "attention.attention.query")
              .replace("attention.k_proj", "attention.attention.key")
              .replace("attention.v_proj", "attention.attention.value")
              .replace("attention.o_proj", "attention.output.dense"))
    return start[name] if name in start else start[legacy]


def test_time_limit_stops_and_keeps_the_last_step(tiny_backbone, tmp_path):
    cfg = _cfg(tiny_backbone, max_steps=6, relation_rank_weight=1.0)
    best = train(cfg, tmp_path / "run", time_limit=0)  # stop after the first step
    assert last_complete_checkpoint(tmp_path / "run").name == "checkpoint-1"
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "eval_mAP@all" in r] == [1]
    assert json.loads((best / "config.json").read_text())["relation_rank_weight"] == 1.0


@pytest.mark.parametrize("kind", ["dinov2", "vit"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_every_trainable_weight_gets_a_gradient(kind, checkpointing, tmp_path):
    """DDP (find_unused_parameters=False) needs a gradient for each trainable weight: the unused
    mask token and ViT pooler are frozen."""
    torch.manual_seed(0)
    if kind == "vit":
        ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=56,
                           intermediate_size=64)).save_pretrained(tmp_path)
    else:
        Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14,
                                 image_size=56, mlp_ratio=2)).save_pretrained(tmp_path)
    model = build_model(_cfg(str(tmp_path), freeze_blocks=0, gradient_checkpointing=checkpointing)).train()
    images = torch.randn(3, 3, 3, 56, 56)
    model(sketch_pixel_values=images[0], photo_pixel_values=images[1], negative_pixel_values=images[2],
          labels=torch.tensor([0, 1, 1])).loss.backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.startswith("encoder.backbone.") for n in trainable)
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_resume_trims_the_log_and_refuses_reuse(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 1}\n{"step": 2, "loss": 2}\n{"step": 3, "loss": 3}\n{"step": 3, "eval')
    trim_log(log, 2)  # steps after the checkpoint are logged again by the resumed run; torn lines go
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2]
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    (ckpt / COMPLETE_MARKER).write_text("2")
    (ckpt / "rng_state.pth").write_bytes(b"")
    assert prepare_run_folder(tmp_path, args, resume=True, config={"a": 1}) == ckpt
    assert json.loads((tmp_path / "train_config.json").read_text()) == {"a": 1}
    with pytest.raises(RunFolderError, match="earlier run"):
        prepare_run_folder(tmp_path, args, resume=False, config={})
    for r in range(4):  # written by a 4-process run
        (ckpt / f"rng_state_{r}.pth").write_bytes(b"")
    (ckpt / "rng_state.pth").unlink()
    with pytest.raises(RunFolderError, match="4 process"):
        prepare_run_folder(tmp_path, args, resume=True, config={})


def test_incomplete_checkpoint_is_ignored(tmp_path):
    good = tmp_path / "checkpoint-2"
    good.mkdir()
    (good / COMPLETE_MARKER).write_text("2")
    half = tmp_path / "checkpoint-4"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")
    assert last_complete_checkpoint(tmp_path) == good
    assert not half.exists()


def test_validation_uses_training_classes_only(tiny_backbone):
    cfg = _cfg(tiny_backbone)
    triplets, val_q, _ = build_datasets(cfg)
    split = load_split()
    unseen = set(split["unseen_all"])
    val_classes = {val_q.class_names[i] for i in range(len(val_q))}
    train_classes = set(triplets.classes)
    assert val_classes <= set(split["train"]) and not val_classes & unseen
    assert not train_classes & unseen and not train_classes & val_classes
    assert len(val_classes) == 3


def test_subset_keeps_labels_and_items(tmp_path):
    from PIL import Image

    from zse_hf.data import ImageListDataset
    from zse_hf.training.data import _Subset

    paths = []
    for i in range(6):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(paths[-1])
    base = ImageListDataset(paths, ["a", "b", "c"], ["a", "b", "c", "a", "b", "c"], modality="sketch")
    sub = _Subset(base, [5, 3, 2])
    assert sub.classes == base.classes and sub.modality == "sketch" and len(sub) == 3
    assert sub.labels.tolist() == [2, 0, 2] and sub.ids == [str(paths[i]) for i in (5, 3, 2)]
    assert {k: v.tolist() for k, v in sub.indices_by_label().items()} == {0: [1], 2: [0, 2]}
    assert sub[1]["image"].getpixel((0, 0)) == base[3]["image"].getpixel((0, 0)) and sub[1]["label"] == 0


def test_presets_and_yaml(tmp_path):
    assert {"offline-cpu", "paper"} <= set(PRESETS)
    assert PRESETS["paper"].batch_size == 15 and PRESETS["paper"].lr == 1e-5
    gpu = PRESETS["offline-gpu"]  # the CPU recipe's signals at the paper's resolution, fed from caches
    assert (gpu.image_size, gpu.relation_grid, gpu.render_cache) == (224, 7, True)
    assert gpu.correspondence_weight > 0 and gpu.stamp_pair_prob > 0 and gpu.dataloader_workers >= 8
    path = tmp_path / "run.yaml"
    path.write_text("preset: paper\nmax_steps: 7\n")
    cfg = load_train_config(str(path), batch_size=2)
    assert (cfg.max_steps, cfg.batch_size, cfg.image_size) == (7, 2, 224)
    path.write_text("max_stepz: 7\n")
    with pytest.raises(ValueError, match="max_stepz"):
        load_train_config(str(path))
    with pytest.raises(ValueError, match="unknown preset"):
        load_train_config("nope")


def test_head_only_and_report_table():
    from zse_hf.evaluation.report import HeadOnly, markdown_table

    head = HeadOnly(8, hidden=16, out_dim=4)
    out = head(torch.randn(5, 8))
    assert out.shape == (5, 4) and torch.allclose(out.norm(dim=-1), torch.ones(5), atol=1e-6)
    row = {"mAP@all": 0.5, "mAP@all_CI": [0.4, 0.6], "mAP@200": 0.5, "P@100": 0.25, "P@200": 0.25}
    table = markdown_table({"x": row, "ret": row})
    assert "| x | 0.500 | [0.400, 0.600] | 0.500 | 0.250 | 0.250 |" in table
    assert "| ZSE trained, ret | 0.500" in table


def test_correspondence_term_trains_and_keeps_the_triplets(tiny_backbone, tmp_path, monkeypatch):
    """`correspondence_weight > 0`: a share of triplets carries warped pairs (the triplets
    themselves unchanged), the collator batches them, training runs and records the weight."""
    from zse_hf.image_processing_zse import ZseImageProcessor
    from zse_hf.training import TripletCollator

    plain, _, _ = build_datasets(_cfg(tiny_backbone), num_triplets=8)
    cfg = _cfg(tiny_backbone, correspondence_weight=1.0, correspondence_fraction=0.5, max_steps=2)
    with_corr, _, _ = build_datasets(cfg, num_triplets=8)
    items = [with_corr[i] for i in range(8)]
    for i, it in enumerate(items):
        assert it["sketch_id"] == plain[i]["sketch_id"] and it["positive_id"] == plain[i]["positive_id"]
        assert "correspondence" not in plain[i]
    carried = [it["correspondence"] for it in items if it["correspondence"] is not None]
    assert 0 < len(carried) < 8
    assert all(c["targets"].shape == (4,) and c["sketch"].size == (56, 56) for c in carried)
    batch = TripletCollator(ZseImageProcessor(size=56))(items)
    assert batch["correspondence_sketch_pixel_values"].shape == (len(carried), 3, 56, 56)
    assert batch["correspondence_targets"].shape == (len(carried), 4)
    # train with the term and the reviewed extra stamps (instance pairs, extra negatives) on
    run_cfg = dataclasses.replace(cfg, stamp_pair_prob=0.3, stamp_negative_prob=0.2)
    from zse_hf.modeling_zse import ZseModel

    calls, original = [], ZseModel._correspondence_loss

    def counted(self, *a, **kw):
        out = original(self, *a, **kw)
        calls.append(float(out.detach()))
        return out

    monkeypatch.setattr(ZseModel, "_correspondence_loss", counted)
    best = train(run_cfg, tmp_path / "run")
    assert calls and all(c > 0 for c in calls)  # the Trainer passed the warped pairs to forward
    config = json.loads((best / "config.json").read_text())
    assert config["correspondence_weight"] == 1.0
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["correspondence_weight"] == 1.0
    default = build_model(_cfg(tiny_backbone))
    assert default.config.correspondence_weight == 0.0  # off in the default recipe


def _pixels(size):
    return {"sketch_pixel_values": torch.randn(1, 3, size, size), "photo_pixel_values": torch.randn(1, 3, size, size)}


def test_warm_start_continues_from_a_saved_model_with_a_decaying_rate(tiny_backbone, tmp_path):
    """`init_from`: the run starts from the saved weights (validated at step 0), decays its
    learning rate over `max_steps`, reads a new triplet stream on the same validation classes,
    carries a model to another input size and grid, and refuses a folder without a model."""
    first = train(_cfg(tiny_backbone, max_steps=2), tmp_path / "first")
    saved = load_file(first / "model.safetensors")
    cfg = _cfg(tiny_backbone, init_from=str(first), lr_schedule="linear", triplet_seed=7, lr=1e-3, head_lr=1e-3,
               correspondence_weight=0.5)
    model = build_model(cfg)
    state = model.state_dict()
    assert saved.keys() <= state.keys()
    for k in saved:
        assert torch.equal(state[k], saved[k]), k
    assert model.config.correspondence_weight == 0.5  # loss weights from the recipe
    old, _, old_val = build_datasets(_cfg(tiny_backbone), num_triplets=6)
    new, _, new_val = build_datasets(cfg, num_triplets=6)
    assert [old[i]["sketch_id"] for i in range(6)] != [new[i]["sketch_id"] for i in range(6)]
    assert list(old_val.ids) == list(new_val.ids)
    train(cfg, tmp_path / "warm")
    summary = json.loads((tmp_path / "warm" / "best" / "training_summary.json").read_text())
    assert summary["init_from_summary"] == json.loads((first / "training_summary.json").read_text())
    log = [json.loads(x) for x in (tmp_path / "warm" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["step"] for r in log if "eval_mAP@all" in r]
    assert evals[0] == 0 and evals[1:] == [2, 4]
    rates = [r["learning_rate"] for r in log if "learning_rate" in r]
    assert rates == sorted(rates, reverse=True) and rates[-1] < rates[0]
    # to another input size and grid: all but the grid-shaped relation weights load
    bigger = build_model(_cfg(tiny_backbone, image_size=84, relation_grid=3, init_from=str(first)))
    assert (bigger.config.image_size, bigger.config.relation_grid) == (84, 3)
    moved = bigger.state_dict()
    fresh = [k for k in saved if moved[k].shape != saved[k].shape or not torch.equal(moved[k], saved[k])]
    assert fresh == ["relation_network.mlp.0.weight"]
    assert bigger(**_pixels(84)).relation_scores.shape == (1,)
    with pytest.raises(ValueError, match="no saved model"):
        build_model(_cfg(tiny_backbone, init_from=str(tmp_path)))


@pytest.mark.parametrize("flag, value, message", [
    ("--max-steps", "-1", "max_steps must be >= 1, got -1"),
    ("--batch-size", "0", "batch_size must be >= 1, got 0"),
    ("--stamp-pair-prob", "1.5", "stamp_pair_prob must be in [0, 1], got 1.5"),
    ("--correspondence-weight", "nan", "correspondence_weight must be a finite number"),
    ("--warmup-steps", "-3", "warmup_steps must be >= 0, got -3"),
    ("--config", "no-such-preset", "unknown preset or missing file"),
])
def test_train_cli_refuses_bad_recipe_values_before_loading(flag, value, message, tmp_path, capsys):
    from zse_hf.training import TrainConfig, main

    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "run"), flag, value])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written
    with pytest.raises(ValueError, match="lr must be > 0"):
        TrainConfig(lr=0.0)
