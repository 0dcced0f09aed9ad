#!/usr/bin/env python3
"""DuckDB side of the SQL benchmark (integration/benches/sql.rs).

Loads the tables the benchmark exported as CSV into DuckDB with the column types of
schema.json, creates the views of views.json, then times every query of the queries file
the way the Rust side does (one warm-up run, median of N) and prints JSON:
{"duckdb_version": ..., "queries": {name: {"median_ms", "rows"} or {"error"}}}.

Standard library and duckdb only.
"""

import argparse
import datetime
import decimal
import json
import os
import statistics
import sys
import time

import duckdb

EPOCH = datetime.datetime(1970, 1, 1)


def parse_queries(path):
    """{name: sql} from `-- name: x` blocks; a `-- duckdb: x` block overrides x."""
    ours, alt = {}, {}
    current, target = None, None
    with open(path, encoding="utf-8") as f:
        for line in f:
            stripped = line.strip()
            if stripped.startswith("-- name:"):
                current, target = stripped[len("-- name:"):].strip(), ours
                target[current] = []
            elif stripped.startswith("-- duckdb:"):
                current, target = stripped[len("-- duckdb:"):].strip(), alt
                target[current] = []
            elif current is not None:
                target[current].append(line)
    clean = lambda lines: "".join(lines).strip().rstrip(";").strip()
    out = {name: clean(lines) for name, lines in ours.items()}
    out.update({name: clean(lines) for name, lines in alt.items() if name in out})
    return out


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
    ap.add_argument("--data", required=True, help="directory with schema.json, views.json, <table>.csv")
    ap.add_argument("--queries", required=True)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    with open(os.path.join(args.data, "schema.json"), encoding="utf-8") as f:
        schema = json.load(f)
    with open(os.path.join(args.data, "views.json"), encoding="utf-8") as f:
        views = json.load(f)

    con = duckdb.connect()
    # Query (like the papers) keeps integer division integer and yields NULL for a division
    # by zero; DuckDB's `/` is float division and (since 2.0) raises on zero unless told.
    con.execute("SET integer_division = true")
    try:
        con.execute("SET error_on_division_by_zero = false")
    except duckdb.Error:
        pass  # older DuckDB: NULL already
    con.execute("SET TimeZone = 'UTC'")
    for table, columns in schema.items():
        cols = ", ".join(f'"{c}" {t}' for c, t in columns)
        con.execute(f'CREATE TABLE "{table}" ({cols})')
        path = os.path.join(args.data, f"{table}.csv")
        con.execute(f"COPY \"{table}\" FROM '{path}' (HEADER true, DELIMITER ',')")
    for view in views:
        con.execute(f'CREATE VIEW "{view["name"]}" AS {view["sql"]}')

    print_timed(con, parse_queries(args.queries), args.runs)


def print_timed(con, queries, runs):
    """Times every query ({name: sql}) as the Rust side does (one warm-up run, then the
    median of `runs`) and prints the JSON both benchmarks read."""
    results = {}
    for name, sql in queries.items():
        try:
            rows = con.execute(sql).fetchall()
            times = []
            for _ in range(max(runs, 1)):
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
