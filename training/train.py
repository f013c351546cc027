"""Training of force models on NEGF-BD trajectories (MSE loss, Adam, as the paper).

Pipeline: trajectories → split by trajectory (train/test) → validation blocks of the training
trajectories (early stopping) → descriptors precomputed once (float32) → per-site minibatches of the
normalized electronic force → best-on-validation weights → test metrics on the held-out trajectories.

A model with global inputs (preset ``voltage``) trains on several voltages (``voltage=None``: all, or
``voltage_range``) and lattice lengths at once: features are computed per lattice shape and pooled by
site; the checkpoint records the voltages, lattices and the most metallic columns of its training
frames, from which the export declares the validity domain.

Outputs in ``out``: ``model.pt`` (best weights, split, metrics, provenance), ``last.pt`` (resume state,
rewritten atomically every epoch), ``history.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neqforce import __version__
from neqforce.client.interrupt import safe_point
from neqforce.hashing import sha256_file
from neqforce.physics import DEFAULT_V, bulk_cdw_amplitude, metallic_columns

from .calibration import F_NORM
from .checkpoint import read_checkpoint, save_checkpoint
from .data import (
    Frames,
    frame_groups,
    qualify_ids,
    select_voltage,
    split_by_trajectory,
    training_validation_mask,
    traj_id,
    voltages_of,
)
from .dataset import dataset_sha256, load_dataset
from .descriptors import offsets
from .evaluate import grouped_metrics
from .metrics import format_metrics
from .model import PRESETS, ForceModel, ModelConfig, build_model


@dataclass
class TrainOptions:
    """Hyper-parameters of one training run (defaults: the compact preset's recipe)."""

    preset: str = "compact"
    descriptor: str | None = None  # override the preset's descriptor kind
    hidden: tuple[int, ...] | None = None  # override the preset's widths
    activation: str | None = None  # override the preset's activation
    anti_rank: int | None = None  # override: 0 C_s-averaged layer, K quadratic A'' invariants
    r_cut: int | None = None  # override the cutoff radius (6)
    epochs: int = 30
    lr: float = 2e-3
    lr_min: float = 2e-5
    batch_size: int = 1024
    weight_decay: float = 0.0
    patience: int = 8
    seed: int = 0
    device: str = "auto"
    test_fraction: float = 0.3
    test_ids: tuple[str, ...] = ()
    voltage: float | None = DEFAULT_V  # one voltage; None: all (or voltage_range)
    voltage_range: tuple[float, float] | None = None  # V in [min, max] (models with a voltage input)
    stride: int = 1
    max_step: int | None = None  # use frames up to this BD step only
    max_minutes: float = 0.0  # 0: no limit
    threads: int = 0  # torch intra-op threads (0: torch default)
    allow_incomplete: bool = False  # train on trajectories still being generated (recorded as such)
    weight_long: float = 1.0  # loss weight of the sites of lattices longer than the shortest one
    init: str | None = None  # warm start: the weights (and normalization) of this model.pt, same architecture
    teacher: tuple[str, ...] = ()  # distillation (conv presets): the committee's member checkpoints
    distill_weight: float = 0.5  # share of the force loss on labelled frames fitted to the teacher's mean
    transfer: tuple[str, ...] = ()  # unlabelled trajectories (ML-BD runs): teacher targets only
    spread_weight: float = 1.0  # weight of the spread head's loss (log of the teacher's per-site std)


def pick_device(name: str) -> torch.device:
    """'auto' → CUDA when present, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("CUDA requested but not available")
    return torch.device(name)


def model_config(opts: TrainOptions) -> ModelConfig:
    if opts.preset not in PRESETS:
        raise ValueError(f"unknown preset {opts.preset!r} (known: {', '.join(PRESETS)})")
    base = PRESETS[opts.preset]
    return ModelConfig(descriptor=opts.descriptor or base.descriptor,
                       hidden=tuple(opts.hidden or base.hidden),
                       activation=opts.activation or base.activation, r_cut=opts.r_cut or base.r_cut,
                       anti_rank=base.anti_rank if opts.anti_rank is None else opts.anti_rank,
                       global_features=base.global_features)


@torch.no_grad()
def compute_features(model: ForceModel, q: np.ndarray, voltage: np.ndarray | None = None,
                     chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of every site of every frame: (S·lx·ly, n_s), (S·lx·ly, n_a), float32 on CPU; ``voltage``
    (S,) per frame (None: the model's default)."""
    ss, aa = [], []
    for i in range(0, len(q), chunk):
        v = None if voltage is None else torch.from_numpy(np.asarray(voltage[i:i + chunk], np.float32))
        s, a = model.features(torch.from_numpy(q[i:i + chunk]), v)
        ss.append(s.flatten(0, 2))
        aa.append(a.flatten(0, 2))
    return torch.cat(ss), torch.cat(aa)


def split_features(model: ForceModel, groups: Sequence[Frames], vmasks: Sequence[np.ndarray],
                   chunk: int = 64) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """(S, A, y) of the training sites and of the validation sites (``vmasks``: per group, True for a
    validation frame), in the order of ``groups`` and their frames. Features are computed ``chunk`` frames
    at a time (as :func:`compute_features`) and written straight into the two preallocated sets, so the
    peak memory is the features once, not twice (a 30×28 site costs ~1 kB at r_c = 8)."""
    n_va = [int(m.sum()) * fr.params.lx * fr.params.ly for fr, m in zip(groups, vmasks, strict=True)]
    n_all = [len(fr) * fr.params.lx * fr.params.ly for fr in groups]
    n_val, n_tot = sum(n_va), sum(n_all)
    probe = groups[0]
    s1, a1 = model.features(torch.from_numpy(probe.q[:1]),
                            None if probe.voltage is None else torch.from_numpy(
                                np.asarray(probe.voltage[:1], np.float32)))
    n_s, n_a = s1.shape[-1], a1.shape[-1]
    train = (torch.empty(n_tot - n_val, n_s), torch.empty(n_tot - n_val, n_a), torch.empty(n_tot - n_val))
    val = (torch.empty(n_val, n_s), torch.empty(n_val, n_a), torch.empty(n_val))
    at = [0, 0]  # rows written: training, validation
    for fr, vmask in zip(groups, vmasks, strict=True):
        n = fr.params.lx * fr.params.ly
        for i in range(0, len(fr), chunk):
            s, a = compute_features(model, fr.q[i:i + chunk],
                                    None if fr.voltage is None else fr.voltage[i:i + chunk], chunk=chunk)
            y = torch.from_numpy(np.ascontiguousarray(fr.electronic[i:i + chunk]).reshape(-1))
            site_val = torch.from_numpy(np.repeat(vmask[i:i + chunk], n))
            for k, (dest, rows) in enumerate(((train, ~site_val), (val, site_val))):
                m = int(rows.sum())
                if m:
                    for d, src in zip(dest, (s, a, y), strict=True):
                        d[at[k]:at[k] + m] = src[rows]
                    at[k] += m
    if at != [n_tot - n_val, n_val]:  # pragma: no cover - the counts above are the masks' own
        raise RuntimeError(f"feature rows written {at}, expected {[n_tot - n_val, n_val]}")
    return train, val


def set_normalization(model: ForceModel, s: torch.Tensor, a: torch.Tensor, y: torch.Tensor) -> None:
    """Standardize features and target on the training set; one-hot electrode features stay 0/1."""
    n_paper = offsets(model.config.r_cut).n_paper
    mean, std = s.mean(0), s.std(0)
    std = torch.where(std < 1e-3, torch.ones_like(std), std)  # constant feature: leave unscaled
    mean[n_paper:model.n_desc], std[n_paper:model.n_desc] = 0.0, 1.0
    model.s_mean.copy_(mean)
    model.s_std.copy_(std)
    if a.shape[1]:
        a_rms = a.pow(2).mean(0).sqrt()
        model.a_std.copy_(torch.where(a_rms < 1e-3, torch.ones_like(a_rms), a_rms))
    model.y_mean.copy_(y.mean())
    model.y_std.copy_(y.std().clamp_min(1e-6))


@torch.no_grad()
def predict_forces(model: ForceModel, q: np.ndarray, voltage: np.ndarray | None = None,
                   chunk: int = 64) -> np.ndarray:
    """Total forces (S, lx, ly) of a model for frames q (S, lx, ly) at voltages (S,) (None: default)."""
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(q), chunk):
        qi = torch.from_numpy(np.ascontiguousarray(q[i:i + chunk], dtype=np.float32)).to(dev)
        vi = None if voltage is None else torch.from_numpy(np.asarray(voltage[i:i + chunk], np.float32))
        out.append(model(qi, None if vi is None else vi.to(dev))[0].cpu())
    return torch.cat(out).numpy().astype(np.float64)


def long_site_weights(groups: Sequence[Frames], vmasks: Sequence[np.ndarray],
                      weight_long: float) -> torch.Tensor:
    """Loss weight of every training site, in the order :func:`split_features` writes them: ``weight_long``
    for the sites of frames on lattices longer (lx) than the shortest lattice of the data, 1 elsewhere.
    Restores the share of long devices in the loss when more short-device data is added."""
    lx_min = min(fr.params.lx for fr in groups)
    parts = [torch.full((int((~m).sum()) * fr.params.lx * fr.params.ly,),
                        weight_long if fr.params.lx > lx_min else 1.0)
             for fr, m in zip(groups, vmasks, strict=True)]
    return torch.cat(parts)


def max_metallic_columns(frames: Sequence[Frames]) -> int:
    """Most metallic columns (SPEC ξ·lx) of any frame: the metallic-length extent of the training data."""
    worst = 0
    for fr in frames:
        q0 = bulk_cdw_amplitude(fr.params)
        worst = max(worst, int(np.count_nonzero(metallic_columns(fr.q, q0), axis=-1).max(initial=0)))
    return worst


def _val_loss(model: ForceModel, s: torch.Tensor, a: torch.Tensor, y: torch.Tensor, dev: torch.device,
              chunk: int = 65536) -> float:
    model.eval()
    tot = 0.0
    with torch.no_grad():
        for i in range(0, len(y), chunk):
            p = model.head(s[i:i + chunk].to(dev), a[i:i + chunk].to(dev))
            tot += float(((p - y[i:i + chunk].to(dev)) ** 2).sum())
    model.train()
    return tot / max(len(y), 1)


def require_complete(trajs: Sequence, allow_incomplete: bool) -> list[str]:
    """Ids of the trajectories still being generated; ValueError when there are any and
    ``allow_incomplete`` is not set (the model would record a partial dataset)."""
    incomplete = sorted(traj_id(t) for t in trajs if not t.complete)
    if incomplete and not allow_incomplete:
        raise ValueError(f"{len(incomplete)} trajectories are still incomplete ({', '.join(incomplete[:4])}"
                         f"{', ...' if len(incomplete) > 4 else ''}): finish `neqforce dataset generate` "
                         "first, or pass --allow-incomplete (the model then records a partial dataset)")
    return incomplete


def resume_state(last_path: Path, model: torch.nn.Module, opt, sched, log: Callable[[str], None]) -> dict:
    """Load ``last.pt`` into the model, optimizer and scheduler (and torch's RNG); returns the loop state
    (``start_epoch``, ``best_val``, ``history``, ``bad``, ``best_state``, ``rng``) to continue from."""
    ck = read_checkpoint(last_path)
    model.load_state_dict(ck["state_dict"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    torch.set_rng_state(ck["torch_rng"])
    state = {"start_epoch": ck["epoch"] + 1, "best_val": ck["best_val"], "history": ck["history"],
             "bad": ck["bad_epochs"], "best_state": ck["best_state"],
             "rng": np.random.default_rng(ck["numpy_rng_seed"])}
    log(f"resumed at epoch {state['start_epoch']}")
    return state


def last_checkpoint(cfg, params, model: torch.nn.Module, opt, sched, epoch: int, best_val: float,
                    best_state: dict | None, history: list, bad: int, rng: np.random.Generator) -> dict:
    """What ``last.pt`` holds after an epoch: everything :func:`resume_state` needs."""
    return {"config": cfg.to_dict(), "params": params.physical(), "state_dict": model.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch,
            "best_val": best_val, "best_state": best_state, "history": history, "bad_epochs": bad,
            "torch_rng": torch.get_rng_state(), "numpy_rng_seed": int(rng.integers(2**63))}


def init_checkpoint(cfg, opts: TrainOptions) -> dict | None:
    """The checkpoint ``opts.init`` names, checked against the run's architecture ``cfg`` (None without
    ``--init``); ValueError when it is missing, not a model checkpoint or of another architecture. The
    trainers call it before loading any data, so a wrong ``--init`` fails at once."""
    if not opts.init:
        return None
    path = Path(opts.init)
    if not path.is_file():
        raise ValueError(f"--init {path}: no such file")
    ck = read_checkpoint(path)
    if "state_dict" not in ck or "config" not in ck:
        raise ValueError(f"--init {path}: not a model checkpoint (model.pt) of neqforce train")
    want = cfg.to_dict()
    # a student with a spread head may start from a network without one (the head starts untrained)
    plain = {**want, "spread_head": False}
    new_head = want.get("spread_head") and plain == {**ck["config"], "spread_head": False}
    if ck["config"] != want and not new_head:
        raise ValueError(f"--init {path}: its architecture differs from this run's ({ck['config']} against "
                         f"{want}); fine-tuning needs the same preset and overrides")
    return ck


def warm_start(model: torch.nn.Module, ck: dict | None, path: str | None,
               log: Callable[[str], None]) -> list[str]:
    """Load the weights and normalization buffers of the checkpoint ``ck`` (:func:`init_checkpoint` of
    ``--init`` ``path``) into ``model`` (fine-tuning: the optimizer and learning-rate schedule start afresh,
    a warm restart); nothing when ``ck`` is None (no ``--init``, or resuming from ``last.pt``, which holds
    everything). Returns the names of the parameters left at their initial values (a spread head new to a
    network that had none)."""
    if ck is None:
        return []
    missing, unexpected = model.load_state_dict(ck["state_dict"], strict=False)
    if unexpected or any(not k.startswith("net.spread_") for k in missing):
        raise ValueError(f"--init {path}: its weights do not fit this network ({(missing + unexpected)[:3]})")
    log(f"starting from the weights of {path} (fine-tuning; new optimizer and learning-rate schedule"
        f"{'; the spread head from scratch' if missing else ''})")
    return list(missing)


def provenance(cfg, opts: TrainOptions, trajs: Sequence, train_t: Sequence, test_t: Sequence,
               groups: Sequence[Frames], incomplete: list[str], epochs_run: int) -> dict:
    """The data, split, options and versions ``model.pt`` records (shared by every architecture)."""
    params = train_t[0].params
    return {
        "train_ids": [i for fr in groups for i in fr.ids], "test_ids": [traj_id(t) for t in test_t],
        "lattice": [params.lx, params.ly], "lattices": [[fr.params.lx, fr.params.ly] for fr in groups],
        "voltages": voltages_of(train_t), "metallic_columns_max": max_metallic_columns(groups),
        "dataset_sha256": dataset_sha256([t.extra["file"] for t in trajs]),
        "dataset_complete": not incomplete, "dataset_frames": int(sum(len(t.frames()["q"]) for t in trajs)),
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(opts).items()},
        "epochs_run": epochs_run, "neqforce_version": __version__, "torch_version": torch.__version__,
        "descriptor": cfg.descriptor_name,
        **({"init_sha256": sha256_file(opts.init)} if opts.init else {}),
        **({"teacher": {"members": list(opts.teacher), "sha256": [sha256_file(p) for p in opts.teacher],
                        "distill_weight": opts.distill_weight, "transfer": list(opts.transfer)}}
           if opts.teacher else {})}


def train(data: str | os.PathLike[str] | Sequence[str], out: str | os.PathLike[str], opts: TrainOptions,
          resume: bool = False, log: Callable[[str], None] = print) -> Path:
    """Train a model; returns the path of ``model.pt`` (best validation weights + test metrics). The
    process's torch thread count (``opts.threads``) is restored on return: a library caller (``neqforce
    learn`` training members in-process, a test) gets it back as it was."""
    threads = torch.get_num_threads()
    try:
        return _train(data, out, opts, resume, log)
    finally:
        torch.set_num_threads(threads)


def _train(data: str | os.PathLike[str] | Sequence[str], out: str | os.PathLike[str], opts: TrainOptions,
           resume: bool, log: Callable[[str], None]) -> Path:
    from .conv_train import CONV_PRESETS, train_conv

    if opts.preset in CONV_PRESETS:  # the device-wide convolutional model trains on whole frames
        return train_conv(data, out, opts, resume=resume, log=log)
    if opts.teacher or opts.transfer:
        raise ValueError("--teacher/--transfer (distillation) need a convolutional preset, not "
                         f"{opts.preset!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    dev = pick_device(opts.device)
    cfg = model_config(opts)
    resuming = resume and (out / "last.pt").exists()
    init_ck = None if resuming else init_checkpoint(cfg, opts)  # a wrong --init fails before the data load
    trajs = qualify_ids(select_voltage(load_dataset(data), opts.voltage, opts.voltage_range))
    if len(voltages_of(trajs)) > 1 and not cfg.takes_voltage:
        raise ValueError(f"the data holds voltages {', '.join(f'{v:g}' for v in voltages_of(trajs))} but "
                         f"preset {opts.preset!r} has no voltage input: pick one with --voltage, or use "
                         "--preset voltage")
    incomplete = require_complete(trajs, opts.allow_incomplete)
    train_t, test_t = split_by_trajectory(trajs, opts.test_fraction, opts.test_ids or None)
    params = train_t[0].params
    groups = frame_groups(train_t, stride=opts.stride, max_step=opts.max_step)
    vmasks = []
    for fr in groups:
        vmasks.append(training_validation_mask(fr.step))
    n_val = sum(int(m.sum()) for m in vmasks)
    n_frames = sum(len(fr) for fr in groups)
    train_ids = [i for fr in groups for i in fr.ids]
    lattices = [[fr.params.lx, fr.params.ly] for fr in groups]
    log(f"train {train_ids} ({n_frames - n_val} frames, {n_val} validation), "
        f"test {[traj_id(t) for t in test_t]}, lattices {', '.join(f'{a}x{b}' for a, b in lattices)}, "
        f"V = {', '.join(f'{v:g}' for v in voltages_of(train_t))}, preset {opts.preset}: {cfg.hidden} "
        f"{cfg.activation}, {cfg.macs_per_site()} MACs/site, device {dev}")

    model = build_model(cfg, params.physical())
    t0 = time.time()
    (s_tr, a_tr, y_tr), (s_va, a_va, y_va) = split_features(model, groups, vmasks)
    set_normalization(model, s_tr, a_tr, y_tr)
    warm_start(model, init_ck, opts.init, log)
    yn_tr = (y_tr - model.y_mean) / model.y_std
    yn_va = (y_va - model.y_mean) / model.y_std
    log(f"features: {tuple(s_tr.shape)} + {tuple(a_tr.shape)} in {time.time() - t0:.1f} s")
    w_tr = None
    if opts.weight_long != 1.0:
        w_tr = long_site_weights(groups, vmasks, opts.weight_long)
        share = float(w_tr[w_tr != 1.0].sum() / w_tr.sum()) if opts.weight_long > 0 else 0.0
        log(f"long-lattice sites weighted {opts.weight_long:g}: {share:.1%} of the training loss")

    model.to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(opts.epochs, 1), eta_min=opts.lr_min)
    start_epoch, best_val, best_state, history, bad = 0, math.inf, None, [], 0
    last_path, best_path = out / "last.pt", out / "model.pt"
    if resuming:
        st = resume_state(last_path, model, opt, sched, log)
        start_epoch, best_val, history, bad = st["start_epoch"], st["best_val"], st["history"], st["bad"]
        best_state, rng = st["best_state"], st["rng"]

    y_scale2 = float(model.y_std) ** 2
    f_max_train = max(float(np.abs(fr.force).max()) for fr in groups)
    n_tr = len(yn_tr)
    t_start = time.time()
    epoch = start_epoch - 1
    for epoch in range(start_epoch, opts.epochs):
        perm = torch.from_numpy(rng.permutation(n_tr))
        tot = 0.0
        for i in range(0, n_tr, opts.batch_size):
            idx = perm[i:i + opts.batch_size]
            p = model.head(s_tr[idx].to(dev), a_tr[idx].to(dev))
            if w_tr is None:
                loss = torch.mean((p - yn_tr[idx].to(dev)) ** 2)
            else:  # weighted mean: the long lattices' share of the loss (validation stays per-site)
                w = w_tr[idx].to(dev)
                loss = torch.sum(w * (p - yn_tr[idx].to(dev)) ** 2) / w.sum().clamp_min(1e-12)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
        sched.step()
        train_loss = tot / n_tr
        val = _val_loss(model, s_va, a_va, yn_va, dev) if len(yn_va) else train_loss
        # validation MSE of the total force rescaled by the training F_max (the paper's units)
        val_mse = val * y_scale2 / f_max_train**2
        improved = val < best_val
        if improved:
            best_val, bad = val, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val, "val_mse": val_mse,
                        "lr": opt.param_groups[0]["lr"], "time_s": time.time() - t_start})
        log(f"epoch {epoch:4d}  train {train_loss:.3e}  val {val:.3e}  val MSE[-1,1] {val_mse:.2e}"
            f"{'  *' if improved else ''}  ({time.time() - t_start:.0f} s)")
        save_checkpoint(last_path, last_checkpoint(cfg, params, model, opt, sched, epoch, best_val,
                                                   best_state, history, bad, rng))
        (out / "history.json").write_text(json.dumps(history, indent=1))
        safe_point()  # a Ctrl-C of the job (`neqforce learn`) stops here, the epoch on disk
        if bad >= opts.patience:
            log(f"early stop: no validation improvement for {opts.patience} epochs")
            break
        if opts.max_minutes and time.time() - t_start > 60 * opts.max_minutes:
            log(f"time limit of {opts.max_minutes} min reached")
            break

    model.load_state_dict(best_state)
    model.to("cpu").eval()
    # validation_mse: normalized by the largest |F| of this training data (the paper's [-1, 1] scaling, data
    # dependent); validation_mse_fnorm: by the fixed F_norm, comparable between datasets (docs/ml_model.md)
    metrics: dict = {"validation_mse": best_val * y_scale2 / f_max_train**2,
                     "validation_mse_fnorm": best_val * y_scale2 / F_NORM**2, "f_norm": F_NORM}
    if test_t:
        tests = frame_groups(test_t, max_step=opts.max_step)
        metrics["test"] = grouped_metrics([(predict_forces(model, te.q, te.voltage), te) for te in tests])
        log("test (held-out trajectories):\n" + format_metrics(metrics["test"]))
    save_checkpoint(best_path, {
        "config": cfg.to_dict(), "params": params.physical(), "state_dict": model.state_dict(),
        "metrics": metrics, **provenance(cfg, opts, trajs, train_t, test_t, groups, incomplete, epoch + 1)})
    log(f"wrote {best_path}")
    return best_path

