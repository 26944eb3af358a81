"""``featurepipe serve``: an HTTP/JSON feature server over the online store.

``app.FeatureServer`` is the ASGI application (``POST /features``, the Feast-compatible
``POST /get-online-features``, ``/health``, ``/ready``, ``/metrics``, ``/openapi.json``,
``/docs``); ``service.LookupService`` answers lookups through the code path of
``FeatureStore.get_online_features``; ``served_log.ServedLog`` keeps a sample of what was
served; ``runner.run`` starts uvicorn. See docs/serving-http.md.
"""

from featurepipe.online.served_log import SCHEMA as SERVED_LOG_SCHEMA
from featurepipe.serve.app import FeatureServer, create_app
from featurepipe.serve.config import ServeConfig
from featurepipe.serve.errors import ServeError
from featurepipe.serve.service import LookupService

__all__ = [
    "SERVED_LOG_SCHEMA",
    "FeatureServer",
    "LookupService",
    "ServeConfig",
    "ServeError",
    "create_app",
]
