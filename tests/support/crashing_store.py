"""``store`` killed for real: the DAG's store step — ``transform`` (nothing without
``anonymize``), then :func:`tilescope.tasks.image.store` — run in a child process that
SIGKILLs itself at a point the test chooses: no ``finally``, no rollback, no exit handler,
as a worker killed by the OOM killer or a lost node would die. The test then checks what
the S3 server and the catalog hold, and runs store's retry itself.

One call, :func:`crashing_store`. Where the child dies is a snippet of Python source,
``crash_at``, run in the child before ``transform``, with in scope:

* ``client``: the child's S3 client (the one ``store`` gets: hook its botocore events);
* ``crash()``: SIGKILL this process (it takes and ignores keyword arguments, so it can be a
  botocore event handler itself);
* ``crash_on(event, when=None)``: die at a botocore ``event`` of ``client`` (e.g.
  ``"before-parameter-build.s3.PutObject"``) when ``when(params)`` is true (always without
  ``when``; ``params`` is the request's parameters, ``None`` for events without them);
* ``args``: the test's own values (``crashing_store``'s extra keyword arguments, JSON).

For example::

    AT_RESULT_JSON = '''
    crash_on("before-parameter-build.s3.PutObject",
             lambda params: params["Key"].endswith("/result.json"))
    '''
    child = crashing_store(AT_RESULT_JSON, result_uri=..., prepared=prepared, params=params,
                           catalog=catalog_url)
    assert_killed(child)

The test model ``bright-blobs`` is registered in the child (store fingerprints the run's
model for its catalog row), and the child sees the S3 fixture's settings (``child_env``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from support.blob_model import REGISTER_IN_CHILD, child_env
from tilescope.handoffs import BatchPrepared, Prepared
from tilescope.params import InferenceParams

_HEAD = """
import json, os, signal, sys

from tilescope.archival import ArchivePolicy
from tilescope.handoffs import BatchPrepared, Prepared
from tilescope.params import InferenceParams
from tilescope.storage import default_s3_client
from tilescope.tasks.image import store
from tilescope.tasks.transform import transform
""" + REGISTER_IN_CHILD + """
request = json.loads(sys.argv[1])
args = request["args"]
client = default_s3_client()


def crash(**_):
    os.kill(os.getpid(), signal.SIGKILL)


def crash_on(event, when=None):
    def handler(params=None, **_):
        if when is None or when(params):
            crash()

    client.meta.events.register(event, handler)

"""

_TAIL = """
params = InferenceParams.from_dict(request["params"])
archive = ArchivePolicy(**request["archive"]) if request["archive"] else None
if request["batch"]:  # a batch run's store: every image's copies and rows, then originals
    from tilescope.handoffs import BatchPrepared
    from tilescope.tasks.batch import store_batch

    store_batch(request["result_uri"], BatchPrepared.from_dict(request["prepared"]), params,
                client=client, catalog_url=request["catalog"], run_id="crashing",
                archive=archive)
else:
    prepared = Prepared.from_dict(request["prepared"])
    transform(request["result_uri"], prepared, params, client=client)  # as the DAG's store
    store(request["result_uri"], prepared, params, client=client,
          catalog_url=request["catalog"], run_id="crashing", archive=archive)
"""


def crashing_store(crash_at: str, *, result_uri: str, prepared: Prepared | BatchPrepared,
                   params: InferenceParams, catalog: str,
                   archive: Mapping[str, Any] | None = None, timeout: float = 300,
                   **args: Any) -> subprocess.CompletedProcess[str]:
    """Run ``transform`` and ``store(result_uri, prepared, params, catalog_url=catalog,
    archive=ArchivePolicy(**archive))`` in a child that first runs ``crash_at`` (see the
    module docstring); ``args`` reach the snippet as ``args``. A batch run's ``prepared``
    runs ``store_batch`` instead (no transform step: it anonymizes per image). Returns the
    finished child (its stderr captured): it died by SIGKILL if the snippet's point was
    reached."""
    request = {"result_uri": result_uri, "prepared": prepared.to_dict(),
               "batch": isinstance(prepared, BatchPrepared),
               "params": params.to_dict(), "catalog": catalog,
               "archive": dict(archive) if archive else None, "args": args}
    return subprocess.run([sys.executable, "-c", _HEAD + crash_at + _TAIL,
                           json.dumps(request)],
                          capture_output=True, text=True, timeout=timeout, env=child_env())


def assert_killed(child: subprocess.CompletedProcess[str]) -> None:
    """The child died by SIGKILL (else its stderr's tail says why not)."""
    assert child.returncode == -signal.SIGKILL, \
        f"exit {child.returncode}, not SIGKILL: {child.stderr[-2000:]}"
