"""``fusynth publish`` without ``--dry-run``: the real huggingface_hub client uploads to a
fake Hub on localhost (``tests/publish/fakehub.py``). What lands in the repository is exactly the
dry-run folder, big files go through LFS, and the token appears nowhere but in the
``Authorization`` header: not in the output, the files or any request body."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from huggingface_hub import constants

from fusynth.cli.main import main
from tests.publish.fakehub import FakeHub

TOKEN = "hf_fusynthTestToken0123456789abcdefXYZ"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake Hub accepting ``TOKEN``, wired into huggingface_hub for this process."""
    from huggingface_hub import close_session

    with FakeHub(TOKEN) as fake:
        monkeypatch.setattr(constants, "ENDPOINT", fake.url)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # Xet is not faked
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # a proxy must not see it
        close_session()  # the next request opens a client that reads NO_PROXY
        yield fake
        close_session()


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".fusynth.json"  # the local marker is not uploaded
    }


def _assert_token_kept_secret(hub: FakeHub, *texts: str) -> None:
    for text in texts:
        assert TOKEN not in text
    for request in hub.requests:
        assert TOKEN.encode() not in request.body, request.path
        if request.path.startswith("/api/") and request.path != "/api/agent-harnesses":
            assert request.headers["authorization"] == f"Bearer {TOKEN}"
    for repo in hub.repos.values():
        for tree in repo.branches.values():
            for path, data in tree.items():
                assert TOKEN.encode() not in data, path


def test_model_upload_from_the_command_line_commits_the_dry_run_folder(tiny_sam, tmp_path):
    """As a user runs it: HF_ENDPOINT and HF_TOKEN in the environment, a new process."""
    dry = tmp_path / "dry"
    assert (
        main(["publish", "model", str(tiny_sam), "--repo-id", "me/sam", "--dry-run", str(dry)]) == 0
    )
    with FakeHub(TOKEN) as hub:
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
        env.update(HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN, HF_HUB_DISABLE_XET="1")
        env["NO_PROXY"] = "127.0.0.1,localhost"
        env["HF_HOME"] = str(tmp_path / "hf-home")
        cmd = [sys.executable, "-m", "fusynth.cli", "publish", "model", str(tiny_sam)]
        done = subprocess.run(
            [*cmd, "--repo-id", "me/sam"], env=env, capture_output=True, text=True, timeout=300
        )
    assert done.returncode == 0, done.stderr
    assert (
        f"uploaded {len(_tree(dry))} files to me/sam" in done.stdout
        and f"{hub.url}/me/sam/commit/" in done.stdout
    )
    assert hub.unhandled == []
    assert hub.files("me/sam") == _tree(dry)  # byte for byte what --dry-run built
    weights = hub.files("me/sam")["model.safetensors"]
    assert weights in hub.lfs.values()  # sent through LFS, not inline in the commit
    commit = hub.repos[("model", "me/sam")].commits[0]
    assert commit["header"]["summary"].startswith("Publish a fusynth sam")
    _assert_token_kept_secret(hub, done.stdout, done.stderr)
    assert not any(
        TOKEN in p.read_text(errors="ignore")
        for p in (tmp_path / "hf-home").rglob("*")
        if p.is_file()
    )


def test_cohort_upload_to_a_private_branch_loads_with_load_dataset(
    audited_cohort, hub, tmp_path, capsys
):
    argv = ["publish", "cohort", str(audited_cohort), "--repo-id", "me/cohort", "--private"]
    assert main([*argv, "--revision", "v1"]) == 0
    out = capsys.readouterr()
    assert "to me/cohort@v1 (private)" in out.out
    repo = hub.repos[("dataset", "me/cohort")]
    assert repo.private and repo.branches["main"] == {} and set(repo.branches) == {"main", "v1"}
    files = hub.files("me/cohort", "dataset", "v1")
    assert "data/train-00000-of-00001.parquet" in files and "README.md" in files
    local = tmp_path / "downloaded"
    for rel, data in files.items():
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(data)
    got = datasets.load_dataset(str(local), cache_dir=str(tmp_path / "cache"))["train"]
    src = datasets.load_from_disk(str(audited_cohort))["train"]
    assert len(got) == len(src) == 6 and list(got["view"]) == list(src["view"])
    _assert_token_kept_secret(hub, out.out, out.err)
    assert hub.unhandled == []


def test_a_second_upload_replaces_stale_shards(audited_cohort, hub, tmp_path, monkeypatch):
    argv = ["publish", "cohort", str(audited_cohort), "--repo-id", "me/c"]
    monkeypatch.setattr("fusynth.publish.cohort.SHARD_ROWS", 4)  # 6 rows: two shards
    assert main(argv) == 0
    first = set(hub.files("me/c", "dataset"))
    assert {"data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"} <= first
    hub.repos[("dataset", "me/c")].branches["main"]["notes.md"] = b"the owner's own file"
    monkeypatch.setattr("fusynth.publish.cohort.SHARD_ROWS", 1000)
    assert main(argv) == 0
    second = set(hub.files("me/c", "dataset"))
    shards = sorted(f for f in second if f.startswith("data/"))
    assert shards == ["data/train-00000-of-00001.parquet"]  # no mix of two uploads
    assert "notes.md" in second  # files outside fusynth's folders are left alone
    assert len(hub.repos[("dataset", "me/c")].commits) == 2


def test_a_model_upload_mirrors_the_paths_fusynth_writes(tiny_sam, hub):
    argv = ["publish", "model", str(tiny_sam), "--repo-id", "me/sam"]
    assert main(argv) == 0
    tree = hub.repos[("model", "me/sam")].branches["main"]
    stale = ["eval/old/summary.json", "validation/step-000001.png", "config.json"]
    tree.update({path: b"from an earlier upload" for path in stale})
    tree["notes.md"] = b"the owner's own file"
    assert main(argv) == 0
    files = hub.files("me/sam")
    assert not any(path in files for path in stale if not (tiny_sam / path).is_file())
    assert files["notes.md"] == b"the owner's own file"
    assert files["model.safetensors"] == (tiny_sam / "model.safetensors").read_bytes()


def test_no_token_is_one_line_exit_2_and_nothing_is_sent(tiny_sam, hub, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    assert main(["publish", "model", str(tiny_sam), "--repo-id", "me/sam"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no Hugging Face token: set HF_TOKEN" in err
    assert hub.requests == []


def test_a_refused_token_is_one_line_exit_2_without_the_token(tiny_sam, hub, capsys, monkeypatch):
    wrong = TOKEN[:-3] + "bad"
    monkeypatch.setenv("HF_TOKEN", wrong)
    assert main(["publish", "model", str(tiny_sam), "--repo-id", "me/sam"]) == 2
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and "the Hub refused the upload to me/sam" in out.err
    assert "401" in out.err and "HF_TOKEN" in out.err
    assert wrong not in out.out + out.err and hub.repos == {}


def test_private_refuses_an_existing_public_repository(tiny_sam, hub, capsys):
    assert main(["publish", "model", str(tiny_sam), "--repo-id", "me/sam"]) == 0
    assert main(["publish", "model", str(tiny_sam), "--repo-id", "me/sam", "--private"]) == 2
    err = capsys.readouterr().err
    assert "--private: me/sam already exists and is public" in err
    assert len(hub.repos[("model", "me/sam")].commits) == 1  # the second upload sent nothing


def test_bad_input_sends_nothing(tmp_path, hub, capsys):
    (tmp_path / "notes.txt").write_text("hi")
    assert main(["publish", "model", str(tmp_path), "--repo-id", "me/x"]) == 2
    assert main(["publish", "model", str(tmp_path), "--repo-id", "not a repo"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "is not a fusynth output" in err[0] and "--repo_id" in err[1]
    assert hub.requests == []


def test_a_card_the_hub_refuses_is_one_line_with_its_reasons(tiny_sam, hub, capsys):
    hub.yaml_errors = ["tags must be strings", "license is not known"]
    assert main(["publish", "model", str(tiny_sam), "--repo-id", "me/sam"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the Hub refused the upload to me/sam" in err
    assert "tags must be strings; license is not known" in err
    assert hub.repos[("model", "me/sam")].commits == []  # checked before anything is sent
