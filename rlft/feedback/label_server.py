"""The local labelling page: a small Flask app over one batch folder and its SQLite label store.

Flask (already installed with MLflow) rather than aiohttp: request handlers are plain synchronous
functions over sqlite3, which fits a stdlib database with no async driver, and Flask's test client lets
tests post submissions from many threads with no event loop. Werkzeug's threaded server is enough for a
few people on one machine; it binds 127.0.0.1 unless told otherwise.

    GET  /                     the page (rlft/feedback/label_page/: plain HTML, JS and CSS)
    GET  /api/batch            the groups, their prompts and image URLs, and the manifest's sha256
    GET  /api/labels?annotator=NAME   that person's labels and progress
    POST /api/labels           {annotator, group, best, worst, deformed, unsafe, manifest_sha256}
    GET  /images/<file>        the batch's PNGs

A submission that cannot be stored gets a 4xx JSON answer {"error", "field"} and changes nothing:
400 malformed, 404 unknown group, 409 made against another manifest (the folder changed since the page
loaded), 413 a body over 64 KiB, 422 images not in the group or best == worst. Opened to the network
(`--host 0.0.0.0`), the page answers only requests addressed to this machine by an IP address, its own name
or `--allowed-hosts` (403 otherwise): a web page elsewhere that rebinds its own name to this address cannot
post labels. An image whose bytes no longer match the manifest's hash is not served (409).
"""

import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro
from flask import Flask, Response, jsonify, request, send_from_directory
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from rlft.feedback.batch_folder import check_image, read_manifest
from rlft.feedback.labels import (
    Label,
    LabelError,
    check_label,
    connect,
    labelled_groups,
    read_labels,
    save_label,
)

PAGE = Path(__file__).parent / "label_page"
MAX_BODY = 64 * 1024  # a submission is a few hundred bytes


def host_allowed(host_header: str, allowed: tuple[str, ...]) -> bool:
    """Is the Host header this machine: an IP address, localhost, its own name, or one of `allowed`?"""
    name = host_header.rsplit(":", 1)[0] if not host_header.startswith("[") else host_header[1:].split("]")[0]
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    own = {"localhost", socket.gethostname().lower(), socket.getfqdn().lower()}
    return name.lower() in own | {a.lower() for a in allowed}


class Refused(Exception):
    """A submission answered with `status` and nothing stored."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(message)
        self.status, self.field = status, field


def label_json(label: Label) -> dict:
    return {
        "group": label.group,
        "best": label.best,
        "worst": label.worst,
        "deformed": list(label.deformed),
        "unsafe": list(label.unsafe),
    }


def _string_list(body: dict, field: str) -> tuple[str, ...]:
    value = body.get(field, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Refused(400, field, f"{field} must be a list of image ids")
    return tuple(value)


def parse_submission(body: object, manifest: dict, digest: str) -> Label:
    """The label a request body asks to store, or `Refused` saying why not."""
    if not isinstance(body, dict):
        raise Refused(400, "body", "the body must be a JSON object")
    annotator = body.get("annotator")
    if not isinstance(annotator, str) or not annotator.strip():
        raise Refused(400, "annotator", "annotator (a name) is missing")
    if body.get("manifest_sha256") != digest:
        raise Refused(409, "manifest_sha256", "the batch changed since this page loaded: reload the page")
    group = body.get("group")
    if not isinstance(group, int) or isinstance(group, bool):
        raise Refused(400, "group", "group must be an integer")
    if not 0 <= group < len(manifest["groups"]):
        raise Refused(404, "group", f"group {group} is not in this batch")
    for field in ("best", "worst"):
        if body.get(field) is not None and not isinstance(body[field], str):
            raise Refused(400, field, f"{field} must be an image id or null")
    label = Label(
        annotator.strip(),
        group,
        body.get("best"),
        body.get("worst"),
        _string_list(body, "deformed"),
        _string_list(body, "unsafe"),
    )
    try:
        check_label(label, [image["id"] for image in manifest["groups"][group]["images"]])
    except LabelError as error:
        raise Refused(422, error.field, str(error)) from error
    return label


def create_app(folder: str | Path, allowed_hosts: tuple[str, ...] = ()) -> Flask:
    """The labelling app for one batch folder (its manifest is read again on every request)."""
    folder = Path(folder).resolve()  # Flask resolves a relative folder against the package, not the cwd
    read_manifest(folder)  # refuse a folder that holds no batch, or a malformed manifest, before serving
    connect(folder).close()  # create the label store now, not under the first concurrent requests
    app = Flask(__name__, static_folder=str(PAGE), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY

    @app.before_request
    def this_machine_only():
        if not host_allowed(request.host, allowed_hosts):
            message = f"Host {request.host!r} is not this server (see --allowed-hosts)"
            return jsonify({"error": message, "field": None}), 403

    @app.get("/")
    def page():
        return send_from_directory(PAGE, "index.html")

    @app.get("/images/<name>")
    def image(name: str):
        manifest, _ = read_manifest(folder)
        listed = {i["file"]: i for g in manifest["groups"] for i in g["images"]}
        if f"images/{name}" not in listed:
            return jsonify({"error": f"no image {name!r} in this batch", "field": None}), 404
        try:
            data = check_image(folder, listed[f"images/{name}"])
        except ValueError as error:
            return jsonify({"error": str(error), "field": None}), 409
        return Response(data, mimetype="image/png")

    @app.get("/api/batch")
    def batch():
        manifest, digest = read_manifest(folder)
        groups = [
            {
                "group": g["group"],
                "prompt": g["prompt"],
                "images": [{"id": i["id"], "url": f"/{i['file']}"} for i in g["images"]],
            }
            for g in manifest["groups"]
        ]
        keys = ("model", "adapter", "round", "group_size")
        return jsonify({"manifest_sha256": digest, "groups": groups} | {k: manifest.get(k) for k in keys})

    @app.get("/api/labels")
    def labels():
        annotator = request.args.get("annotator", "").strip()
        if not annotator:
            return refused(Refused(400, "annotator", "annotator (a name) is missing"))
        manifest, _ = read_manifest(folder)
        conn = connect(folder)
        try:
            stored = read_labels(conn, annotator)
        finally:
            conn.close()
        return jsonify(
            {
                "labels": [label_json(label) for label, _ in stored],
                "labelled": len(stored),
                "total": len(manifest["groups"]),
            }
        )

    @app.post("/api/labels")
    def submit():
        manifest, digest = read_manifest(folder)
        try:
            label = parse_submission(request.get_json(silent=True), manifest, digest)
        except Refused as error:
            return refused(error)
        conn = connect(folder)
        try:
            save_label(conn, label, digest)
            done = labelled_groups(conn, label.annotator)
        finally:
            conn.close()
        return jsonify({"ok": True, "labelled": done, "total": len(manifest["groups"])})

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        return jsonify({"error": error.description, "field": None}), error.code

    return app


def refused(error: Refused):
    return jsonify({"error": str(error), "field": error.field}), error.status


@dataclass(frozen=True)
class LabelConfig:
    folder: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="FOLDER")]
    """A batch folder written by jobs/sample_groups.py."""
    host: str = "127.0.0.1"
    """Address to listen on; 127.0.0.1 keeps the page on this machine (0.0.0.0 opens it to the network)."""
    port: int = 8000
    """Port to listen on; 0 picks a free one (printed at start)."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names people reach the page by, besides this machine's own name and its IP addresses (a request
    addressed to any other name is refused: a foreign page cannot rebind its name to this server)."""


def check_port(host: str, port: int) -> None:
    """A ValueError naming `port` when this machine cannot listen there (in use, or not its address)."""
    try:
        socket.create_server((host, port)).close()
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise ValueError(
            f"port={port} is not allowed: {reason} on {host}; choose another --port (0 picks a free one)"
        ) from None


def serve(cfg: LabelConfig, log: Callable[[str], None] = print) -> None:
    """Serve the page until interrupted; every label is committed before its answer is sent."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per image fetched
    check_port(cfg.host, cfg.port)  # werkzeug itself would print a paragraph and exit
    server = make_server(cfg.host, cfg.port, create_app(cfg.folder, cfg.allowed_hosts), threaded=True)
    log(f"labelling {cfg.folder} at http://{cfg.host}:{server.server_port}/")
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log("note: the page has no login; anyone who can reach this address can label")
    sys.stdout.flush()  # the address is what a person (or a test) waits for
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
