import json
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import tyro
from werkzeug.serving import make_server

from rlft.feedback.batch_folder import MANIFEST, write_atomic, write_batch
from rlft.feedback.label_server import PAGE, LabelConfig, create_app

GROUPS, K = 6, 3


@pytest.fixture
def folder(tmp_path):
    """A batch of random tensors in the folder format: no model needed to test the server."""
    g = torch.Generator().manual_seed(0)
    samples = {
        "latents": torch.randn(GROUPS * K, 4, 4, 2, 2, generator=g),  # (B, S+1, C, h, w), 3 steps
        "timesteps": torch.tensor([901, 601, 301]),
        "group": torch.arange(GROUPS).repeat_interleave(K),
        "images": torch.rand(GROUPS * K, 3, 8, 8, generator=g),
    }
    info = {"model": "tiny", "adapter": None, "adapter_sha256": None, "seed": 0, "round": 0, "settings": {}}
    return write_batch(tmp_path / "batch", samples, [f"prompt {i}" for i in range(GROUPS)], info)


def submission(sha: str, group: int = 0, annotator: str = "ann", **changes) -> dict:
    body = {
        "annotator": annotator,
        "group": group,
        "best": f"g{group:04d}-0",
        "worst": f"g{group:04d}-2",
        "deformed": [f"g{group:04d}-1"],
        "unsafe": [],
        "manifest_sha256": sha,
    }
    return body | changes


def test_the_page_and_the_batch_are_served(folder):
    client = create_app(folder).test_client()
    assert b"rlft labelling" in client.get("/").data
    assert client.get("/static/page.js").status_code == 200
    batch = client.get("/api/batch").get_json()
    assert [g["prompt"] for g in batch["groups"]] == [f"prompt {i}" for i in range(GROUPS)]
    image = batch["groups"][1]["images"][2]
    assert image["id"] == "g0001-2"
    assert client.get(image["url"]).data[:4] == b"\x89PNG"


def test_a_relative_folder_serves_its_images_as_the_readme_says(folder, monkeypatch):
    # `jobs/label.py batches/r0`: Flask resolves a relative folder against the package, not the cwd.
    monkeypatch.chdir(folder.parent)
    client = create_app(folder.name).test_client()
    image = client.get("/api/batch").get_json()["groups"][0]["images"][0]
    answer = client.get(image["url"])
    assert answer.status_code == 200 and answer.data[:4] == b"\x89PNG"


def test_a_submission_is_stored_and_counted_in_the_annotators_progress(folder):
    client = create_app(folder).test_client()
    sha = client.get("/api/batch").get_json()["manifest_sha256"]
    answer = client.post("/api/labels", json=submission(sha, group=2))
    assert answer.status_code == 200 and answer.get_json()["labelled"] == 1
    client.post("/api/labels", json=submission(sha, group=2, best="g0002-1"))  # a correction
    mine = client.get("/api/labels?annotator=ann").get_json()
    assert (mine["labelled"], mine["total"]) == (1, GROUPS)
    assert mine["labels"] == [
        {"group": 2, "best": "g0002-1", "worst": "g0002-2", "deformed": ["g0002-1"], "unsafe": []}
    ]
    assert client.get("/api/labels?annotator=bob").get_json()["labelled"] == 0


@pytest.mark.parametrize(
    "changes, status, field",
    [
        ({"group": 99}, 404, "group"),
        ({"group": "0"}, 400, "group"),
        ({"best": "g0001-0"}, 422, "best"),  # an image of another group
        ({"worst": "g0000-0"}, 422, "worst"),  # best == worst
        ({"best": None}, 422, "best"),  # worst without best
        ({"unsafe": ["nope"]}, 422, "unsafe"),
        ({"deformed": "g0000-1"}, 400, "deformed"),
        ({"annotator": ""}, 400, "annotator"),
        ({"annotator": None}, 400, "annotator"),
        ({"manifest_sha256": "0" * 64}, 409, "manifest_sha256"),
    ],
)
def test_malformed_or_stale_submissions_get_a_4xx_json_answer_and_change_nothing(
    folder, changes, status, field
):
    client = create_app(folder).test_client()
    sha = client.get("/api/batch").get_json()["manifest_sha256"]
    client.post("/api/labels", json=submission(sha))
    answer = client.post("/api/labels", json=submission(sha, deformed=[]) | changes)
    assert answer.status_code == status
    assert answer.get_json()["field"] == field and answer.get_json()["error"]
    stored = client.get("/api/labels?annotator=ann").get_json()["labels"]
    assert stored == [
        {"group": 0, "best": "g0000-0", "worst": "g0000-2", "deformed": ["g0000-1"], "unsafe": []}
    ]


def test_a_body_that_is_not_json_is_refused(folder):
    answer = create_app(folder).test_client().post("/api/labels", data="best=1")
    assert answer.status_code == 400 and answer.get_json()["field"] == "body"


def test_a_page_loaded_before_the_manifest_changed_cannot_submit(folder):
    client = create_app(folder).test_client()
    sha = client.get("/api/batch").get_json()["manifest_sha256"]
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["groups"][0]["prompt"] = "another prompt"
    write_atomic(folder / MANIFEST, json.dumps(manifest).encode())
    answer = client.post("/api/labels", json=submission(sha))
    assert answer.status_code == 409 and "reload" in answer.get_json()["error"]
    assert client.get("/api/labels?annotator=ann").get_json()["labelled"] == 0


def test_labels_survive_a_server_restart(folder):
    first = create_app(folder).test_client()
    sha = first.get("/api/batch").get_json()["manifest_sha256"]
    first.post("/api/labels", json=submission(sha, group=4))
    restarted = create_app(folder).test_client()
    assert restarted.get("/api/labels?annotator=ann").get_json()["labels"][0]["group"] == 4


def test_two_annotators_submitting_at_once_through_the_test_client_lose_nothing(folder):
    app = create_app(folder)
    sha = app.test_client().get("/api/batch").get_json()["manifest_sha256"]
    jobs = [(who, group) for who in ("ann", "bob") for group in range(GROUPS)] * 3  # repeats: same rows

    def post(job):
        who, group = job
        return app.test_client().post("/api/labels", json=submission(sha, group, who)).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(post, jobs)) == {200}
    client = app.test_client()
    for who in ("ann", "bob"):
        assert client.get(f"/api/labels?annotator={who}").get_json()["labelled"] == GROUPS


def test_two_annotators_submitting_at_once_over_http_lose_nothing(folder):
    server = make_server("127.0.0.1", 0, create_app(folder), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        sha = json.load(urllib.request.urlopen(f"{url}/api/batch"))["manifest_sha256"]

        def post(job):
            body = json.dumps(submission(sha, job[1], job[0])).encode()
            request = urllib.request.Request(
                f"{url}/api/labels", body, headers={"Content-Type": "application/json"}
            )
            return urllib.request.urlopen(request).status

        jobs = [(who, group) for who in ("ann", "bob") for group in range(GROUPS)]
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(post, jobs)) == {200}
        for who in ("ann", "bob"):
            assert (
                json.load(urllib.request.urlopen(f"{url}/api/labels?annotator={who}"))["labelled"] == GROUPS
            )
    finally:
        server.shutdown()


def test_the_server_binds_loopback_unless_told_otherwise():
    assert tyro.cli(LabelConfig, args=["some/folder"]).host == "127.0.0.1"
    assert tyro.cli(LabelConfig, args=["f", "--host", "0.0.0.0"]).host == "0.0.0.0"


def test_a_folder_without_a_batch_is_refused_before_serving(tmp_path):
    with pytest.raises(ValueError, match="manifest.json"):
        create_app(tmp_path)


def test_a_body_over_the_limit_is_refused_with_413_and_nothing_stored(folder):
    client = create_app(folder).test_client()
    sha = client.get("/api/batch").get_json()["manifest_sha256"]
    huge = json.dumps(submission(sha) | {"padding": "x" * 200_000})
    answer = client.post("/api/labels", data=huge, content_type="application/json")
    assert answer.status_code == 413 and "error" in answer.get_json()
    assert client.get("/api/labels?annotator=ann").get_json()["labelled"] == 0


def test_only_requests_addressed_to_this_machine_are_answered(folder):
    client = create_app(folder, allowed_hosts=("labels.lan",)).test_client()
    for host in ("127.0.0.1:8000", "localhost", "[::1]:8000", "10.1.2.3:8000", "labels.lan:8000"):
        assert client.get("/api/batch", headers={"Host": host}).status_code == 200, host
    rebound = client.post("/api/labels", json={}, headers={"Host": "evil.example:8000"})  # DNS rebinding
    assert (
        rebound.status_code == 403 and "'evil.example:8000' is not this server" in rebound.get_json()["error"]
    )


def test_a_swapped_image_is_not_served_and_is_named(folder):
    client = create_app(folder).test_client()
    (folder / "images" / "g0000-0.png").write_bytes((folder / "images" / "g0000-1.png").read_bytes())
    answer = client.get("/images/g0000-0.png")
    assert answer.status_code == 409 and "does not match the manifest" in answer.get_json()["error"]
    assert client.get("/images/g0000-1.png").status_code == 200
    assert client.get("/images/..%2Fmanifest.json").status_code == 404  # only the batch's own images


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m["groups"][0]["images"][0].update(file="../../../etc/passwd"),
        lambda m: m["groups"].append("not a group"),
        lambda m: m.pop("groups"),
    ],
)
def test_a_hand_edited_manifest_is_a_clear_error_at_start(folder, change):
    manifest = json.loads((folder / MANIFEST).read_text())
    change(manifest)
    write_atomic(folder / MANIFEST, json.dumps(manifest).encode())
    with pytest.raises(
        ValueError, match=rf"{folder / MANIFEST}: .*\(edited by hand\? sample the batch again\)"
    ):
        create_app(folder)


def test_the_page_never_parses_batch_data_as_html():
    page = (PAGE / "page.js").read_text()
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page
