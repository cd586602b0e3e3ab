"""Serving a larger class: the nginx configuration, `nginx -t`, and two app processes behind nginx
with sticky sessions (each browser stays on one process, websockets pass through, SIGTERM ends all)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser_support import free_port

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def load_launcher():
    spec = importlib.util.spec_from_file_location("serve_class", ROOT / "deploy" / "serve_class.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_routes_each_browser_to_one_process(tmp_path):
    serve = load_launcher()
    text = serve.nginx_config([8601, 8602, 8603], 8501, tmp_path)
    assert [line.strip() for line in text.splitlines() if line.strip().startswith("server 127")] == [
        "server 127.0.0.1:8601 max_fails=0;", "server 127.0.0.1:8602 max_fails=0;",
        "server 127.0.0.1:8603 max_fails=0;"]
    assert "hash $vit_route consistent;" in text and "$cookie_vit_route" in text  # sticky by cookie
    assert "proxy_set_header Upgrade $http_upgrade;" in text  # Streamlit's websocket
    assert "client_max_body_size 200m;" in text and "listen 127.0.0.1:8501;" in text
    assert "@@" not in text and str(tmp_path) in text
    with pytest.raises(ValueError, match="distinct"):
        serve.nginx_config([8601, 8601], 8501, tmp_path)
    with pytest.raises(ValueError, match="distinct"):
        serve.nginx_config([8501], 8501, tmp_path)
    assert "--runner.postScriptGC" in serve.app_command(8601)  # no full GC after every poll


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx-light)")
def test_nginx_accepts_the_generated_config(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "deploy" / "serve_class.py"), "--check", "--processes", "3",
                             "--run-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def get(url: str, cookie: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Cookie": f"vit_route={cookie}"} if cookie else {})
    with urllib.request.urlopen(request, timeout=10) as r:
        return r.status, dict(r.headers)


async def websocket_session(port: int, cookie: str) -> int:
    """A browser's session through the proxy: connect, ask for a script run, count the replies."""
    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg

    async with websockets.connect(f"ws://127.0.0.1:{port}/_stcore/stream", subprotocols=["streamlit"],
                                  additional_headers={"Cookie": f"vit_route={cookie}"}) as ws:
        msg = BackMsg()
        msg.rerun_script.query_string = ""
        await ws.send(msg.SerializeToString())
        replies = 0
        for _ in range(3):
            await asyncio.wait_for(ws.recv(), 180)
            replies += 1
        return replies


@pytest.mark.slow
@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx-light)")
def test_two_processes_behind_nginx_with_sticky_sessions(tmp_path):
    port, base = free_port(), free_port()
    env = {**os.environ, "EXPLORER_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, str(ROOT / "deploy" / "serve_class.py"), "--processes", "2",
                             "--port", str(port), "--base-port", str(base), "--run-dir", str(tmp_path / "run")],
                            cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if get(f"http://127.0.0.1:{port}/_stcore/health")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        # the first answer hands out a route cookie; the same cookie always reaches the same process
        status, headers = get(f"http://127.0.0.1:{port}/")
        assert status == 200 and "vit_route=" in headers["Set-Cookie"]
        upstreams = {}
        for cookie in [f"student{i}" for i in range(12)]:
            seen = {get(f"http://127.0.0.1:{port}/_stcore/health", cookie)[1]["X-Vit-Upstream"] for _ in range(3)}
            assert len(seen) == 1, seen
            upstreams[cookie] = seen.pop()
        assert set(upstreams.values()) == {f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"}  # both processes serve
        assert asyncio.run(websocket_session(port, "student0")) == 3  # a session runs through the proxy
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "terminate called" not in log.read_text()
