"""`streamlit run` with the server's time for each rerun request written to a log (for the benchmarks).

    python benchmarks/server_timing.py LOG run streamlit_app.py [streamlit options...]

Runs Streamlit's own command line (``streamlit run ...``, the arguments after LOG) in this process after wrapping two
methods of ``AppSession``: a rerun request (a ``rerun_script`` BackMsg) arriving from a browser
notes the time, and the run's "finished" message (a full run, a fragment's run, or a script that
failed to compile) being queued for that browser writes the seconds in between to LOG, one number
a line. A request that arrives while a run is still going is answered by a later "finished", so it
is timed from the first unanswered request. This is what goes to the server (queueing, the script
run, its messages) without the browser's drawing: ``benchmarks/classroom_browser.py`` reports it
next to what the page shows, since 30 Chromium pages on one 2-core box draw far slower than the
server answers. The app itself is not changed; the wrapping exists only in this process.
"""

from __future__ import annotations

import sys
import threading
import time


def install(log_path: str) -> None:
    """Wrap ``AppSession`` so each answered rerun request appends its server seconds to ``log_path``."""
    from streamlit.runtime.app_session import AppSession

    for name in ("handle_backmsg", "_enqueue_forward_msg"):
        if not callable(getattr(AppSession, name, None)):
            raise SystemExit(f"this Streamlit has no AppSession.{name}: server_timing.py needs updating")
    pending: dict[int, float] = {}  # id(session) -> when its first unanswered rerun request arrived
    lock = threading.Lock()
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - open for the life of the server
    handle, enqueue = AppSession.handle_backmsg, AppSession._enqueue_forward_msg

    def timed_handle(self, msg):
        if msg.WhichOneof("type") == "rerun_script":
            with lock:
                pending.setdefault(id(self), time.monotonic())
        return handle(self, msg)

    def timed_enqueue(self, msg):
        enqueue(self, msg)
        # 0: a full run finished, 1: a compile error, 3: a fragment's run (2: cut short for a newer rerun)
        if msg.WhichOneof("type") == "script_finished" and msg.script_finished in (0, 1, 3):
            with lock:
                start = pending.pop(id(self), None)
            if start is not None:
                log.write(f"{time.monotonic() - start:.4f}\n")

    AppSession.handle_backmsg = timed_handle
    AppSession._enqueue_forward_msg = timed_enqueue


def read_times(log_path: str, offset: int = 0) -> tuple[list[float], int]:
    """The seconds logged from byte ``offset`` on (complete lines only), and the offset after them."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    complete = data[: data.rfind(b"\n") + 1]
    return [float(line) for line in complete.split()], offset + len(complete)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    install(sys.argv[1])
    from streamlit.web.cli import main

    sys.argv = ["streamlit", *sys.argv[2:]]
    main()
