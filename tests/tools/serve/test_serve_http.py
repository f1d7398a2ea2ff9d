"""`lmforge serve` as a real process on a free loopback port: docs/serve.md's examples as written
(curl and the `openai` package), the `openai` client round trip, and a clean shutdown.

The run dirs are tiny random models named as in docs/serve.md (`runs/tour`, `runs/lstm-movies`); its
port 8000 is replaced by the free port the server picked (`--port 0`).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, env1
from helpers.serve import make_runs

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

KEY = "sk-lmforge-demo"


def serve_blocks() -> tuple[list[str], str]:
    """(shell commands, python code) of docs/serve.md's opening section (before its first ``## ``
    heading); ``\\``-continued lines joined."""
    section = (REPO / "docs" / "serve.md").read_text(encoding="utf-8").split("\n## ", 1)[0]
    sh = re.search(r"```sh\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    cmds = [line.split("  #")[0].strip() for line in sh.splitlines()]
    return [c for c in cmds if c and not c.startswith("#")], re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """docs/serve.md's `lmforge serve` line, run in a scratch folder holding runs/tour and runs/lstm-movies."""
    tmp = tmp_path_factory.mktemp("serve-http")
    make_runs(tmp / "runs", names={"lm": "tour", "clf-lstm": "lstm-movies"})
    cmds, _ = serve_blocks()
    line = next(c for c in cmds if c.startswith("lmforge serve "))
    assert line.endswith("&") and "--port 8000" in line and f"--api-key {KEY}" in line
    argv = line.rstrip("&").replace("--port 8000", "--port 0").split()[2:] + ["--log-level", "warning"]
    env = env1()
    proc = subprocess.Popen([sys.executable, "-m", "lmforge", "serve", *argv], cwd=tmp, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = proc.stdout.readline()  # "lmforge serve: tour (completion), ... on http://127.0.0.1:PORT (docs: ..."
        match = re.search(r"on (http://127\.0\.0\.1:(\d+)) ", ready)
        assert match, ready + proc.stderr.read() if proc.poll() is not None else ready
        url = match.group(1)
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        yield {"url": url, "port": match.group(2), "cwd": tmp, "proc": proc}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_readme_curl_examples(server):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    cmds = [c.replace("127.0.0.1:8000", f"127.0.0.1:{server['port']}") for c in serve_blocks()[0]
            if c.startswith("curl ")]
    assert len(cmds) == 5
    out = []
    for cmd in cmds:
        p = subprocess.run(cmd, shell=True, cwd=server["cwd"], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, f"{cmd}\n{p.stdout}\n{p.stderr}"
        out.append(p.stdout)
    health, models, done, streamed, classified = out
    assert json.loads(health) == {"status": "ok", "models": ["tour", "lstm-movies"]}
    assert [m["kind"] for m in json.loads(models)["data"]] == ["completion", "classification"]
    done = json.loads(done)
    assert done["usage"]["completion_tokens"] <= 30 and done["choices"][0]["finish_reason"] in ("stop", "length")
    events = [e[len("data: "):] for e in streamed.split("\n\n") if e.strip()]
    assert events[-1] == "[DONE]" and all(json.loads(e)["object"] == "text_completion" for e in events[:-1])
    data = json.loads(classified)["data"]
    assert len(data) == 2 and all(abs(sum(d["probabilities"].values()) - 1) < 1e-5 for d in data)


def test_readme_openai_example(server):
    code = serve_blocks()[1].replace("127.0.0.1:8000", f"127.0.0.1:{server['port']}")
    p = subprocess.run([sys.executable, "-c", code], cwd=server["cwd"], env=env1(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "CompletionUsage(" in p.stdout and "prompt_tokens=" in p.stdout


def test_openai_client_round_trip(server):
    client = openai.OpenAI(base_url=f"{server['url']}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tour", "lstm-movies"]
    done = client.completions.create(model="tour", prompt="the king", max_tokens=12, temperature=0)
    assert done.object == "text_completion" and done.model == "tour" and done.choices[0].finish_reason in ("stop", "length")
    usage = done.usage
    assert usage.completion_tokens <= 12 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    chunks = list(client.completions.create(model="tour", prompt="the king", max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == done.choices[0].text
    assert chunks[-1].usage.completion_tokens == done.usage.completion_tokens
    seeded = [client.completions.create(model="tour", prompt=["a", "b"], max_tokens=6, seed=3) for _ in range(2)]
    assert [c.text for c in seeded[0].choices] == [c.text for c in seeded[1].choices]
    assert client.post("/classify", cast_to=object, body={"model": "lstm-movies", "input": ["x"]})["data"][0]["label"]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.UnprocessableEntityError):
        client.completions.create(model="tour", prompt="x", max_tokens=100000)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="lstm-movies", prompt="x")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server['url']}/v1", api_key="wrong", max_retries=0).completions.create(model="tour", prompt="x")


def test_sigterm_stops_the_server(server):  # last: it stops the module's server
    proc = server["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) in (0, -signal.SIGTERM)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server['url']}/healthz", timeout=2)
