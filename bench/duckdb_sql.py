#!/usr/bin/env python3
"""DuckDB side of the SQL benchmark (integration/benches/sql.rs).

Loads the tables the benchmark exported as CSV into DuckDB with the column types of
schema.json, creates the views of views.json, then prints one JSON line,
{"duckdb_version": ...}, and serves: for each query name read from standard input (one per
line) it times that query of the queries file the way the Rust side does (one warm-up run,
median of N) and prints one JSON line, {"median_ms", "rows"} or {"error"}. The benchmark
asks for each query right after timing its own runs of it, so both engines are timed in the
same second of the host's load (its slower and faster spells last seconds; the engines timed
minutes apart swung a single statement's ratio from 0.7 to 1.25 on the same code).

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

    serve(con, parse_queries(args.queries), args.runs)


def serve(con, queries, runs):
    """Answers the query names of standard input until it closes, one JSON line each."""
    reply({"duckdb_version": duckdb.__version__})
    for line in sys.stdin:
        name = line.strip()
        if name in queries:
            reply(timed(con, queries[name], runs))
        else:
            reply({"error": f"no query named {name!r} in the queries file"})


def print_timed(con, queries, runs):
    """Times every query ({name: sql}) at once and prints the JSON of all the answers,
    {"duckdb_version": ..., "queries": {name: answer}} (`bench/duckdb_history.py`)."""
    answers = {name: timed(con, sql, runs) for name, sql in queries.items()}
    json.dump({"duckdb_version": duckdb.__version__, "queries": answers}, sys.stdout)


def timed(con, sql, runs):
    """One warm-up run, then the median of `runs` timed ones, and the answer's rows."""
    try:
        rows = con.execute(sql).fetchall()
        times = []
        for _ in range(max(runs, 1)):
            start = time.perf_counter()
            rows = con.execute(sql).fetchall()
            times.append((time.perf_counter() - start) * 1000.0)
        return {"median_ms": statistics.median(times), "rows": [[cell(v) for v in r] for r in rows]}
    except duckdb.Error as e:
        return {"error": str(e)}


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
