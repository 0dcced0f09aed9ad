#!/usr/bin/env python3
"""A Query publisher using only the Python standard library.

It connects to the edge agent's publish socket (or TCP listener), declares the tables it
can publish, learns which ones are wanted, and publishes a full copy of its rows of each
wanted table once per interval:

    python3 ops/examples/publisher.py --socket /run/query/publish.sock
    python3 ops/examples/publisher.py --tcp 127.0.0.1:7301 --once

Here it publishes `load_info` (made-up traffic for this machine) and `machinerole`.
"""

import argparse
import json
import random
import socket
import sys
import time

TABLES = ["load_info", "machinerole"]


def rows_for(table):
    if table == "load_info":
        return [
            {"georegion": region, "hits": random.randint(100, 5000),
             "bytes": random.randint(10**6, 10**8), "errors": random.randint(0, 5)}
            for region in (1, 15, 25)
        ]
    if table == "machinerole":
        return [{"role": "python-example"}]
    return []


class Agent:
    """One connection to the edge agent: newline-delimited JSON both ways."""

    def __init__(self, sock):
        self.sock = sock
        self.reader = sock.makefile("r", encoding="utf-8")
        self.wanted = []

    def send(self, message):
        self.sock.sendall((json.dumps(message) + "\n").encode("utf-8"))

    def receive(self):
        line = self.reader.readline()
        if not line:
            raise ConnectionError("the agent closed the connection")
        message = json.loads(line)
        if "want" in message:
            self.wanted = message["want"]
        return message

    def hello(self, name, tables):
        self.send({"hello": {"publisher": name, "tables": tables}})
        reply = self.receive()
        if "error" in reply:
            raise RuntimeError(reply["error"]["message"])

    def publish(self, table, rows):
        self.send({"publish": {"table": table, "rows": rows}})
        while True:
            reply = self.receive()
            if "ok" in reply:
                return reply["ok"]["rows"]
            if "error" in reply:
                raise RuntimeError(json.dumps(reply["error"]))


def connect(args):
    if args.tcp:
        host, port = args.tcp.rsplit(":", 1)
        return socket.create_connection((host, int(port)), timeout=30)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(args.socket)
    return sock


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", default="/run/query/publish.sock")
    parser.add_argument("--tcp", help="host:port of the agent's TCP listener instead of the socket")
    parser.add_argument("--name", default="python-example")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between publishes")
    parser.add_argument("--once", action="store_true", help="publish once and exit")
    args = parser.parse_args()

    agent = Agent(connect(args))
    agent.hello(args.name, TABLES)
    while True:
        for table in list(agent.wanted):
            rows = agent.publish(table, rows_for(table))
            print(f"published {rows} rows of {table}", flush=True)
        if not agent.wanted:
            print("no table wanted yet; waiting", flush=True)
        if args.once:
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
