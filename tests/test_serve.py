"""factlearn serve: the API against `factlearn query`, hot swap under load, micro-batching, the
guard (bad uploads, size and pixel limits, the token) and the start-up refusals."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from factlearn.cli import main  # noqa: E402
from factlearn.errors import UserError  # noqa: E402
from factlearn.query import RunIndex, query_images  # noqa: E402
from factlearn.results import Metrics  # noqa: E402
from factlearn.serve import ServeSettings  # noqa: E402
from factlearn.serve.app import create_app  # noqa: E402
from factlearn.serve.batcher import MicroBatcher  # noqa: E402
from factlearn.serve.launch import listen  # noqa: E402
from factlearn.serve.settings import check_host, is_loopback  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_world, tiny_config) -> Path:
    """A finetune run of two tasks (B1, B2) on the tiny world."""
    from factlearn.config import load_config
    from factlearn.training import train

    out = tmp_path_factory.mktemp("serve") / "run"
    train(tiny_world, load_config(tiny_config, {"method.name": "finetune"}), out, seed=0, device="cpu")
    return out


@pytest.fixture(scope="module")
def images(tiny_world) -> list[Path]:
    return sorted((tiny_world / "images").glob("*.png"))[:4]


def settings(**overrides) -> ServeSettings:
    return ServeSettings(**{"device": "cpu", **overrides})


def upload(*paths: Path) -> list:
    return [("images", (p.name, p.read_bytes(), "image/png")) for p in paths]


def png(width: int, height: int, seed: int = 0) -> bytes:
    noise = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    return buf.getvalue()


def same_answer(got: list[dict], want: list[dict]) -> bool:
    """The same facts in the same order, with the same cosine scores (to float32 rounding)."""
    return ([h["fact"] for h in got] == [h["fact"] for h in want]
            and np.allclose([h["score"] for h in got], [h["score"] for h in want], atol=1e-5))


def without_task(run: Path, dest: Path, task: str) -> Path:
    """A copy of ``run`` whose checkpoint after ``task`` is not there (yet)."""
    shutil.copytree(run, dest)
    shutil.rmtree(dest / "checkpoints" / task)
    return dest


def test_query_answers_equal_factlearn_query(run, images):
    want = query_images(str(run), [str(p) for p in images], top_k=3, device="cpu")
    with TestClient(create_app(run, settings())) as client:
        r = client.post("/query", params={"top_k": 3}, files=upload(*images))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "B2" and [x["image"] for x in body["results"]] == [p.name for p in images]
    for got, ref in zip(body["results"], want):
        assert len(got["facts"]) == 3 and same_answer(got["facts"], ref["facts"])


def test_concurrent_requests_share_one_forward_pass(run, images):
    index = RunIndex.load(run, device="cpu")
    from factlearn.data.images import read_images

    pixels = [read_images([p], index.image_size) for p in images[:3]]
    batcher = MicroBatcher(lambda: index, wait_s=30.0, max_images=64)
    batcher.start()
    try:
        with ExitStack() as stack:  # three requests being read at once; the first waits for the others
            submits = [stack.enter_context(batcher.expect()) for _ in pixels]
            futures = [submit(x, 2) for submit, x in zip(submits, pixels)]
        answers = [f.result(timeout=30) for f in futures]
    finally:
        batcher.close()
    assert batcher.batches == 1
    for (task, [hits]), x in zip(answers, pixels):
        assert task == "B2" and same_answer(hits, index.search_images(x, 2)[0])


def test_a_lone_request_does_not_wait(run, images):
    index = RunIndex.load(run, device="cpu")
    from factlearn.data.images import read_images

    batcher = MicroBatcher(lambda: index, wait_s=30.0)
    batcher.start()
    try:
        start = time.monotonic()
        with batcher.expect() as submit:
            future = submit(read_images(images[:1], index.image_size), 1)
        future.result(timeout=30)
    finally:
        batcher.close()
    assert time.monotonic() - start < 10  # nobody else announced: no 30 s wait


def test_hot_swap_under_continuous_queries(run, images, tmp_path):
    served = without_task(run, tmp_path / "run", "B2")
    refs = {task: RunIndex.load(run, task, device="cpu") for task in ("B1", "B2")}
    from factlearn.data.images import read_images

    want = {task: idx.search_images(read_images(images[:2], idx.image_size), 5) for task, idx in refs.items()}
    answers, stop = [], threading.Event()
    with TestClient(create_app(served, settings(poll_s=0.05))) as client:
        def ask() -> None:
            while not stop.is_set():
                r = client.post("/query", files=upload(*images[:2]))
                answers.append((r.status_code, r.json()))

        asker = threading.Thread(target=ask)
        asker.start()
        try:
            deadline = time.monotonic() + 60
            while len(answers) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            # training finishes B2: the weights first, state.json last (atomically), as RunDir writes them
            source, dest = run / "checkpoints" / "B2", served / "checkpoints" / "B2"
            dest.mkdir()
            for f in sorted(source.iterdir()):
                if f.name != "state.json":
                    shutil.copy(f, dest / f.name)
            shutil.copy(source / "state.json", dest / "state.tmp")
            os.replace(dest / "state.tmp", dest / "state.json")
            while client.get("/run").json()["live"]["task"] != "B2" and time.monotonic() < deadline:
                time.sleep(0.02)
            seen = len(answers)
            while len(answers) < seen + 3 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            stop.set()
            asker.join()
        run_info = client.get("/run").json()
    assert run_info["live"]["task"] == "B2" and run_info["completed"] == ["B1", "B2"]
    assert all(status == 200 for status, _ in answers)
    tasks = [body["task"] for _, body in answers]
    switch = tasks.index("B2")  # the switch happened, once, and never back
    assert switch > 0 and set(tasks[:switch]) == {"B1"} and set(tasks[switch:]) == {"B2"}
    for _, body in answers:  # each answer is wholly the model of the task it names
        assert all(same_answer(got["facts"], ref) for got, ref in zip(body["results"], want[body["task"]]))


@pytest.mark.parametrize("case", ["not an image", "text field", "missing field", "no body", "too many images"])
def test_bad_uploads_get_400_json(run, images, case):
    requests = {
        "not an image": dict(files=[("images", ("x.png", b"GIF89a but not really", "image/png"))]),
        "text field": dict(data={"images": "/etc/passwd"}),
        "missing field": dict(files=[("photo", ("x.png", images[0].read_bytes(), "image/png"))]),
        "no body": {},
        "too many images": dict(files=upload(*images[:3])),
    }
    with TestClient(create_app(run, settings(max_images=2))) as client:
        r = client.post("/query", **requests[case])
    assert r.status_code == 400 and set(r.json()) == {"error"}, r.text
    assert "Traceback" not in r.text


def test_uploads_over_the_size_limit_get_413(run):
    big = png(200, 200)
    with TestClient(create_app(run, settings(max_upload_bytes=len(big) // 2))) as client:
        r = client.post("/query", files=[("images", ("big.png", big, "image/png"))])
        chunked = client.post("/query", content=iter([big[:1000], big[1000:]]),  # no Content-Length to trust
                              headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert chunked.status_code == 413 and "limit" in chunked.json()["error"]


def test_images_over_the_pixel_cap_are_refused(run, monkeypatch):
    import factlearn.data.images

    monkeypatch.setattr(factlearn.data.images, "MAX_PIXELS", 40 * 40)
    with TestClient(create_app(run, settings())) as client:
        small = client.post("/query", files=[("images", ("ok.png", png(40, 40), "image/png"))])
        bomb = client.post("/query", files=[("images", ("bomb.png", png(41, 40), "image/png"))])
    assert small.status_code == 200
    assert bomb.status_code == 400 and "over the limit" in bomb.json()["error"] and "bomb.png" in bomb.json()["error"]


def test_fact_queries_and_the_unknown_word_policy(run):
    table = RunIndex.load(run, device="cpu")
    known = table.facts[table.ids[0]]
    with TestClient(create_app(run, settings())) as client:
        hit = client.post("/query/facts", json={"fact": str(known), "top_k": 3}).json()
        wildcard = client.post("/query/facts", json={"fact": f"<{known.subject}>"})
        unknown = client.post("/query/facts", json={"fact": f"<{known.subject}, zorbly>"})
        allowed = client.post("/query/facts", json={"fact": f"<{known.subject}, zorbly>", "allow_unknown": True})
        malformed = client.post("/query/facts", json={"fact": "<a, b, c, d>"})
        missing = client.post("/query/facts", json={"top_k": 3})
    assert hit["facts"][0]["fact"] == str(known) and hit["facts"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert same_answer(hit["facts"], table.search_fact(known, 3))
    assert wildcard.status_code == 200 and wildcard.json()["query"] == f"<{known.subject}>"
    assert unknown.status_code == 422 and unknown.json()["unknown_words"] == ["zorbly"]
    assert "zorbly" in unknown.json()["error"]
    assert allowed.status_code == 200 and allowed.json()["unknown_words"] == ["zorbly"]
    assert malformed.status_code == 400 and "not a fact" in malformed.json()["error"]
    assert missing.status_code == 400 and missing.json()["error"] == "missing field 'fact'"


def test_run_facts_health_and_page(run):
    with TestClient(create_app(run, settings())) as client:
        info = client.get("/run").json()
        facts = client.get("/facts").json()["facts"]
        health = client.get("/health").json()
        page = client.get("/")
    metrics = Metrics.read(run)
    assert info["method"] == "finetune" and info["tasks"] == ["B1", "B2"] and info["live"]["task"] == "B2"
    assert info["live"]["checkpoint"] == "checkpoints/B2"
    assert info["metrics"]["matrix"]["top1"] == metrics.matrix("top1")
    assert info["metrics"]["sequence"]["top1"]["average"] == pytest.approx(metrics.sequence("top1")["average"])
    assert len(facts) == len(RunIndex.load(run, device="cpu").facts) and all(f["searched"] for f in facts)
    assert health == {"status": "ok", "task": "B2", "batches": 0}
    assert page.status_code == 200 and "Accuracy matrix" in page.text and "http" not in page.text.split("<script>")[1]


def test_token_required_when_configured(run, images):
    with TestClient(create_app(run, settings(token="s3cret"))) as client:
        none = client.post("/query", files=upload(images[0]))
        wrong = client.get("/run", headers={"Authorization": "Bearer guess"})
        right = client.post("/query", files=upload(images[0]), headers={"Authorization": "Bearer s3cret"})
        open_paths = [client.get("/health").status_code, client.get("/").status_code]
    assert none.status_code == 401 and wrong.status_code == 401 and "token" in none.json()["error"]
    assert right.status_code == 200 and open_paths == [200, 200]


def invoke(*args):
    return CliRunner().invoke(main, ["serve", *map(str, args)], catch_exceptions=False)


def test_serve_refuses_a_run_with_no_completed_task(run, tmp_path):
    empty = tmp_path / "run"
    shutil.copytree(run, empty)
    shutil.rmtree(empty / "checkpoints")
    r = invoke(empty, "--device", "cpu")
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "no completed task" in r.output


def test_serve_refuses_other_hosts_without_a_token(run, tmp_path):
    r = invoke(run, "--host", "0.0.0.0")
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "--token-file" in r.output
    empty = tmp_path / "token"
    empty.write_text("\n")
    r = invoke(run, "--host", "0.0.0.0", "--token-file", empty)
    assert r.exit_code == 2 and "--token-file" in r.output
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    check_host("0.0.0.0", "s3cret")


def test_serve_says_when_the_extra_is_missing(run, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    r = invoke(run, "--device", "cpu")
    assert r.exit_code == 2 and "uvicorn" in r.output and "factlearn[serve]" in r.output


def test_a_port_in_use_is_one_line():
    first = listen("127.0.0.1", 0)
    try:
        with pytest.raises(UserError, match="cannot listen on 127.0.0.1"):
            listen("127.0.0.1", first.getsockname()[1]).close()
    finally:
        first.close()


def test_the_command_serves_over_http(run, images):
    proc = subprocess.Popen([sys.executable, "-m", "factlearn", "serve", str(run), "--port", "0", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving" in line, line + proc.stderr.read()
        url = line.split(" on ")[1].split()[0]
        with urllib.request.urlopen(url + "health", timeout=30) as response:
            assert json.load(response)["task"] == "B2"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
