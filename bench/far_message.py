"""Is the committee's remaining error predictable from the far configuration? A learned message along x.

docs/nonlocality.md §5–§7: a third or more of the error variance in the current-carrying CDW ahead of the
wall is set by configuration beyond the descriptor's cutoff, and neither a longer cutoff nor bin means of
columns or rows (0.5's range channel, 0.6's row prototype) capture it — plausibly because it depends on
single far sites. This probe measures whether a *learned message passed along x, site by site* does:

    e_j = tanh(W h_j + b)                          a learned embedding of every site j (C channels)
    m_i = Σ_{|dx| <= D, |dy| <= 2} K[dx, |dy|] e_{i + (dx, dy)}    (zero outside the device, periodic in y)
    δF_i = MLP([h_i, m_i, F̂_i, V])                 a correction to the committee's force F̂_i

h_j: the last hidden layer (64 values) of a frozen committee member at site j (a learned summary of
j's environment within r_c = 8, voltage and column channels included; mirror-invariant). K is symmetric
in dy, so δF keeps the mirror symmetry in y and translation invariance in y, and it is O(N). The
stage is fitted to the committee's residual F_NEGF − F̂ on the frames the members trained on, early
stopping on the frames training holds out (``training_validation_mask``), the members' own split.

The control is the same stage with reach D = 1 (a nearest-column message): what it gains is the refit of
local information; what D = 30 gains beyond it is information from far sites. Output: MSE in the paper's
normalization (fixed F_max = 1.494) on the 30×28 validation blocks of vrange + learned + vhigh per
voltage, and on every held-out frame per lattice, for the committee alone and with the stage.

    python bench/far_message.py prepare --out runs/far/cache.npz          # h, F̂, residuals (~5 min)
    python bench/far_message.py fit runs/far/cache.npz --reach 30 --out runs/far/d30.json
    python bench/far_message.py fit runs/far/cache.npz --reach 1 --out runs/far/d1.json
    python bench/far_message.py report runs/far/d1.json runs/far/d30.json

Validation data only: no blind set is read.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

PACKS = ("vrange", "learned", "vhigh", "learned80", "learned120", "learned120b", "idealized",
         "idealized_long", "remnant60")
BLOCK_PACKS = ("vrange", "learned", "vhigh")
F_MAX = 1.494


def prepare(args: argparse.Namespace) -> None:
    """Per held-out/training frame: member 0's last hidden layer h, the committee force F̂, the residual."""
    import torch

    from neqforce.training.checkpoint import load_model
    from neqforce.training.data import frame_groups, qualify_ids, training_validation_mask, validation_mask
    from neqforce.training.dataset import load_dataset
    from neqforce.training.evaluate import load_any

    torch.set_num_threads(args.threads)
    trajs = qualify_ids(load_dataset([str(Path(args.data) / p) for p in PACKS]))
    pack_of = {}
    for t in trajs:
        pack_of[t.extra["file"]] = Path(t.extra["file"]).relative_to(args.data).parts[0]
    committee = load_any(args.model, threads=args.threads)
    member, _ = load_model(args.member)
    out: dict[str, np.ndarray] = {}
    groups = [(fr, trajs) for fr in frame_groups(trajs)]
    for folder in args.extra:  # training-only frames: never held out, never in a block
        extra = qualify_ids(load_dataset(str(folder)))
        groups += [(fr, extra) for fr in frame_groups(extra)]
    for gi, (fr, source) in enumerate(groups):
        t0 = time.time()
        ids = [t for t in source if t.params.shape == fr.params.shape]
        packs = np.array([pack_of.get(ids[k].extra["file"], "extra") for k in fr.traj])
        fhat = committee.predict(fr.q, fr.voltage).astype(np.float32)
        hs = []
        with torch.no_grad():
            for i in range(0, len(fr.q), 32):
                q = torch.from_numpy(fr.q[i:i + 32].astype(np.float32))
                v = torch.from_numpy(fr.voltage[i:i + 32].astype(np.float32))
                hs.append(_hidden(member, q, v).numpy().astype(np.float16))
        out[f"g{gi}_h"] = np.concatenate(hs)
        out[f"g{gi}_fhat"] = fhat
        out[f"g{gi}_force"] = fr.force.astype(np.float32)
        out[f"g{gi}_voltage"] = fr.voltage.astype(np.float32)
        extra = source is not trajs
        out[f"g{gi}_hold"] = np.zeros(len(fr.q), bool) if extra else training_validation_mask(fr.step)
        out[f"g{gi}_block"] = validation_mask(fr.step) & np.isin(packs, BLOCK_PACKS) & (not extra)
        print(f"group {fr.params.shape}: {len(fr.q)} frames, {time.time() - t0:.0f} s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(args.out) + ".tmp.npz")
    np.savez(tmp, **out)
    tmp.rename(args.out)


def _hidden(model, q, v):
    """The member's last hidden layer (B, lx, ly, 64)."""
    s, a = model.features(q, v)
    return model.net.hidden((s - model.s_mean) / model.s_std, a / model.a_std)


def _stage(torch, n_h: int, reach: int, channels: int, rows: int):
    nn = torch.nn

    class FarMessage(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(n_h, channels)
            self.kernel = nn.Parameter(torch.zeros(channels, channels, 2 * reach + 1, rows + 1))
            nn.init.normal_(self.kernel, std=0.3 / math.sqrt(channels * (2 * reach + 1) * (2 * rows + 1)))
            self.head = nn.Sequential(nn.Linear(n_h + channels + 2, 32), nn.SiLU(), nn.Linear(32, 1))
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

        def forward(self, h, fhat, volt):
            e = torch.tanh(self.embed(h)).permute(0, 3, 1, 2)  # (B, C, lx, ly)
            if rows:
                e = torch.cat([e[..., -rows:], e, e[..., :rows]], dim=-1)
            k = torch.cat([self.kernel[..., 1:].flip(-1), self.kernel], dim=-1)  # symmetric in dy
            m = nn.functional.conv2d(e, k, padding=(reach, 0)).permute(0, 2, 3, 1)
            vv = volt[:, None, None, None].expand(*fhat.shape, 1)
            x = torch.cat([h, m, fhat.unsqueeze(-1), vv], dim=-1)
            return self.head(x).squeeze(-1)

    return FarMessage()


def fit(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    z = np.load(args.cache)
    groups = sorted({k.split("_")[0] for k in z.files})
    data = {g: {k: z[f"{g}_{k}"] for k in ("h", "fhat", "force", "voltage", "hold", "block")} for g in groups}
    residuals = [(d["force"] - d["fhat"])[~d["hold"]].ravel() for d in data.values()]
    scale = float(np.std(np.concatenate(residuals)))
    n_h = data[groups[0]]["h"].shape[-1]
    stage = _stage(torch, n_h, args.reach, args.channels, args.rows)
    opt = torch.optim.Adam(stage.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs, eta_min=args.lr / 30)

    def batches(hold: bool, shuffle: bool):
        out = []
        for g, d in data.items():
            idx = np.flatnonzero(d["hold"] == hold)
            if shuffle:
                idx = rng.permutation(idx)
            per = max(1, args.sites // d["h"][0, ..., 0].size)
            out += [(g, idx[i:i + per]) for i in range(0, len(idx), per)]
        if shuffle:
            out = [out[i] for i in rng.permutation(len(out))]
        return out

    def run(g, idx):
        d = data[g]
        h = torch.from_numpy(d["h"][idx].astype(np.float32))
        fhat = torch.from_numpy(d["fhat"][idx])
        v = torch.from_numpy(d["voltage"][idx])
        return stage(h, fhat, v) * scale, torch.from_numpy(d["force"][idx] - d["fhat"][idx])

    def held_loss() -> float:
        tot = n = 0.0
        with torch.no_grad():
            for g, idx in batches(True, False):
                pred, r = run(g, idx)
                tot += float(((pred - r) ** 2).sum())
                n += r.numel()
        return tot / n

    best, best_state, t0, history = math.inf, None, time.time(), []
    base = held_loss()
    for epoch in range(args.epochs):
        stage.train()
        for g, idx in batches(False, True):
            pred, r = run(g, idx)
            loss = ((pred - r) ** 2).mean() / scale**2
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        stage.eval()
        val = held_loss()
        history.append(val)
        if val < best:
            best, best_state = val, {k: v.clone() for k, v in stage.state_dict().items()}
        print(f"epoch {epoch}: held-out residual MSE {val:.4e} (committee alone {base:.4e}), "
              f"{time.time() - t0:.0f} s", flush=True)
    stage.load_state_dict(best_state)
    stage.eval()
    res = {"reach": args.reach, "channels": args.channels, "rows": args.rows, "epochs": args.epochs,
           "seed": args.seed, "history": history, "groups": {}}
    with torch.no_grad():
        for g, d in data.items():
            idx = np.flatnonzero(d["hold"])
            if not idx.size:  # training-only frames (prepare --extra)
                continue
            preds = np.concatenate([run(g, idx[i:i + 32])[0].numpy() for i in range(0, len(idx), 32)])
            err0 = (d["fhat"][idx] - d["force"][idx]) / F_MAX
            err1 = (d["fhat"][idx] + preds - d["force"][idx]) / F_MAX
            rows = {}
            for name, sel in (("held", np.ones(len(idx), bool)), ("blocks", d["block"][idx])):
                for vol in [None, *sorted(set(d["voltage"][idx][sel].tolist()))]:
                    s = sel if vol is None else sel & (d["voltage"][idx] == vol)
                    if s.any():
                        rows[f"{name} V={vol if vol is not None else 'all'}"] = {
                            "frames": int(s.sum()), "committee": float(np.mean(err0[s] ** 2)),
                            "with_stage": float(np.mean(err1[s] ** 2))}
            res["groups"][f"{'x'.join(map(str, d['h'].shape[1:3]))}"] = rows
    Path(args.out).write_text(json.dumps(res, indent=1))
    report_files([Path(args.out)])


def report_files(paths: list[Path]) -> None:
    results = [json.loads(p.read_text()) for p in paths]
    keys = list(results[0]["groups"])
    head = "".join(f"  +stage D={r['reach']:<3}" for r in results)
    print(f"{'MSE (F_max 1.494)':<28}{'frames':>7}{'committee':>12}{head}")
    for g in keys:
        for row, v in results[0]["groups"][g].items():
            cells = "".join(f"{r['groups'][g][row]['with_stage']:>14.3e}" for r in results)
            print(f"{g + ' ' + row:<28}{v['frames']:>7}{v['committee']:>12.3e}{cells}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--data", default="data")
    p.add_argument("--model", default="neqforce/models/voltage.onnx")
    p.add_argument("--member", default="runs/RR/m0/model.pt")
    p.add_argument("--extra", type=Path, action="append", default=[],
                   help="labelled-frames folder added to the training frames only (bench/splice_far.py)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    f = sub.add_parser("fit")
    f.add_argument("cache", type=Path)
    f.add_argument("--reach", type=int, default=30)
    f.add_argument("--channels", type=int, default=4)
    f.add_argument("--rows", type=int, default=2)
    f.add_argument("--epochs", type=int, default=12)
    f.add_argument("--lr", type=float, default=3e-3)
    f.add_argument("--sites", type=int, default=16384, help="sites per minibatch (whole frames)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--threads", type=int, default=1)
    f.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("report")
    r.add_argument("results", type=Path, nargs="+")
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        prepare(args)
    elif args.cmd == "fit":
        fit(args)
    else:
        report_files(args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
