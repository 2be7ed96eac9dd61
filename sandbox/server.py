"""Registry of vendor simulators plus runners: blocking `serve` and the threaded `running` context."""

import argparse
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp

from assetferry.sandbox import actionhub, esploro, kontent, mediapocket, wordbee

# One line per vendor. A simulator module may export BASE_PATH (appended to the root URL in
# the banner) and DEMO_* string constants (sandbox-only credentials printed by `serve`).
SIMULATORS: dict[str, Callable[..., ASGIApp]] = {
    "kontent": kontent.create_app,
    "esploro": esploro.create_app,
    "mediapocket": mediapocket.create_app,
    "actionhub": actionhub.create_app,
    "wordbee": wordbee.create_app,
}


def banner(vendor: str, root_url: str) -> str:
    """One line: the base URL a client should use plus the simulator's demo constants."""
    module = sys.modules[SIMULATORS[vendor].__module__]
    base = root_url + getattr(module, "BASE_PATH", "")
    demo = [f"{name[5:].lower()}={value}" for name, value in vars(module).items() if name.startswith("DEMO_")]
    return " ".join([f"{vendor} sandbox: base_url={base}", *demo])


def serve(vendor: str, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Run the vendor's simulator in the foreground until interrupted."""
    app = SIMULATORS[vendor]()
    print(banner(vendor, f"http://{host}:{port}"), flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@contextmanager
def running(app: ASGIApp, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `app` on a free port in a daemon thread; yield its root URL, e.g. http://127.0.0.1:50123."""
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="sandbox-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout=5)
            raise RuntimeError(f"sandbox server on {host} did not start within 10 s")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m sandbox.server kontent --port 8765"""
    parser = argparse.ArgumentParser(description="Run a vendor API simulator (sandbox).")
    parser.add_argument("vendor", choices=sorted(SIMULATORS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    serve(args.vendor, args.host, args.port)


if __name__ == "__main__":
    main()
