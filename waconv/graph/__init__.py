"""The Graph API client (events, dataset, app subscription), its error taxonomy and its fake.

``waconv.graph.fake`` is not imported here: production code never needs the fake server.
"""

from waconv.graph.client import MAX_EVENTS, EventsResult, GraphClient, appsecret_proof
from waconv.graph.errors import Disposition, GraphError, classify, operator_message

__all__ = [
    "MAX_EVENTS",
    "Disposition",
    "EventsResult",
    "GraphClient",
    "GraphError",
    "appsecret_proof",
    "classify",
    "operator_message",
]
