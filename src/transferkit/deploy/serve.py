"""``transferkit serve``: a run directory or an exported ``.onnx`` file behind a small HTTP API.

``POST /predict`` takes one uploaded file (image, clip; a form with a second file is a 400) or,
for text models, JSON ``{"text": …}`` / ``{"texts": […]}``, and answers the top-k labels with
probabilities.
``GET /health`` and ``GET /model`` (classes, preprocessing, the run's metrics) say what is
served, and ``/`` is one plain HTML page to drop a file on or type a text into. Uploads are
size-limited; anything unreadable is a 4xx with the reason, never a 500. Parsing, decoding and
predicting run in a bounded worker pool (``serve_pool``), never on the event loop: a full queue
is a 503 with ``Retry-After``, a request past its time limit a 504. A body is received before
the request takes a place in the queue, within ``--body-timeout`` (408 past it), so slow
senders cannot hold the queue.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoint's annotations
# (``request: Request``) at run time, and Request is imported only when the app is built.
import asyncio
import contextlib
import json
import math
import re
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from transferkit.deploy.onnx_graph import InferenceError
from transferkit.deploy.onnx_model import OnnxModel
from transferkit.deploy.serve_http import client_key
from transferkit.deploy.serve_pool import Busy, InferencePool, Intake, ServeLimits
from transferkit.errors import TransferkitError
from transferkit.modalities import Modality, Sample
from transferkit.modalities.image_io import declared_pixels

if TYPE_CHECKING:
    from python_multipart.multipart import File

MAX_UPLOAD_BYTES = 20 * 2**20
MAX_TEXTS = 256
MAX_JSON_BYTES = 2 * 2**20  # a JSON body holds texts: far less than an upload
MAX_JSON_DEPTH = 8


class Predictor(Protocol):
    """What serve needs of a model: run directories and ONNX files both provide it."""

    modality: Modality

    def predict_samples(self, samples: Sequence[Sample], top_k: int = 3) -> list[dict[str, Any]]: ...

    def describe(self) -> dict[str, Any]: ...


class OnnxPredictor:
    def __init__(self, model: OnnxModel) -> None:
        self.model, self.modality = model, model.modality

    def predict_samples(self, samples: Sequence[Sample], top_k: int = 3) -> list[dict[str, Any]]:
        return self.model.predict_samples(samples, top_k)

    def describe(self) -> dict[str, Any]:
        meta = self.model.meta
        keys = ("classes", "tasks", "preprocessing", "metrics", "backbone", "strategy")
        return {"format": "onnx", "file": self.model.path.name, **{k: meta[k] for k in keys if k in meta}}


class RunPredictor:
    """A run directory (PyTorch), predicting exactly as ``transferkit predict`` does."""

    def __init__(self, run_dir: Path) -> None:
        from transferkit.api import load

        self.trained = load(run_dir)
        self.modality = self.trained.modality
        # one prediction at a time whatever serve --workers says: a transformers tokenizer fails
        # ("Already borrowed") when two threads use it at once, and torch spreads one call over
        # every core anyway (an ONNX session and its per-call tokenizer are safe to share)
        self._lock = threading.Lock()

    def predict_samples(self, samples: Sequence[Sample], top_k: int = 3) -> list[dict[str, Any]]:
        with self._lock:
            return [p.row() for p in self.trained.predict_samples(samples, top_k)]

    def describe(self) -> dict[str, Any]:
        card = self.trained.config
        keys = ("classes", "preprocessing", "metrics", "backbone", "strategy")
        return {"format": "pytorch", **{k: card[k] for k in keys if k in card}}


def load_predictor(source: str | Path) -> Predictor:
    source = Path(source)
    if source.suffix == ".onnx":
        return OnnxPredictor(OnnxModel(source))
    if source.is_dir():
        return RunPredictor(source)
    raise TransferkitError(f"{source} is neither a run directory nor an .onnx file")


def _refused(busy: Busy, limits: ServeLimits) -> tuple[int, str]:
    """429 when this client holds its share of the queue, 503 when the whole queue is taken."""
    if busy.own:
        return 429, (
            f"this client has {busy.admitted} requests running or waiting, its share of the queue "
            f"(serve --queue-per-client {limits.client_queue}); wait for an answer"
        )
    return 503, f"the server is busy ({busy.admitted} requests running or waiting, serve --queue {limits.queue})"


def create_app(
    predictor: Predictor, max_upload_bytes: int = MAX_UPLOAD_BYTES, limits: ServeLimits | None = None
) -> Any:
    """The FastAPI application (tests call it in-process; ``serve`` runs it with uvicorn)."""
    from transferkit.extras import require

    require("fastapi", "transferkit serve")  # one line naming the extra, not a traceback
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse, JSONResponse

    limits = limits or ServeLimits()
    pool = InferencePool(limits)
    # bodies being received hold at most as much memory as those admitted may
    intake = Intake(limits.queue * max_upload_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        pool.shutdown()

    app = FastAPI(title="transferkit", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.state.pool, app.state.intake = pool, intake
    is_text = predictor.modality.literal_inputs

    @app.exception_handler(Exception)
    async def failed(_: Request, exc: Exception) -> Any:
        # what no other handler answers: Starlette's own answer is a bare text 500, where a client
        # reading JSON should find the same shape as every other error (the traceback still goes
        # to the server's log; its text, which may name the server's files, does not go out)
        reason = f"the server failed on this request ({type(exc).__name__}); its log has the details"
        return JSONResponse({"detail": reason}, status_code=500)

    # async: answered on the event loop itself, so neither busy workers nor a full thread pool
    # (where FastAPI runs plain `def` endpoints) can delay them
    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/model")
    async def model() -> dict[str, Any]:
        return {"modality": predictor.modality.name, **predictor.describe()}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE.replace("{{literal}}", "true" if is_text else "false")

    @app.post("/predict")
    async def predict(request: Request, top_k: int = 3) -> dict[str, Any]:
        if not 1 <= top_k <= 100:
            raise HTTPException(422, "top_k must be between 1 and 100")
        kind = request.headers.get("content-type", "")
        is_json = kind.startswith("application/json")
        if is_json and not is_text:
            raise HTTPException(415, f"this {predictor.modality.name} model takes a file upload (multipart)")
        if not is_json and not kind.startswith("multipart/form-data"):
            raise HTTPException(415, "send a file as multipart/form-data (field 'file') or JSON {\"text\": …}")
        arrived = time.monotonic()
        client = client_key(tuple(request.client) if request.client else None)
        try:
            pool.refuse_if_full(client)  # at once, rather than after receiving the upload
            # received outside the queue (a slow sender holds the bytes it sent, never a place),
            # then admitted: the queue bounds the bodies waiting for a worker, the intake those arriving
            body = await _receive(request, MAX_JSON_BYTES if is_json else max_upload_bytes, intake, limits.body_s)
            place = pool.admit(arrived, client)
        except Busy as busy:
            status, reason = _refused(busy, limits)
            raise HTTPException(status, reason, headers={"Retry-After": str(busy.retry_after)}) from None
        with place:
            work: Callable[[], list[dict[str, Any]]]
            if is_json:
                work = partial(_answer_json, predictor, body, top_k)
            else:
                work = partial(_answer_upload, predictor, kind, body, max_upload_bytes, top_k, limits.max_pixels)
            try:
                return {"predictions": await place.run(work)}
            except TimeoutError:
                reason = f"no answer within {limits.timeout_s:g} s (serve --timeout): the server is overloaded"
                raise HTTPException(504, reason) from None

    return app


async def _receive(request: Any, limit: int, intake: Intake, seconds: float) -> bytes:
    """The body, received chunk by chunk: refused (413) as soon as it passes ``limit`` (a declared
    length is checked first, and a chunked upload never arrives whole first), 408 unless whole
    within ``seconds``, 503 when the bodies being received together would pass ``intake``'s budget.
    Its bytes leave the intake when this returns: an admitted body counts against the queue."""
    from fastapi import HTTPException

    too_large = HTTPException(413, f"request larger than {limit / 2**20:g} MiB")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                if size + len(chunk) > limit:
                    raise too_large
                if not intake.take(len(chunk)):
                    # the budget frees within `seconds`, when the bodies now arriving end one way or the other
                    reason = "the server is receiving too many uploads at once"
                    raise HTTPException(503, reason, headers={"Retry-After": str(math.ceil(seconds))})
                size += len(chunk)
                chunks.append(chunk)
    except TimeoutError:
        reason = f"the request body did not arrive within {seconds:g} s (serve --body-timeout, at most --timeout)"
        raise HTTPException(408, reason) from None
    finally:
        intake.give(size)
    return b"".join(chunks)


def _json(raw: bytes) -> Any:
    from fastapi import HTTPException

    if json_depth(raw) > MAX_JSON_DEPTH:
        raise HTTPException(400, f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise HTTPException(400, f"the body is not valid JSON ({exc})") from exc


_STRUCTURE = re.compile(rb'[\[\]{}"\\]')


def json_depth(raw: bytes) -> int:
    """How deeply ``raw`` nests arrays and objects (brackets inside strings do not count),
    measured without parsing: a parser recursing 100,000 levels deep is what it guards."""
    depth = deepest = 0
    in_string = False
    escaped_at = -1  # the offset of the byte a backslash escapes
    for match in _STRUCTURE.finditer(raw):
        char, at = match.group(), match.start()
        if in_string:
            if at == escaped_at:
                continue
            if char == b"\\":
                escaped_at = at + 1
            elif char == b'"':
                in_string = False
        elif char == b'"':
            in_string = True
        elif char in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in b"]}":
            depth -= 1
    return deepest


def _texts(body: Any) -> list[Sample]:
    from fastapi import HTTPException

    texts = None
    if isinstance(body, dict):
        one = body.get("text")
        texts = body.get("texts", None if one is None else [one])
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise HTTPException(422, 'send {"text": "…"} or {"texts": ["…", …]} with non-empty strings')
    if len(texts) > MAX_TEXTS:
        raise HTTPException(413, f"at most {MAX_TEXTS} texts per request")
    for i, text in enumerate(texts):
        # JSON escapes can spell a lone surrogate ("\ud800"): no tokenizer reads it, and the
        # answer, which quotes the text, could not be encoded
        if not text.isascii() and _SURROGATE.search(text):
            raise HTTPException(422, f"text {i + 1} is not valid Unicode (a lone surrogate such as \\ud800)")
    return [Sample(Path("<text>"), 0, t) for t in texts]  # literal texts: never read as file paths


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _answer_json(predictor: Predictor, body: bytes, top_k: int) -> list[dict[str, Any]]:
    return _run(predictor, _texts(_json(body)), top_k)


def _answer_upload(
    predictor: Predictor, content_type: str, body: bytes, limit: int, top_k: int, max_pixels: int
) -> list[dict[str, Any]]:
    from fastapi import HTTPException

    name, data = _form_file(content_type, body, limit)
    if not predictor.modality.literal_inputs:
        return _predict_file(predictor, name, data, top_k, max_pixels)
    text = data.decode("utf-8", errors="replace")
    if not text.strip():
        raise HTTPException(422, f"{name} holds no text")
    return _run(predictor, [Sample(Path(name), 0, text)], top_k)


def _form_file(content_type: str, body: bytes, limit: int) -> tuple[str, bytes]:
    """The name and bytes of the form's ``file`` field. Parsed here, on a worker, rather than by
    Starlette's ``request.form()`` on the event loop (20 MiB hold the loop for ~0.2 s there)."""
    from fastapi import HTTPException

    from transferkit.extras import require

    multipart = require("python_multipart.multipart", "transferkit serve")
    files: list[File] = []

    def take(file: "File") -> None:
        files.append(file)  # kept first, so that `finally` closes it too
        if len(files) > 1:  # stop parsing at the second: nothing of the rest is read
            raise _SecondFile

    try:
        # bodies are already in memory and bounded by `limit`: no file spills to disk
        config = {"MAX_MEMORY_FILE_SIZE": limit + 1}
        parser = multipart.create_form_parser({"Content-Type": content_type.encode("latin-1")}, None, take, config)
        parser.write(body)
        parser.finalize()
        upload = next((f for f in files if f.field_name == b"file"), None)
        if upload is None:
            raise HTTPException(422, "no file in the form field 'file'")
        upload.file_object.seek(0)
        data = upload.file_object.read()
        name = Path((upload.file_name or b"").decode("utf-8", errors="replace")).name[:MAX_NAME] or "upload"
    except _SecondFile:
        # /predict answers one upload (the page sends one); a client that sends more must learn
        # that the rest were not predicted, rather than get one answer for the first
        raise HTTPException(400, ONE_FILE) from None
    except (ValueError, UnicodeError) as exc:  # python-multipart's parse errors are ValueErrors
        raise HTTPException(400, f"the form could not be read ({str(exc)[:200]})") from None
    finally:
        for file in files:
            file.close()
    return name, data


class _SecondFile(Exception):
    """A form's second file: parsing stops there."""


ONE_FILE = "one file per request (form field 'file'): this form holds more; send each file in its own request"
MAX_NAME = 200
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,16}")


def _run(predictor: Predictor, samples: list[Sample], top_k: int) -> list[dict[str, Any]]:
    from fastapi import HTTPException

    try:
        return predictor.predict_samples(samples, top_k)
    except InferenceError as exc:  # the model failed, not the input: the server's fault, said in a line
        raise HTTPException(500, f"the model could not run: {exc.reason}") from None
    except (TransferkitError, OSError, ValueError, SyntaxError) as exc:
        raise HTTPException(422, f"could not read the input: {exc}") from exc


def _predict_file(predictor: Predictor, name: str, data: bytes, top_k: int, max_pixels: int) -> list[dict[str, Any]]:
    from fastapi import HTTPException

    suffix = Path(name).suffix.lower()
    # the client's name only lends the suffix that tells the format: a NUL, a separator or a
    # very long suffix would make writing the temporary file fail
    suffix = suffix if _SUFFIX.fullmatch(suffix) else ""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        declared = declared_pixels(path)
        if declared > max_pixels:
            raise HTTPException(
                413,
                f"{name} declares {declared:,} pixels or more; the most served is {max_pixels:,} (--max-pixels)",
            )
        try:  # every decoding of the upload, its check included: one that needs more memory than there is is 413
            problem = predictor.modality.check_file(path)
            if problem is not None:
                raise HTTPException(422, f"{name}: {problem}")
            rows = _run(predictor, [Sample(path, 0)], top_k)
        except MemoryError:
            raise HTTPException(413, f"{name} is too large to decode") from None
    for row in rows:
        row["path"] = name
    return rows


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>transferkit</title>
<style>
body { font: 15px system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; color: #222; }
#drop { border: 2px dashed #888; border-radius: 8px; padding: 2rem; text-align: center; }
#drop.over { background: #eef; } textarea { width: 100%; height: 6rem; }
table { border-collapse: collapse; margin-top: 1rem; } td, th { padding: .2rem .8rem; text-align: left; }
</style></head>
<body>
<h1>transferkit</h1>
<p id="model">loading the model…</p>
<div id="drop">Drop a file here, or <input id="file" type="file"></div>
<p id="text-box" hidden><textarea id="text" placeholder="Type or paste a text"></textarea><br>
<button id="send">Classify</button></p>
<div id="result"></div>
<script>
const literal = {{literal}};  // the model reads texts: a text box instead of a file
const cell = (row, tag, text) => { const c = document.createElement(tag); c.textContent = text; row.appendChild(c); };
const show = (rows) => {  // labels come from the model's files: text nodes only, never parsed as HTML
  const r = rows[0];
  const top = r.top ||
    Object.keys(r.labels).map(t => ({label: t + ": " + r.labels[t], probability: r.probabilities[t]}));
  const table = document.createElement("table");
  table.id = "answer";
  const head = table.insertRow();
  cell(head, "th", "label"); cell(head, "th", "probability");
  for (const t of top) {
    const row = table.insertRow();
    cell(row, "td", t.label); cell(row, "td", t.probability.toFixed(3));
  }
  document.getElementById("result").replaceChildren(table);
};
const fail = (text) => { document.getElementById("result").textContent = "error: " + text; };
const post = (body, headers) => fetch("predict", {method: "POST", body, headers})
  .then(r => r.json().then(j => r.ok ? show(j.predictions) : fail(j.detail)));
const sendFile = (f) => { const form = new FormData(); form.append("file", f); post(form); };
const sendText = (t) => post(JSON.stringify({text: t}), {"content-type": "application/json"});
fetch("model").then(r => r.json()).then(m => {
  const names = m.classes || Object.keys(m.tasks || {});
  document.getElementById("model").textContent = `${m.modality} model (${m.format}): ${names.join(", ")}`;
});
if (literal) {
  document.getElementById("text-box").hidden = false;
  document.getElementById("send").onclick = () => sendText(document.getElementById("text").value);
  const given = new URLSearchParams(location.search).get("text");
  if (given) { document.getElementById("text").value = given; sendText(given); }
}
const drop = document.getElementById("drop");
drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = (e) => { e.preventDefault(); drop.classList.remove("over"); sendFile(e.dataTransfer.files[0]); };
document.getElementById("file").onchange = (e) => sendFile(e.target.files[0]);
</script>
</body></html>
"""
