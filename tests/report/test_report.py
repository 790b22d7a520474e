"""``fusynth report``: kinds from files, pipeline order, numbers read (never recomputed),
a self-contained page, real and synthetic side by side with provenance, the command."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fusynth.cli.main import main
from fusynth.core.errors import UserInputError
from fusynth.report import detect, find_runs, write_report
from tests.report.folders import (
    classification_eval,
    published_model,
    seg_experiment,
    segmentation_eval,
    training_run,
    write_json,
)


class Page(HTMLParser):
    """The tags of a page that the tests look at, with their attributes and text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self._in_style = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if not self._in_style:  # what a reader sees
            self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag]

    @property
    def plain(self) -> str:
        return " ".join(" ".join(self.text).split())


def _report(tmp_path: Path, *runs: Path) -> Page:
    out = tmp_path / "report.html"
    write_report(list(runs), out)
    return Page(out.read_text())


# ----------------------------------------------------------------------------- kinds


@pytest.mark.parametrize("kind", ["lora", "controlnet", "sam", "classifier", "ssl"])
def test_training_outputs_are_told_apart(tmp_path, kind):
    assert detect(training_run(tmp_path / "run", kind)) == kind


def test_evaluations_experiments_and_published_folders_are_told_apart(tmp_path):
    assert detect(segmentation_eval(tmp_path / "seg")) == "segmentation"
    assert detect(classification_eval(tmp_path / "cls")) == "classification"
    assert detect(classification_eval(tmp_path / "zs", "zero-shot")) == "zeroshot"
    assert detect(seg_experiment(tmp_path / "exp")) == "seg_augment"
    write_json(tmp_path / "cls_exp" / "experiment.json", {"backbones": ["resnet18"]})
    assert detect(tmp_path / "cls_exp") == "cls_augment"
    # a published LoRA holds the adapter's weights and config too: its card tells it apart
    assert detect(published_model(tmp_path / "pub")) == "published"
    (tmp_path / "plain").mkdir()
    assert detect(tmp_path / "plain") is None


def test_real_outputs_are_told_apart(real_runs):
    kinds = {name: detect(path) for name, path in real_runs.items()}
    assert kinds == {
        "dataset": "dataset",
        "lora": "lora",
        "cohort": "cohort",
        "clustering": "clustering",
    }


def test_a_parent_folder_is_searched_and_runs_come_in_pipeline_order(tmp_path):
    parent = tmp_path / "out"
    segmentation_eval(parent / "a_eval")
    seg_experiment(parent / "b_experiment")
    training_run(parent / "c_sam", "sam")
    published_model(parent / "publish" / "lora")
    training_run(parent / "z_lora", "lora")
    segmentation_eval(parent / ".z_lora.tmp-123")  # a run still being written
    # the cohort audit inside a run belongs to that run's section
    write_json(parent / "z_lora" / "audit" / "cohort_audit.json", {})
    runs = find_runs([parent])
    assert [(r.path.relative_to(parent).as_posix(), r.kind) for r in runs] == [
        ("z_lora", "lora"),
        ("c_sam", "sam"),
        ("a_eval", "segmentation"),
        ("b_experiment", "seg_augment"),
        ("publish/lora", "published"),
    ]
    # the same run given twice, directly and through its parent, appears once
    assert len(find_runs([parent / "c_sam", parent])) == 5


def test_missing_or_empty_folders_are_refused_by_name(tmp_path):
    with pytest.raises(UserInputError, match="nope: no such folder"):
        find_runs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="empty: no fusynth output in it"):
        find_runs([tmp_path / "empty"])
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(UserInputError, match="not a folder"):
        find_runs([tmp_path / "f.txt"])


def test_bad_out_is_refused_before_anything_is_written(tmp_path):
    run = segmentation_eval(tmp_path / "seg")
    with pytest.raises(UserInputError, match="--out: .* should end in .html"):
        write_report([run], tmp_path / "report.txt")
    with pytest.raises(UserInputError, match="--out: .* is a folder"):
        write_report([run], tmp_path)
    assert not (tmp_path / "report.txt").exists()


# ----------------------------------------------------------------------------- numbers


def test_segmentation_numbers_come_from_summary_json_with_intervals_and_counts(tmp_path):
    page = _report(tmp_path, segmentation_eval(tmp_path / "seg")).plain
    # summary.json's Dice with its interval and count; per_image.csv says 0.99 and is not read
    assert "0.432 [0.401, 0.512]" in page and "0.99" not in page
    assert "14 predictions, 3 empty" in page
    assert "7 images of 5 subjects" in page
    assert "validation Dice" in page  # why validation and test Dice differ
    assert "smoke" not in page.lower()  # vit_b on real data: no smoke warning


def test_smoke_models_are_flagged_on_their_sections_and_the_page(tmp_path):
    page = _report(tmp_path, segmentation_eval(tmp_path / "seg", model_type="tiny")).plain
    assert "Smoke run." in page and "say nothing about ultrasound" in page


def test_classification_shows_intervals_per_view_and_the_legacy_metrics_apart(tmp_path):
    page = _report(tmp_path, classification_eval(tmp_path / "cls")).plain
    assert "0.583 [0.333, 0.833]" in page
    assert "n = 12 images, 6 subjects" in page
    assert "FU-LoRA legacy metrics" in page and "0.610" in page
    assert "never predicted" in page  # precision n/a explained


def test_experiment_table_is_read_from_table_csv(tmp_path):
    page = _report(tmp_path, seg_experiment(tmp_path / "exp")).plain
    assert "0.247 ± 0.013" in page and "0.358 ± 0.025" in page
    assert "hd95 mm" not in page  # a metric with no value in any row is left out


def test_training_sections_plot_the_logged_losses_and_show_sample_grids(tmp_path):
    html = tmp_path / "r.html"
    write_report([training_run(tmp_path / "lora", "lora")], html)
    page = Page(html.read_text())
    captions = [f.get("alt", "") for f in page.all("img")]
    assert any("training loss: 4 steps" in c for c in captions)
    assert any("Validation samples at step 4" in c for c in captions)
    assert "0.7000" in page.plain  # the last logged loss


def test_published_folder_lists_its_files_and_card(tmp_path):
    page = _report(tmp_path, published_model(tmp_path / "pub")).plain
    assert "pytorch_lora_weights.safetensors" in page and "2.0 KB" in page
    assert "not for clinical use" in page
    assert "library name diffusers" in page
    assert "Smoke model" not in page
    smoke = published_model(tmp_path / "smoke")
    write_json(smoke / "config.json", {"smoke_base": True})
    assert "Smoke model" in _report(tmp_path / "s", smoke).plain


def test_page_is_self_contained(tmp_path):
    runs = [segmentation_eval(tmp_path / "seg"), classification_eval(tmp_path / "cls")]
    runs.append(training_run(tmp_path / "lora", "lora"))
    out = tmp_path / "report.html"
    write_report(runs, out)
    text = out.read_text()
    page = Page(text)
    images = page.all("img")
    assert len(images) >= 6
    assert all(img["src"].startswith("data:image/") for img in images)
    assert not page.all("script") and not page.all("link") and not page.all("iframe")
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text)
    assert "url(" not in text


# ----------------------------------------------------------------------------- real runs


def test_cohort_is_browsed_beside_real_frames_with_provenance_on_hover(real_runs, tmp_path):
    page = _report(tmp_path, real_runs["dataset"], real_runs["lora"], real_runs["cohort"])
    # browser tiles are labelled by cohort index (the memorization pairs' by role)
    syn = [i for i in page.all("img") if i["alt"].startswith("sample ")]
    request = json.loads((real_runs["cohort"] / "request.json").read_text())
    # the cohort has 4 head and 2 femur samples: all shown, each with its provenance
    assert len([i for i in syn if "fetal head" in i["title"]]) == 4
    assert len([i for i in syn if "fetal femur" in i["title"]]) == 2
    for img in syn:
        assert "prompt: an ultrasound image of the fetal" in img["title"]
        assert (
            f"adapter: {request['adapter']} (sha256 {request['adapter_sha256'][:12]}"
            in img["title"]
        )
    real = [i for i in page.all("img") if i.get("title", "").startswith("subject ")]
    assert real, "no real frames beside the synthetic ones"
    assert "Real and synthetic, side by side" in page.plain


def test_memorization_pairs_are_labelled_with_the_audits_scores(real_runs, tmp_path):
    page = _report(tmp_path, real_runs["dataset"], real_runs["cohort"])
    audit = json.loads((real_runs["cohort"] / "audit" / "cohort_audit.json").read_text())
    pairs = audit["memorization"]["closest_pairs"]
    assert "Closest pairs: synthetic | nearest training image" in page.plain
    labels = [i["alt"] for i in page.all("img")]
    assert labels.count("nearest training image") == len(pairs)
    assert labels.count("synthetic") == len(pairs)
    for p in pairs:
        assert f"SSIM {p['ssim']:.3f}, cosine {p['cosine']:.3f}" in page.plain
    kid = audit["distance"]["overall"]["kid_mean"]
    assert f"{kid:.4f}" in page.plain or f"{kid:.4g}" in page.plain


def test_real_runs_report_in_pipeline_order_with_clustering_fidelity(real_runs, tmp_path):
    out = tmp_path / "report.html"
    result = write_report(list(reversed(real_runs.values())), out)
    assert [r.kind for r in result.runs] == ["dataset", "lora", "cohort", "clustering"]
    page = Page(out.read_text()).plain
    metrics = json.loads((real_runs["clustering"] / "metrics.json").read_text())
    fidelity = metrics["clusterings"]["kmeans_k2"]["semantic_fidelity"]
    assert f"({fidelity['n_matching']} of {fidelity['n_synthetic']})" in page
    assert "Fidelity 0 means" in page
    assert result.size < 3_000_000


# ----------------------------------------------------------------------------- command


def test_command_writes_the_page_and_says_what_it_covers(tmp_path, capsys):
    run = segmentation_eval(tmp_path / "seg")
    out = tmp_path / "sub" / "r.html"
    assert main(["report", str(run), "--out", str(out), "--title", "My runs"]) == 0
    assert "<title>My runs</title>" in out.read_text()
    said = capsys.readouterr().out
    assert "seg (segmentation)" in said and str(out) in said


def test_command_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing: no such folder" in err[0]


def test_an_audit_folder_alone_gets_its_own_section(real_runs, tmp_path):
    audit_dir = real_runs["cohort"] / "audit"
    out = tmp_path / "audit.html"
    result = write_report([audit_dir, real_runs["dataset"]], out)
    assert [r.kind for r in result.runs] == ["dataset", "cohort_audit"]
    page = Page(out.read_text())
    audit = json.loads((audit_dir / "cohort_audit.json").read_text())
    assert "Distance to the real frames" in page.plain
    # the pairs are found through the cohort path the audit recorded
    labels = [i["alt"] for i in page.all("img")]
    assert labels.count("synthetic") == len(audit["memorization"]["closest_pairs"])


def test_templates_ship_as_package_data():
    import importlib.resources

    names = {p.name for p in (importlib.resources.files("fusynth.report") / "templates").iterdir()}
    assert {"report.html.j2", "section.html.j2", "report.css"} <= names


def test_a_cohort_without_its_dataset_says_how_to_see_real_frames(real_runs, tmp_path):
    page = _report(tmp_path, real_runs["cohort"])
    assert not [i for i in page.all("img") if i.get("title", "").startswith("subject ")]
    assert "Give the prepared dataset too" in page.plain
    assert "no real head frames given" in page.plain


def test_large_pictures_are_shrunk_small_ones_embedded_as_they_are(tmp_path):
    import base64

    import numpy as np
    from PIL import Image

    from fusynth.report.images import MAX_EMBED_BYTES, MAX_SIDE, file_uri

    rng = np.random.default_rng(0)
    big = tmp_path / "big.png"
    Image.fromarray(rng.integers(0, 256, (1500, 2000), dtype=np.uint8)).save(big)
    assert big.stat().st_size > MAX_EMBED_BYTES
    uri, (w, h) = file_uri(big)
    assert uri.startswith("data:image/jpeg;base64,") and (w, h) == (MAX_SIDE, 768)
    small = tmp_path / "small.png"
    Image.fromarray(rng.integers(0, 256, (40, 50), dtype=np.uint8)).save(small)
    uri, size = file_uri(small)
    assert base64.b64decode(uri.split(",", 1)[1]) == small.read_bytes() and size == (50, 40)
