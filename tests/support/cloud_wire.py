"""Local servers on 127.0.0.1 that speak a cloud service's real wire protocol, for contract
tests of the model backends.

:class:`LocalServer` is a threaded ``http.server`` that records every request and answers
from a queue of scripted replies, then from a handler. For AWS services it checks what AWS
checks first: the ``Authorization`` header is recomputed here with SigV4 from the known test
secret (so botocore's real signing, with the right signing name and region, is exercised)
and a wrong signature gets AWS's own ``InvalidSignatureException``. Error replies use the
shapes botocore parses: ``x-amzn-ErrorType`` + ``{"message"}`` for REST-JSON services
(Bedrock runtime, SageMaker runtime), ``{"__type", "message"}`` for JSON 1.1 (Rekognition).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

ACCESS_KEY = "AKIDTILESCOPETEST"
# generated per test process: no credential-shaped literal in the repository
SECRET_KEY = f"test-{secrets.token_hex(16)}"
REGION = "eu-west-1"
_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request,"
                   r"\s*SignedHeaders=([^,]+),\s*Signature=([0-9a-f]{64})$")


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Reply:
    status: int = 200
    body: bytes | str | dict | list = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def encoded(self) -> bytes:
        if isinstance(self.body, dict | list):
            return json.dumps(self.body).encode()
        return self.body.encode() if isinstance(self.body, str) else self.body


def aws_error(status: int, code: str, message: str, *, protocol: str = "rest-json",
              **members: Any) -> Reply:
    """An AWS error reply in the shape botocore parses for ``protocol``."""
    if protocol == "json":
        return Reply(status, {"__type": code, "message": message, **members},
                     content_type="application/x-amz-json-1.1")
    return Reply(status, {"message": message, **members},
                 headers={"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/"})


def sigv4_problem(request: Request, service: str, secret: str = SECRET_KEY) -> str | None:
    """Why ``request`` is not correctly SigV4-signed for ``service``, or ``None`` if it is."""
    auth = request.header("authorization") or ""
    match = _AUTH.match(auth)
    if not match:
        return f"no SigV4 Authorization header: {auth[:60]!r}"
    access, day, region, signed_service, signed, signature = match.groups()
    if access != ACCESS_KEY:
        return f"unknown access key {access}"
    if signed_service != service:
        return f"signed for service {signed_service!r}, expected {service!r}"
    amz_date = request.header("x-amz-date") or ""
    if not amz_date.startswith(day):
        return "X-Amz-Date does not match the credential scope"
    raw_path, _, query = request.path.partition("?")
    pairs = sorted(tuple(p.partition("=")[::2]) for p in query.split("&") if p)
    canonical_headers = "".join(
        f"{name}:{' '.join((request.header(name) or '').split())}\n"
        for name in signed.split(";"))
    payload = request.header("x-amz-content-sha256") or hashlib.sha256(request.body).hexdigest()
    canonical = "\n".join([request.method, quote(raw_path, safe="/~"),
                           "&".join(f"{k}={v}" for k, v in pairs), canonical_headers, signed,
                           payload])
    scope = f"{day}/{region}/{signed_service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret}".encode()
    for part in (day, region, signed_service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return "signature mismatch"
    return None


class LocalServer:
    """A scripted HTTP server on 127.0.0.1 (port 0). ``signing_service`` turns on SigV4."""

    def __init__(self, handler: Callable[[Request], Reply] | None = None, *,
                 signing_service: str | None = None) -> None:
        self.handler = handler or (lambda request: Reply(404, {"message": "no handler"}))
        self.signing_service = signing_service
        self.queue: list[Reply] = []
        self.requests: list[Request] = []
        self.signature_problems: list[str] = []
        self.handler_errors: list[str] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(self.command, self.path,
                                  {k.lower(): v for k, v in self.headers.items()}, body)
                reply = server.respond(request)
                data = reply.encoded()
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(data)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _serve  # http.server dispatches on these names

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)

    def respond(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            if self.signing_service:
                problem = sigv4_problem(request, self.signing_service)
                if problem:
                    self.signature_problems.append(problem)
                    return aws_error(403, "InvalidSignatureException", problem)
            if self.queue:
                return self.queue.pop(0)
        try:
            return self.handler(request)
        except Exception as exc:  # a broken test handler must show, not hang the client
            self.handler_errors.append(f"{type(exc).__name__}: {exc}")
            return Reply(599, {"message": f"test handler failed: {exc}"})

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def aws_connection(monkeypatch: Any, conn_id: str, endpoint_url: str,
                   region: str = REGION) -> str:
    """Define the Airflow AWS connection ``conn_id`` (test keys, ``endpoint_url``) via the
    environment, as a deployment would; returns ``conn_id``."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": "aws", "login": ACCESS_KEY, "password": SECRET_KEY,
        "extra": {"endpoint_url": endpoint_url, "region_name": region}}))
    return conn_id


class AsyncInferenceEndpoint:
    """A SageMaker asynchronous endpoint behind :class:`LocalServer` (its ``handler``): reads
    the input object from S3, answers 202 at once with the output and failure locations, and
    ``delay`` seconds later writes ``detect(pixels)`` as JSON (or ``fail_with`` as the failure
    object) to ``bucket`` — as SageMaker does. One background thread does the writing, so a
    real model in ``detect`` runs one slice at a time; :meth:`close` drops what is pending."""

    def __init__(self, s3: Any, bucket: str, detect: Callable[[Any], dict], *,
                 delay: float = 0.3, fail_with: str | None = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.s3, self.bucket, self.detect = s3, bucket, detect
        self.delay, self.fail_with = delay, fail_with
        self.inputs: list[str] = []
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="async-endpoint")
        self._closed = threading.Event()

    def __call__(self, request: Request) -> Reply:
        import io
        import time

        import numpy as np
        from PIL import Image

        name = request.path.split("/")[2]
        source = request.header("x-amzn-sagemaker-inputlocation") or ""
        self.inputs.append(source)
        bucket, _, key = source.removeprefix("s3://").partition("/")
        data = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        ident = request.header("x-amzn-sagemaker-inference-id")
        out, failure = f"{name}/out/{ident}.out", f"{name}/failed/{ident}-error.out"
        due = time.monotonic() + self.delay

        def write() -> None:
            if self._closed.wait(max(0.0, due - time.monotonic())):
                return
            if self.fail_with:
                self.s3.put_object(Bucket=self.bucket, Key=failure, Body=self.fail_with.encode())
            else:
                self.s3.put_object(Bucket=self.bucket, Key=out,
                                   Body=json.dumps(self.detect(pixels)).encode())

        self._writer.submit(write)
        return Reply(202, {"InferenceId": ident}, headers={
            "X-Amzn-SageMaker-OutputLocation": f"s3://{self.bucket}/{out}",
            "X-Amzn-SageMaker-FailureLocation": f"s3://{self.bucket}/{failure}"})

    def close(self) -> None:
        self._closed.set()
        self._writer.shutdown(wait=True, cancel_futures=True)


def detections_body(model: Any, pixels: Any) -> dict[str, Any]:
    """``model``'s detections of one slice as a model server answers the ``http`` backend
    (``{"detections": [{"box", "score", "label"}]}``): a local server running a real model."""
    (dets,) = model.predict([pixels])
    return {"detections": [
        {"box": b, "score": s, "label": model.category_names[c]} for b, s, c in
        zip(dets.boxes.tolist(), dets.scores.tolist(), dets.category_ids.tolist(),
            strict=True)]}
