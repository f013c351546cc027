"""Nonlocality of the exact electronic force in a current-carrying metallic domain (docs/nonlocality.md).

    python bench/nonlocality.py --out docs/figures            # runs what is not cached, prints, draws
    python bench/nonlocality.py --out docs/figures --plot-only

Controlled configurations (no dynamics): on an lx × ly lattice the W columns next to one electrode
(the left one unless stated) are metallic, Q = Q_METAL + N(0, NOISE²), the rest is the bulk CDW
+q0_bulk·(−1)^(x+y). The noise field is drawn once per (lx, ly) from a fixed seed, so for a site at
column x0 the configuration within any radius r < W − x0 is the same for every W: a change of the
exact force at x0 with W is a nonlocal effect that no descriptor of radius r can see.

For every configuration the exact electronic force g(n_i − ½) (NEGF, one BLAS thread) and the bundled
ONNX model's are averaged over y per column and cached in ``nonlocality.json`` (resumable; figures can
be redrawn with ``--plot-only``). Scans: metallic length W on strips ly = 2, 4, 6, 8 (lx = 160) and on
80×28 (the issue's controlled scan, 66 columns included); voltage; device length lx (distance to the
right electrode); width ly at lx = 30; a metallic domain at the right electrode; the in-domain 30×28.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from threadpoolctl import threadpool_limits

from neqforce.models import compact_model_path
from neqforce.physics import HolsteinParams, bulk_cdw_amplitude, electron_density, staggered_sign

Q_METAL = -0.35
NOISE = 0.05
NOISE_SEED = 7
#: Column where the "fixed site" force is read (d_L = 4: inside the model's electrode one-hots).
X0 = 4
#: Largest descriptor radius of the bundled model (members r_c = 10 and 8, docs/ml_model.md).
R_CUT = 10
#: Paper normalization used throughout (F_max of the bundled model's test set, docs/ml_model.md).
F_NORM = 1.494


def configuration(lx: int, ly: int, w: int, side: str = "left", noise_lx: int = 0) -> np.ndarray:
    """Metallic domain of w columns at one electrode, bulk CDW elsewhere; shape (lx, ly).

    The noise is drawn for (lx, ly), or, with ``noise_lx`` >= lx, cropped from the field of a
    noise_lx × ly lattice (the device-length scan: the same metal whatever lx)."""
    params = HolsteinParams(lx=lx, ly=ly)
    q = bulk_cdw_amplitude(params) * staggered_sign(lx, ly)
    n_lx = max(lx, noise_lx)
    noise = np.random.default_rng([NOISE_SEED, n_lx, ly]).standard_normal((n_lx, ly))[:lx]
    cols = slice(0, w) if side == "left" else slice(lx - w, lx)
    q[cols] = Q_METAL + NOISE * noise[cols]
    return q


def runs() -> list[dict]:
    """Every configuration of the study, cheapest first."""
    out: list[dict] = []

    def add(scan: str, lx: int, ly: int, w: int, v: float = 3.0, side: str = "left",
            noise_lx: int = 0, gamma_bath: float = 0.001) -> None:
        out.append({"scan": scan, "lx": lx, "ly": ly, "w": w, "voltage": v, "side": side,
                    "noise_lx": noise_lx, "gamma_bath": gamma_bath})

    w_long = [4, 8, 12, 16, 20, 24, 32, 40, 48, 64, 80, 100, 120, 140]
    for w in w_long:
        add("strip", 160, 2, w)
        add("strip", 160, 4, w)
    for w in (8, 16, 24, 32, 48, 64, 100, 140):
        add("strip", 160, 6, w)
    for v in (2.0, 2.5, 3.5, 4.0):
        for w in (8, 16, 32, 64, 120):
            add("voltage", 160, 4, w, v)
    for lx in (20, 24, 32, 48, 64, 96, 128, 160):
        add("length", lx, 4, 16, noise_lx=160)
    for w in (8, 16, 32, 64):
        add("right", 160, 4, w, side="right")
    for gb in (0.0005, 0.002):  # the mechanism: the bath of the metallic region against the left lead
        for w in (16, 64, 140):
            add("bath", 160, 4, w, gamma_bath=gb)
    for w in (0, 5, 10, 15, 20, 25, 26, 27, 28, 29, 30):
        add("domain", 30, 28, w)
    for v in (2.0, 2.5, 3.5, 4.0):
        add("domain_v", 30, 28, 10, v)
    for ly in (4, 8, 16, 40):
        add("width", 30, ly, 10)
    for w in (8, 16, 32, 64, 100, 140):
        add("strip", 160, 8, w)
    for w in (15, 28, 50, 66):
        add("wide", 80, 28, w)
    return out


def key(run: dict) -> str:
    noise = f"_n{run['noise_lx']}" if run.get("noise_lx") else ""
    bath = f"_gb{run['gamma_bath']:g}" if run.get("gamma_bath", 0.001) != 0.001 else ""
    return f"{run['side']}_{run['lx']}x{run['ly']}_V{run['voltage']:.2f}_W{run['w']}{noise}{bath}"


def compute(run: dict, session: ort.InferenceSession, exact_dir: Path | None = None) -> dict:
    """Column means of the exact and the model electronic force, and site errors (normalized by F_NORM).
    ``exact_dir``: per-site exact forces are kept there (``KEY.npz``) and reused, so that comparing
    another model costs no NEGF."""
    params = HolsteinParams(lx=run["lx"], ly=run["ly"], voltage=run["voltage"],
                            gamma_bath=run.get("gamma_bath", 0.001))
    q = configuration(run["lx"], run["ly"], run["w"], run["side"], run.get("noise_lx", 0))
    stored = exact_dir / f"{key(run)}.npz" if exact_dir is not None else None
    if stored is not None and stored.exists():
        with np.load(stored) as z:
            exact, seconds = z["exact"], float(z["seconds"])
    else:
        t0 = time.perf_counter()
        with threadpool_limits(1):
            exact = params.g * (electron_density(q, params) - 0.5)
        seconds = time.perf_counter() - t0
        if stored is not None:
            stored.parent.mkdir(parents=True, exist_ok=True)
            tmp = stored.with_suffix(".tmp.npz")
            np.savez(tmp, exact=exact, seconds=seconds)
            os.replace(tmp, stored)
    feed = {"q": q[None].astype(np.float32)}
    if "voltage" in {i.name for i in session.get_inputs()}:  # a voltage-range model: V is an input
        feed["voltage"] = np.array([run["voltage"]], dtype=np.float32)
    (density,) = session.run(["density"], feed)
    model = params.g * (density[0].astype(np.float64) - 0.5)
    delta = (exact - model) / F_NORM
    return {**run, "negf_s": seconds, "exact": np.round(exact.mean(axis=1), 6).tolist(),
            "model": np.round(model.mean(axis=1), 6).tolist(),
            "mse": float(np.mean(delta**2)), "mean_err": float(np.mean(delta)),
            "exact_std_y": float(np.max(exact.std(axis=1)))}


def save(cache: Path, results: dict) -> None:
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, separators=(",", ":")).replace("},", "},\n"))
    os.replace(tmp, cache)


def series(results: dict, scan: str, **match: float) -> list[dict]:
    rows = [r for r in results.values() if r["scan"] == scan and all(r.get(k) == v for k, v in match.items())]
    return sorted(rows, key=lambda r: (r["w"], r["lx"]))


def report(results: dict, model_name: str = "compact.onnx") -> None:
    """Print the tables of docs/nonlocality.md."""
    print(f"# electronic force g(n-1/2), column mean; fixed column x0 = {X0}; model = {model_name}")
    print("\n## metallic length W (left), V = 3.0: force at x0 and at W-3, exact vs model")
    print(f"{'lattice':>9} {'W':>4} {'exact x0':>9} {'model x0':>9} {'exact W-3':>10} {'model W-3':>10}"
          f" {'MSE(all)':>9} {'mean err':>9} {'NEGF s':>7}")
    for scan, ly in (("domain", 28), ("wide", 28), ("strip", 2), ("strip", 4), ("strip", 6), ("strip", 8)):
        for r in series(results, scan, ly=ly, voltage=3.0):
            if r["side"] != "left":
                continue
            w3 = r["w"] - 3
            ex3 = f"{r['exact'][w3]:10.4f}" if w3 >= 0 else f"{'-':>10}"
            mo3 = f"{r['model'][w3]:10.4f}" if w3 >= 0 else f"{'-':>10}"
            print(f"{r['lx']:>4}x{r['ly']:<4} {r['w']:>4} {r['exact'][X0]:9.4f} {r['model'][X0]:9.4f}"
                  f" {ex3} {mo3}"
                  f" {r['mse']:9.2e} {r['mean_err']:9.4f} {r['negf_s']:7.1f}")
    print("\n## voltage (160x4 strip and 30x28): force at x0 and W-3")
    print(f"{'lattice':>9} {'V':>5} {'W':>4} {'exact x0':>9} {'model x0':>9} {'exact W-3':>10}"
          f" {'model W-3':>10}")
    rows = series(results, "voltage") + series(results, "strip", ly=4) + series(results, "domain_v") \
        + series(results, "domain", w=10)
    for r in sorted(rows, key=lambda r: (r["ly"], r["w"], r["voltage"])):
        if r["w"] not in (8, 10, 16, 32, 64, 120):
            continue
        print(f"{r['lx']:>4}x{r['ly']:<4} {r['voltage']:5.2f} {r['w']:>4} {r['exact'][X0]:9.4f}"
              f" {r['model'][X0]:9.4f}"
              f" {r['exact'][r['w'] - 3]:10.4f} {r['model'][r['w'] - 3]:10.4f}")
    print("\n## device length lx (W = 16, ly = 4): distance to the right electrode")
    for r in series(results, "length", noise_lx=160):
        print(f"lx = {r['lx']:>4}  exact x0 {r['exact'][X0]:8.4f}  model x0 {r['model'][X0]:8.4f}"
              f"  exact W-3 {r['exact'][13]:8.4f}  model W-3 {r['model'][13]:8.4f}")
    print("\n## width ly (lx = 30, W = 10)")
    for r in sorted(series(results, "width") + series(results, "domain", w=10), key=lambda r: r["ly"]):
        print(f"ly = {r['ly']:>3}  exact x0 {r['exact'][X0]:8.4f}  model x0 {r['model'][X0]:8.4f}"
              f"  exact W-3 {r['exact'][7]:8.4f}  model W-3 {r['model'][7]:8.4f}  MSE {r['mse']:.2e}")
    print("\n## bath coupling (160x4, V = 3): exact force at x0 = 4 vs W, per gamma_bath")
    for gb in (0.0005, 0.001, 0.002):
        rows = series(results, "bath", gamma_bath=gb) if gb != 0.001 else \
            [r for r in series(results, "strip", ly=4) if r["w"] in (16, 64, 140)]
        if rows:
            cells = "  ".join(f"W={r['w']}: {r['exact'][X0]:.4f}" for r in rows)
            slope = (rows[-1]["exact"][X0] - rows[0]["exact"][X0]) / (rows[-1]["w"] - rows[0]["w"])
            print(f"gamma_bath = {gb:<7g} {cells}  slope {slope:.2e} per column")
    print("\n## metallic domain at the right electrode (160x4): force at lx-1-x0 and at lx-W+2")
    for r in series(results, "right"):
        lx = r["lx"]
        print(f"W = {r['w']:>3}  exact {r['exact'][lx - 1 - X0]:8.4f}  model {r['model'][lx - 1 - X0]:8.4f}"
              f"  exact(wall) {r['exact'][lx - r['w'] + 2]:8.4f}"
              f"  model(wall) {r['model'][lx - r['w'] + 2]:8.4f}")


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"strip2": "C0", "strip4": "C1", "strip6": "C2", "strip8": "C3", "wide28": "k", "domain28": "C4"}
    for scan, ly in (("strip", 2), ("strip", 4), ("strip", 6), ("strip", 8), ("wide", 28), ("domain", 28)):
        color = colors[f"{scan}{ly}"]
        rows = [r for r in series(results, scan, ly=ly, voltage=3.0) if r["side"] == "left" and r["w"] > X0]
        if not rows:
            continue
        w = [r["w"] for r in rows]
        label = f"{rows[0]['lx']}x{ly}"
        axes[0].plot(w, [r["exact"][X0] for r in rows], "o-", color=color, label=f"exact {label}")
        axes[0].plot(w, [r["model"][X0] for r in rows], "x--", color=color, alpha=0.7)
        w3 = [r for r in rows if r["w"] >= 6]
        axes[1].plot([r["w"] for r in w3], [r["exact"][r["w"] - 3] for r in w3], "o-", color=color,
                     label=f"exact {label}")
        axes[1].plot([r["w"] for r in w3], [r["model"][r["w"] - 3] for r in w3], "x--", color=color,
                     alpha=0.7)
    axes[0].axvline(X0 + R_CUT + 1, color="grey", lw=0.8)
    axes[0].text(X0 + R_CUT + 2, axes[0].get_ylim()[0], " neighbourhood of x0\n identical beyond", fontsize=7,
                 va="bottom")
    axes[0].set(xlabel="metallic length W (columns)", ylabel=f"g(n-1/2), column x0 = {X0}",
                title="force at a fixed site (o exact, x model)")
    axes[1].set(xlabel="metallic length W (columns)", ylabel="g(n-1/2), column W-3",
                title="force 3 columns before the wall")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "nonlocality_length.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, r in enumerate(series(results, "wide")):
        x = np.arange(r["lx"])
        axes[0].plot(x, r["exact"], "-", color=f"C{i}", label=f"W = {r['w']} exact")
        axes[0].plot(x, r["model"], "--", color=f"C{i}", alpha=0.8)
    axes[0].set(xlabel="column x", ylabel="column mean g(n-1/2)",
                title="80x28, V = 3 (solid exact, dashed model)")
    axes[0].legend(fontsize=7)
    for i, r in enumerate(series(results, "strip", ly=4)):
        if r["w"] in (16, 32, 64, 100, 140):
            x = np.arange(r["lx"])
            axes[1].plot(x, r["exact"], "-", color=f"C{i % 10}", label=f"W = {r['w']}")
            axes[1].plot(x, r["model"], "--", color=f"C{i % 10}", alpha=0.7)
    axes[1].set(xlabel="column x", ylabel="column mean g(n-1/2)", title="160x4 strip, V = 3")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "nonlocality_profiles.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, v in enumerate((2.0, 2.5, 3.0, 3.5, 4.0)):
        rows = series(results, "voltage", voltage=v) if v != 3.0 else \
            [r for r in series(results, "strip", ly=4) if r["w"] in (8, 16, 32, 64, 120)]
        axes[0].plot([r["w"] for r in rows], [r["exact"][X0] for r in rows], "o-", color=f"C{i}",
                     label=f"V = {v}")
        axes[0].plot([r["w"] for r in rows], [r["model"][X0] for r in rows], "x--", color=f"C{i}", alpha=0.6)
    axes[0].set(xlabel="metallic length W", ylabel=f"g(n-1/2), column {X0}",
                title="voltage, 160x4 (o exact, x model at V = 3)")
    axes[0].legend(fontsize=7)
    rows = series(results, "length", noise_lx=160)
    axes[1].plot([r["lx"] for r in rows], [r["exact"][X0] for r in rows], "o-", label=f"exact, column {X0}")
    axes[1].plot([r["lx"] for r in rows], [r["exact"][13] for r in rows], "s-",
                 label="exact, column 13 (W-3)")
    axes[1].plot([r["lx"] for r in rows], [r["model"][X0] for r in rows], "x--", label=f"model, column {X0}")
    axes[1].plot([r["lx"] for r in rows], [r["model"][13] for r in rows], "+--", label="model, column 13")
    axes[1].set(xlabel="device length lx (W = 16, ly = 4)", ylabel="g(n-1/2)",
                title="distance to the right electrode")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "nonlocality_voltage_length.png", dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/figures"))
    ap.add_argument("--plot-only", action="store_true", help="no NEGF: print and draw from the cache")
    ap.add_argument("--max-sites", type=int, default=10**9, help="skip configurations larger than this")
    ap.add_argument("--model", type=Path, default=compact_model_path(),
                    help="ONNX model to compare with the exact force (default: compact.onnx, the study's)")
    ap.add_argument("--scans", default="", help="only these scans, e.g. 'domain,wide' (default: all)")
    ap.add_argument("--cache", default="nonlocality.json", help="cache file name inside --out")
    ap.add_argument("--no-plot", action="store_true", help="print the tables only")
    ap.add_argument("--exact-dir", type=Path, default=Path("data/nonlocality_exact"),
                    help="per-site exact forces are kept and reused here (comparing another model then "
                         "costs no NEGF)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / args.cache
    scans = {x for x in args.scans.split(",") if x}
    results: dict = json.loads(cache.read_text()) if cache.exists() else {}
    if not args.plot_only:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        session = ort.InferenceSession(str(args.model), so, providers=["CPUExecutionProvider"])
        for run in runs():
            k = key(run)
            if k in results or run["lx"] * run["ly"] > args.max_sites or (scans and run["scan"] not in scans):
                continue
            results[k] = {**compute(run, session, args.exact_dir), "scan": run["scan"]}
            print(f"{k}: {results[k]['negf_s']:.1f} s", flush=True)
            save(cache, results)
    report(results, args.model.name)
    if not args.no_plot:
        plot(results, args.out)


if __name__ == "__main__":
    main()
