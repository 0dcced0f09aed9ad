"""Checks a node's Postgres listener with psycopg (run by integration/tests/pg.rs).

Usage: pg_client.py HOST PORT CHECKS [TOKEN]
CHECKS: comma-separated names of the check functions below. Prints `ok NAME` per check;
a failed check raises (traceback, exit status 1).
"""

import datetime
import sys
import threading
import time

import psycopg
from psycopg import errors, pq

HOST, PORT, CHECKS = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
TOKEN = sys.argv[4] if len(sys.argv) > 4 else None


# A nested-loop join that runs for many seconds on the demo fleet (query_limits.rs).
HEAVY = "SELECT COUNT(*) FROM processes a, processes b, processes c WHERE a.rss * b.rss > c.rss * 7919 + a.pid"


def connect(password=TOKEN, **kw):
    args = dict(host=HOST, port=PORT, user="test", dbname="query", connect_timeout=20, autocommit=True)
    if password is not None:
        args["password"] = password
    args.update(kw)
    return psycopg.connect(**args)


def expect_error(conn, sql, sqlstate, params=None):
    try:
        conn.execute(sql, params)
    except psycopg.Error as e:
        assert e.sqlstate == sqlstate, f"{sql}: {e.sqlstate} {e}"
        return str(e)
    raise AssertionError(f"{sql}: no error, expected {sqlstate}")


def readme(conn):
    (n,) = conn.execute("SELECT COUNT(*) FROM sys").fetchone()
    assert isinstance(n, int) and n > 0, n
    rows = conn.execute(
        "SELECT c.continent_name, SUM(l.hits) hits FROM load_info l, region_data r, continent_data c "
        "WHERE l.georegion = r.id AND r.continent = c.continent GROUP BY c.continent_name ORDER BY hits DESC"
    ).fetchall()
    assert rows and isinstance(rows[0][0], str) and isinstance(rows[0][1], int), rows


def types(conn):
    sql = (
        "SELECT CAST(-7 AS BIGINT) AS i, CAST(1.5 AS DOUBLE) AS f, 'x''y' AS s, TRUE AS b, "
        "CAST('2024-01-02 03:04:05.25' AS TIMESTAMP) AS t, CAST(NULL AS BIGINT) AS n, "
        "CAST(NULL AS VARCHAR) AS ns, CAST(3 AS INT) AS i4"
    )
    want = [-7, 1.5, "x'y", True, datetime.datetime(2024, 1, 2, 3, 4, 5, 250000), None, None, 3]
    oids = [20, 701, 25, 16, 1114, 20, 25, 23]
    for binary in (False, True):
        cur = conn.cursor(binary=binary)
        cur.execute(sql)
        row = cur.fetchone()
        assert list(row) == want, (binary, row)
        assert [d.type_code for d in cur.description] == oids, [d.type_code for d in cur.description]
        assert [d.name for d in cur.description] == ["i", "f", "s", "b", "t", "n", "ns", "i4"]
    # A real table: every column type the schemas use.
    cur = conn.execute("SELECT machine_ip, cpus, load1, boot_time FROM sys LIMIT 1")
    # boot_time is a Timestamp with time zone UTC in Arrow: timestamptz.
    assert [d.type_code for d in cur.description] == [25, 20, 701, 1184], cur.description
    ip, cpus, load1, boot = cur.fetchone()
    assert isinstance(ip, str) and isinstance(cpus, int) and isinstance(load1, float), (ip, cpus, load1)
    assert boot is None or isinstance(boot, datetime.datetime), boot


def params(conn):
    rows = conn.execute(
        "SELECT machine_ip, cpus FROM sys WHERE cpus >= %s AND machine_ip LIKE %s ORDER BY machine_ip LIMIT %s",
        (1, "%", 3),
    ).fetchall()
    assert len(rows) == 3, rows
    (v,) = conn.execute("SELECT CAST(%s AS BIGINT) IS NULL", (None,)).fetchone()
    assert v is True, v
    row = conn.execute("SELECT %s, %s, %s, %s", ("it's", -2, 2.5, True)).fetchone()
    assert list(row) == ["it's", -2, 2.5, True], row
    # An injection attempt stays a string.
    (n,) = conn.execute("SELECT COUNT(*) FROM sys WHERE machine_ip = %s", ("x' OR '1'='1",)).fetchone()
    assert n == 0, n
    # Prepared statements: prepared on the second use, run again with other values.
    for i in range(4):
        (n,) = conn.execute("SELECT COUNT(*) FROM sys WHERE cpus > %s", (i - 100,), prepare=True).fetchone()
        assert n > 0, n
    # Describe of a prepared statement (what Grafana's and JDBC's drivers send).
    pgc = conn.pgconn
    r = pgc.prepare(b"s1", b"SELECT machine_ip, cpus FROM sys WHERE cpus > $1")
    assert r.status == pq.ExecStatus.COMMAND_OK, r.error_message
    d = pgc.describe_prepared(b"s1")
    assert d.status == pq.ExecStatus.COMMAND_OK, d.error_message
    assert d.nparams == 1 and d.nfields == 2, (d.nparams, d.nfields)
    assert [d.ftype(0), d.ftype(1)] == [25, 20]
    r = pgc.exec_prepared(b"s1", [b"0"])
    assert r.status == pq.ExecStatus.TUPLES_OK and r.ntuples > 0, r.error_message


def session(conn):
    for sql in [
        "SET DateStyle = 'ISO'",
        "SET extra_float_digits = 3",
        "SET application_name = 'grafana'",
        "SET TIME ZONE 'UTC'",
        "BEGIN",
        "COMMIT",
    ]:
        conn.execute(sql)
    (v,) = conn.execute("SHOW application_name").fetchone()
    assert v == "grafana", v
    # A driver's own transaction (autocommit off) works too.
    with connect(autocommit=False) as c:
        (n,) = c.execute("SELECT 1").fetchone()
        c.commit()
        assert n == 1


def errors_(conn):
    expect_error(conn, "SELEC 1", "42601")
    expect_error(conn, "SELECT * FROM no_such_table", "42P01")
    expect_error(conn, "SELECT no_such_column FROM sys", "42703")
    expect_error(conn, "CREATE TABLE t (a INT)", "25006")
    expect_error(conn, "INSERT INTO sys (cpus) VALUES (1)", "25006")
    # The answer byte limit ([http] max_result_bytes of the test's node): a resource limit.
    expect_error(
        conn,
        "SELECT a.machine_ip || b.machine_ip || repeat('x', 1000) AS x FROM processes a, processes b",
        "53400",
    )
    # The statement timeout ([http] query_timeout).
    expect_error(conn, HEAVY, "57014")
    # The connection is still usable after each error.
    (n,) = conn.execute("SELECT 1").fetchone()
    assert n == 1


def truncated(conn):
    # The test's node cuts answers at 1000 rows ([http] max_result_rows): a warning says so.
    notices = []
    conn.add_notice_handler(lambda d: notices.append((d.severity, d.message_primary)))
    rows = conn.execute("SELECT machine_ip, pid FROM processes").fetchall()
    assert len(rows) == 1000, len(rows)
    assert any("max_result_rows" in m for _, m in notices), notices


def cancel(conn):
    def later():
        time.sleep(0.5)
        conn.cancel()

    t = threading.Thread(target=later)
    t.start()
    started = time.monotonic()
    msg = expect_error(conn, HEAVY + " AND a.pid > 0", "57014")
    t.join()
    took = time.monotonic() - started
    assert took < 2.5, f"the cancel took {took:.1f}s: {msg}"
    (n,) = conn.execute("SELECT 1").fetchone()
    assert n == 1


def grafana(conn):
    tables = [r[0] for r in conn.execute(GRAFANA_TABLES).fetchall()]
    assert "sys" in tables and "processes" in tables, tables
    cols = dict(conn.execute(GRAFANA_COLUMNS.replace("TABLE", "sys")).fetchall())
    assert "load1" in cols and "boot_time" in cols, cols
    # A time series as Grafana expands $__timeGroupAlias(boot_time, '1h') and
    # $__timeFilter(boot_time), in the extended protocol with a Describe.
    pgc = conn.pgconn
    sql = (
        b"SELECT floor(extract(epoch from boot_time)/3600)*3600 AS \"time\", avg(load1) AS \"load1\" "
        b"FROM sys WHERE boot_time BETWEEN '1970-01-01T00:00:00Z' AND '2100-01-01T00:00:00Z' "
        b"GROUP BY 1 ORDER BY 1"
    )
    r = pgc.prepare(b"", sql)
    assert r.status == pq.ExecStatus.COMMAND_OK, r.error_message
    d = pgc.describe_prepared(b"")
    assert d.nfields == 2 and d.ftype(1) == 701, (d.nfields, d.ftype(1))
    r = pgc.exec_prepared(b"", [])
    assert r.status == pq.ExecStatus.TUPLES_OK and r.ntuples > 0, r.error_message


def auth_refused(_conn):
    for password in ["wrong", None]:
        try:
            connect(password=password or "")
        except psycopg.OperationalError as e:
            assert "28P01" in str(e) or "password" in str(e), str(e)
            continue
        raise AssertionError("a wrong token was accepted")


def describe(conn):
    # SHOW TABLES, DESCRIBE and the descriptions of query_columns answer as over HTTP.
    names = {r[2] for r in conn.execute("SHOW TABLES").fetchall()}
    assert {"sys", "continent_data", "query_columns"} <= names, names
    cols = conn.execute("DESCRIBE sys").fetchall()
    assert cols and cols[0][0] == "machine_ip", cols
    (desc,) = conn.execute(
        "SELECT description FROM query_columns WHERE table_name = 'sys' AND column_name = 'machine_ip'"
    ).fetchone()
    assert desc, desc


def forbidden(conn):
    expect_error(conn, "SELECT * FROM processes", "42501")
    (n,) = conn.execute("SELECT COUNT(*) FROM sys").fetchone()
    assert n > 0


GRAFANA_TABLES = """SELECT
    CASE WHEN
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )
      THEN quote_ident(table_name)
      ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
    END AS "table"
    FROM information_schema.tables
    WHERE quote_ident(table_schema) NOT IN ('information_schema',
                             'pg_catalog',
                             '_timescaledb_cache',
                             '_timescaledb_catalog',
                             '_timescaledb_internal',
                             '_timescaledb_config',
                             'timescaledb_information',
                             'timescaledb_experimental')
    ORDER BY CASE WHEN
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          ) THEN 0 ELSE 1 END, 1"""

GRAFANA_COLUMNS = """SELECT quote_ident(column_name) AS "column", data_type AS "type"
    FROM information_schema.columns
    WHERE
      CASE WHEN array_length(parse_ident('TABLE'),1) = 2
        THEN quote_ident(table_schema) = (parse_ident('TABLE'))[1]
          AND quote_ident(table_name) = (parse_ident('TABLE'))[2]
        ELSE quote_ident(table_name) = 'TABLE'
          AND
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )
      END"""

CHECKS_BY_NAME = {
    "readme": readme,
    "types": types,
    "params": params,
    "session": session,
    "errors": errors_,
    "cancel": cancel,
    "truncated": truncated,
    "grafana": grafana,
    "auth_refused": auth_refused,
    "forbidden": forbidden,
    "describe": describe,
}

if __name__ == "__main__":
    with connect() as conn:
        for name in CHECKS:
            CHECKS_BY_NAME[name](conn)
            print("ok", name, flush=True)
