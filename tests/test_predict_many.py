"""Many images in one ``tilescope predict``: inputs expanded, packed into units, one result
per image identical to a single-image run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tilescope.cli import main
from tilescope.errors import BadImageError, ConfigError, TilescopeError
from tilescope.models.nanodet import NanoDetModel
from tilescope.params import InferenceParams
from tilescope.predict import predict_many
from tilescope.results import Result
from tilescope.sources import expand_inputs, expand_named

# ---- expanding inputs ----------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """shots/{b.jpg, a.png, notes.txt, clip.mp4, sub/c.JPG, sub/deeper/d.webp}"""
    root = tmp_path / "shots"
    for name in ["b.jpg", "a.png", "notes.txt", "clip.mp4", "sub/c.JPG", "sub/deeper/d.webp"]:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return root


def test_folder_is_recursive_sorted_and_images_only(tree: Path):
    got = expand_inputs([str(tree)])
    assert got == [str(tree / n) for n in ["a.png", "b.jpg", "sub/c.JPG", "sub/deeper/d.webp"]]
    names = [i.name for i in expand_named([str(tree)])]
    assert names == ["a.png", "b.jpg", "sub/c.JPG", "sub/deeper/d.webp"]


def test_globs_files_order_and_duplicates(tree: Path):
    pattern = str(tree / "**" / "*.jpg")
    assert expand_inputs([pattern]) == [str(tree / "b.jpg")]
    named = expand_named([str(tree / "sub" / "*"), str(tree / "b.jpg"), str(tree),
                          str(tree / "clip.mp4")])
    # the pattern's files first (sorted), then b.jpg, then the folder minus those seen,
    # and a video named explicitly
    assert [i.uri for i in named] == [str(tree / "sub/c.JPG"), str(tree / "b.jpg"),
                                      str(tree / "a.png"), str(tree / "sub/deeper/d.webp"),
                                      str(tree / "clip.mp4")]
    assert [i.name for i in named] == ["c.JPG", "b.jpg", "a.png", "sub/deeper/d.webp",
                                       "clip.mp4"]
    # a glob keeps names relative to its fixed leading folders
    deep = expand_named([str(tree / "**" / "*.webp")])
    assert [i.name for i in deep] == ["sub/deeper/d.webp"]
    # the same file twice (once through a different spelling) is analyzed once
    assert expand_inputs([str(tree / "a.png"), str(tree / "sub" / ".." / "a.png")]) == [
        str(tree / "a.png")]


def test_same_name_from_two_roots_gets_a_unique_output_name(tmp_path: Path):
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.jpg").write_bytes(b"x")
    (tmp_path / "coco").write_bytes(b"x")  # would write DIR/coco.json: renamed
    named = expand_named([str(tmp_path / "one"), str(tmp_path / "two"), str(tmp_path / "coco")])
    assert [i.name for i in named] == ["x.jpg", "x.jpg~2", "coco~2"]


def test_missing_and_empty_inputs_are_clear_errors(tree: Path, tmp_path: Path):
    with pytest.raises(BadImageError, match=r"no such file or folder: .*nope\.jpg"):
        expand_inputs([str(tree), str(tmp_path / "nope.jpg")])
    with pytest.raises(ConfigError, match="matches no files"):
        expand_inputs([str(tree / "*.gif")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images"):
        expand_inputs([str(tmp_path / "empty")])
    with pytest.raises(ConfigError):
        expand_inputs([])


def test_s3_prefix_lists_every_page(s3_client, monkeypatch):
    import tilescope.sources

    monkeypatch.setattr(tilescope.sources, "LIST_PAGE_SIZE", 4)  # several pages, few keys
    s3_client.create_bucket(Bucket="pics")
    keys = [f"in/{n:04d}.jpg" for n in range(13)] + ["in/sub/", "in/sub/z.png",
                                                     "in/readme.txt", "other/q.jpg"]
    for key in keys:
        s3_client.put_object(Bucket="pics", Key=key, Body=b"x")
    listed: list[int] = []
    s3_client.meta.events.register(
        "after-call.s3.ListObjectsV2",
        lambda parsed, **_: listed.append(len(parsed.get("Contents", []))))
    named = expand_named(["s3://pics/in/"], client=s3_client)
    expected = sorted(k for k in keys if k.startswith("in/") and k.endswith((".jpg", ".png")))
    assert [i.uri for i in named] == [f"s3://pics/{k}" for k in expected]
    assert len(named) == 14 and listed == [4, 4, 4, 4]  # 16 keys under in/, 4 a page
    assert named[-1].name == "sub/z.png" and named[0].name == "0000.jpg"
    # a single object is passed through (a missing one is bad when it is opened)
    assert expand_inputs(["s3://pics/other/q.jpg"], client=s3_client) == ["s3://pics/other/q.jpg"]
    with pytest.raises(ConfigError, match="no images"):
        expand_inputs(["s3://pics/nothing/"], client=s3_client)
    with pytest.raises(BadImageError, match="no such bucket"):
        expand_inputs(["s3://nobucket/in/"], client=s3_client)


# ---- predict_many --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(sample, tmp_path_factory) -> Path:
    """Six small crops of kite (two in a subfolder), one truncated JPEG."""
    root = tmp_path_factory.mktemp("many") / "photos"
    (root / "sub").mkdir(parents=True)
    base = Image.open(sample("kite")).convert("RGB")
    for i in range(6):
        x, y = (i * 137) % 900, (i * 83) % 500
        path = root / ("sub" if i % 3 == 2 else "") / f"crop{i}.jpg"
        base.crop((x, y, x + 500 + 40 * i, y + 380)).save(path, quality=90)
    data = (root / "crop0.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(data[: len(data) // 3])
    return root


def test_predict_many_in_order_with_bad_inputs_and_progress(folder: Path, tmp_path: Path):
    (tmp_path / "text.jpg").write_bytes(b"not a picture at all")
    uris = [str(p) for p in sorted(folder.rglob("*.jpg"))] + [str(tmp_path / "text.jpg")]
    params = InferenceParams(model="nanodet-coco", score_threshold=0.3)
    calls: list[tuple[int, int, int, int]] = []
    with NanoDetModel(score_threshold=0.3) as model:
        outcomes = list(predict_many(uris, params, model,
                                     progress=lambda *a: calls.append(a)))
    assert [u for u, _ in outcomes] == uris
    bad = {Path(u).name: o for u, o in outcomes if not isinstance(o, Result)}
    assert set(bad) == {"cut.jpg", "text.jpg"}
    assert all(isinstance(o, BadImageError) for o in bad.values())
    assert "truncated or corrupt" in str(bad["cut.jpg"]) and "not an image" in str(
        bad["text.jpg"])
    assert calls[-1][2:] == (len(uris), len(uris)) and calls[-1][0] == calls[-1][1]
    good = [o for _, o in outcomes if isinstance(o, Result)]
    assert calls[-1][1] == sum(r.plan["slices"] for r in good) + 2  # cut.jpg: 2 slices


def test_results_stream_out_as_their_units_finish(folder: Path, monkeypatch):
    monkeypatch.setenv("TILESCOPE_UNIT_SECONDS", "0.1")  # a few slices per unit: many units
    uris = [str(p) for p in sorted(folder.rglob("crop*.jpg"))]
    params = InferenceParams(model="nanodet-coco", score_threshold=0.3)
    calls: list[tuple[int, int, int, int]] = []
    seen_at: list[tuple[int, int]] = []
    with NanoDetModel(score_threshold=0.3) as model:
        for _, outcome in predict_many(uris, params, model,
                                       progress=lambda *a: calls.append(a)):
            assert isinstance(outcome, Result)
            seen_at.append(calls[-1][:2])
    assert len(seen_at) == len(uris)
    done, total = seen_at[0]
    assert done < total / 2  # the first image came out long before the last was analyzed


def test_an_image_replaced_after_planning_is_bad(folder: Path, tmp_path: Path):
    import tilescope.predict as predict_module

    copy = tmp_path / "moving.jpg"
    copy.write_bytes((folder / "crop1.jpg").read_bytes())
    real_plan = predict_module._plan

    def plan_then_replace(uri, *args):
        planned = real_plan(uri, *args)
        if uri == str(copy):  # another upload lands between planning and the unit
            copy.write_bytes((folder / "crop3.jpg").read_bytes())
        return planned

    params = InferenceParams(model="nanodet-coco", score_threshold=0.3)
    with NanoDetModel(score_threshold=0.3) as model, \
            pytest.MonkeyPatch.context() as patch:
        patch.setattr(predict_module, "_plan", plan_then_replace)
        outcomes = dict(predict_many([str(folder / "crop0.jpg"), str(copy)], params, model))
    assert isinstance(outcomes[str(folder / "crop0.jpg")], Result)
    assert isinstance(outcomes[str(copy)], TilescopeError)
    assert "changed since it was planned" in str(outcomes[str(copy)])


# ---- the CLI -------------------------------------------------------------------------------


def detection_records(path: Path) -> list[dict]:
    return json.loads(path.read_text())["detections"]


def test_cli_over_a_folder_matches_single_image_runs(folder: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--out-dir", str(out), "--quiet"]) == 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8  # 7 images + the summary line
    assert any(line.startswith(f"{folder / 'cut.jpg'}: error:") for line in lines)
    assert lines[-1].startswith("7 images, 1 failed,")
    images = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg"))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json")) == sorted(
        [f"{n}.json" for n in images if n != "cut.jpg"] + ["coco.json", "summary.json"])

    total = 0
    for name in images:
        if name == "cut.jpg":
            continue
        single = tmp_path / "single" / f"{name}.json"
        assert main(["predict", str(folder / name), "--out", str(single), "--quiet"]) == 0
        ours = detection_records(out / f"{name}.json")
        assert ours == detection_records(single), name
        total += len(ours)
    assert total > 10
    capsys.readouterr()

    summary = json.loads((out / "summary.json").read_text())
    assert [e["name"] for e in summary["images"]] == images
    by_name = {e["name"]: e for e in summary["images"]}
    assert by_name["cut.jpg"]["status"] == "bad"
    assert "truncated or corrupt" in by_name["cut.jpg"]["error"]
    assert by_name["cut.jpg"]["detections"] is None
    for name in images:
        if name != "cut.jpg":
            doc = json.loads((out / f"{name}.json").read_text())
            entry = by_name[name]
            assert entry["status"] == "ok" and entry["error"] is None
            assert entry["uri"] == str(folder / name) == doc["image"]["uri"]
            assert entry["detections"] == len(doc["detections"])
            assert entry["counts"] == doc["summary"]["counts"]
    totals = summary["totals"]
    assert (totals["images"], totals["failed"]) == (7, 1)
    assert totals["slices"] == sum(json.loads((out / f"{n}.json").read_text())["plan"]["slices"]
                                   for n in images if n != "cut.jpg")
    assert totals["seconds"] > 0 and totals["images_per_minute"] > 0

    coco = json.loads((out / "coco.json").read_text())
    assert [i["id"] for i in coco["images"]] == list(range(1, 7))
    assert [i["file_name"] for i in coco["images"]] == [Path(n).name for n in images
                                                          if n != "cut.jpg"]
    ids = [a["id"] for a in coco["annotations"]]
    assert len(ids) == len(set(ids)) == total
    per_image = {i["id"]: 0 for i in coco["images"]}
    for a in coco["annotations"]:
        per_image[a["image_id"]] += 1
    assert list(per_image.values()) == [by_name[n]["detections"] for n in images
                                        if n != "cut.jpg"]
    assert {c["name"] for c in coco["categories"]} >= {"person", "kite"}


def test_cli_many_inputs_refuse_single_image_outputs(folder: Path, tmp_path: Path, capsys):
    code = main(["predict", str(folder / "crop0.jpg"), str(folder / "crop1.jpg"),
                 "--out", str(tmp_path / "r.json"), "--quiet"])
    assert code == 2
    assert "--out-dir" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_cli_all_good_inputs_exit_0_without_out_dir(folder: Path, capsys):
    code = main(["predict", str(folder / "crop0.jpg"), str(folder / "sub" / "*.jpg"),
                 "--quiet"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [
        str(folder / "crop0.jpg"), str(folder / "sub" / "crop2.jpg"),
        str(folder / "sub" / "crop5.jpg")]
    assert lines[-1].startswith("3 images, 0 failed,")


def test_cli_over_an_s3_prefix(folder: Path, s3_client, tmp_path: Path, capsys):
    s3_client.create_bucket(Bucket="shots")
    for name in ["crop0.jpg", "sub/crop2.jpg", "cut.jpg"]:
        s3_client.put_object(Bucket="shots", Key=f"in/{name}", Body=(folder / name).read_bytes())
    out = tmp_path / "out"
    assert main(["predict", "s3://shots/in/", "--out-dir", str(out), "--quiet"]) == 2
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert [(e["name"], e["status"]) for e in summary["images"]] == [
        ("crop0.jpg", "ok"), ("cut.jpg", "bad"), ("sub/crop2.jpg", "ok")]
    assert summary["images"][0]["uri"] == "s3://shots/in/crop0.jpg"
    local = tmp_path / "local.json"
    assert main(["predict", str(folder / "sub" / "crop2.jpg"), "--out", str(local),
                 "--quiet"]) == 0
    assert detection_records(out / "sub" / "crop2.jpg.json") == detection_records(local)
