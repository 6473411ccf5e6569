"""Run a command with real redis-server, PostgreSQL and a tansu Kafka broker on loopback, then stop them.

Usage: python scripts/with_servers.py -- pytest -q
The servers' URLs reach the command as LOOPSTACK_TEST_REDIS_URL, LOOPSTACK_TEST_PG_URL and
LOOPSTACK_TEST_KAFKA_URL.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.servers import kafka_server, postgres_server, redis_server  # noqa: E402


def main(argv: list[str]) -> int:
    cmd = argv[argv.index("--") + 1:] if "--" in argv else argv
    if not cmd:
        print("usage: with_servers.py -- COMMAND ...", file=sys.stderr)
        return 2
    with redis_server() as redis_url, postgres_server() as pg_url, kafka_server() as kafka_url:
        print(f"servers up: redis {redis_url}  postgresql {pg_url}  kafka {kafka_url}", flush=True)
        env = dict(os.environ, LOOPSTACK_TEST_REDIS_URL=redis_url, LOOPSTACK_TEST_PG_URL=pg_url,
                   LOOPSTACK_TEST_KAFKA_URL=kafka_url)
        return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
