"""The gateway: one OpenAI-compatible base URL for every model of the specs.

A small aiohttp server (``server``) routes ``/v1/*`` requests by the body's ``model`` straight to the replicas' own
HTTP endpoints (``reconciler.engines.endpoint``), beside Serve's per-model routes, which keep working. The executor
publishes a route table (``table``) after each phase of an apply; the gateway answers ``GET /v1/models`` from it
without asking any replica. The pure parts (``table``, ``routing``, ``errors``) need neither Ray nor a network.
"""
