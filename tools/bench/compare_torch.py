#!/usr/bin/env python3
"""Times autodir components beside ../shared/bench/torch_reference.py in the same session and prints the ratios.

  /work/venv/bin/python tools/bench/compare_torch.py --components scm --res 512 --runs 3 [--weights f32,f16] [--json out.json]

Runs the PyTorch reference first (one process, all components), then `autodir bench COMPONENT --json`
for each component (and each --weights precision: how autodir keeps its weights in memory), on the same
machine, one after the other (never concurrently). The ratio is autodir median / PyTorch median: below 1
means autodir is faster. PyTorch always runs float32.
"""
import argparse, itertools, json, os, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--components", default="scm")
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--autodir", default=os.path.join(ROOT, ".build/release/autodir-cli"))
    ap.add_argument("--torch-reference", default=os.path.join(ROOT, "..", "shared", "bench", "torch_reference.py"))
    ap.add_argument("--weights", default="f32", help="autodir weight precisions, comma-separated (f32, f16, bf16)")
    ap.add_argument("--json")
    a = ap.parse_args()
    comps = a.components.split(",")

    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([sys.executable, a.torch_reference, "--only", a.components, "--res", str(a.res),
                        "--runs", str(a.runs), "--json", f.name], check=True)
        torch_out = json.load(open(f.name))
    rows = []
    for c, w in itertools.product(comps, a.weights.split(",")):
        out = subprocess.run([a.autodir, "bench", c, "--res", str(a.res), "--runs", str(a.runs), "--weights", w, "--json"],
                             check=True, capture_output=True, text=True).stdout
        ours = json.loads(out.strip().splitlines()[-1])
        ref = torch_out["components"][c]
        rows.append({"component": c, "weights": w, "res": a.res, "torch_median_s": ref["median_s"], "torch_gflop": ref["gflop"],
                     "autodir_median_s": ours["median_s"], "autodir_gflop": ours["gflop"],
                     "autodir_gflop_per_s": ours["gflop_per_s"], "autodir_peak_rss_mb": ours["peak_rss_mb"],
                     "ratio": ours["median_s"] / ref["median_s"]})
    print(f"torch {torch_out['torch']} ({torch_out['threads']} threads), res {a.res}, {a.runs} runs")
    print(f"{'component':12s} {'weights':>7s} {'torch s':>9s} {'autodir s':>10s} {'ratio':>6s} {'GFLOP':>8s} {'GFLOP/s':>8s} {'RSS MB':>7s}")
    for r in rows:
        print(f"{r['component']:12s} {r['weights']:>7s} {r['torch_median_s']:9.3f} {r['autodir_median_s']:10.3f} {r['ratio']:6.2f} "
              f"{r['autodir_gflop']:8.1f} {r['autodir_gflop_per_s']:8.1f} {r['autodir_peak_rss_mb']:7.0f}")
    if a.json:
        json.dump({"torch": torch_out["torch"], "torch_threads": torch_out["threads"], "rows": rows}, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
