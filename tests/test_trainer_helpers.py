"""training/trainer.py: the helpers every trainer shares, and that the trainers use them."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mm2face.training import trainer as T

ROOT = Path(__file__).resolve().parents[1]
TRAINERS = ("train_vqvae.py", "train_mm2face.py", "train_refiner.py")


def test_lr_warms_up_linearly_then_decays_to_the_floor():
    base, total = 1e-3, 1000
    assert T.lr_at(0, base, total) == pytest.approx(base / T.WARMUP_STEPS)
    assert T.lr_at(T.WARMUP_STEPS - 1, base, total) == pytest.approx(base)
    lrs = [T.lr_at(s, base, total) for s in range(T.WARMUP_STEPS, total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))                # cosine: never rises after the warm-up
    assert T.lr_at(total, base, total) == pytest.approx(base * T.LR_FLOOR)
    assert T.lr_at(10 * total, base, total) == pytest.approx(base * T.LR_FLOOR)


def test_time_budget_follows_an_injected_clock():
    now = [100.0]
    b = T.TimeBudget(minutes=2.0, spent_s=30.0, clock=lambda: now[0])
    assert b.enabled and b.elapsed_s() == 30.0 and b.fraction() == pytest.approx(0.25) and not b.over()
    now[0] += 90.0
    assert b.fraction() == pytest.approx(1.0) and b.over()
    none = T.TimeBudget(0.0, clock=lambda: now[0])
    now[0] += 1e6
    assert not none.enabled and none.fraction() == 0.0 and not none.over()


@pytest.mark.parametrize("name, needle", [("gpu", "not a torch device"), ("cuda:99", "cuda:99")])
def test_a_device_this_machine_lacks_is_a_clear_error(name, needle):
    with pytest.raises(ValueError, match=needle):
        T.torch_device(name)
    assert T.torch_device("cpu") == torch.device("cpu")


def test_state_round_trip_and_dim_weights(tmp_path):
    from mm2face.engine.model import MM2Face
    model = MM2Face.random(seed=0, small=True)
    opt = T.make_adam(model.vq.parameters(), 1e-3)
    assert opt.defaults["betas"] == T.ADAM_BETAS
    assert T.load_state(tmp_path, resume=True) is None
    T.save_state(tmp_path / T.STATE_FILE, model, opt, 7, {"lr": 1e-3}, {"wall_s": 1.5})
    st = T.load_state(tmp_path, resume=True)
    assert st["step"] == 7 and st["wall_s"] == 1.5 and st["train_cfg"] == {"lr": 1e-3}
    assert T.load_state(tmp_path, resume=False) is None
    assert not list(tmp_path.glob("*.tmp"))                            # written atomically
    w = T.dim_weights("standin", w_jaw=4.0, w_mouth=2.0, w_head=3.0)
    assert w.shape == (56,) and w.mean().item() == pytest.approx(1.0)
    assert w[53:].min() > w[0]                                         # the jaw weighs more than a brow unit


def test_trainers_use_the_shared_optimiser_step_and_schedule():
    """Adam's settings, gradient clipping and the schedule are written once, in training/trainer.py."""
    dup = []
    for name in TRAINERS:
        path = ROOT / "training" / name
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and (node.attr in ("Adam", "clip_grad_norm_") or (
                    node.attr == "manual_seed" and isinstance(node.value, ast.Name) and node.value.id == "torch")):
                dup.append(f"{path.name}:{node.lineno} {node.attr}")   # a torch.Generator's own seed is fine
            if isinstance(node, ast.FunctionDef) and node.name in ("lr_at", "save_state", "log_line", "setup_dist"):
                dup.append(f"{path.name}:{node.lineno} def {node.name}")
    assert not dup, dup


def test_train_cli_refuses_a_missing_device_before_reading_data(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mm2face.training.train_cli", "vqvae", "--data", str(tmp_path / "none"),
                        "--out", str(tmp_path / "o"), "--device", "cuda:99"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "mm2face-train: --device cuda:99" in r.stderr and "Traceback" not in r.stderr
