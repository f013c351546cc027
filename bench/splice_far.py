"""Data of a different kind for the far influence: spliced 30×28 frames, labelled with exact NEGF.

docs/nonlocality.md §8–9: the far configuration moves the exact force ahead of the wall, but the NEGF-BD
frames teach little of how — consecutive frames share their far configuration, so the near environment of a
wall and its far surroundings are confounded. A spliced frame keeps the near region of one training frame A
(the columns within ``--near`` of its wall) and takes every other column from another training frame B at
the same voltage, from another trajectory, whose wall is within one column of A's: the same wall geometry
with an independent far configuration. The exact NEGF force of every spliced frame is computed (Dask,
resumable: a rerun labels only missing chunks) into a labelled-frames folder that ``train``,
``evaluate`` and ``bench/far_message.py prepare --extra`` read.

Only frames 0.6's members trained on are used (not the frames training holds out), from the NEGF-BD packs
``vrange``, ``learned``, ``vhigh``:

    python bench/splice_far.py --data data --out data/spliced --frames 400 --seed 0     # ~6 min on 2 cores
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

# 0.6's training packs (the group the held-out mask is computed on, as training does) and its NEGF-BD ones;
# the same lists as bench/far_message.py (bench scripts stay standalone: no imports between them)
PACKS = ("vrange", "learned", "vhigh", "learned80", "learned120", "learned120b", "idealized",
         "idealized_long", "remnant60")
SOURCE_PACKS = ("vrange", "learned", "vhigh")


def splice_plan(voltage: np.ndarray, traj: np.ndarray, wall: np.ndarray, n: int,
                rng: np.random.Generator) -> list[tuple[int, int]]:
    """``n`` pairs (A, B) of frame indices: same voltage, different trajectory, walls within one column."""
    pairs: list[tuple[int, int]] = []
    order = rng.permutation(len(voltage))
    for a in order:
        ok = np.flatnonzero((voltage == voltage[a]) & (traj != traj[a]) & (np.abs(wall - wall[a]) <= 1))
        if ok.size:
            pairs.append((int(a), int(rng.choice(ok))))
        if len(pairs) == n:
            break
    return pairs


def splice(qa: np.ndarray, qb: np.ndarray, wall: int, near: int) -> np.ndarray:
    """Columns within ``near`` of column ``wall`` from ``qa``, the others from ``qb``."""
    x = np.arange(qa.shape[0])
    keep = np.abs(x - wall) <= near
    return np.where(keep[:, None], qa, qb)


def main(argv: list[str] | None = None) -> int:
    from neqforce.physics import bulk_cdw_amplitude, metallic_columns
    from neqforce.training.data import frame_groups, qualify_ids, training_validation_mask
    from neqforce.training.dataset import load_dataset
    from neqforce.training.learn_frames import Candidate, label_jobs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--near", type=int, default=8, help="columns kept from A on either side of its wall")
    ap.add_argument("--voltages", default="3.5,4.0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=10)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args(argv)

    trajs = qualify_ids(load_dataset([str(args.data / p) for p in PACKS]))
    group = next(g for g in frame_groups(trajs) if g.params.shape == (30, 28))
    members = [t for t in trajs if t.params.shape == (30, 28)]
    pack = np.array([Path(members[k].extra["file"]).relative_to(args.data).parts[0] for k in group.traj])
    volts = [float(v) for v in args.voltages.split(",")]
    train = (~training_validation_mask(group.step) & np.isin(pack, SOURCE_PACKS)
             & np.isin(group.voltage, np.float32(volts)))
    q = group.q[train].astype(np.float64)
    q0 = bulk_cdw_amplitude(group.params)
    wall = np.count_nonzero(metallic_columns(q, q0), axis=-1)
    inside = (wall >= 2) & (wall <= 28 - args.near)  # a wall with CDW ahead of it
    idx = np.flatnonzero(inside)
    rng = np.random.default_rng(args.seed)
    pairs = splice_plan(group.voltage[train][idx], group.traj[train][idx], wall[idx], args.frames, rng)
    print(f"{len(idx)} source frames at V = {volts}; {len(pairs)} spliced frames", flush=True)
    frames = []
    for a, b in pairs:
        ia, ib = idx[a], idx[b]
        v = float(group.voltage[train][ia])
        params = group.params.replace(voltage=v)
        src = [members[group.traj[train][i]].extra["file"] for i in (ia, ib)]
        frames.append(Candidate(f"spliced_V{v:g}", params, " + ".join(src), int(group.step[train][ia]), 0.0,
                                splice(q[ia], q[ib], int(wall[ia]), args.near)))
    jobs = []
    for v in volts:
        mine = [f for f in frames if abs(f.params.voltage - v) < 1e-9]
        jobs += [(args.out / f"spliced_V{v:g}_s{args.seed}_c{j // args.chunk}.h5", mine[j:j + args.chunk])
                 for j in range(0, len(mine), args.chunk)]
    label_jobs(jobs, 0.1, {"kind_of_source": "spliced frames (bench/splice_far.py)",
                           "selection": {"near": args.near, "seed": args.seed, "voltages": volts,
                                         "frames": args.frames}},
               workers=args.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
