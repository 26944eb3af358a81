"""A stream worker process for the reliability tests (so that it can be killed with SIGKILL).

usage: python -m tests.stream_runner BOOTSTRAP REDIS_URL TOPIC PREFIX [IDLE_S]
"""

from __future__ import annotations

import sys
from pathlib import Path

from featurepipe import load_definitions
from featurepipe.online.redis_conn import connect
from featurepipe.stream.worker import StreamWorker, WorkerConfig


def main() -> None:
    bootstrap, redis_url, topic, prefix = sys.argv[1:5]
    idle = float(sys.argv[5]) if len(sys.argv) > 5 else 3.0
    defs = load_definitions(Path(__file__).resolve().parents[1] / "feature_defs")
    worker = StreamWorker(
        defs,
        WorkerConfig(bootstrap=bootstrap, group_id=prefix, prefix=prefix, idle_exit_s=idle, max_batch=2000),
        connect(redis_url, timeout=2.0),
        topics={"transactions": topic},
    )
    worker.install_signal_handlers()
    c = worker.run()
    print(f"events={c.events} valid={c.valid} invalid={c.invalid} retries={c.flush_retries}", flush=True)


if __name__ == "__main__":
    main()
