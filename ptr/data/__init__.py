"""Thought data construction (phase 1 of PTR).

* :mod:`ptr.data.queries` — collect, deduplicate and decontaminate open-domain queries;
* :mod:`ptr.data.generate` — the paper's generic sampler (prompts in, completions out);
* :mod:`ptr.data.thoughts` — weak models write a chain of attempts, a strong model the final answer,
  filters keep consistent chains.

Each stage has a typed entry (``run_queries``, ``run_generate``, ``run_thoughts``) taking a pydantic
config, and a CLI ``main(argv)`` that builds the config from flags.
"""
