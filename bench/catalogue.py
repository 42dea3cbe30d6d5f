"""The Gallery's catalogue API with 10,000 models: first page, a filtered page, a search, a deep page.

Seeds a fresh registry database (SQLite by default, or the PostgreSQL at --database-url) with
10,000 models the way a busy registry holds them: each with a Markdown description, two tags and
three versions (rejected, validated with the gate's evaluation report, pending); 70% have a
`production` alias on the validated version, which carries the optimizer's recommendation tags.
Then starts the registry, the deployer and the Gallery web app exactly as `gallery up` does (each
`python -m gallery_common.serve NAME`, nats-server beside them) and times `GET /api/v1/catalogue`
over HTTP keep-alive, one request at a time: the round trip on loopback, an upper bound of the
server's time. Last, headless Chromium opens the Gallery's catalogue page: the time from navigation
to the first 24 cards drawn, once with an empty cache and then reloaded.

    .venv/bin/python bench/catalogue.py [--requests 200] [--renders 10] [--database-url URL] [--strict]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from selenium.webdriver.support.ui import WebDriverWait

from gallery_common.nats_server import EmbeddedNats
from gallery_registry.store import open_registry
from gallery_registry.tables import (
    AliasRow,
    ModelTagRow,
    ModelVersionRow,
    RegisteredModelRow,
    VersionTagRow,
    utcnow,
)

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "e2e")]

from headless_chromium import headless_chromium  # noqa: E402
from lifecycle_stack import LifecycleStack  # noqa: E402

MODELS = 10_000
FIRST_PAGE_TARGET_MS = 200.0
WARMUP = 20
TEAMS = ("vision", "speech", "fraud", "search", "ads", "health", "maps", "retail")
DOMAINS = ("images", "audio", "tabular", "text")
CLASSES = [str(i) for i in range(10)]


def report(rng: random.Random) -> dict[str, Any]:
    """An evaluation report shaped as the gate writes it (10 classes)."""
    accuracy = round(rng.uniform(0.6, 0.99), 4)
    matrix = [[rng.randint(0, 5) if i != j else rng.randint(30, 40) for j in range(10)] for i in range(10)]
    return {
        "accuracy": accuracy,
        "macro_f1": round(accuracy - 0.01, 4),
        "loss": round(1 - accuracy, 4),
        "ece": round(rng.uniform(0.01, 0.1), 4),
        "per_class_recall": {c: round(rng.uniform(0.5, 1.0), 3) for c in CLASSES},
        "class_counts": {c: sum(matrix[i]) for i, c in enumerate(CLASSES)},
        "confusion_matrix": {"labels": CLASSES, "matrix": matrix},
        "n_test": 360,
        "latency_p50_ms": round(rng.uniform(0.02, 2.0), 3),
        "latency_p99_ms": round(rng.uniform(2.0, 5.0), 3),
        "evaluator": "onnxruntime 1.20",
    }


def seed(url: str) -> None:
    """10,000 models, 30,000 versions, in batches of rows as the store writes them."""
    rng = random.Random(16)
    store = open_registry(url)
    now = utcnow()
    batch = 1000
    with store.engine.begin() as conn:
        for start in range(0, MODELS, batch):
            models = [
                {
                    "name": f"{TEAMS[m % len(TEAMS)]}-model-{m:05d}",
                    "description": f"# {TEAMS[m % len(TEAMS)].title()} model {m}\n\n"
                    f"Classifies {DOMAINS[m % len(DOMAINS)]} for the {TEAMS[m % len(TEAMS)]} team.",
                    "owner": f"owner-{m % 50}",
                    "last_version": 3,
                    "last_semver": "1.2.0",
                    "created_at": now,
                    "updated_at": now,
                }
                for m in range(start, start + batch)
            ]
            conn.execute(sa.insert(RegisteredModelRow), models)
            ids = dict(
                conn.execute(
                    sa.select(RegisteredModelRow.name, RegisteredModelRow.id).where(  # type: ignore[call-overload]
                        RegisteredModelRow.name.in_([m["name"] for m in models])  # type: ignore[attr-defined]
                    )
                ).all()
            )
            model_ids = [ids[m["name"]] for m in models]
            conn.execute(
                sa.insert(ModelTagRow),
                [
                    {"model_id": mid, "key": key, "value": value}
                    for i, mid in enumerate(model_ids)
                    for key, value in (
                        ("team", TEAMS[(start + i) % len(TEAMS)]),
                        ("domain", DOMAINS[(start + i) % len(DOMAINS)]),
                    )
                ],
            )
            versions = []
            for mid in model_ids:
                for number, status in ((1, "rejected"), (2, "validated"), (3, "pending")):
                    versions.append(
                        {
                            "model_id": mid,
                            "version": number,
                            "semver": f"1.{number - 1}.0",
                            "status": status,
                            "metrics": {"accuracy": round(rng.uniform(0.6, 0.99), 4), "val_loss": 0.3},
                            "task": "classification" if mid % 5 else "regression",
                            "class_names": CLASSES,
                            "evaluation_report": report(rng) if status != "pending" else None,
                            "dataset_fingerprint": f"sha256:{mid:064x}",
                            "run_id": f"run-{mid}-{number}",
                            "created_at": now,
                            "updated_at": now,
                        }
                    )
            conn.execute(sa.insert(ModelVersionRow), versions)
            validated = conn.execute(
                sa.select(ModelVersionRow.model_id, ModelVersionRow.id).where(  # type: ignore[call-overload]
                    ModelVersionRow.model_id.in_(model_ids),  # type: ignore[attr-defined]
                    ModelVersionRow.version == 2,
                )
            ).all()
            in_production = [(mid, vid) for mid, vid in validated if rng.random() < 0.7]
            if in_production:
                conn.execute(
                    sa.insert(AliasRow),
                    [
                        {"model_id": mid, "alias": "production", "version_id": vid, "updated_at": now}
                        for mid, vid in in_production
                    ],
                )
                conn.execute(
                    sa.insert(VersionTagRow),
                    [
                        {"version_id": vid, "key": key, "value": value}
                        for _, vid in in_production
                        for key, value in (
                            ("optimizer.recommended", "int8_dynamic"),
                            ("optimizer.recommended_size_bytes", str(rng.randint(20_000, 400_000))),
                            ("optimizer.recommended_p50_ms", f"{rng.uniform(0.01, 1.0):.3f}"),
                        )
                    ],
                )
    if store.engine.dialect.name == "postgresql":
        with store.engine.connect() as conn:
            conn.execute(sa.text("ANALYZE"))  # what autovacuum would have done by now
    store.engine.dispose()


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(client: httpx.Client, params: dict[str, Any], n: int) -> tuple[list[float], dict[str, Any], int]:
    """Latencies (ms) of `n` identical requests, the last answer and its size in bytes."""
    latencies = []
    body: dict[str, Any] = {}
    size = 0
    for _ in range(n):
        t0 = time.perf_counter()
        response = client.get("/api/v1/catalogue", params=params)
        latencies.append((time.perf_counter() - t0) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"GET /api/v1/catalogue {params} answered {response.status_code}: {response.text}")
        size = len(response.content)
        body = response.json()
    return latencies, body, size


def first_render(gallery_url: str, renders: int) -> list[dict[str, float]]:
    """Open the catalogue page `renders` times in one headless Chromium (the first with an empty cache):
    per load, ms from navigation start to the page drawn (`gallery:ready:catalogue`), the catalogue
    request's time to its first byte, and the cards drawn."""
    timings = []
    with headless_chromium(1400, 1000) as browser:
        for _ in range(renders):
            browser.get(gallery_url + "/")
            WebDriverWait(browser, 60, poll_frequency=0.05).until(
                lambda b: b.execute_script("return performance.getEntriesByName('gallery:ready:catalogue').length"),
                message="the catalogue page was never drawn",
            )
            timings.append(
                browser.execute_script(
                    """
                    const ready = performance.getEntriesByName('gallery:ready:catalogue')[0].startTime;
                    const api = performance.getEntriesByType('resource')
                      .find((e) => e.name.includes('/api/gallery/catalogue'));
                    return {ready, api_ttfb: api.responseStart - api.requestStart,
                            cards: document.querySelectorAll('.model-card').length};
                    """
                )
            )
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per query")
    parser.add_argument("--renders", type=int, default=10, help="page loads in the browser (the first uncached)")
    parser.add_argument("--database-url", help="an empty PostgreSQL database to seed instead of SQLite")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-catalogue-") as tmp:
        home = Path(tmp)
        db_url = args.database_url or f"sqlite:///{home / 'registry.db'}"
        t0 = time.perf_counter()
        seed(db_url)
        seed_s = time.perf_counter() - t0
        with EmbeddedNats(home / "nats") as nats:
            stack = LifecycleStack(home=home, nats_url=nats.url)
            try:
                settings = {"GALLERY_LOG_LEVEL": "WARNING", "GALLERY_DATABASE_URL": db_url}
                registry = stack.start("registry", **settings)
                stack.start("deployer", GALLERY_LOG_LEVEL="WARNING")
                gallery = stack.start("gallery", GALLERY_LOG_LEVEL="WARNING")
                with httpx.Client(base_url=registry.url, timeout=30) as client:
                    first_page: dict[str, Any] = {}
                    deep = client.get("/api/v1/catalogue", params={"limit": 24}).json()
                    queries: list[tuple[str, dict[str, Any]]] = [
                        ("first page", first_page),
                        (
                            "filtered",
                            {
                                "stage": "production",
                                "task": "classification",
                                "tag": "team=vision",
                                "metric": "accuracy",
                                "min_metric": 0.8,
                                "sort": "metric",
                                "order": "desc",
                            },
                        ),
                        ("search", {"q": "audio"}),
                        ("by update", {"sort": "updated", "order": "desc"}),
                        ("deep page", {"page_token": _token(9000)}),
                    ]
                    results = []
                    for label, params in queries:
                        timed(client, params, WARMUP)
                        latencies, body, size = timed(client, params, args.requests)
                        results.append((label, params, latencies, body, size))
                renders = first_render(gallery.url, args.renders)
            finally:
                stack.stop()

    backend = "PostgreSQL" if args.database_url else f"SQLite under {tempfile.gettempdir()}"
    print(f"{backend}; {MODELS:,} models ({deep['total']:,} listed), 30,000 versions seeded in {seed_s:.1f} s")
    print(
        f"servers: registry, deployer, gallery (python -m gallery_common.serve NAME); {os.cpu_count()} CPUs; "
        "API timed against the registry, one client, keep-alive"
    )
    print()
    print(f"{'':12}{'n':>6}{'p50 ms':>9}{'p95 ms':>9}{'total':>8}{'shown':>7}{'bytes':>9}  query")
    for label, params, latencies, body, size in results:
        query = "&".join(f"{k}={v}" for k, v in params.items() if k != "page_token") or "(defaults: 24 by name)"
        if "page_token" in params:
            query = "offset 9000, 24 by name"
        print(
            f"{label:12}{len(latencies):>6}{percentile(latencies, 0.5):>9.2f}{percentile(latencies, 0.95):>9.2f}"
            f"{body['total']:>8}{len(body['models']):>7}{size:>9}  {query}"
        )
    print()
    first = results[0][2]
    ok = percentile(first, 0.95) <= FIRST_PAGE_TARGET_MS
    verdict = "PASS" if ok else "MISS"
    print(
        f"{verdict}  first page p50 {percentile(first, 0.5):.2f} ms, p95 {percentile(first, 0.95):.2f} ms "
        f"(target <= {FIRST_PAGE_TARGET_MS:.0f} ms server time)"
    )
    print(page_weight(results[0][4]))
    print(render_line(renders))
    return 1 if args.strict and not ok else 0


def page_weight(first_page_bytes: int) -> str:
    """What a browser fetches to draw the catalogue the first time: the Gallery's shell, style sheet
    and every module it loads (all of `gallery_web/static/`'s top level; the Monitoring view's files
    are not loaded), and the first page of the catalogue."""
    import gzip
    from importlib.resources import files

    static = files("gallery_web").joinpath("static")
    shipped = [f for f in static.iterdir() if f.is_file() and f.name.rsplit(".", 1)[-1] in {"html", "css", "js", "svg"}]
    raw = sum(len(f.read_bytes()) for f in shipped)
    packed = sum(len(gzip.compress(f.read_bytes())) for f in shipped)
    return (
        f"page weight: {len(shipped)} files, {raw / 1024:.1f} KiB ({packed / 1024:.1f} KiB gzipped), "
        f"plus the first page's JSON {first_page_bytes / 1024:.1f} KiB; nothing from another origin"
    )


def render_line(renders: list[dict[str, float]]) -> str:
    cold, warm = renders[0], [r["ready"] for r in renders[1:]]
    line = (
        f"first render in headless Chromium: {cold['ready']:.0f} ms from navigation to {cold['cards']} cards drawn "
        f"(empty cache; the catalogue's answer began after {cold['api_ttfb']:.1f} ms)"
    )
    if warm:
        line += f"; reloaded {len(warm)}x: p50 {percentile(warm, 0.5):.0f} ms, worst {max(warm):.0f} ms"
    return line


def _token(offset: int) -> str:
    from gallery_registry.paging import encode_page_token

    return encode_page_token(offset)


if __name__ == "__main__":
    sys.exit(main())
