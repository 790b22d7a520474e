"""Clinical-report-style prompts at generation: each sample's template values drawn from
the adapter's real training rows or from a user's range, recorded in its provenance."""

from __future__ import annotations

import json
import shutil

import pytest

from fusynth.cli.main import main
from fusynth.cohort.conditions import PromptSampler, parse_prompt_values
from fusynth.core.errors import UserInputError
from fusynth.data.schema import VIEWS, load_prepared, load_split
from tests.cohort.test_text2img import _args

TEMPLATE = "fetal {view}, HC {head_circumference_mm:.0f} mm"
WITH_TRIMESTER = "fetal {view}, {trimester}, HC {head_circumference_mm:.0f} mm"


def _generate(base, lora, out, *extra):
    """Six heads (the later ``--views`` wins over the shared arguments')."""
    return main(_args(base, lora, out, "--views", "head:6", "--steps", "1", *extra))


def _provenance(out):
    return [json.loads(p) for p in load_prepared(out)["train"]["provenance"]]


def _real_heads(phantom_prepared):
    rows = load_split(f"{phantom_prepared}:train").remove_columns(["image", "mask"])
    return [
        round(r["head_circumference_mm"], 3)
        for r in rows
        if VIEWS[r["view"]] == "head" and r["head_circumference_mm"] is not None
    ]


def test_real_values_come_from_training_rows_and_reach_the_prompt(
    tiny_base, tiny_lora, phantom_prepared, tmp_path
):
    out = tmp_path / "c"
    code = _generate(tiny_base, tiny_lora, out, "--prompt_template", TEMPLATE,
                     "--prompt_values", "real")  # fmt: skip
    assert code == 0
    real = _real_heads(phantom_prepared)
    drawn = [p["prompt_values"]["head_circumference_mm"] for p in _provenance(out)]
    assert all(round(hc, 3) in real for hc in drawn) and len(set(drawn)) > 1
    for hc, prov in zip(drawn, _provenance(out), strict=True):
        assert prov["prompt"] == f"fetal head, HC {hc:.0f} mm"
    request = json.loads((out / "request.json").read_text())
    assert request["prompt_values"] == "real" and request["prompt_template"] == TEMPLATE
    assert len(request["prompt_value_pool_sha256"]) == 64
    # Values depend on (seed, index) only: a second folder gets the same prompts.
    assert _generate(tiny_base, tiny_lora, tmp_path / "d", "--prompt_template", TEMPLATE,
                     "--prompt_values", "real") == 0  # fmt: skip
    assert [p["prompt"] for p in _provenance(tmp_path / "d")] == [
        p["prompt"] for p in _provenance(out)
    ]


def test_a_user_range_replaces_one_field_and_the_adapters_template_is_used(
    tiny_base, tiny_lora, tmp_path
):
    lora = tmp_path / "lora"  # an adapter trained with the template over schema columns
    shutil.copytree(tiny_lora, lora)
    cfg = json.loads((lora / "config.json").read_text())
    (lora / "config.json").write_text(json.dumps({**cfg, "caption_template": WITH_TRIMESTER}))
    out = tmp_path / "c"
    values = "head_circumference_mm=200:240,trimester=2"
    assert _generate(tiny_base, lora, out, "--prompt_values", values) == 0
    provs = _provenance(out)
    hcs = [p["prompt_values"]["head_circumference_mm"] for p in provs]
    assert all(200 <= hc <= 240 for hc in hcs) and len(set(hcs)) == len(hcs)
    for hc, p in zip(hcs, provs, strict=True):
        assert p["prompt"] == f"fetal head, second trimester, HC {hc:.0f} mm"
        assert p["prompt_values"]["trimester"] == 2


def test_parse_prompt_values():
    assert parse_prompt_values("real") == {}
    assert parse_prompt_values("head_circumference_mm=150:300,trimester=2") == {
        "head_circumference_mm": (150.0, 300.0),
        "trimester": (2.0, 2.0),
    }
    for bad in ("hc", "hc=300:150", "hc=a", "trimester=1:3", "1x=2", "a=1,a=2"):
        with pytest.raises(UserInputError, match="--prompt_values"):
            parse_prompt_values(bad)


def test_a_range_for_a_field_the_template_lacks_is_refused(phantom_prepared):
    with pytest.raises(UserInputError, match="pixel_spacing_mm is not in the prompt template"):
        PromptSampler("pixel_spacing_mm=0.1:0.2", TEMPLATE, str(phantom_prepared), ["head"], 0)
    with pytest.raises(UserInputError, match="names no field besides"):
        PromptSampler("real", "fetal {view}", str(phantom_prepared), ["head"], 0)
    with pytest.raises(UserInputError, match="records no training data"):
        PromptSampler("real", TEMPLATE, None, ["head"], 0)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--prompt_template", TEMPLATE], "--prompt_template: {head_circumference_mm} needs"),
        (["--prompt_template", WITH_TRIMESTER, "--prompt_values", "real"], "trimester"),
        (["--prompt_template", "fetal {view", "--prompt_values", "real"], "--prompt_template:"),
        (["--prompt_values", "real"], "--prompt_values: the prompt template"),
        (
            [
                "--prompt_template",
                "{view} HC {head_circumference_mm}",
                "--prompt_values",
                "real",
                "--views",
                "femur:2",
            ],
            "no 'femur' sample with head_circumference_mm",
        ),  # fmt: skip
    ],
)
def test_bad_prompt_values_fail_before_anything_is_written(
    tiny_base, tiny_lora, tmp_path, capsys, extra, needle
):
    assert _generate(tiny_base, tiny_lora, tmp_path / "o", *extra) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()
