"""Bounded soak of ``reidkit serve`` on loopback: mixed good and hostile requests for minutes.

Run from the repository root (under the shared lock on a shared machine)::

    flock /tmp/reidkit-heavy.lock .venv/bin/python benchmarks/bench_soak.py --minutes 3

Starts a real server (``reidkit serve -e spec.yaml`` on 127.0.0.1, the demo model with random
weights, a gallery of ``--prefill`` synthetic crops), then runs ``--clients`` loops for
``--minutes``. Each request is drawn from a fixed mix: searches by image and by embedding,
adds, stats, thumbnails, health, and hostile ones that must each get their 4xx (no or a wrong
token, a missing scope, an undecodable image, k=0, an inverted window, a deeply nested JSON
value, a raw JSON body, an unknown crop, a forget of age zero, erasing everything without the
confirmation). Every ``--sample-s`` seconds the server process's resident memory (VmRSS) and
open file descriptors are read from /proc. Prints the request counts by status class, every
5xx or dropped connection, and memory and descriptors after the warm-up against the end (the
claim: flat, and 0 server errors); appends rows to ``benchmarks/results.csv``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path

import httpx
import numpy as np
import torch

from bench_serve import _auth, add_form, demo_site, prefill, start_server
from common import append_rows, machine
from reidkit.serve.tokens import create_token

COMMAND = "flock /tmp/reidkit-heavy.lock .venv/bin/python benchmarks/bench_soak.py --minutes 3"
NESTED = "[" * 50_000 + "]" * 50_000


def process_figures(pid: int) -> tuple[float, int]:
    """(resident MB, open file descriptors) of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return rss_kb / 1024, len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _ask(method: str, url: str, **kwargs: object) -> dict:
    return {"method": method, "url": url, **kwargs}


def requests_mix(crops: list[bytes], dim: int) -> dict[str, tuple[int, dict]]:
    """Name -> (the status it must get, ``httpx`` request arguments); sent with an admin token."""
    image = {"files": [("images", ("q.jpg", crops[0], "image/jpeg"))]}
    junk = {"files": [("images", ("x.jpg", b"junk", "image/jpeg"))]}
    vector = json.dumps(np.random.default_rng(0).standard_normal(dim).tolist())
    window = {"start": "2026-11-02", "end": "2026-11-01"}
    as_json = {"content": NESTED, "headers": {"Content-Type": "application/json"}}
    return {
        "search": (200, _ask("POST", "/v1/search", **image, data={"k": "10"})),
        "search-embedding": (200, _ask("POST", "/v1/search", data={"embedding": vector})),
        "stats": (200, _ask("GET", "/v1/gallery/stats")),
        "thumbnail": (200, _ask("GET", "/v1/crops/1")),
        "health": (200, _ask("GET", "/healthz")),
        "bad-image": (422, _ask("POST", "/v1/search", **junk)),
        "k-zero": (422, _ask("POST", "/v1/search", **image, data={"k": "0"})),
        "inverted-window": (422, _ask("POST", "/v1/search", **image, data=window)),
        "nested-json": (422, _ask("POST", "/v1/search", data={"embedding": NESTED})),
        "json-body": (422, _ask("POST", "/v1/gallery", **as_json)),
        "unknown-crop": (404, _ask("GET", "/v1/crops/999999999")),
        "forget-age-zero": (422, _ask("DELETE", "/v1/gallery", params={"older_than": "0m"})),
        "forget-all-unconfirmed": (
            422,
            _ask("DELETE", "/v1/gallery", params={"all": "true", "confirm": "yes please"}),
        ),
    }


async def soak(url: str, tokens: dict[str, str], crops: list[bytes], dim: int, args) -> dict:
    """The request loops and the sampler, until ``args.minutes`` have passed."""
    mix = requests_mix(crops, dim)
    statuses: Counter[str] = Counter()
    surprises: Counter[str] = Counter()
    stop_at = time.monotonic() + args.minutes * 60
    counter = iter(range(10**9))

    async def client_loop(seed: int) -> None:
        rng = random.Random(seed)
        clients = {
            name: httpx.AsyncClient(base_url=url, headers=_auth(token) if token else {}, timeout=60)
            for name, token in tokens.items()
        }
        try:
            while time.monotonic() < stop_at:
                draw = rng.random()
                if draw < 0.15:  # an add: 4 crops
                    name, expected = "add", 201
                    kwargs = {"method": "POST", "url": "/v1/gallery"}
                    kwargs |= add_form(rng.sample(crops, 4), 10**6 + next(counter))
                    who = "admin"
                elif draw < 0.2:  # the auth failures
                    name, expected = rng.choice([("no-token", 401), ("wrong-scope", 403)])
                    kwargs = {"method": "DELETE", "url": "/v1/gallery", "params": {"track_id": "x"}}
                    who = "none" if name == "no-token" else "search"
                else:
                    name = rng.choice(sorted(mix))
                    expected, kwargs = mix[name]
                    who = "admin"
                try:
                    response = await clients[who].request(**kwargs)
                    status = response.status_code
                except httpx.HTTPError as exc:
                    surprises[f"{name}: {type(exc).__name__}"] += 1
                    continue
                statuses[f"{status // 100}xx"] += 1
                if status != expected:
                    surprises[f"{name}: {status} (expected {expected})"] += 1
        finally:
            for client in clients.values():
                await client.aclose()

    samples: list[tuple[float, float, int]] = []

    async def sampler(pid: int) -> None:
        began = time.monotonic()
        while time.monotonic() < stop_at:
            samples.append((time.monotonic() - began, *process_figures(pid)))
            await asyncio.sleep(args.sample_s)
        samples.append((time.monotonic() - began, *process_figures(pid)))

    await asyncio.gather(sampler(args.pid), *(client_loop(s) for s in range(args.clients)))
    return {"statuses": statuses, "surprises": surprises, "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--prefill", type=int, default=500)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=30.0, help="memory baseline after it")
    args = parser.parse_args()
    torch.set_num_threads(1)
    where = machine()
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    try:
        model, crops = demo_site(work)
        token_file = work / "tokens.json"
        tokens = {
            "admin": create_token(token_file, "soak-admin", ["admin"]),
            "search": create_token(token_file, "soak-desk", ["search"]),
            "none": "",
        }
        process, url = start_server(model, work / "gallery", token_file, [], threads=1)
        try:
            asyncio.run(prefill(url, tokens["admin"], crops, args.prefill))
            dim = httpx.get(f"{url}/healthz").json()["embedding_dim"]
            args.pid = process.pid
            outcome = asyncio.run(soak(url, tokens, crops, dim, args))
            alive = httpx.get(f"{url}/healthz").status_code == 200
        finally:
            process.terminate()
            process.wait(timeout=30)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    samples = outcome["samples"]
    settled = [s for s in samples if s[0] >= args.warmup_s] or samples
    rss_start, rss_end = settled[0][1], samples[-1][1]
    fds = [s[2] for s in settled]
    total = sum(outcome["statuses"].values())
    server_errors = outcome["statuses"].get("5xx", 0)
    dropped = sum(n for k, n in outcome["surprises"].items() if "Error" in k)
    print(f"\n{where}; {args.clients} clients, {args.minutes:g} min, prefill {args.prefill}")
    print(f"requests: {total} ({json.dumps(dict(sorted(outcome['statuses'].items())))})")
    for line, count in sorted(outcome["surprises"].items()):
        print(f"  unexpected: {line} x{count}")
    print(
        f"server RSS after {args.warmup_s:g} s warm-up {rss_start:.1f} MB, at the end "
        f"{rss_end:.1f} MB (max {max(s[1] for s in settled):.1f}); open fds {min(fds)}..{max(fds)}"
    )
    print(f"5xx: {server_errors}; dropped connections: {dropped}; alive at the end: {alive}")
    figures = {
        "requests": total,
        "server_errors_5xx": server_errors,
        "dropped_connections": dropped,
        "unexpected_status": sum(outcome["surprises"].values()) - dropped,
        "rss_mb_after_warmup": rss_start,
        "rss_mb_end": rss_end,
        "fds_min": min(fds),
        "fds_max": max(fds),
    }
    today = date.today().isoformat()
    append_rows(
        [
            {
                "date": today,
                "benchmark": "serve/soak",
                "machine": where,
                "command": COMMAND,
                "metric": metric,
                "value": f"{value:.4g}",
                "reference": f"{rss_start:.4g}" if metric == "rss_mb_end" else "",
                "ratio": f"{rss_end / rss_start:.3g}" if metric == "rss_mb_end" else "",
            }
            for metric, value in figures.items()
        ]
    )


if __name__ == "__main__":
    main()
