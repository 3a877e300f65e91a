"""`ptr serve`: the refining model behind KServe, and the pieces around it.

* :mod:`ptr.serve.schema` — request parsing and validation (V1 body, V2 ``request`` input, limits);
* :mod:`ptr.serve.batcher` — dynamic batching of concurrent generations into one ``generate`` call;
* :mod:`ptr.serve.kserve_model` — the ``kserve.Model`` subclass (imports kserve);
* :mod:`ptr.serve.openai_routes` — OpenAI-compatible chat/completions routes on the same server;
* :mod:`ptr.serve.cli` — ``ptr serve`` (runs ``kserve.ModelServer``);
* :mod:`ptr.serve.client` — :class:`KServeBackend`, the client that evaluation uses (no kserve import);
* :mod:`ptr.serve.manifests` — InferenceService manifests and their validation against the CRD.

Only :mod:`ptr.serve.kserve_model` and :mod:`ptr.serve.cli` (which imports it) import kserve, so that
``from ptr.serve.client import KServeBackend`` stays light.
"""
