"""Write the figures of a `make demo` run as Markdown, from the run's own files.

    python scripts/demo_results.py demo_out > docs/demo-results.md     # what `make results` does

Every number is read from what the commands wrote (metrics.json, summary.json,
cohort_audit.json, table.md); nothing is recomputed, so the page can never drift from the
run it describes. The demo runs smoke models on the phantom: the page says so.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        sys.exit(f"demo_results: {path}: missing; run `make demo` first")


def _ci(entry: dict[str, Any], value: str = "value") -> str:
    if entry.get(value) is None:
        return "n/a"
    if entry.get("ci_low") is None:
        return f"{entry[value]:.3f}"
    return f"{entry[value]:.3f} (95% CI {entry['ci_low']:.3f}–{entry['ci_high']:.3f})"


def lines(demo: Path) -> list[str]:
    """The Markdown lines of the demo's results."""
    cls = _read(demo / "classifier_eval" / "metrics.json")
    zs = _read(demo / "zeroshot" / "metrics.json")
    clu = _read(demo / "clustering" / "metrics.json")
    audit = _read(demo / "cohort" / "audit" / "cohort_audit.json")
    sam = _read(demo / "sam_eval" / "summary.json")
    kmeans = clu["clusterings"][clu["montages"]]
    legacy = cls.get("fulora_legacy") or {}
    mem = audit["memorization"]["overall"]
    dist = audit["distance"]["overall"]
    out = [
        "# Results of `make demo`",
        "",
        "Written by `scripts/demo_results.py` (`make results`) from the files of the last",
        "`make demo` run. **Smoke figures**: random-init tiny models on the procedural phantom;",
        "they show that each step runs and what it reports, nothing about real ultrasound.",
        "",
        f"- View classifier (ResNet-18, real + synthetic), {cls['n_images']} test images of "
        f"{cls['n_subjects']} subjects: accuracy {_ci(cls['overall']['accuracy'])}, macro-F1 "
        f"{_ci(cls['overall']['macro_f1'])}, macro ROC-AUC {_ci(cls['overall']['macro_auroc'])}.",
    ]
    if legacy:
        out.append(
            "  FU-LoRA's legacy numbers for the same predictions: "
            + ", ".join(f"{k} {legacy[k]:.3f}" for k in ("ACC", "AUC", "F1") if k in legacy)
            + "."
        )
    out += [
        f"- Zero-shot tiny CLIP: accuracy {_ci(zs['overall']['accuracy'])} on "
        f"{zs['n_images']} images ({len(zs['setup'].get('classes') or []) or 'all'} views).",
        f"- k-means on pixels (k = {kmeans['k']}, {kmeans['n']} frames, {clu['n_synthetic']} "
        f"synthetic): purity {kmeans['purity']:.3f}, NMI {kmeans['nmi']:.3f}, ARI "
        f"{kmeans['ari']:.3f}; semantic fidelity "
        f"{kmeans['semantic_fidelity']['share']:.3f} "
        f"({kmeans['semantic_fidelity']['n_in_clusters_without_real']} synthetic frames in "
        "clusters without real ones).",
        f"- Cohort audit: KID {dist['kid_mean']:.3f} ± {dist['kid_std']:.3f} "
        f"({dist['n_synthetic']} synthetic against {dist['n_reference']} reference frames; FID "
        f"{'reliable' if dist['fid_reliable'] else 'marked unreliable'}); memorization flags "
        f"{mem['flagged']} of {mem['n']} (highest SSIM {mem['ssim']['max']:.3f}).",
    ]
    for jitter, stats in sam["by_jitter"].items():
        out.append(
            f"- Tiny SAM, box jitter {jitter} px, {sam['n_images']} test images: Dice "
            f"{stats['dice']['mean']:.3f}, HD95 {stats['hd95_px']['mean']:.1f} px, empty "
            f"predictions {stats['empty_predictions']}."
        )
    table = (demo / "seg_augment" / "table.md").read_text().strip()
    out += ["", "The seg-augment experiment (`demo_out/seg_augment/table.md`):", "", table, ""]
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    print("\n".join(lines(Path(args[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
