"""`ptr serve`: the refining model behind KServe, and the pieces around it.

* :mod:`ptr.serve.schema` — request parsing and validation (V1 body, V2 ``request`` input, limits);
* :mod:`ptr.serve.batcher` — dynamic batching of concurrent generations into one ``generate`` call;
* :mod:`ptr.serve.kserve_model` — the ``kserve.Model`` subclass (imports kserve);
* :mod:`ptr.serve.openai_routes` — OpenAI-compatible chat/completions routes on the same server;
* :mod:`ptr.serve.cli` — ``ptr serve`` (runs ``kserve.ModelServer``);
* :mod:`ptr.serve.manifests` — InferenceService manifests and their validation against the CRD.

Only :mod:`ptr.serve.kserve_model` and :mod:`ptr.serve.cli` import kserve, and only when they run. The client
that evaluation uses, :class:`~ptr.inference.kserve_client.KServeBackend`, is a backend like the
others and lives in :mod:`ptr.inference` (no kserve import).
"""
