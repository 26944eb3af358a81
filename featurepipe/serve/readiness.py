"""``GET /ready``: whether this server can answer lookups with the versions it was started with.

Ready when the online store answers, holds a generation (it was materialized, recovered or
streamed into, and not emptied since: what every lookup checks too), every served view was
built there with the fingerprint of the loaded definitions, and no view is being materialized
(a running materialization has not written every entity yet).
"""

from __future__ import annotations

from typing import Any

import redis

from featurepipe.online.errors import OnlineStoreError
from featurepipe.online.state_store import open_store
from featurepipe.serve.service import LookupService


def readiness(service: LookupService) -> tuple[bool, dict[str, Any]]:
    """(ready, details for the response body)."""
    try:
        reader = service.reader()
        reader.client.ping()
        store = open_store(reader.client, service.prefix)
        generation = store.read_generation()
        views: dict[str, dict[str, Any]] = {}
        for name, view in service.views.items():
            served = generation.views.get(name) if generation is not None else None
            running = store.read_progress(name) is not None
            problem = None
            if served is None:
                problem = "not materialized in this store generation"
            elif served != view.fingerprint:
                problem = (
                    f"the store was built for version {served}; these definitions are "
                    f"{view.fingerprint} (materialize, or serve that version's definitions)"
                )
            elif running:
                problem = "a materialization is running or was interrupted"
            views[name] = {"fingerprint": view.fingerprint, "served": served, "ok": not problem}
            if problem:
                views[name]["problem"] = problem
    except (OnlineStoreError, redis.exceptions.RedisError) as e:
        return False, {"ready": False, "problem": f"the online store cannot be reached: {e}"}
    body: dict[str, Any] = {"prefix": service.prefix, "views": views}
    if generation is None:
        body["problem"] = (
            f"the online store holds no generation under prefix '{service.prefix}': nothing "
            "was materialized there, or it was emptied"
        )
        body["ready"] = False
        return False, body
    body["generation"] = generation.id
    ready = all(v["ok"] for v in views.values())
    body["ready"] = ready
    return ready, body
