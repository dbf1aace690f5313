"""POST files to an Orthanc's ``/instances`` with several client processes; print JSON timings.

Run by ``benchmarks/run.py`` (inside Orthanc's network namespace when there is one):
``orthanc_client.py PORT FILELIST --clients 2``. Waits until Orthanc answers, then times from
the first POST to the last answer, each client on its own keep-alive connection.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import sys
import time


def _wait_ready(port: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/system")
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            pass
        if time.monotonic() > end:
            raise SystemExit(f"Orthanc did not answer on port {port} within {timeout} s")
        time.sleep(0.1)


def _post_all(port: int, paths: list[str]) -> tuple[int, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    ok = failed = 0
    for path in paths:
        with open(path, "rb") as fh:
            body = fh.read()
        conn.request("POST", "/instances", body=body, headers={"Content-Type": "application/dicom"})
        response = conn.getresponse()
        response.read()
        if response.status == 200:
            ok += 1
        else:
            failed += 1
    conn.close()
    return ok, failed


def _count_instances(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/statistics")
    data = json.loads(conn.getresponse().read())
    conn.close()
    return int(data["CountInstances"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("filelist")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    args = parser.parse_args()
    with open(args.filelist, encoding="utf-8") as fh:
        paths = [line.rstrip("\n") for line in fh if line.strip()]
    _wait_ready(args.port, args.ready_timeout)
    shares = [paths[i :: args.clients] for i in range(args.clients)]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(args.clients) as pool:
        t0 = time.perf_counter()
        results = pool.starmap(_post_all, [(args.port, share) for share in shares])
        seconds = time.perf_counter() - t0
    ok = sum(r[0] for r in results)
    failed = sum(r[1] for r in results)
    json.dump(
        {"seconds": seconds, "ok": ok, "failed": failed, "stored": _count_instances(args.port)},
        sys.stdout,
    )


if __name__ == "__main__":
    main()
