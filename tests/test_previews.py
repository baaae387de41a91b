"""Preview pictures (tilescope.previews): the format chosen by name or by a path's
extension, and each format's encoder."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from support.blob_model import BrightBlobModel, blob_image

from tilescope.cli import main
from tilescope.errors import ConfigError
from tilescope.models import register_model
from tilescope.params import InferenceParams
from tilescope.previews import encode_preview, format_of_path, preview_format


@pytest.mark.parametrize(("name", "pillow", "extension", "media_type"), [
    ("webp", "WEBP", ".webp", "image/webp"),
    ("jpeg", "JPEG", ".jpg", "image/jpeg"),
    ("png", "PNG", ".png", "image/png"),
])
def test_each_format_encodes_what_its_name_and_media_type_say(name, pillow, extension,
                                                              media_type):
    """Seen red with the JPEG entry encoding PNG."""
    pixels = np.random.default_rng(0).integers(0, 256, (90, 120, 3), np.uint8)
    fmt = preview_format(name)
    assert (fmt.extension, fmt.media_type) == (extension, media_type)
    assert fmt.file_name("overlay") == f"overlay{extension}"
    with Image.open(io.BytesIO(encode_preview(pixels, fmt))) as image:
        assert (image.format, image.size, image.mode) == (pillow, (120, 90), "RGB")
        decoded = np.asarray(image)
    if name == "png":  # the one lossless format
        assert np.array_equal(decoded, pixels)


def test_the_default_is_webp_and_a_pillow_image_of_any_mode_is_encoded():
    assert preview_format(None).name == preview_format("").name == "webp"
    assert preview_format(" PNG ").name == "png"
    rgba = Image.new("RGBA", (40, 30), (10, 20, 30, 128))
    with Image.open(io.BytesIO(encode_preview(rgba, preview_format("jpeg")))) as image:
        assert image.format == "JPEG" and image.size == (40, 30)


@pytest.mark.parametrize(("path", "name"), [
    ("kite.webp", "webp"), ("out/kite.JPG", "jpeg"), ("s3://b/k/a.jpeg", "jpeg"),
    ("a.b/overlay.png", "png"),
])
def test_a_path_extension_chooses_the_format(path, name):
    assert format_of_path(path).name == name


@pytest.mark.parametrize("path", ["overlay", "overlay.gif", "s3://b/x.png/overlay", "a.tif"])
def test_other_extensions_are_refused(path):
    """Seen red with format_of_path defaulting to PNG for an unknown extension."""
    with pytest.raises(ConfigError, match=r"\.webp, \.jpg, \.jpeg, \.png"):
        format_of_path(path)


def test_the_preview_format_is_a_parameter_outside_the_digest():
    """Same detections, same results keys (and result reuse): the preview format changes
    neither the digest nor the result's recorded params. Seen red with preview_format left
    in to_dict."""
    webp, png = InferenceParams(), InferenceParams(preview_format="png")
    assert webp.preview_format == "webp" and png.preview_format == "png"
    assert webp.digest() == png.digest() and webp.to_dict() == png.to_dict()
    assert "preview_format" not in webp.to_dict()
    assert InferenceParams.from_dict(png.to_conf()) == png
    with pytest.raises(ConfigError, match="preview_format must be one of webp, jpeg, png"):
        InferenceParams(preview_format="gif")


def _never_loaded(**options: object) -> BrightBlobModel:
    raise AssertionError("the model was loaded before the overlay path was checked")


register_model("preview-blobs", BrightBlobModel)
register_model("preview-never-loaded", _never_loaded)


@pytest.mark.parametrize(("name", "pillow"), [("o.webp", "WEBP"), ("o.JPG", "JPEG"),
                                              ("o.jpeg", "JPEG"), ("o.png", "PNG")])
def test_the_cli_writes_the_overlay_in_its_extensions_format(tmp_path, name, pillow):
    """Seen red with write_outputs encoding every overlay as PNG."""
    pixels, _ = blob_image(300, 200, 5, seed=7)
    Image.fromarray(pixels).save(tmp_path / "blobs.png")
    assert main(["predict", str(tmp_path / "blobs.png"), "--model", "preview-blobs",
                 "--slice", "256", "--overlay", str(tmp_path / name), "--quiet"]) == 0
    with Image.open(tmp_path / name) as overlay:
        assert (overlay.format, overlay.size) == (pillow, (300, 200))


def test_the_cli_refuses_another_overlay_extension_before_the_model_runs(tmp_path, capsys):
    """Seen red with _predict's up-front format_of_path check removed (the model loads)."""
    pixels, _ = blob_image(300, 200, 5, seed=7)
    Image.fromarray(pixels).save(tmp_path / "blobs.png")
    assert main(["predict", str(tmp_path / "blobs.png"), "--model", "preview-never-loaded",
                 "--overlay", str(tmp_path / "o.gif"), "--quiet"]) == 2
    assert "chosen by the extension" in capsys.readouterr().err
    assert not (tmp_path / "o.gif").exists()
