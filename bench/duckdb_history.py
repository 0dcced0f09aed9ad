#!/usr/bin/env python3
"""DuckDB side of the Query History benchmark (integration/benches/history.rs).

Runs each query of the queries file (JSON: {name: sql}, the SQL already reading the
history files with read_parquet) the way the Rust side does (one warm-up run, then the
median of N) and prints JSON:
{"duckdb_version": ..., "queries": {name: {"median_ms", "rows"} or {"error"}}}.
Timestamps are printed as epoch milliseconds.

Standard library and duckdb only.
"""

import argparse
import datetime
import decimal
import json
import statistics
import sys
import time

import duckdb

EPOCH = datetime.datetime(1970, 1, 1)


def cell(v):
    """A JSON value comparable with the Rust side's: timestamps as epoch milliseconds."""
    if isinstance(v, datetime.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return (v - EPOCH) // datetime.timedelta(milliseconds=1)
    if isinstance(v, decimal.Decimal):
        return float(v)
    return v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", required=True, help="JSON file {name: sql}")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    with open(args.queries, encoding="utf-8") as f:
        queries = json.load(f)

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    results = {}
    for name, sql in queries.items():
        try:
            rows = con.execute(sql).fetchall()
            times = []
            for _ in range(max(args.runs, 1)):
                start = time.perf_counter()
                rows = con.execute(sql).fetchall()
                times.append((time.perf_counter() - start) * 1000.0)
            results[name] = {
                "median_ms": statistics.median(times),
                "rows": [[cell(v) for v in r] for r in rows],
            }
        except duckdb.Error as e:
            results[name] = {"error": str(e)}
    json.dump({"duckdb_version": duckdb.__version__, "queries": results}, sys.stdout)


if __name__ == "__main__":
    main()
