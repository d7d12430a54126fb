"""`make demo`: on the embedded cluster, train a small Keras model inside the database and show it."""

from __future__ import annotations

import json
import time

from madlib_dl.tools import install, paths
from madlib_dl.tools.cluster import Cluster

DEMO_FUNCTION = """
CREATE FUNCTION pg_temp.madlib_dl_demo_train(epochs INTEGER) RETURNS TEXT LANGUAGE plpython3u AS $body$
{boot}
from madlib_dl.keras_runtime import smoke; return smoke.train(epochs)
$body$"""


def run(cluster: Cluster, epochs: int = 8) -> dict:
    with cluster.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT madlib_dl.version()")
        print(f"server runs: {cur.fetchone()[0]}")
        cur.execute(DEMO_FUNCTION.format(boot=install.boot_lines(paths.site_packages())))
        started = time.monotonic()
        cur.execute("SELECT pg_temp.madlib_dl_demo_train(%s)", [epochs])
        result = json.loads(cur.fetchone()[0])
    elapsed = time.monotonic() - started
    print(f"trained an MLP ({result['parameters']} weights) on {result['rows']} synthetic examples, "
          f"inside a PostgreSQL backend, in {elapsed:.1f} s:")
    for epoch, (loss, accuracy) in enumerate(zip(result["loss"], result["accuracy"]), start=1):
        print(f"  epoch {epoch:2d}  loss {loss:.4f}  accuracy {accuracy:.3f}")
    first, last = result["loss"][0], result["loss"][-1]
    verdict = "went down" if last < first else "did NOT go down"
    print(f"loss {verdict}: {first:.4f} -> {last:.4f}")
    if last >= first:
        raise SystemExit("demo: training inside the database did not reduce the loss")
    return result
