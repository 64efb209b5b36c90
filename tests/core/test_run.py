import json

from trellis.config import SFTConfig
from trellis.run import StageRun, latest_checkpoint, read_metrics, save_atomic, stage_done


def test_stage_run_layout(tmp_path):
    run = StageRun(tmp_path, "sft", SFTConfig(lr=0.1))
    run.log(1, loss=2.0, lr=0.1)
    run.log(2, loss=1.5, note="text")
    run.write_summary({"x": 1})
    run.close()
    d = tmp_path / "sft"
    assert "lr: 0.1" in (d / "config.yaml").read_text()
    records = read_metrics(d / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2] and records[1]["loss"] == 1.5
    assert any((d / "tb").iterdir())
    summary = json.loads((d / "summary.json").read_text())
    assert summary["status"] == "done" and summary["x"] == 1 and "wall_seconds" in summary
    assert stage_done(d)


def test_not_done_without_summary_or_running(tmp_path):
    run = StageRun(tmp_path, "pretrain", tensorboard=False)
    assert not run.is_done()
    run.write_summary({}, done=False)
    assert not run.is_done()


def test_truncate_metrics_after_resume_point(tmp_path):
    run = StageRun(tmp_path, "pretrain", tensorboard=False)
    for step in range(1, 6):
        run.log(step, loss=float(step))
    run.truncate_metrics_after(3)
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3]


def test_save_atomic_and_latest_ignores_partial(tmp_path):
    ckpts = tmp_path / "checkpoints"
    save_atomic(ckpts / "step-0000001", lambda d: (d / "w").write_text("1"))
    save_atomic(ckpts / "step-0000002", lambda d: (d / "w").write_text("2"))
    (ckpts / "step-0000003.tmp").mkdir()  # a kill during the write of step 3
    latest = latest_checkpoint(ckpts)
    assert latest is not None and latest.name == "step-0000002" and (latest / "w").read_text() == "2"


def test_prune_keeps_last(tmp_path):
    run = StageRun(tmp_path, "pretrain", tensorboard=False)
    for step in (1, 2, 3):
        save_atomic(run.checkpoint_path(step), lambda d: None)
    run.prune_checkpoints(2)
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == ["step-0000002", "step-0000003"]


def test_report_plots_each_stage_curves_and_lists_results(tmp_path):
    from trellis.report import write_report

    for stage, keys in {"pretrain": ("loss", "val_ppl"), "rlhf": ("reward_mean", "kl_mean")}.items():
        run = StageRun(tmp_path, stage, tensorboard=False)
        for step in range(1, 4):
            run.log(step, **{k: float(step) for k in keys})
    summary = {"name": "t", "stages": ["pretrain", "rlhf"], "pretrain": {"val_ppl_final": 2.5, "wall_seconds": 1.0},
               "rlhf": {"kl_final": 0.3}}
    report = write_report(tmp_path, summary).read_text()
    assert "val_ppl_final=2.5" in report and "kl_final=0.3" in report
    assert "![pretrain_curves](pretrain_curves.png)" in report and (tmp_path / "rlhf_curves.png").exists()
