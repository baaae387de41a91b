"""The model part of the reuse key: name and weights' sha256."""

from __future__ import annotations

import hashlib

from tilescope.models.fingerprint import model_fingerprint, weights_sha256
from tilescope.models.weights import NANODET_ONNX_SHA256


def test_weights_are_the_pinned_hash_or_the_given_files_and_change_the_fingerprint(tmp_path):
    """Seen red with weights_sha256 ignoring model_path: two weight files then gave one
    fingerprint (and a result of other weights would have been reused)."""
    assert weights_sha256("nanodet-coco") == NANODET_ONNX_SHA256
    from tilescope.models.weights import CENTERNET

    assert weights_sha256("centernet-coco") == CENTERNET.onnx_sha256
    assert weights_sha256("bedrock-converse") is None  # remote: its name stands for it
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    first.write_bytes(b"weights one")
    second.write_bytes(b"weights two")
    assert weights_sha256("nanodet-coco", {"model_path": str(first)}) == \
        hashlib.sha256(b"weights one").hexdigest()
    prints = {model_fingerprint("nanodet-coco"),
              model_fingerprint("nanodet-coco", {"model_path": str(first)}),
              model_fingerprint("nanodet-coco", {"model_path": str(second)}),
              model_fingerprint("text-regions"), model_fingerprint("bedrock-converse")}
    assert len(prints) == 5 and all(len(p) == 64 for p in prints)
    assert model_fingerprint("nanodet-coco") == model_fingerprint("nanodet-coco")
