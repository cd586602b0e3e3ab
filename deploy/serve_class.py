"""Serve a larger class: N `streamlit run` processes on consecutive ports behind nginx with sticky sessions.

    python deploy/serve_class.py [--processes 2] [--port 8501] [--base-port 8601] [--run-dir deploy/run]

(``make serve-class PROCESSES=3`` runs it.) Every process shares one data directory
(``EXPLORER_DATA_DIR``): session codes, job records, checkpoints and session models, and the
training slots, so ``EXPLORER_MAX_TRAINING_JOBS`` caps fine-tunes across all processes together.
nginx (Debian: ``apt-get install nginx-light``) listens on ``--port`` and keeps each browser on
one process with a cookie. Without nginx (``--no-proxy``) the processes still run; a student then
opens one of the process ports directly.

SIGTERM or Ctrl-C stops nginx and sends SIGTERM to every app process, which stops its jobs after
writing their last checkpoint; the launcher exits 0 when all of them did.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = Path(__file__).resolve().parent / "nginx.conf.template"
# runner.postScriptGC=false: Streamlit's full gc.collect(2) after every script run holds the GIL for
# 0.1-0.5 s with PyTorch loaded; at 1 Hz polling x 30 sessions it starves the server (issue 15)
APP_FLAGS = ["--server.headless", "true", "--browser.gatherUsageStats", "false", "--runner.postScriptGC", "false"]


class _Stopping(Exception):  # noqa: N818 - a signal arrived
    """Raised by the signal handler to leave the start-up or the wait."""


def nginx_config(ports: list[int], listen: int, run_dir: Path, address: str = "127.0.0.1",
                 listen_address: str = "127.0.0.1") -> str:
    """The nginx configuration for app processes on ``ports``, nginx listening on ``listen_address:listen``."""
    if not ports:
        raise ValueError("at least one app process is needed")
    if len(set(ports)) != len(ports) or listen in ports:
        raise ValueError(f"ports must be distinct and differ from the proxy's {listen}: {ports}")
    servers = "\n".join(f"        server {address}:{port} max_fails=0;" for port in ports)
    text = TEMPLATE.read_text()
    filled = {"@@SERVERS@@": servers, "@@LISTEN@@": f"{listen_address}:{listen}", "@@RUN@@": str(run_dir)}
    for name, value in filled.items():
        text = text.replace(name, value)
    return text


def app_command(port: int, address: str = "127.0.0.1") -> list[str]:
    """The `streamlit run` command of one app process."""
    return [sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"), "--server.port", str(port),
            "--server.address", address, *APP_FLAGS]


def default_data_dir() -> Path:
    """The app's default data directory (``explorer.jobs.default_data_dir``, without importing the app)."""
    cache = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(cache) / "vit-explorer"


def wait_healthy(port: int, timeout: float = 180.0) -> None:
    """Wait until the app on ``port`` answers its health check."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the app on port {port} did not answer within {timeout:.0f} s")
        time.sleep(0.3)


def main(argv: list[str] | None = None) -> int:
    """Start everything, wait for a signal, stop everything; the exit code is 0 after a clean stop."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2, help="app processes (about one per 15 students)")
    parser.add_argument("--port", type=int, default=8501, help="the port students open (nginx)")
    parser.add_argument("--base-port", type=int, default=8601, help="first app process port")
    parser.add_argument("--address", default="127.0.0.1", help="where nginx listens (0.0.0.0 for the LAN)")
    parser.add_argument("--run-dir", default="", help="nginx.conf, pid and logs (default: <data dir>/serve)")
    parser.add_argument("--no-proxy", action="store_true", help="start only the app processes")
    parser.add_argument("--check", action="store_true", help="write nginx.conf, run `nginx -t` and exit")
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error("--processes must be at least 1")

    env = dict(os.environ)
    env.setdefault("EXPLORER_DATA_DIR", str(default_data_dir()))
    # PyTorch's intra-op threads: N processes x all cores oversubscribe the machine, and a thread team
    # waiting for a descheduled member is many times slower (a fine-tune at 13 instead of 69 images/s)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.processes)))
    run_dir = Path(args.run_dir or Path(env["EXPLORER_DATA_DIR"]) / "serve").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    ports = [args.base_port + i for i in range(args.processes)]
    conf = run_dir / "nginx.conf"
    listen = f"{args.address}:{args.port}"
    conf.write_text(nginx_config(ports, args.port, run_dir, listen_address=args.address))
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if args.check:
        if nginx is None:
            print("nginx is not installed (Debian: apt-get install nginx-light)", file=sys.stderr)
            return 2
        return subprocess.run([nginx, "-t", "-p", str(run_dir), "-c", str(conf)]).returncode
    if nginx is None and not args.no_proxy:
        parser.error("nginx is not installed (Debian: apt-get install nginx-light); or pass --no-proxy")

    children: list[subprocess.Popen] = []
    stopping = {"signal": False}

    def on_signal(signum, frame) -> None:
        stopping["signal"] = True
        raise _Stopping  # also while still waiting for the processes to start

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        for port in ports:
            children.append(subprocess.Popen(app_command(port), cwd=ROOT, env=env))
        for port in ports:
            wait_healthy(port)
        proxy = None
        if not args.no_proxy:
            proxy = subprocess.Popen([nginx, "-p", str(run_dir), "-c", str(conf)])
            children.append(proxy)
        where = f"http://{listen}" if proxy else ", ".join(f"http://127.0.0.1:{p}" for p in ports)
        print(f"ViT Explorer: {len(ports)} app processes, data in {env['EXPLORER_DATA_DIR']}; open {where}",
              flush=True)
        while not stopping["signal"] and all(child.poll() is None for child in children):
            time.sleep(0.2)
    except _Stopping:
        pass
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):  # a second signal must not interrupt the clean stop
            signal.signal(signum, lambda *_: stopping.update(signal=True))
        for child in reversed(children):  # nginx first, then the apps
            if child.poll() is None:
                child.send_signal(signal.SIGQUIT if child.args[0] == nginx else signal.SIGTERM)
        codes = []
        for child in children:
            try:
                codes.append(child.wait(timeout=90))
            except subprocess.TimeoutExpired:
                child.kill()
                codes.append(child.wait())
    failed = [c for c, child in zip(codes, children) if c != 0 and child.args[0] != nginx]
    return 1 if failed or not stopping["signal"] else 0


if __name__ == "__main__":
    sys.exit(main())
