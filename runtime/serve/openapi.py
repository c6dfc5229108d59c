"""The parts of the OpenAPI document the framework cannot infer: /v1/caption takes either a
multipart upload or a JSON body of paths, and every error is `{"error": "one line"}`. FastAPI
serves the whole document at /openapi.json and renders it at /docs."""

from __future__ import annotations

from typing import Any

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
BEAM = {"type": "integer", "minimum": 1, "default": 3, "description": "Beam size (1 = greedy); at most "
        "the server's --max-beam. Requests with different beams never share a batch."}
BANDS = {"type": "string", "example": "4,3,2", "description": "1 or 3 band numbers of multiband images, "
         "counted from 1 (default: the first three, or the only one)."}
IMAGE = {"type": "string", "format": "binary", "description": "PNG, JPEG or TIFF/GeoTIFF file."}
PATH = {"type": "string", "description": "Path relative to the server's --allow-paths folder."}

CAPTION_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["before", "after"],
        "properties": {"before": IMAGE, "after": IMAGE, "beam": BEAM, "bands": BANDS}}},
    "application/json": {"schema": {
        "type": "object", "required": ["before", "after"],
        "properties": {"before": PATH, "after": PATH, "beam": BEAM, "bands": BANDS},
        "description": "Only when the server was started with --allow-paths DIR."}},
}}}

CAPTION_ANSWER = {"type": "object", "properties": {
    "caption": {"type": "string"},
    "score": {"type": "number", "description": "Length-normalised log-probability of the caption."},
    "tokens": {"type": "array", "items": {"type": "integer"}},
    "beams": {"type": "array", "items": {"type": "object", "properties": {
        "caption": {"type": "string"}, "score": {"type": "number"}}}},
    "timing_ms": {"type": "object", "additionalProperties": {"type": "number"}, "description":
                  "load (model, once), read, preprocess, queue, encode and decode (of the batch), total."},
}}

SEARCH_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["query"],
    "properties": {"query": {"type": "string", "example": "a road is built through the trees"},
                   "top_k": {"type": "integer", "minimum": 1, "default": 10}}}}}}}

HIT = {"type": "object", "properties": {
    "rank": {"type": "integer"}, "score": {"type": "number"}, "id": {"type": "string"},
    "before": {"type": "string"}, "after": {"type": "string"}, "metadata": {"type": "object"}}}


def json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Documented error responses, all `{"error": ...}`."""
    text = {400: "Unreadable image, size mismatch or malformed body.", 403: "Path outside --allow-paths, "
            "or path mode off.", 404: "No index loaded.", 413: "Body over --max-upload-mb.",
            415: "Neither multipart/form-data nor JSON.", 422: "Bad or unknown parameter.",
            503: "Queue full, model loading or shutting down (see Retry-After)."}
    return {s: json_response(text[s], ERROR) for s in statuses}


CAPTION_RESPONSES = {200: json_response("The `rsicrc caption --json` object; header X-Batch-Size: pairs "
                                        "in the batch it ran in.", CAPTION_ANSWER),
                     **errors(400, 403, 413, 415, 422, 503)}
SEARCH_RESPONSES = {200: json_response("The `rsicrc search --json` list, best first.",
                                       {"type": "array", "items": HIT}), **errors(400, 404, 413, 422, 503)}
