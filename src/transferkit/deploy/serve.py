"""``transferkit serve``: a run directory or an exported ``.onnx`` file behind a small HTTP API.

``POST /predict`` takes an uploaded file (image, clip) or, for text models, JSON
``{"text": …}`` / ``{"texts": […]}``, and answers the top-k labels with probabilities.
``GET /health`` and ``GET /model`` (classes, preprocessing, the run's metrics) say what is
served, and ``/`` is one plain HTML page to drop a file on or type a text into. Uploads are
size-limited; anything unreadable is a 4xx with the reason, never a 500.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoint's annotations
# (``request: Request``) at run time, and Request is imported only when the app is built.
import json
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from transferkit.deploy.onnx_model import OnnxModel
from transferkit.errors import TransferkitError
from transferkit.modalities import Modality, Sample

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

    def predict_samples(self, samples: Sequence[Sample], top_k: int = 3) -> list[dict[str, Any]]:
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


def create_app(predictor: Predictor, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> Any:
    """The FastAPI application (tests call it in-process; ``serve`` runs it with uvicorn)."""
    from transferkit.extras import require

    require("fastapi", "transferkit serve")  # one line naming the extra, not a traceback
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse

    app = FastAPI(title="transferkit", docs_url="/docs", redoc_url=None)
    is_text = predictor.modality.literal_inputs

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/model")
    def model() -> dict[str, Any]:
        return {"modality": predictor.modality.name, **predictor.describe()}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
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
        body = await _read_body(request, MAX_JSON_BYTES if is_json else max_upload_bytes)
        if is_json:
            return {"predictions": _run(predictor, _texts(_json(body)), top_k)}
        request._body = body  # Starlette's form parser reads a body already received from here
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(422, "no file in the form field 'file'")
        data = await upload.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"file larger than {max_upload_bytes // 2**20} MiB")
        name = Path(upload.filename or "upload").name
        if is_text:
            text = data.decode("utf-8", errors="replace")
            return {"predictions": _run(predictor, [Sample(Path(name), 0, text)], top_k)}
        return {"predictions": _predict_file(predictor, name, data, top_k)}

    return app


async def _read_body(request: Any, limit: int) -> bytes:
    """The body, received chunk by chunk and refused (413) as soon as it passes ``limit``:
    a declared length is checked first, and a chunked upload never arrives whole first."""
    from fastapi import HTTPException

    too_large = HTTPException(413, f"request larger than {limit / 2**20:g} MiB")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
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
    return [Sample(Path("<text>"), 0, t) for t in texts]  # literal texts: never read as file paths


def _run(predictor: Predictor, samples: list[Sample], top_k: int) -> list[dict[str, Any]]:
    from fastapi import HTTPException

    try:
        return predictor.predict_samples(samples, top_k)
    except (TransferkitError, OSError, ValueError, SyntaxError) as exc:
        raise HTTPException(422, f"could not read the input: {exc}") from exc


def _predict_file(predictor: Predictor, name: str, data: bytes, top_k: int) -> list[dict[str, Any]]:
    from fastapi import HTTPException

    suffix = Path(name).suffix.lower()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        problem = predictor.modality.check_file(path)
        if problem is not None:
            raise HTTPException(422, f"{name}: {problem}")
        rows = _run(predictor, [Sample(path, 0)], top_k)
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
