"""An ``mlflow server`` app plugin: the artifact API cannot change a registered model.

MLflow's artifact proxy accepts writes from any client: ``PUT`` and ``DELETE`` on
``/api/2.0/mlflow-artifacts/artifacts/<path>``, multipart uploads
(``/api/2.0/mlflow-artifacts/mpu/...``) and the UI's ``/ajax-api/2.0/mlflow/upload-artifact``.
Through them a client could overwrite the files of the version that holds ``champion``
after it was verified. With this app every such write whose path lies under (or above) the
files of a registered model version is refused with HTTP 403 before MLflow sees it::

    mlflow server --app-name privacy-gate \\
        --backend-store-uri sqlite:///mlflow.db \\
        --registry-store-uri privacygate+sqlite:///mlflow.db

It works with uvicorn (MLflow's default: a middleware on the FastAPI app, which also
serves the native artifact routes) and with gunicorn or waitress (a Flask
``before_request`` hook). Unregistered models and runs are written as before. Consumers
still verify what they load (``privacy-gate verify``): this closes the server's own API,
not direct access to the storage behind it.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import urllib.parse
from collections.abc import Iterable
from typing import Any

from privacy_gate.mlflow import _compat
from privacy_gate.mlflow.server_audit import clean_artifact_path, relative_artifact_path

__all__ = ["ArtifactGuard", "create_app", "refusal_for"]

_LOG = logging.getLogger(__name__)
_PROXY_WRITE = re.compile(
    r"/(?:ajax-)?api/2\.0/mlflow-artifacts/(?:artifacts|mpu/(?:create|complete|abort))/(.*)$"
)
_UI_UPLOAD = re.compile(r"/ajax-api/2\.0/mlflow/upload-artifact$")
_WRITES = frozenset({"PUT", "POST", "DELETE", "PATCH"})


def _overlaps(target: str, location: str) -> bool:
    """True when writing at ``target`` would change a file under ``location``: the same
    path, a file inside it, or a folder above it (a delete of ``1/models``)."""
    if not target or target == location:
        return True
    return target.startswith(location + "/") or location.startswith(target + "/")


def _resolve_runs_uri(uri: str, tracking: Any, cache: dict[str, str]) -> str:
    """``runs:/<run id>/<path>`` -> the run's artifact URI + path (MLflow stores the
    ``runs:/`` form as the location of a version registered from a run's folder)."""
    if not uri.startswith("runs:/"):
        return uri
    run_id, _, path = uri.removeprefix("runs:/").partition("/")
    if run_id not in cache:
        cache[run_id] = str(tracking.get_run(run_id).info.artifact_uri).rstrip("/")
    return f"{cache[run_id]}/{path}" if path else cache[run_id]


def _protected_holder(target: str, locations: Iterable[tuple[str, int, str]]) -> str | None:
    destination = _compat.server_artifact_destination()
    tracking, _ = _compat.server_stores()
    runs: dict[str, str] = {}
    for name, version, uri in locations:
        location = relative_artifact_path(_resolve_runs_uri(uri, tracking, runs), destination)
        if location is not None and _overlaps(target, location):
            return f"{name!r} version {version}"
    return None


def _as_mlflow_writes(raw: str) -> list[str]:
    """``raw`` as routed and as MLflow's handlers decode it before writing (repeatedly:
    ``%25256D`` is ``m`` to them)."""
    return list(
        dict.fromkeys(
            [clean_artifact_path(raw), clean_artifact_path(_compat.mlflow_artifact_path(raw))]
        )
    )


def _targets(method: str, path: str, query: str) -> list[str]:
    """The proxy paths a write request may change; empty for a request that writes
    nothing. A path MLflow itself refuses raises (and the guard refuses it too)."""
    if method not in _WRITES:
        return []
    match = _PROXY_WRITE.search(path)
    if match is not None:
        return _as_mlflow_writes(match.group(1))
    if _UI_UPLOAD.search(path) is not None:
        args = urllib.parse.parse_qs(query)
        run_id, relative = args.get("run_uuid", [""])[0], args.get("path", [""])[0]
        if not run_id:
            return []  # MLflow answers 400 itself
        tracking, _ = _compat.server_stores()
        root = str(tracking.get_run(run_id).info.artifact_uri).rstrip("/")
        found = []
        for decoded in _as_mlflow_writes(relative):
            where = relative_artifact_path(
                f"{root}/{decoded}", _compat.server_artifact_destination()
            )
            if where is None:
                raise ValueError(f"the run's artifact root {root!r} is not served by the proxy")
            found.append(where)
        return found
    return []


def refusal_for(method: str, path: str, query: str = "") -> str | None:
    """Why the request must be refused (it writes a registered version's files), or None.
    Fails closed: a request whose target cannot be worked out is refused."""
    try:
        targets = _targets(method.upper(), path, query)
        if not targets:
            return None
        _, registry = _compat.server_stores()
        locations = _compat.registered_locations(getattr(registry, "inner", registry))
        found = [(t, _protected_holder(t, locations)) for t in targets]
        target, holder = next(((t, h) for t, h in found if h is not None), (targets[0], None))
    except Exception as exc:
        _LOG.error("privacy-gate artifact guard: cannot check %s %s: %s", method, path, exc)
        return (
            f"privacy-gate could not check whether this write changes a registered model's "
            f"files ({type(exc).__name__}); it is refused."
        )
    if holder is None:
        return None
    message = (
        f"The artifact path {target!r} holds the files of registered model {holder}; "
        "privacy-gate keeps a registered version's files unchanged (its audit is bound to "
        "their bytes). HINT: log a new model and register it as a new version."
    )
    _LOG.error("privacy-gate artifact guard refused %s %s: %s", method, path, message)
    return message


def _body(message: str) -> dict[str, str]:
    return {"error_code": "PERMISSION_DENIED", "message": message}


def create_app(app: Any = None) -> Any:
    """The MLflow server app with the artifact guard (entry point ``mlflow.app``:
    ``privacy-gate``)."""
    from flask import jsonify, request

    if app is None:
        from mlflow.server import app as flask_app
    else:
        flask_app = app

    def flask_guard() -> Any:
        refusal = refusal_for(request.method, request.path, request.query_string.decode())
        if refusal is None:
            return None
        response = jsonify(_body(refusal))
        response.status_code = 403
        return response

    flask_app.before_request(flask_guard)
    _LOG.warning("privacy-gate artifact guard active: registered versions' files are read-only")
    if _compat.server_gateway_interface() != "uvicorn":
        return flask_app
    from mlflow.server.fastapi_app import create_fastapi_app

    fastapi_app = create_fastapi_app(flask_app)
    fastapi_app.add_middleware(ArtifactGuard)
    return fastapi_app


class ArtifactGuard:
    """ASGI middleware: a write under a registered version's files is refused before the
    app sees it. The request body is spooled first (to disk past 8 MiB) and the check is
    made again once it is complete, so a slow upload started before the model was
    registered cannot finish over it; only then is the body replayed to MLflow."""

    SPOOL_BYTES = 8 * 1024 * 1024

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from starlette.concurrency import run_in_threadpool

        if scope["type"] != "http" or scope["method"].upper() not in _WRITES:
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        refusal = await run_in_threadpool(refusal_for, method, path, query)
        if refusal is None and await run_in_threadpool(_writes_artifacts, method, path, query):
            with tempfile.SpooledTemporaryFile(max_size=self.SPOOL_BYTES) as body:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body.write(message.get("body", b""))
                    if not message.get("more_body", False):
                        break
                refusal = await run_in_threadpool(refusal_for, method, path, query)
                if refusal is None:
                    body.seek(0)
                    await self.app(scope, _replay(body), send)
                    return
        if refusal is None:
            await self.app(scope, receive, send)
            return
        payload = json.dumps(_body(refusal)).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(payload)).encode())]  # fmt: skip
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _writes_artifacts(method: str, path: str, query: str) -> bool:
    try:
        return bool(_targets(method.upper(), path, query))
    except Exception:
        return True


def _replay(body: Any) -> Any:
    """An ASGI ``receive`` that hands the spooled body back in chunks, then waits."""
    import anyio

    async def receive() -> dict[str, Any]:
        chunk = body.read(1 << 20)
        if chunk:
            return {"type": "http.request", "body": chunk, "more_body": True}
        if not getattr(receive, "done", False):
            receive.done = True  # type: ignore[attr-defined]
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep_forever()  # as a client that stays connected
        return {"type": "http.disconnect"}  # pragma: no cover

    return receive
