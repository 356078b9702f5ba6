"""Reading the logs users have (diagnostics/detect/logs.py) and judging them with `diagnostics detect`."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from diagnostics.detect import logs
from tests.conftest import cli
from tests.traces import healthy


def write(path, text):
    path.write_text(text)
    return path


def test_csv_with_only_step_and_loss(tmp_path):
    t = logs.read(write(tmp_path / "run.csv", "step,loss\n1,3.0\n2,2.9\n"))
    assert t[["run_id", "step", "loss"]].values.tolist() == [["run", 1, 3.0], ["run", 2, 2.9]]
    assert t["grad_norm"].tolist() == [None, None] and t["lr"].tolist() == [None, None]


def test_a_blank_cell_is_not_logged_and_nan_is_a_logged_nan(tmp_path):
    t = logs.read(write(tmp_path / "a.tsv", "iteration\ttrain/loss\tgrad_norm\tlearning_rate\n"
                                            "10\t3.0\t\t0.001\n20\tnan\t1.5\t\n30\t2.0\tinf\t0.001\n"))
    assert t["step"].tolist() == [10, 20, 30] and math.isnan(t["loss"][1])
    assert t["grad_norm"][0] is None and t["grad_norm"][1] == 1.5 and t["grad_norm"][2] == math.inf
    assert t["lr"][1] is None


def test_json_lines_with_missing_keys(tmp_path):
    lines = [{"step": 1, "loss": 3.0, "grad_norm": 2.0}, {"step": 2, "lr": 0.1}, {"step": 3, "loss": 2.5}]
    t = logs.read(write(tmp_path / "log.jsonl", "\n".join(map(json.dumps, lines))))
    assert t["step"].tolist() == [1, 3] and t["grad_norm"].tolist() == [2.0, None]


def test_hf_trainer_state_keeps_eval_entries_apart(tmp_path):
    state = {"log_history": [
        {"epoch": 0.1, "grad_norm": 1.2, "learning_rate": 5e-5, "loss": 2.5, "step": 10},
        {"epoch": 0.2, "eval_loss": 2.4, "eval_runtime": 1.0, "step": 20},
        {"epoch": 0.2, "grad_norm": 0.9, "learning_rate": 4e-5, "loss": 2.1, "step": 20},
        {"epoch": 1.0, "step": 20, "train_loss": 2.3, "train_runtime": 9.0},
    ]}
    path = tmp_path / "checkpoint-20" / "trainer_state.json"
    path.parent.mkdir()
    t = logs.read(write(path, json.dumps(state)))
    assert t[["step", "loss", "grad_norm", "lr"]].values.tolist() == [[10, 2.5, 1.2, 5e-5], [20, 2.1, 0.9, 4e-5]]
    assert t["run_id"].iloc[0] == "checkpoint-20" and len(logs.evaluation_entries(path)) == 1


def test_lightning_metrics_csv_interleaves_train_and_val_rows(tmp_path):
    text = ("epoch,step,train_loss_step,val_loss,lr-AdamW\n0,49,3.1,,0.001\n0,99,2.8,,0.001\n0,99,,2.9,\n"
            "1,149,2.5,,0.0005\n")
    t = logs.read(write(tmp_path / "metrics.csv", text))
    assert t["step"].tolist() == [49, 99, 149] and t["loss"].tolist() == [3.1, 2.8, 2.5]
    assert t["lr"].tolist() == [0.001, 0.001, 0.0005]


def test_wandb_chart_export_has_one_run_per_prefix(tmp_path):
    text = ('"Step","blue-sky-1 - train/loss","blue-sky-1 - train/loss__MIN","red-sun-2 - train/loss"\n'
            '1,3.0,3.0,3.1\n2,2.5,2.5,\n')
    t = logs.read(write(tmp_path / "wandb_export.csv", text))
    assert sorted(set(t["run_id"])) == ["blue-sky-1", "red-sun-2"]
    assert t[t.run_id == "red-sun-2"]["step"].tolist() == [1]


def test_named_columns_override_detection(tmp_path):
    path = write(tmp_path / "odd.csv", "when,objective,gn\n1,3.0,1.0\n2,2.0,1.0\n")
    with pytest.raises(logs.LogError, match="no step column.*--step-col.*found: when, objective, gn"):
        logs.read(path)
    t = logs.read(path, logs.Columns(step="when", loss="objective", grad="gn"))
    assert t["grad_norm"].tolist() == [1.0, 1.0]
    with pytest.raises(logs.LogError, match="no column 'nope' \\(--loss-col\\)"):
        logs.read(path, logs.Columns(step="when", loss="nope"))


@pytest.mark.parametrize("content,pattern", [
    ("", "empty file"),
    ("step,loss\n", "a header but no rows"),
    ("step,loss\n1,abc\n", "column loss has a non-numeric value 'abc' \\(data row 1\\)"),
    ("step,val_loss\n1,2.0\n", "no loss column"),
    ("step,loss\n,2.0\n", "logs a loss but no step"),
])
def test_unreadable_logs_say_what_was_found_in_one_line(tmp_path, content, pattern):
    with pytest.raises(logs.LogError, match=pattern):
        logs.read(write(tmp_path / "bad.csv", content))


CONSOLES = {  # what training scripts print, a few lines each: (text, steps, losses, grad norms, lrs)
    "nanogpt.txt": ("number of parameters: 123.59M\nstep 0: train loss 10.9876, val loss 10.9902\n"
                    "iter 0: loss 10.9811, time 12345.67ms, mfu -100.00%\niter 10: loss 9.5432, time 234.56ms, "
                    "mfu 12.34%\nstep 10: train loss 9.4, val loss 9.6\niter 20: loss nan, time 234.11ms, mfu 12.35%\n",
                    [0, 10, 20], [10.9811, 9.5432, math.nan], [None] * 3, [None] * 3),
    "megatron.log": (" iteration       10/  500000 | consumed samples:         5120 | elapsed time per iteration (ms): "
                     "1234.5 | learning rate: 3.000000E-06 | global batch size:   512 | lm loss: 1.095311E+01 | loss "
                     "scale: 1.0 | grad norm: 12.345 |\n [after training is done] datetime: 2024-01-01 00:00:00\n"
                     " iteration       20/  500000 | learning rate: 6.000000E-06 | lm loss: 9.876543E+00 | grad norm: "
                     "5.432 |\n", [10, 20], [10.95311, 9.876543], [12.345, 5.432], [3e-6, 6e-6]),
    "titan.log": ("\x1b[31mstep:  1  \x1b[32mloss: 12.2345  \x1b[33mmemory: 10.50GiB(11.05%)  \x1b[34mtps: 1,234\x1b[39m\n"
                  "\x1b[31mstep:  2  \x1b[32mloss: 11.9000  \x1b[33mmemory: 10.50GiB(11.05%)\x1b[39m\n",
                  [1, 2], [12.2345, 11.9], [None] * 2, [None] * 2),
    "hf.txt": ("{'loss': 2.3456, 'grad_norm': 1.234, 'learning_rate': 4.9e-05, 'epoch': 0.01}\n"
               "{'eval_loss': 2.0, 'eval_runtime': 12.3, 'epoch': 0.01}\n"
               "{'loss': 2.1, 'grad_norm': 1.1, 'learning_rate': 4.8e-05, 'epoch': 0.02}\n"
               "{'loss': nan, 'grad_norm': nan, 'learning_rate': 4.7e-05, 'epoch': 0.03}\n",
               [1, 2, 3], [2.3456, 2.1, math.nan], [1.234, 1.1, math.nan], [4.9e-5, 4.8e-5, 4.7e-5]),  # numbered
    "trainer.log": ("{'train/loss': 3.2, 'train/grad-norm': 0.5, 'global_step': 50}\n"
                    "{'train/loss': 3.0, 'train/grad-norm': 0.4, 'global_step': 100}\n",
                    [50, 100], [3.2, 3.0], [0.5, 0.4], [None] * 2),
    "fairseq.log": ("2021-01-01 00:00:00 | INFO | train_inner | epoch 001:    100 / 1000 loss=9.123, nll_loss=9.0, "
                    "ppl=512.1, num_updates=100, lr=0.0001, gnorm=1.234, train_wall=80\n"
                    "2021-01-01 00:01:00 | INFO | valid | epoch 001 | valid on 'valid' subset | loss 8.9 | nll_loss "
                    "8.8\n2021-01-01 00:02:00 | INFO | train_inner | epoch 001:    200 / 1000 loss=8.5, "
                    "nll_loss=8.4, num_updates=200, lr=0.0002, gnorm=1.1\n",
                    [100, 200], [9.123, 8.5], [1.234, 1.1], [1e-4, 2e-4]),
    "deepspeed.log": ("[2024-01-01 00:00:00,000] [INFO] [logging.py:96:log_dist] [Rank 0] step=10, skipped=0, "
                      "lr=[0.0001], mom=[(0.9, 0.999)]\nsteps: 10 loss: 2.3456 iter time (s): 0.512 samples/sec: 62.5\n"
                      "steps: 20 loss: 2.1 iter time (s): 0.510 samples/sec: 62.7\n", [10, 20], [2.3456, 2.1],
                      [None] * 2, [None] * 2),
    "plain.log": ("Step 100/1000 | Train Epoch Loss 2.345 | LR 1.0e-04 | Grad Norm 0.98 | Val Loss 2.5\n"
                  "Step 200/1000 | Train Epoch Loss 2.1 | LR 9.0e-05 | Grad Norm 0.91\n", [100, 200], [2.345, 2.1],
                  [0.98, 0.91], [1e-4, 9e-5]),
    "keras.txt": ("Epoch 1/2\n390/390 [==============================] - 12s 28ms/step - loss: 1.5123 - accuracy: "
                  "0.4512 - val_loss: 1.3012\nEpoch 2/2\n390/390 [==============================] - 10s 25ms/step - "
                  "loss: 1.1012 - accuracy: 0.6123 - val_loss: 1.0512\n", [1, 2], [1.5123, 1.1012], [None] * 2,
                  [None] * 2),
}


@pytest.mark.parametrize("name", CONSOLES)
def test_a_console_log_is_read_from_its_name_value_pairs(tmp_path, name):
    text, steps, losses, grads, lrs = CONSOLES[name]
    t = logs.read(write(tmp_path / name, text))
    assert t["step"].tolist() == steps
    assert np.allclose(t["loss"].astype(float), losses, equal_nan=True)
    assert [None if g is None else pytest.approx(g, nan_ok=True) for g in t["grad_norm"]] == grads
    assert [None if r is None else pytest.approx(r) for r in t["lr"]] == lrs


def test_a_console_log_that_diverged_is_judged_at_the_step_it_printed(tmp_path):
    steps, loss, grad = healthy(n=400)
    loss[300:] = loss[299] * 1.5 ** np.arange(1, 101)  # a runaway from step 301
    lines = [f"iter {s}: loss {v:.4f}, grad norm {g:.3f}, time 123.4ms" for s, v, g in zip(steps, loss, grad)]
    proc = cli("detect", str(write(tmp_path / "train.log", "starting\n" + "\n".join(lines) + "\n")),
               "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert runs.iloc[0]["status"] == "diverged_exploded" and 301 <= runs.iloc[0]["divergence_step"] <= 310
    assert "train.log: read as a console log\n" in proc.stdout
    hf = write(tmp_path / "hf.txt", CONSOLES["hf.txt"][0])
    assert f"{hf}: read as a console log that prints no step: its loss lines numbered" in cli("detect", hf).stdout


def test_a_per_epoch_log_is_counted_by_its_epoch_where_it_is_a_whole_number(tmp_path):
    t = logs.read(write(tmp_path / "cifar.csv", "epoch,train_loss,val_loss,val_acc\n1,2.1,2.0,0.3\n2,1.5,1.6,0.5\n"))
    assert t["step"].tolist() == [1, 2] and t["loss"].tolist() == [2.1, 1.5]
    t = logs.read(write(tmp_path / "resnet.log", "Epoch 1, loss: 2.1, acc 0.3\nEpoch 2, loss: 1.5, acc 0.5\n"))
    assert t["step"].tolist() == [1, 2]
    with pytest.raises(logs.LogError, match="no step column"):  # a fractional epoch counts nothing
        logs.read(write(tmp_path / "frac.csv", "epoch,loss\n0.5,2.1\n1.0,1.5\n"))


def test_a_run_resumed_from_an_earlier_checkpoint_keeps_the_steps_it_logged_again_last(tmp_path):
    """The first attempt blew up from step 150; the run was resumed from its step-120 checkpoint
    and trained on to 300: the log holds steps 121-200 twice, and the later lines are the run."""
    steps, loss, grad = healthy(n=300)
    first = loss[:200].copy()
    first[149:] = first[148] * 1.3 ** np.arange(1, 52)  # the attempt that diverged
    frame = pd.concat([pd.DataFrame(dict(step=steps[:200], loss=first, grad_norm=grad[:200])),
                       pd.DataFrame(dict(step=steps[120:], loss=loss[120:], grad_norm=grad[120:]))])
    frame.to_csv(tmp_path / "resumed.csv", index=False)
    table = logs.read(tmp_path / "resumed.csv")
    assert table["step"].is_unique and len(table) == 300 and table.attrs["repeated_steps"] == 80
    assert np.allclose(table["loss"], loss)  # the resumed run's values, in step order
    proc = cli("detect", tmp_path / "resumed.csv", "--out", tmp_path / "out", "--loss-floor", "1.7")
    assert "80 step(s) logged again (a resumed run?): the later line of each kept" in proc.stdout
    assert pd.read_csv(tmp_path / "out" / "runs.csv").iloc[0]["status"] == "converged"
    assert logs.read(write(tmp_path / "once.csv", "step,loss\n1,3.0\n2,2.9\n")).attrs["repeated_steps"] == 0


def test_a_daily_log_is_counted_by_its_day_or_numbered_by_its_date(tmp_path):
    t = logs.read(write(tmp_path / "days.csv", "day,loss\n1,3.2\n2,3.0\n3,2.9\n"))
    assert t["step"].tolist() == [1, 2, 3] and "read_as" not in t.attrs
    dated = write(tmp_path / "dashboard.csv", "date,loss,tokens\n2024-03-01,3.21,1e9\n2024-03-02,3.05,2e9\n"
                                              "2024-03-04,2.95,3e9\n2024-03-03,3.00,2.5e9\n")
    t = logs.read(dated)
    assert t["step"].tolist() == [1, 2, 3, 4] and t["loss"].tolist() == [3.21, 3.05, 3.00, 2.95]  # in time order
    assert f"{dated}: read as a dated log: its rows in time order numbered" in cli("detect", dated).stdout
    with pytest.raises(logs.LogError, match="no step column"):  # seconds are a number, not a date
        logs.read(write(tmp_path / "seconds.csv", "time,loss\n12.5,3.2\n13.0,3.1\n"))


def test_runs_written_one_after_another_without_a_run_column_are_runs_of_their_own(tmp_path):
    steps, loss, _ = healthy(n=200)
    blown = loss[:100].copy()
    blown[60:] = blown[59] * 1.3 ** np.arange(1, 41)
    frame = pd.concat([pd.DataFrame(dict(step=steps[:100], loss=blown)), pd.DataFrame(dict(step=steps, loss=loss))])
    frame.to_csv(tmp_path / "sweep.csv", index=False)
    table = logs.read(tmp_path / "sweep.csv")
    assert table.groupby("run_id").size().to_dict() == {"sweep": 100, "sweep#2": 200}
    assert table.attrs["runs_started_over"] == ["sweep#2"] and table.attrs["repeated_steps"] == 0
    proc = cli("detect", tmp_path / "sweep.csv", "--out", tmp_path / "out", "--loss-floor", "1.7")
    assert "its step starts over 1 time(s): read as runs of their own (sweep#2)" in proc.stdout
    status = pd.read_csv(tmp_path / "out" / "runs.csv").set_index("run_id")["status"]
    assert status["sweep"] == "diverged_exploded" and status["sweep#2"] == "converged"


def test_a_log_of_perplexity_alone_is_judged_on_its_logarithm(tmp_path):
    t = logs.read(write(tmp_path / "ppl.csv", "step,ppl\n100,1200.5\n200,800.1\n300,inf\n"))
    assert np.allclose(t["loss"][:2], np.log([1200.5, 800.1])) and t["loss"][2] == math.inf
    assert t.attrs["read_as"] == "a log of perplexity: its loss is the perplexity's logarithm"
    t = logs.read(write(tmp_path / "both.csv", "step,loss,ppl\n1,2.0,7.4\n"))  # a loss printed wins
    assert t["loss"].tolist() == [2.0] and "read_as" not in t.attrs


def test_a_text_file_that_logs_no_loss_is_still_one_line(tmp_path):
    with pytest.raises(logs.LogError, match="no step column"):
        logs.read(write(tmp_path / "notes.txt", "epoch 1: accuracy 0.5\nepoch 2: accuracy 0.6\n"))
    assert logs.console_records("iter 1: acc 0.5\n") == []


def test_the_names_tensorboard_tags_often_have_are_found(tmp_path):
    t = logs.read(write(tmp_path / "tags.csv", "global_step,Loss/train,Loss/val,lr/pg0,grad-norm/train\n"
                                               "1,3.0,3.1,0.001,1.5\n2,2.9,3.0,0.001,1.4\n"))
    assert t["loss"].tolist() == [3.0, 2.9] and t["lr"].tolist() == [0.001, 0.001] and t["grad_norm"].tolist() == [1.5, 1.4]


def test_an_mlflow_run_folder_and_json_metrics_as_lists(tmp_path):
    metrics = tmp_path / "mlruns" / "0" / "run1" / "metrics"
    (metrics / "train").mkdir(parents=True)
    write(metrics / "train" / "loss", "1700000000 3.0 1\n1700000001 2.8 2\n1700000002 nan 3\n")
    write(metrics / "lr", "1700000000 0.001 1\n1700000001 0.001 2\n1700000002 0.0009 3\n")
    for folder in (metrics.parent, metrics):  # the run folder or its metrics/
        t = logs.read(folder)
        assert t["run_id"].tolist() == ["run1"] * 3 and t["step"].tolist() == [1, 2, 3]
        assert t["loss"].tolist()[:2] == [3.0, 2.8] and math.isnan(t["loss"][2]) and t["lr"].tolist()[2] == 0.0009
    sacred = {"loss": {"steps": [10, 20], "values": [3.0, 2.7], "timestamps": ["a", "b"]},
              "lr": {"steps": [10, 20], "values": [0.1, 0.05]}}
    t = logs.read(write(tmp_path / "metrics.json", json.dumps(sacred)))
    assert t["step"].tolist() == [10, 20] and t["loss"].tolist() == [3.0, 2.7] and t["lr"].tolist() == [0.1, 0.05]
    t = logs.read(write(tmp_path / "history.json", json.dumps({"step": [1, 2], "loss": [3.0, 2.9]})))
    assert t["loss"].tolist() == [3.0, 2.9]
    with pytest.raises(logs.LogError, match="nor metrics as lists"):
        logs.read(write(tmp_path / "config.json", json.dumps({"lr": 0.1, "model": "gpt"})))
    write(metrics / "train" / "loss", "1700000000 three 1\n")
    with pytest.raises(logs.LogError, match="line 1 is not 'timestamp value step'"):
        logs.read(metrics)
    (tmp_path / "empty").mkdir()
    with pytest.raises(logs.LogError, match="without TensorBoard events or MLflow metrics"):
        logs.read(tmp_path / "empty")


def test_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "tb"))
    for step in range(1, 6):
        w.add_scalar("train/loss", 3.0 - 0.1 * step, step)
        w.add_scalar("train/learning_rate", 1e-3, step)
    w.close()
    t = logs.read(tmp_path / "tb")
    assert t["step"].tolist() == [1, 2, 3, 4, 5] and t["loss"].iloc[-1] == pytest.approx(2.5)
    assert t["lr"].iloc[0] == pytest.approx(1e-3) and t["grad_norm"].iloc[0] is None


def test_detect_on_a_loss_only_log_every_50_steps(tmp_path):
    steps, loss, _ = healthy(n=3000, rate=0.003, noise=0.01)
    keep = np.arange(0, 3000, 50)
    loss = loss[keep].copy()
    loss[-20:] = math.nan  # the run died
    pd.DataFrame({"step": steps[keep], "loss": loss}).to_csv(tmp_path / "daily.csv", index=False, na_rep="nan")
    proc = cli("detect", str(tmp_path / "daily.csv"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "no gradient norm or LR logged" in proc.stdout
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert runs.iloc[0]["status"] == "diverged_nonfinite" and runs.iloc[0]["divergence_step"] == steps[keep][-20]


def test_detect_bad_log_is_one_line(tmp_path):
    proc = cli("detect", str(write(tmp_path / "x.csv", "a,b\n1,2\n")))
    assert proc.returncode == 2 and "no step column" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def pandas_log(tmp_path, blank_from=None, blank_grad=False, evals=0, name="run.csv"):
    """A log written through a DataFrame: pandas writes NaN as an empty cell."""
    steps, loss, grad = healthy(n=200)
    df = pd.DataFrame(dict(step=steps, loss=loss, grad_norm=grad, learning_rate=1e-3))
    if blank_from is not None:
        df.loc[df.step >= blank_from, "loss"] = math.nan
        if blank_grad:
            df.loc[df.step >= blank_from, "grad_norm"] = math.nan
    if evals:
        df = pd.concat([df, pd.DataFrame(dict(step=[200] * evals, eval_loss=[1.8] * evals))], ignore_index=True)
    df.to_csv(tmp_path / name, index=False)
    return tmp_path / name


@pytest.mark.parametrize("blank_grad", [False, True])
def test_a_loss_that_vanishes_while_the_log_goes_on_is_a_divergence(tmp_path, blank_grad):
    from diagnostics.detect import classify

    table = logs.read(pandas_log(tmp_path, blank_from=120, blank_grad=blank_grad))
    assert table["loss_blank"].sum() == 81 and (table.loc[table.loss_blank, "step"] >= 120).all()
    v, events = classify(table, loss_floor=1.7)
    assert v.status == "diverged_nonfinite" and v.divergence_step == 120 and "blank from step 120" in v.status_reason
    assert [e.kind for e in events if e.kind == "loss_vanished"] == ["loss_vanished"]


def test_evaluation_rows_or_a_short_blank_tail_are_not_a_vanished_loss(tmp_path):
    from diagnostics.detect import classify

    v, _ = classify(logs.read(pandas_log(tmp_path, evals=2)), loss_floor=1.7)
    assert v.status == "converged"  # eval rows log no training column
    v, _ = classify(logs.read(pandas_log(tmp_path, blank_from=199, name="b.csv")), loss_floor=1.7)
    assert v.status == "converged"  # 2 rows: fewer than vanish_min_points, the log's tail
