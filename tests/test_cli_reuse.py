"""``tilescope predict --catalog URL [--reuse]``: the CLI records its rows in the DAG's catalog
table and, with ``--reuse``, writes an image's outputs from a stored result of the same bytes,
model weights and parameters instead of running the model (a model counting its calls proves
it). Catalogs: SQLite, and the machine's PostgreSQL (``sql_url``); stored results: local
files and a DAG's ``s3://`` results on a moto server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from support.blob_model import BrightBlobModel, blob_image

from tilescope.cli import main
from tilescope.models import register_model
from tilescope.outputs.catalog import connect, find_results


class CountingBlobModel(BrightBlobModel):
    """The blob detector, counting the slices every instance is given (class-wide: the CLI
    makes its own instance)."""

    name = "counting-blobs"
    slices_run = 0

    def predict(self, images):
        type(self).slices_run += len(images)
        return super().predict(images)


register_model("counting-blobs", CountingBlobModel)
register_model("counting-blobs-v2", CountingBlobModel)  # another model name, same detector
RUN = ["--model", "counting-blobs", "--slice", "256", "--quiet"]


@pytest.fixture(autouse=True)
def counted():
    CountingBlobModel.slices_run = 0


def save_blobs(path: Path, seed: int = 7) -> Path:
    pixels, _ = blob_image(300, 200, 5, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def rows_of(url: str, sha: str | None = None) -> list[dict]:
    engine = connect(url)
    try:
        return find_results(engine, sha)
    finally:
        engine.dispose()


def without_uri(doc: dict) -> dict:
    return {**doc, "image": {k: v for k, v in doc["image"].items() if k != "uri"}}


def outputs(tmp_path: Path, tag: str) -> list[str]:
    return ["--out", str(tmp_path / f"{tag}.json"), "--coco", str(tmp_path / f"{tag}.coco.json"),
            "--overlay", str(tmp_path / f"{tag}.overlay.png")]


def test_same_bytes_under_a_new_name_are_not_analysed_again(tmp_path, sql_url, capsys):
    """Seen red: with CatalogRun.stored finding nothing the model ran again for b.png (and
    its row was a computed one); with the reused row not recorded, no row named b.png."""
    first = save_blobs(tmp_path / "a.png")
    assert main(["predict", str(first), *RUN, *outputs(tmp_path, "a"),
                 "--catalog", sql_url, "--reuse"]) == 0
    assert CountingBlobModel.slices_run > 0
    (computed,) = rows_of(sql_url)
    assert computed["reused_from"] is None and computed["status"] == "complete"
    assert computed["image_uri"] == str(first.resolve())
    assert computed["result_keys"] == {role: str(tmp_path / name) for role, name in (
        ("result", "a.json"), ("coco", "a.coco.json"), ("overlay", "a.overlay.png"))}
    assert computed["model_digest"] and computed["params_hash"]

    again = tmp_path / "new" / "b.png"
    again.parent.mkdir()
    shutil.copy(first, again)
    CountingBlobModel.slices_run = 0
    capsys.readouterr()
    assert main(["predict", str(again), *RUN, *outputs(tmp_path, "b"),
                 "--catalog", sql_url, "--reuse"]) == 0
    assert CountingBlobModel.slices_run == 0  # the model never ran
    assert "reused" in capsys.readouterr().out
    stored = json.loads((tmp_path / "a.json").read_text())
    written = json.loads((tmp_path / "b.json").read_text())
    assert written["image"]["uri"] == str(again)
    assert without_uri(written) == without_uri(stored)  # the stored result, as this image's
    assert written["detections"] and (tmp_path / "b.overlay.png").stat().st_size > 0
    coco = [json.loads((tmp_path / f"{t}.coco.json").read_text()) for t in ("a", "b")]
    assert coco[0]["annotations"] == coco[1]["annotations"]
    rows = rows_of(sql_url)
    (reused,) = [r for r in rows if r["reused_from"] is not None]
    assert len(rows) == 2 and reused["reused_from"] == computed["id"]
    assert reused["image_uri"] == str(again.resolve())
    assert reused["result_keys"] == computed["result_keys"]  # pointing at the stored result
    assert reused["run_id"].startswith("cli__")


@pytest.mark.parametrize("change", ["params", "model", "weights", "gone", "no-reuse"])
def test_changed_params_model_or_weights_or_a_gone_result_are_analysed_again(
        tmp_path, change, monkeypatch, capsys):
    """Seen red with the lookup's model-digest condition dropped (the 'weights' case reused
    a result of other weights) and with both the lookup's check that result.json is there
    and load_stored's fallback removed ('gone' then failed reading the deleted file)."""
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    first = save_blobs(tmp_path / "a.png")
    assert main(["predict", str(first), *RUN, "--out", str(tmp_path / "a.json"),
                 "--catalog", url]) == 0
    again = tmp_path / "b.png"
    shutil.copy(first, again)
    args = ["predict", str(again), *RUN, "--out", str(tmp_path / "b.json"), "--catalog", url,
            "--reuse"]
    if change == "params":
        args += ["--score-threshold", "0.5"]
    elif change == "model":
        args[args.index("counting-blobs")] = "counting-blobs-v2"
    elif change == "weights":  # the same name and parameters, other weights
        monkeypatch.setattr(CountingBlobModel, "weights_sha256", "ab" * 32, raising=False)
    elif change == "gone":  # a stored result deleted since its row was written
        (tmp_path / "a.json").unlink()
    else:
        args.remove("--reuse")
    CountingBlobModel.slices_run = 0
    capsys.readouterr()
    assert main(args) == 0
    assert CountingBlobModel.slices_run > 0
    assert "reused" not in capsys.readouterr().out
    rows = rows_of(url)
    assert all(r["reused_from"] is None for r in rows)
    # the same (image, parameters) updates its computed row; other parameters add one
    assert len(rows) == (2 if change in ("params", "model") else 1)
    assert rows[0]["image_uri"] == str(again.resolve())


def test_reuse_needs_a_catalog_and_a_catalog_needs_an_output(tmp_path, capsys):
    """Seen red with the --reuse check removed: the image was analysed (exit 0)."""
    image = save_blobs(tmp_path / "a.png")
    assert main(["predict", str(image), *RUN, "--reuse", "--out", str(tmp_path / "a.json")]) == 2
    assert "--reuse looks stored results up in a catalog: give --catalog URL" in \
        capsys.readouterr().err
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    assert main(["predict", str(image), *RUN, "--catalog", url]) == 2
    assert "give --out PATH" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), *RUN, "--catalog", url]) == 2
    assert "--out-dir DIR" in capsys.readouterr().err
    assert main(["predict", str(image), *RUN, "--catalog", "not a url",
                 "--out", str(tmp_path / "a.json")]) == 2
    assert "SQLAlchemy URL" in capsys.readouterr().err
    assert CountingBlobModel.slices_run == 0 and not (tmp_path / "a.json").exists()


def test_a_folder_reuses_per_image(tmp_path, capsys):
    """Seen red with _stored_for finding nothing: every image of the second run was
    analysed again (the model saw the old images' slices too)."""
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    photos = tmp_path / "photos"
    for seed in (1, 2, 3):
        save_blobs(photos / f"p{seed}.png", seed)
    assert main(["predict", str(photos), *RUN, "--out-dir", str(tmp_path / "first"),
                 "--catalog", url, "--reuse"]) == 0
    assert len(rows_of(url)) == 3
    (photos / "sub").mkdir()
    shutil.copy(photos / "p1.png", photos / "sub" / "copy.png")  # the same bytes, new name
    save_blobs(photos / "p4.png", 4)  # new bytes
    CountingBlobModel.slices_run = 0
    capsys.readouterr()
    assert main(["predict", str(photos), *RUN, "--out-dir", str(tmp_path / "second"),
                 "--catalog", url, "--reuse"]) == 0
    assert "5 images, 0 failed, 4 reused" in capsys.readouterr().out
    new = json.loads((tmp_path / "second" / "p4.png.json").read_text())
    assert CountingBlobModel.slices_run == new["plan"]["slices"]  # only p4 was analysed
    summary = json.loads((tmp_path / "second" / "summary.json").read_text())
    reused = {e["name"]: e.get("reused_from") for e in summary["images"]}
    assert reused["p4.png"] is None and all(reused[n] for n in reused if n != "p4.png")
    for name in ("p1", "p2", "p3"):
        before = json.loads((tmp_path / "first" / f"{name}.png.json").read_text())
        after = json.loads((tmp_path / "second" / f"{name}.png.json").read_text())
        assert after == before  # the same input path: the stored result exactly
    copy = json.loads((tmp_path / "second" / "sub" / "copy.png.json").read_text())
    assert without_uri(copy) == without_uri(
        json.loads((tmp_path / "first" / "p1.png.json").read_text()))
    rows = rows_of(url)
    # p1..p3 again under their own paths add nothing; the copy adds a reused row; p4 computed
    assert len(rows) == 5 and sum(r["reused_from"] is not None for r in rows) == 1


def test_a_dag_stored_result_is_reused_by_the_cli(tmp_path, s3_client, capsys):
    """A result stored by the DAG's own steps (prepare → analyze → combine → store, catalog
    row and all) on S3 is reused by the CLI for the same bytes on disk; and a row the CLI
    recorded with local paths is not one the DAG reuses, one it wrote to S3 is. Seen red with
    ResultIndex's local filter removed (the DAG's index then found the CLI's local row) and
    with it keeping only local results (the CLI's S3 row was then not found)."""
    from tilescope.outputs.reuse import ResultIndex
    from tilescope.params import InferenceParams
    from tilescope.tasks.image import analyze, combine, prepare, save_result, store

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    image = save_blobs(tmp_path / "a.png")
    s3_client.create_bucket(Bucket="dag")
    s3_client.upload_file(str(image), "dag", "incoming/a.png")
    params = InferenceParams(model="counting-blobs", slice_size=256)  # the CLI's RUN
    regions, prepared = prepare("s3://dag/incoming/a.png", params, client=s3_client,
                                run="manual__1", model_slice_size=256)
    findings = [analyze(r, prepared.source_uri, params, CountingBlobModel(), client=s3_client,
                        scratch_prefix=prepared.scratch_prefix) for r in regions]
    result = combine(prepared, findings, params, params.model, client=s3_client)
    summary = store(save_result(result, prepared.scratch_prefix, s3_client), prepared, params,
                    client=s3_client, catalog_url=url, run_id="manual__1")
    CountingBlobModel.slices_run = 0

    copy = tmp_path / "copy.png"
    shutil.copy(image, copy)
    capsys.readouterr()
    assert main(["predict", str(copy), *RUN, "--out", str(tmp_path / "copy.json"),
                 "--catalog", url, "--reuse"]) == 0
    assert CountingBlobModel.slices_run == 0
    assert summary.keys["result"] in capsys.readouterr().out
    stored = json.loads(s3_client.get_object(Bucket="dag", Key=summary.keys["result"].split(
        "dag/", 1)[1])["Body"].read())
    assert without_uri(json.loads((tmp_path / "copy.json").read_text())) == without_uri(stored)
    (reused,) = [r for r in rows_of(url) if r["reused_from"] is not None]
    assert reused["result_keys"] == summary.keys and reused["run_id"].startswith("cli__")

    # the CLI's own computed row (other parameters: local paths) is for the CLI only
    assert main(["predict", str(copy), *RUN, "--overlap", "0.3", "--out",
                 str(tmp_path / "mine.json"), "--catalog", url]) == 0
    other = InferenceParams(model="counting-blobs", slice_size=256, overlap=0.3)
    sha = reused["image_sha256"]
    assert ResultIndex(url, other, s3_client).find(sha) is None
    assert ResultIndex(url, other, s3_client, local=True).find(sha) is not None
    # …but one whose result the CLI wrote to S3 is the DAG's to reuse too
    assert main(["predict", str(copy), *RUN, "--overlap", "0.4", "--out",
                 "s3://dag/cli/copy.json", "--catalog", url]) == 0
    in_s3 = InferenceParams(model="counting-blobs", slice_size=256, overlap=0.4)
    assert ResultIndex(url, in_s3, s3_client).find(sha).keys == {
        "result": "s3://dag/cli/copy.json"}


class FailingAfterOneImageModel(CountingBlobModel):
    """The counting blob detector that breaks down (not a bad input: a model crash) once it
    has seen one image's slices."""

    name = "failing-blobs"
    budget = 0
    slice_seconds = 1e6  # as slow as can be: a unit per image (units.unit_slice_budget)

    def predict(self, images):
        if type(self).slices_run >= type(self).budget:
            raise RuntimeError("the model server went away")
        return super().predict(images)


register_model("failing-blobs", FailingAfterOneImageModel)


def test_a_folder_run_that_breaks_part_way_records_the_images_it_wrote(tmp_path):
    """Seen red with the rows recorded only after the loop (not in its ``finally``): the
    first image's JSON was written and the catalog had no row for it, so ``--reuse`` would
    have analysed it again."""
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    photos = tmp_path / "photos"
    for seed in (1, 2, 3):
        save_blobs(photos / f"p{seed}.png", seed)
    FailingAfterOneImageModel.slices_run = 0
    FailingAfterOneImageModel.budget = 2  # the first image's 2 slices go through, then it fails
    with pytest.raises(RuntimeError, match="went away"):
        main(["predict", str(photos), "--model", "failing-blobs", "--slice", "256",
              "--quiet", "--out-dir", str(tmp_path / "out"),
              "--catalog", url])
    written = sorted(p.name for p in (tmp_path / "out").glob("*.png.json"))
    assert written, "the first image was analysed and written before the model failed"
    rows = rows_of(url)
    assert sorted(Path(r["image_uri"]).name + ".json" for r in rows) == written
