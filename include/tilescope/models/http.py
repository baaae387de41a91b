"""Model servers over plain HTTP: a REST endpoint (``http``) and KServe v2 (``kserve-v2``).

``http`` posts each slice as JSON with the image in base64 (``{"image": "<b64>", "width",
"height"}``) or as the raw image bytes (``body="binary"``), and reads the detections from the
JSON answer with a :class:`~tilescope.models.adapters.DetectionsAdapter` (option
``response``). ``kserve-v2`` speaks the Open Inference Protocol: ``POST
/v2/models/<name>[/versions/<v>]/infer`` with the slice as a ``BYTES`` tensor of the encoded
image (or a ``UINT8`` ``[1, H, W, 3]`` tensor), answered by named output tensors for boxes,
scores and labels.

Where the server is: the ``url`` option, or an Airflow connection (``conn_id``): host
(``http://host`` or host + schema), port, and credentials — login/password as basic auth,
or a password alone as a bearer token; ``extra.headers`` adds headers. Secrets therefore
live in the connection, never in options.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from tilescope.errors import ConfigError, ModelOutputError
from tilescope.models.adapters import DetectionsAdapter
from tilescope.models.remote import (
    RawDetection,
    RemoteModel,
    http_status_error,
    parse_retry_after,
    throttled,
)

BODIES = ("json", "binary")


class HttpEndpointModel(RemoteModel):
    """A model behind an HTTP endpoint; the shared transport of ``http`` and ``kserve-v2``."""

    def __init__(self, *, url: str | None = None, conn_id: str | None = None,
                 path: str = "", **options: Any) -> None:
        super().__init__(**options)
        if bool(url) == bool(conn_id):
            raise ConfigError(f"{self.name} needs exactly one of url or conn_id")
        headers: dict[str, str] = {}
        if conn_id:
            from tilescope.airflow.connections import http_endpoint

            url, headers = http_endpoint(conn_id)
        assert url is not None
        self.url = url.rstrip("/") + ("/" + path.lstrip("/") if path else "")
        import requests

        self._session = requests.Session()
        self._session.headers.update(headers)

    def describe(self) -> str:
        return f"{self.name} ({self.url})"

    def post(self, url: str, *, data: bytes, content_type: str) -> Any:
        """POST and return the decoded JSON answer; HTTP errors mapped to tilescope errors."""
        import requests

        try:
            response = self._session.post(url, data=data, timeout=self.timeout,
                                          headers={"Content-Type": content_type,
                                                   "Accept": "application/json"})
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise throttled(f"{self.describe()}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 300:
            raise http_status_error(self.describe(), response.status_code, response.text,
                                    parse_retry_after(response.headers.get("Retry-After")))
        try:
            return response.json()
        except ValueError as exc:
            raise ModelOutputError(f"{self.describe()}: the answer is not JSON: "
                                   f"{response.text[:200]!r}") from exc


class HttpModel(HttpEndpointModel):
    """``POST url`` with the slice; detections read from the JSON answer by an adapter.

    Options: ``url`` or ``conn_id`` (+ ``path``), ``body`` (``json``: base64 in
    ``image_field``; ``binary``: the image bytes), ``response`` (adapter options: ``path``,
    ``layout``, ``box``, ``score``, ``label``, ``box_format``, ``normalized``, ``labels``).
    """

    name = "http"

    def __init__(self, *, body: str = "json", image_field: str = "image",
                 response: Mapping[str, Any] | None = None, **options: Any) -> None:
        super().__init__(**options)
        if body not in BODIES:
            raise ConfigError(f"body must be one of {BODIES}, got {body!r}")
        self.body = body
        self.image_field = image_field
        self.adapter = DetectionsAdapter.from_options(response)

    def detect(self, image: bytes, width: int, height: int) -> list[RawDetection]:
        if self.body == "binary":
            payload = self.post(self.url, data=image, content_type=self.content_type)
        else:
            document = {self.image_field: base64.b64encode(image).decode(), "width": width,
                        "height": height, "format": self.image_format}
            payload = self.post(self.url, data=json.dumps(document).encode(),
                                content_type="application/json")
        try:
            return self.adapter.parse(payload, width, height)
        except ValueError as exc:
            raise ModelOutputError(f"{self.describe()}: malformed detections: {exc}") from exc


class KServeV2Model(HttpEndpointModel):
    """The Open Inference Protocol (KServe v2, Triton, MLServer, Seldon).

    Options: ``url`` or ``conn_id`` (the server root), ``model_name`` (required),
    ``model_version``, ``input_name`` (``image``), ``input_format`` (``bytes``: the encoded
    image base64 in a ``BYTES`` tensor of shape [1]; ``tensor``: ``UINT8`` [1, H, W, 3]),
    ``outputs`` (tensor names: ``{"boxes": "boxes", "scores": "scores", "labels":
    "labels"}``), ``box_format``, ``normalized``, ``labels`` (names of integer class ids).
    """

    name = "kserve-v2"

    def __init__(self, *, model_name: str = "", model_version: str | None = None,
                 input_name: str = "image", input_format: str = "bytes",
                 outputs: Mapping[str, str] | None = None, box_format: str = "xyxy",
                 normalized: bool = False, labels: list[str] | None = None,
                 **options: Any) -> None:
        super().__init__(**options)
        if not model_name:
            raise ConfigError("kserve-v2 needs model_name")
        if input_format not in ("bytes", "tensor"):
            raise ConfigError(f"input_format must be bytes or tensor, got {input_format!r}")
        version = f"/versions/{model_version}" if model_version else ""
        self.infer_url = f"{self.url}/v2/models/{model_name}{version}/infer"
        self.input_name = input_name
        self.input_format = input_format
        self.outputs = {"boxes": "boxes", "scores": "scores", "labels": "labels",
                        **dict(outputs or {})}
        self.adapter = DetectionsAdapter(path="", layout="columns", box="boxes",
                                         score="scores", label="labels", box_format=box_format,
                                         normalized=normalized, labels=tuple(labels or ()))

    def describe(self) -> str:
        return f"{self.name} ({self.infer_url})"

    def encode(self, pixels: np.ndarray) -> bytes:
        if self.input_format == "tensor":  # raw RGB bytes: the tensor is built from them
            return np.ascontiguousarray(pixels, np.uint8).tobytes()
        return super().encode(pixels)

    def request_body(self, image: bytes, width: int, height: int) -> dict[str, Any]:
        """The v2 inference request for one slice (``image`` as :meth:`encode` made it)."""
        if self.input_format == "tensor":
            tensor = {"name": self.input_name, "shape": [1, height, width, 3],
                      "datatype": "UINT8", "data": np.frombuffer(image, np.uint8).tolist()}
        else:
            tensor = {"name": self.input_name, "shape": [1], "datatype": "BYTES",
                      "data": [base64.b64encode(image).decode()],
                      "parameters": {"content_type": self.content_type}}
        return {"inputs": [tensor]}

    def detect(self, image: bytes, width: int, height: int) -> list[RawDetection]:
        answer = self.post(self.infer_url,
                           data=json.dumps(self.request_body(image, width, height)).encode(),
                           content_type="application/json")
        try:
            columns = v2_columns(answer, self.outputs)
            return self.adapter.parse(columns, width, height)
        except ValueError as exc:
            raise ModelOutputError(f"{self.describe()}: malformed v2 answer: {exc}") from exc


def v2_columns(answer: Any, names: Mapping[str, str]) -> dict[str, list[Any]]:
    """``{"boxes": [[4 numbers]...], "scores": [...], "labels": [...]}`` from a v2 answer's
    output tensors (flat ``data`` reshaped by ``shape``; ``scores`` optional)."""
    if not isinstance(answer, Mapping) or not isinstance(answer.get("outputs"), list):
        raise ValueError("no 'outputs' list")
    tensors = {t.get("name"): t for t in answer["outputs"] if isinstance(t, Mapping)}
    columns: dict[str, list[Any]] = {}
    for role, name in names.items():
        tensor = tensors.get(name)
        if tensor is None:
            if role == "scores":
                continue
            raise ValueError(f"no output tensor {name!r} (have {sorted(map(str, tensors))})")
        data, shape = tensor.get("data"), tensor.get("shape")
        if not isinstance(data, list) or not isinstance(shape, list):
            raise ValueError(f"output {name!r} lacks data or shape")
        count = int(np.prod(shape)) if shape else 0
        if count != len(data):
            raise ValueError(f"output {name!r}: shape {shape} but {len(data)} values")
        if role == "boxes":
            if count % 4:
                raise ValueError(f"output {name!r}: {count} values are not boxes of 4")
            columns[role] = [data[i:i + 4] for i in range(0, count, 4)]
        else:
            columns[role] = list(data)
    return columns

