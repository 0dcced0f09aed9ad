#!/usr/bin/env python3
"""DuckDB side of the Query History benchmark (integration/benches/history.rs).

Runs each query of the queries file (JSON: {name: sql}, the SQL already reading the
history files with read_parquet) the way the Rust side does (one warm-up run, then the
median of N) and prints JSON:
{"duckdb_version": ..., "queries": {name: {"median_ms", "rows"} or {"error"}}}.
Timestamps are printed as epoch milliseconds.

Standard library and duckdb only; the timing is duckdb_sql.py's.
"""

import argparse
import json

import duckdb

# The same timing and cells as the SQL benchmark's side (this script's folder is on the path).
from duckdb_sql import print_timed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", required=True, help="JSON file {name: sql}")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    with open(args.queries, encoding="utf-8") as f:
        queries = json.load(f)

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    print_timed(con, queries, args.runs)


if __name__ == "__main__":
    main()
