"""Check fusynth's layout rule and draw its stages with their imports.

    python scripts/architecture.py            # check; exit 1 naming each violation
    python scripts/architecture.py --draw docs/architecture.png

The rule: a module imports from its own stage, from stages earlier in the pipeline
(``STAGES`` below, in order), or from ``core``; only ``cli`` imports everything, and no
library module imports ``cli``. Imports are read from the source (every ``import`` and
``from ... import`` anywhere in a module, also inside functions), so a lazy import
counts as much as a top-level one. Module-level import circles are reported too.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fusynth"

#: The pipeline, in order: each stage may import from those before it.
STAGES = (
    "core",
    "data",
    "diffusion",
    "cohort",
    "embed",
    "segment",
    "classify",
    "ssl",
    "cluster",
    "audit",
    "publish",
    "report",
    "cli",
)
#: What each stage is, one line (docs/architecture.md says the same).
ROLES = {
    "core": "errors, atomic I/O, configs, statistics, plots, cards, the training-loop skeleton",
    "data": "the sample schema, readers of public layouts, phantom, splits, transforms",
    "diffusion": "bases (incl. the tiny offline one), dataset, LoRA/ControlNet training, pipelines",
    "cohort": "the one cohort writer: requests, shards, seeds, provenance, resume",
    "embed": "one registry of image embedders: pixels, CLIP, SSL, Inception",
    "segment": "SAM, embedding cache, fine-tuning, evaluation, metrics, experiment",
    "classify": "backbones, training, zero-shot, metrics, experiment",
    "ssl": "SimCLR model, augmentations, training",
    "cluster": "k-means and SCAN, metrics, evaluation",
    "audit": "cohort audit (FID/KID, memorization), pair consistency",
    "publish": "Hub folders: kinds, redaction, cards, upload",
    "report": "one HTML page per run",
    "cli": "the fusynth command and what every recipe shares",
}
#: Top-level modules outside any stage: the package's version, ``python -m fusynth``.
EXEMPT = {"fusynth", "fusynth.__main__"}


def module_name(path: Path) -> str:
    """``fusynth/segment/sam.py`` -> ``fusynth.segment.sam``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every fusynth module a file imports (``from a.b import c`` counts ``a.b.c`` when
    that is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "fusynth":
                out.add(node.module)
                out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "fusynth")
    return out


def graph() -> dict[str, set[str]]:
    """Module -> the fusynth modules it imports (existing modules only, not itself)."""
    files = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    return {m: {d for d in imports(p) if d in files and d != m} for m, p in files.items()}


def stage(module: str) -> str | None:
    """The stage a module belongs to (its sub-package), or None for top-level modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def violations(g: dict[str, set[str]]) -> list[str]:
    """Every import that breaks the rule, one line each."""
    out = []
    for module, deps in sorted(g.items()):
        if module in EXEMPT:
            continue
        own = stage(module)
        if own is None:
            out.append(f"{module}: not inside a stage package ({', '.join(STAGES)})")
            continue
        for dep in sorted(deps):
            other = stage(dep)
            if other is None or other in (own, "core"):
                continue
            if other == "cli":
                out.append(f"{module} imports {dep}: library code never imports cli")
            elif STAGES.index(other) > STAGES.index(own):
                out.append(f"{module} imports {dep}: {other} comes after {own} in the pipeline")
    return out


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Import circles between modules (strongly connected components of size > 1)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def stage_edges(g: dict[str, set[str]]) -> dict[tuple[str, str], int]:
    """(stage, imported stage) -> number of module imports, between different stages."""
    edges: dict[tuple[str, str], int] = defaultdict(int)
    for module, deps in g.items():
        a = stage(module)
        for dep in deps:
            b = stage(dep)
            if a and b and a != b:
                edges[(a, b)] += 1
    return dict(edges)


def draw(g: dict[str, set[str]], out: Path) -> None:
    """The stages top to bottom in pipeline order, an arrow for each stage imported."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [s for s in STAGES if any(stage(m) == s for m in g)]
    edges = stage_edges(g)
    y = {s: len(present) - 1 - i for i, s in enumerate(present)}
    fig, ax = plt.subplots(figsize=(11, 0.62 * len(present) + 1.2), dpi=120)
    for s in present:
        n = sum(1 for m in g if stage(m) == s)
        ax.text(
            0,
            y[s],
            f"{s}  ({n} modules)",
            ha="center",
            va="center",
            fontsize=10,
            fontweight="bold",
            bbox={"boxstyle": "round,pad=0.35", "fc": "#e8f0fb", "ec": "#35608f"},
        )
        ax.text(0.9, y[s], ROLES.get(s, ""), ha="left", va="center", fontsize=8.5, color="#333")
    # Imports go up the page (a later stage imports an earlier one); arcs on the left,
    # wider for longer jumps, so they do not overlap the boxes.
    for (a, b), count in sorted(edges.items(), key=lambda e: y[e[0][0]] - y[e[0][1]]):
        if a not in y or b not in y:
            continue
        span = y[b] - y[a]
        colour = "#c0392b" if span < 0 else ("#999" if b == "core" else "#35608f")
        ax.annotate(
            "",
            xy=(-0.55, y[b]),
            xytext=(-0.55, y[a]),
            arrowprops={
                "arrowstyle": "-|>",
                "color": colour,
                "lw": 0.6 + 0.15 * min(count, 8),
                "alpha": 0.7,
                "connectionstyle": f"arc3,rad={0.08 + 0.035 * abs(span)}",
            },
        )
    ax.set_xlim(-2.6, 4.2)
    ax.set_ylim(-0.8, len(present) - 0.3)
    ax.axis("off")
    ax.set_title(
        "fusynth: stages in pipeline order; an arrow points from a stage to one it imports\n"
        "(blue: an earlier stage, grey: core, red: a broken rule; width: number of imports)",
        fontsize=10,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    """Check the rule (exit 1 on a violation or a circle); draw the picture if asked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draw", type=Path, help="write the stage picture (PNG) here")
    args = parser.parse_args(argv)
    g = graph()
    problems = violations(g) + [f"import circle: {' -> '.join(c)}" for c in cycles(g)]
    if args.draw:
        draw(g, args.draw)
        print(f"wrote {args.draw}")
    for line in problems:
        print(line)
    print(f"{len(g)} modules in {len(STAGES)} stages; {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
