"""vitcore.pretrained.download against a real HTTP server on 127.0.0.1 (the only traffic these tests make).

The server speaks just enough of the Hugging Face Hub protocol for ``huggingface_hub.hf_hub_download``
(HEAD and GET on ``/<repo>/resolve/<revision>/<file>`` with X-Repo-Commit, ETag and Content-Length;
404 with X-Error-Code: EntryNotFound) and plain file serving for torchvision-style URLs.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
from pathlib import Path

import pytest
import torch
import torchvision  # noqa: F401  (imported up front, as the app has it)

from vitcore.pretrained import cached_path, download, download_size, from_hf, verify

transformers = pytest.importorskip("transformers")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Server:
    """A threaded loopback HTTP server: ``files`` maps a path to bytes; ``truncate`` paths send half and hang up."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def _headers(self, path: str) -> bytes | None:
                outer.requests.append((self.command, path))
                body = outer.files.get(path)
                if body is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.end_headers()
                return body

            def do_HEAD(self) -> None:
                self._headers(self.path.split("?")[0])

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                body = self._headers(path)
                if body is None:
                    return
                if path in outer.truncate:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, online mode (the tests only reach 127.0.0.1)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "hf-cache"


def closed_port_url() -> str:
    """A loopback URL where nothing listens: connecting is refused at once, like a machine without network."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def state_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.arange(50_000, dtype=torch.float32)}, buffer)  # 200 kB: several progress steps
    return buffer.getvalue()


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []

    def __call__(self, done: int, total: int | None) -> None:
        self.calls.append((done, total))


# ---------------------------------------------------------------- torchvision-style URLs
def test_torchvision_download_reports_size_and_progress_and_lands_in_the_hub_cache(server, hub_dir):
    data = state_bytes()
    name = f"tiny_vit-{hashlib.sha256(data).hexdigest()[:8]}.pth"  # torch.hub's hash-suffixed name
    server.files[f"/models/{name}"] = data
    url = f"{server.url}/models/{name}"
    assert download_size("torchvision:vit_b_16", url=url) == len(data)  # a HEAD request, before any byte
    assert cached_path("torchvision:vit_b_16", url=url) is None
    progress = Recorder()
    path = download("torchvision:vit_b_16", progress, url=url)
    assert path == hub_dir / "checkpoints" / name and path.read_bytes() == data
    assert progress.calls[0] == (0, len(data)) and progress.calls[-1] == (len(data), len(data))
    done = [d for d, _ in progress.calls]
    assert done == sorted(done) and len(done) >= 3
    assert files_under(hub_dir) == [f"checkpoints/{name}"]  # no temporary file left
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(50_000, dtype=torch.float32))
    # cached: no network needed any more, and the size still to fetch is 0
    server.files.clear()
    assert download("torchvision:vit_b_16", url=url) == path
    assert download_size("torchvision:vit_b_16", url=url) == 0 and cached_path("torchvision:vit_b_16", url=url) == path


def test_torchvision_interrupted_download_leaves_nothing(server, hub_dir):
    data = state_bytes()
    name = f"tiny_vit-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    server.files[f"/{name}"] = data
    server.truncate.add(f"/{name}")
    progress = Recorder()
    with pytest.raises(ValueError) as err:
        download("torchvision:vit_b_16", progress, url=f"{server.url}/{name}")
    assert f"of {len(data)} bytes" in str(err.value) and "nothing was kept in the cache, try again" in str(err.value)
    assert progress.calls[0] == (0, len(data)) and progress.calls[-1][0] < len(data)
    assert files_under(hub_dir) == []


def test_torchvision_file_that_fails_its_name_hash_is_removed(server, hub_dir):
    server.files["/models/vit_b_16-c867db91.pth"] = state_bytes()  # not the real file: the hash cannot match
    with pytest.raises(ValueError, match=r"is corrupt: its sha256 starts with [0-9a-f]{12}, but its name .* c867db91"):
        download("torchvision:vit_b_16", url=f"{server.url}/models/vit_b_16-c867db91.pth")
    assert files_under(hub_dir) == []


def test_torchvision_file_without_a_hash_in_its_name_is_still_checked(server, hub_dir):
    server.files["/mirror/vit_b_16.pth"] = b"PK\x03\x04 this is not a torch archive" * 100
    with pytest.raises(ValueError, match=r"is corrupt: torch cannot read it as weights .* removed"):
        download("torchvision:vit_b_16", url=f"{server.url}/mirror/vit_b_16.pth")
    assert files_under(hub_dir) == []


def test_torchvision_http_error_is_explained(server, hub_dir):
    with pytest.raises(ValueError, match=r"stopped after 0 of unknown bytes \(HTTP 404\)"):
        download("torchvision:vit_b_16", url=f"{server.url}/missing-0123abcd.pth")
    assert files_under(hub_dir) == []


def test_no_network_is_refused_naming_where_to_put_the_file(hub_dir):
    url = closed_port_url() + "/models/vit_b_16-c867db91.pth"
    for call in (download, download_size):  # how fast: benchmarks/fail_fast.py
        with pytest.raises(ValueError) as err:
            call("torchvision:vit_b_16", url=url)
        message = str(err.value)
        assert message.startswith("no network: cannot reach 127.0.0.1")
        assert f"Put the file at {hub_dir / 'checkpoints' / 'vit_b_16-c867db91.pth'}" in message
    assert files_under(hub_dir) == []


def test_sources_are_checked_before_any_network():
    with pytest.raises(ValueError, match="unknown torchvision ViT 'vit_q_1'"):
        download("torchvision:vit_q_1")
    with pytest.raises(ValueError, match="is not a source download"):
        download("/etc/passwd")
    with pytest.raises(ValueError, match="not weights of torchvision's vit_b_16"):
        download("torchvision:vit_b_16", weights="IMAGENET9K")


# ---------------------------------------------------------------- Hugging Face through HF_ENDPOINT
def hf_repo(server: Server, tmp_path: Path, repo: str = "someone/tiny-vit") -> torch.nn.Module:
    """A small ViT saved with save_pretrained and served under ``repo`` (no preprocessor_config.json)."""
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, id2label={0: "cat", 1: "dog"},
    )  # fmt: skip
    model = transformers.ViTForImageClassification(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    for f in folder.iterdir():
        server.files[f"/{repo}/resolve/main/{f.name}"] = f.read_bytes()
    return model


def test_hf_download_through_hf_endpoint_then_loads_offline(server, hf_cache, tmp_path, monkeypatch):
    hf = hf_repo(server, tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    sizes = {p: len(b) for p, b in server.files.items()}
    expected = (
        sizes["/someone/tiny-vit/resolve/main/config.json"] + sizes["/someone/tiny-vit/resolve/main/model.safetensors"]
    )
    assert download_size("hf:someone/tiny-vit") == expected  # Hub file metadata (HEAD), before any byte
    progress = Recorder()
    folder = download("hf:someone/tiny-vit", progress)
    assert folder.parent.name == "snapshots" and folder.name == COMMIT
    assert folder.parent.parent == hf_cache / "models--someone--tiny-vit"  # the standard cache layout
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert progress.calls[0] == (0, expected) and progress.calls[-1] == (expected, expected)
    assert not [f for f in files_under(hf_cache) if "incomplete" in f]
    assert ("GET", "/someone/tiny-vit/resolve/main/preprocessor_config.json") not in server.requests  # 404 on HEAD

    # everything else works offline from the cache now
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    server.files.clear()
    assert cached_path("someone/tiny-vit") == folder and download("someone/tiny-vit") == folder
    model, meta = from_hf("hf:someone/tiny-vit")
    assert meta["class_names"] == ["cat", "dog"]
    assert verify(model, hf, torch.randn(2, 3, 32, 32)) < 1e-4


def test_hf_invalid_safetensors_is_removed_from_the_cache(server, hf_cache, tmp_path, monkeypatch):
    hf_repo(server, tmp_path)
    server.files["/someone/tiny-vit/resolve/main/model.safetensors"] = b"\x10\x00\x00\x00\x00\x00\x00\x00not json" * 4
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    with pytest.raises(ValueError, match=r"model\.safetensors\) are corrupt: not a valid safetensors file.*removed"):
        download("hf:someone/tiny-vit")
    assert not [f for f in files_under(hf_cache) if f.endswith("model.safetensors")]
    assert cached_path("someone/tiny-vit") is None


def test_hf_interrupted_download_leaves_no_partial_file(server, hf_cache, tmp_path, monkeypatch):
    import huggingface_hub.file_download as file_download

    hf_repo(server, tmp_path)
    server.truncate.add("/someone/tiny-vit/resolve/main/model.safetensors")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setattr(file_download.time, "sleep", lambda _s: None)  # huggingface_hub retries 5 times, 1 s apart
    with pytest.raises(ValueError, match=r"the download of model\.safetensors from someone/tiny-vit failed"):
        download("hf:someone/tiny-vit")
    assert not [f for f in files_under(hf_cache) if "safetensors" in f or "incomplete" in f]


def test_hf_missing_repo_files_and_offline(server, hf_cache, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    with pytest.raises(ValueError, match=r"has no config\.json"):
        download("hf:someone/nothing")
    server.files["/someone/config-only/resolve/main/config.json"] = b"{}"
    with pytest.raises(ValueError, match=r"has none of \['model\.safetensors', 'pytorch_model\.bin'\]"):
        download("hf:someone/config-only")

    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    with pytest.raises(ValueError) as err:  # how fast: benchmarks/fail_fast.py
        download("hf:facebook/dinov2-small")
    assert str(err.value).startswith("no network: cannot reach 127.0.0.1")
    assert str(hf_cache / "models--facebook--dinov2-small") in str(err.value)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="no network: cannot reach the Hugging Face Hub \\(HF_HUB_OFFLINE is set\\)"):
        download_size("facebook/dinov2-small")
