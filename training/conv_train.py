"""Training of the device-wide convolutional model (training/conv.py): whole frames, not sites.

``neqforce train DATA --preset conv`` ends here (``train.train`` dispatches). The data handling is the
descriptor models': the same trajectory split, the same validation blocks held out for early stopping
(``training_validation_mask``), ``--weight-long`` for the sites of longer lattices, the same checkpoint
(``model.pt`` best weights, ``last.pt`` every epoch for ``--resume``) and provenance. What differs: the
network sees whole lattices, so minibatches are frames of one lattice shape (~``BATCH_SITES`` sites), and
the learning rate follows a cosine over optimizer steps (the probe's schedule, docs/ml_model.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from neqforce.client.interrupt import safe_point

from .calibration import F_NORM
from .checkpoint import save_checkpoint
from .conv import V_MID, ConvConfig, ConvForceModel, build_conv_model
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
from .dataset import load_dataset

#: Named convolutional architectures (``--preset``); ``conv`` is the deployable size (cost, bench/).
CONV_PRESETS: dict[str, ConvConfig] = {
    "conv": ConvConfig(channels=16),
    "conv32": ConvConfig(channels=32),
    "conv6": ConvConfig(channels=16, dilations=(1, 2, 4, 8, 16, 32)),
    "gconv": ConvConfig(channels=16, mirror="equivariant"),
    "gconv24": ConvConfig(channels=24, mirror="equivariant"),
}
#: Sites per minibatch: 8 frames of 30×28, fewer frames of longer lattices.
BATCH_SITES = 6720


def _frames_per_batch(fr: Frames, sites: int = BATCH_SITES) -> int:
    """Frames of this group's lattice in a minibatch of ~``sites`` sites (at least one)."""
    return max(1, round(sites / (fr.params.lx * fr.params.ly)))


def _batches(groups: Sequence[Frames], train_idx: Sequence[np.ndarray], rng: np.random.Generator):
    """(group, frame indices) minibatches of one lattice shape each, in a random order over all groups."""
    out = []
    for g, (fr, idx) in enumerate(zip(groups, train_idx, strict=True)):
        per = _frames_per_batch(fr)
        perm = rng.permutation(idx)
        out += [(g, perm[i:i + per]) for i in range(0, len(perm), per)]
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def _tensors(fr: Frames, idx: np.ndarray, dev: torch.device) -> tuple[torch.Tensor, ...]:
    q = torch.from_numpy(np.ascontiguousarray(fr.q[idx], np.float32)).to(dev)
    y = torch.from_numpy(np.ascontiguousarray(fr.electronic[idx], np.float32)).to(dev)
    v = torch.from_numpy(np.asarray(fr.voltage[idx], np.float32)).to(dev)
    return q, y, v


#: Floor added to the normalized spreads before the log in the spread head's loss (force units / y_std
#: at the bundled model's y_std ≈ 0.55: ~1e-3 force units, far below any spread that matters).
SPREAD_FLOOR = 2e-3
#: Learning rate of the spread head relative to the network's (its loss is on a log scale, its few weights
#: start far from their values; the force network is never touched by it).
SPREAD_LR_FACTOR = 10.0
#: Epochs of the spread head alone on the kept (best-validation) network at the end of training.
SPREAD_REFIT_EPOCHS = 3


def _start_spread_head(model: ConvForceModel, targets: Sequence[tuple[np.ndarray, np.ndarray]],
                       log: Callable[[str], None]) -> None:
    """Start a fresh spread head at the teacher's typical spread: output bias softplus⁻¹(median normalized
    std), output weights scaled down (the log loss then starts near its floor, not ~10 nats above it)."""
    med = float(np.median(np.concatenate([t[1].ravel()[::97] for t in targets]))) / float(model.y_std)
    med = max(med, 1e-4)
    with torch.no_grad():
        model.net.spread_out.bias.fill_(math.log(math.expm1(med)))
        model.net.spread_out.weight.mul_(0.1)
    log(f"spread head started at the teacher's median per-site std ({med * float(model.y_std):.2e} force "
        "units)")


def _physics(physical: dict) -> dict:
    """Physical parameters without the voltage (an input of these models, not a fixed parameter)."""
    return {k: v for k, v in physical.items() if k != "voltage"}


def check_teacher_paths(paths: Sequence[str]) -> None:
    """ValueError unless ``paths`` name two or more existing files (called before any data is read)."""
    for p in paths:
        if not Path(p).is_file():
            raise ValueError(f"--teacher {p}: no such file")
    if len(paths) < 2:
        raise ValueError("--teacher needs the committee's members (two or more checkpoints): the spread "
                         "head learns their disagreement")


def load_teacher(paths: Sequence[str], params) -> torch.nn.Module:
    """The committee to distil (:class:`~.model.EnsembleForceModel` of its member checkpoints); its members
    must be models of the same physical parameters as the training data (the voltage aside)."""
    from .checkpoint import load_model
    from .model import EnsembleForceModel

    check_teacher_paths(paths)
    members = []
    for p in paths:
        m, ck = load_model(p)
        if _physics(ck["params"]) != _physics(params.physical()):
            raise ValueError(f"--teacher {p}: trained for other physical parameters ({ck['params']} against "
                             f"{params.physical()})")
        members.append(m)
    return EnsembleForceModel(members).eval()


@torch.no_grad()
def teacher_targets(teacher, q: np.ndarray, voltage: np.ndarray, chunk: int = 32
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The teacher committee's mean electronic force and per-site std over its members (ddof 0), float32
    (S, lx, ly) each."""
    means, stds = [], []
    for i in range(0, len(q), chunk):
        each = teacher.member_electronic(torch.from_numpy(np.ascontiguousarray(q[i:i + chunk], np.float32)),
                                         torch.from_numpy(np.asarray(voltage[i:i + chunk], np.float32)))
        means.append(each.mean(0).numpy())
        stds.append(each.std(0, unbiased=False).numpy())
    return np.concatenate(means), np.concatenate(stds)


def transfer_frames(paths: Sequence[str], params) -> list[Frames]:
    """Unlabelled frames for distillation: every saved frame of the trajectories under ``paths`` (folders
    searched recursively for .h5, or files), grouped by lattice shape; the forces they carry (the model
    that drove them) are not used. Their physical parameters must be the training data's (voltage aside)."""
    from neqforce.trajectory import read_trajectory

    files: list[Path] = []
    for p in map(Path, paths):
        found = sorted(p.rglob("*.h5")) if p.is_dir() else [p] if p.is_file() else []
        if not found:
            raise ValueError(f"--transfer {p}: no trajectory files (.h5)")
        files += found
    by_shape: dict[tuple[int, int], list] = {}
    for f in files:
        t = read_trajectory(f)
        if _physics(t.params.physical()) != _physics(params.physical()):
            raise ValueError(f"--transfer {f}: other physical parameters than the training data's")
        fr = t.frames()
        if len(fr["q"]):
            by_shape.setdefault(t.params.shape, []).append((fr["q"], t.params.voltage, f.stem))
    groups = []
    for shape in sorted(by_shape):
        runs = by_shape[shape]
        q = np.concatenate([r[0] for r in runs]).astype(np.float32)
        v = np.concatenate([np.full(len(r[0]), r[1], np.float32) for r in runs])
        p0 = params.replace(lx=shape[0], ly=shape[1])
        zeros = np.zeros(len(q), np.int64)
        groups.append(Frames(q=q, force=q * 0, electronic=q * 0, step=zeros, traj=zeros,
                             ids=[f"transfer:{r[2]}" for r in runs], params=p0, voltage=v))
    return groups


@torch.no_grad()
def _val_sse(model: ConvForceModel, groups: Sequence[Frames], val_idx: Sequence[np.ndarray],
             dev: torch.device) -> tuple[float, int]:
    """Sum of squared normalized errors over every validation site, and the number of sites."""
    model.eval()
    sse, n = 0.0, 0
    for fr, idx in zip(groups, val_idx, strict=True):
        per = _frames_per_batch(fr, 4 * BATCH_SITES)
        for i in range(0, len(idx), per):
            q, y, v = _tensors(fr, idx[i:i + per], dev)
            sse += float(((model.head(q, v) - (y - model.y_mean) / model.y_std) ** 2).sum())
            n += y.numel()
    model.train()
    return sse, n


def _distill_loss(model: ConvForceModel, q: torch.Tensor, y: torch.Tensor, v: torch.Tensor,
                  target: list[torch.Tensor], labelled: bool,
                  alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(force loss, spread loss) of a student on one minibatch, normalized units. Force: on labelled frames
    (1 − α)·MSE to the NEGF label + α·MSE to the teacher's mean; on transfer frames MSE to the teacher's
    mean. Spread: MSE of log(spread + floor) between the head and the teacher's per-site std."""
    t_mean, t_std = target
    h, spread = model.head_and_spread(q, v)
    t_n = (t_mean - model.y_mean) / model.y_std
    loss = torch.mean((h - t_n) ** 2)
    if labelled:
        loss = (1.0 - alpha) * torch.mean((h - (y - model.y_mean) / model.y_std) ** 2) + alpha * loss
    return loss, _spread_loss(model, spread, t_std)


def _spread_loss(model: ConvForceModel, spread: torch.Tensor, t_std: torch.Tensor) -> torch.Tensor:
    return torch.mean((torch.log(spread + SPREAD_FLOOR) - torch.log(t_std / model.y_std + SPREAD_FLOOR)) ** 2)


def refit_spread_head(model: ConvForceModel, groups: Sequence[Frames], train_idx: Sequence[np.ndarray],
                      targets: Sequence[tuple[np.ndarray, np.ndarray]], lr: float, epochs: int,
                      rng: np.random.Generator, dev: torch.device, log: Callable[[str], None]) -> float:
    """Fit the spread head alone on the final network's features (the force network frozen, its features
    computed without gradients): the network kept is the best validation epoch's, and the head must
    describe that network, not the last epoch's. Returns the last epoch's mean log-loss."""
    params = [p for n, p in model.named_parameters() if n.startswith("net.spread_")]
    opt = torch.optim.Adam(params, lr=lr)
    batches = [_batches(groups, train_idx, rng) for _ in range(epochs)]
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(sum(map(len, batches)), 1),
                                                       eta_min=lr * 0.01)
    mean = float("nan")
    for e, epoch_batches in enumerate(batches):
        tot = 0.0
        for g, idx in epoch_batches:
            q, _, v = _tensors(groups[g], idx, dev)
            with torch.no_grad():
                feat = model.net.mirror_features(q, model.voltages(q, v) - V_MID)
            loss = _spread_loss(model, model.net.heads(feat)[1], torch.from_numpy(targets[g][1][idx]).to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach())
        mean = tot / max(len(epoch_batches), 1)
        log(f"spread head refit on the kept network, epoch {e}: log-loss {mean:.3f}")
        safe_point()
    return mean


def train_conv(data, out: str | Path, opts, resume: bool = False,
               log: Callable[[str], None] = print) -> Path:
    """Train one convolutional member (``opts``: :class:`~.train.TrainOptions`, ``preset`` a key of
    :data:`CONV_PRESETS`); returns the path of ``model.pt``."""
    from .evaluate import grouped_metrics
    from .metrics import format_metrics
    from .train import (
        init_checkpoint,
        last_checkpoint,
        pick_device,
        predict_forces,
        provenance,
        require_complete,
        resume_state,
        warm_start,
    )

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    dev = pick_device(opts.device)
    cfg = CONV_PRESETS[opts.preset]
    if opts.teacher:
        if cfg.mirror != "average":
            raise ValueError(f"--teacher: distillation needs a mirror-averaged preset, not {opts.preset!r}")
        cfg = replace(cfg, spread_head=True)
    elif opts.transfer:
        raise ValueError("--transfer frames carry no labels: they need a --teacher")
    overrides = [name for name in ("descriptor", "hidden", "activation", "r_cut", "anti_rank")
                 if getattr(opts, name) is not None]
    if overrides:
        raise ValueError(f"--{overrides[0].replace('_', '-')} does not apply to the convolutional preset "
                         f"{opts.preset!r} (descriptor presets only)")
    resuming = resume and (out / "last.pt").exists()
    init_ck = None if resuming else init_checkpoint(cfg, opts)  # a wrong --init fails before the data load
    if opts.teacher:
        check_teacher_paths(opts.teacher)  # before the data load, as --init
    trajs = qualify_ids(select_voltage(load_dataset(data), opts.voltage, opts.voltage_range))
    incomplete = require_complete(trajs, opts.allow_incomplete)
    train_t, test_t = split_by_trajectory(trajs, opts.test_fraction, opts.test_ids or None)
    params = train_t[0].params
    groups = frame_groups(train_t, stride=opts.stride, max_step=opts.max_step)
    vmasks = [training_validation_mask(fr.step) for fr in groups]
    train_idx = [np.flatnonzero(~m) for m in vmasks]
    val_idx = [np.flatnonzero(m) for m in vmasks]
    lx_min = min(fr.params.lx for fr in groups)
    weights = [opts.weight_long if fr.params.lx > lx_min else 1.0 for fr in groups]
    n_labelled = len(groups)
    targets: list[tuple[np.ndarray, np.ndarray]] = []
    if opts.teacher:  # the committee's mean and per-site std on every frame, transfer frames appended
        teacher = load_teacher(opts.teacher, params)
        extra = transfer_frames(opts.transfer, params) if opts.transfer else []
        t0 = time.time()
        targets = [teacher_targets(teacher, fr.q, fr.voltage) for fr in groups + extra]
        del teacher
        log(f"teacher: {len(opts.teacher)} members on {sum(len(fr) for fr in groups + extra)} frames "
            f"({sum(len(fr) for fr in extra)} unlabelled transfer frames) in {time.time() - t0:.0f} s")
        groups = groups + extra
        train_idx += [np.arange(len(fr)) for fr in extra]
        weights += [1.0] * len(extra)
    lattices = [[fr.params.lx, fr.params.ly] for fr in groups[:n_labelled]]
    n_train, n_val = sum(len(i) for i in train_idx[:n_labelled]), sum(len(i) for i in val_idx)
    log(f"train {sum(len(fr.ids) for fr in groups[:n_labelled])} trajectories ({n_train} frames, {n_val} "
        "validation), "
        f"test {[traj_id(t) for t in test_t]}, lattices {', '.join(f'{a}x{b}' for a, b in lattices)}, "
        f"V = {', '.join(f'{v:g}' for v in voltages_of(train_t))}, preset {opts.preset}: {cfg.channels} "
        f"channels, reach ±{cfg.reach} columns, {cfg.macs_per_site()} MACs/site, device {dev}")

    model = build_conv_model(cfg, params.physical())
    y_all = np.concatenate([fr.electronic[i].ravel()
                            for fr, i in zip(groups[:n_labelled], train_idx[:n_labelled], strict=True)])
    model.y_mean.fill_(float(y_all.mean()))
    model.y_std.fill_(float(y_all.std()))
    del y_all
    fresh = warm_start(model, init_ck, opts.init, log)
    if targets and not resuming and (init_ck is None or fresh):
        _start_spread_head(model, targets, log)
    model.to(dev).train()
    head = [p for n, p in model.named_parameters() if n.startswith("net.spread_")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("net.spread_")]
    # the spread head (a few hundred weights fitting a log) learns at SPREAD_LR_FACTOR × the trunk's rate
    groups_opt = [{"params": rest}] + ([{"params": head, "lr": opts.lr * SPREAD_LR_FACTOR}] if head else [])
    opt = torch.optim.Adam(groups_opt, lr=opts.lr, weight_decay=opts.weight_decay)
    steps_per_epoch = sum(math.ceil(len(idx) / _frames_per_batch(fr))
                          for fr, idx in zip(groups, train_idx, strict=True))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(opts.epochs * steps_per_epoch, 1),
                                                       eta_min=opts.lr_min)
    start_epoch, best_val, best_state, history, bad = 0, math.inf, None, [], 0
    last_path, best_path = out / "last.pt", out / "model.pt"
    if resuming:
        st = resume_state(last_path, model, opt, sched, log)
        start_epoch, best_val, history, bad = st["start_epoch"], st["best_val"], st["history"], st["bad"]
        best_state, rng = st["best_state"], st["rng"]
    y_scale2 = float(model.y_std) ** 2
    t_start = time.time()
    epoch = start_epoch - 1
    for epoch in range(start_epoch, opts.epochs):
        tot, wsum, s_tot, s_n = 0.0, 0.0, 0.0, 0
        for g, idx in _batches(groups, train_idx, rng):
            q, y, v = _tensors(groups[g], idx, dev)
            if targets:
                loss, spread_loss = _distill_loss(model, q, y, v, [torch.from_numpy(t[idx]).to(dev)
                                                                     for t in targets[g]],
                                                  labelled=g < n_labelled, alpha=opts.distill_weight)
                total = loss * weights[g] + opts.spread_weight * spread_loss
                s_tot, s_n = s_tot + float(spread_loss.detach()), s_n + 1
            else:
                loss = torch.mean((model.head(q, v) - (y - model.y_mean) / model.y_std) ** 2)
                total = loss * weights[g]
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * weights[g] * y.numel()
            wsum += weights[g] * y.numel()
        train_loss = tot / max(wsum, 1.0)
        sse, n = _val_sse(model, groups[:n_labelled], val_idx, dev)
        val = sse / n if n else train_loss
        improved = val < best_val
        if improved:
            best_val, bad = val, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        val_mse = val * y_scale2 / F_NORM**2
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val, "val_mse_fnorm": val_mse,
                        "lr": opt.param_groups[0]["lr"], "time_s": time.time() - t_start,
                        **({"spread_loss": s_tot / s_n} if s_n else {})})
        log(f"epoch {epoch:4d}  train {train_loss:.3e}  val {val:.3e}  val MSE (F_norm) {val_mse:.2e}"
            + (f"  spread log-loss {s_tot / s_n:.3f}" if s_n else "")
            + f"{'  *' if improved else ''}  ({time.time() - t_start:.0f} s)")
        save_checkpoint(last_path, last_checkpoint(cfg, params, model, opt, sched, epoch, best_val,
                                                   best_state, history, bad, rng))
        safe_point()  # a Ctrl-C of the job (`neqforce learn`) stops here, the epoch on disk
        if bad >= opts.patience:
            log(f"early stop: no validation improvement for {opts.patience} epochs")
            break
        if opts.max_minutes and time.time() - t_start > 60 * opts.max_minutes:
            log(f"time limit of {opts.max_minutes} min reached")
            break
    model.load_state_dict(best_state)
    if targets:
        refit_spread_head(model, groups, train_idx, targets, opts.lr * SPREAD_LR_FACTOR, SPREAD_REFIT_EPOCHS,
                          rng, dev, log)
    model.to("cpu").eval()
    metrics: dict = {"validation_mse_fnorm": best_val * y_scale2 / F_NORM**2, "f_norm": F_NORM}
    if test_t:
        tests = frame_groups(test_t, max_step=opts.max_step)
        metrics["test"] = grouped_metrics([(predict_forces(model, te.q, te.voltage), te) for te in tests])
        log("test (held-out trajectories):\n" + format_metrics(metrics["test"]))
    save_checkpoint(best_path, {
        "config": cfg.to_dict(), "params": params.physical(), "state_dict": model.state_dict(),
        "metrics": metrics, "history": history,
        **provenance(cfg, opts, trajs, train_t, test_t, groups[:n_labelled], incomplete, epoch + 1)})
    log(f"wrote {best_path}")
    return best_path
