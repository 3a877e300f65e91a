"""Greedy refinement rounds computed with transformers' own ``generate`` and nothing of ptr's: the
oracle that served and local answers are checked against, so a test never compares ptr's generation
code with itself.

What it encodes, written out independently of ``ptr.inference``: a chat is rendered by the tokenizer's
chat template with the generation prompt; generation is greedy, one conversation at a time (no padding,
no cache reuse), and ends at ``end_ids`` or after ``max_new_tokens``; the answer is decoded without
special tokens; round k+1 appends the answer, stripped, as the assistant turn and the refine prompt as the
next user turn.
"""

from __future__ import annotations

import functools


@functools.cache
def _load(model_dir: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, tokenizer


def greedy_rounds(
    model_dir: str,
    conversations: list[list[dict]],
    rounds: int,
    max_new_tokens: int,
    refine_prompt: str,
    end_tokens: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>"),
) -> list[list[str]]:
    """Per conversation, the answer of every round."""
    import torch

    model, tokenizer = _load(str(model_dir))
    end_ids = tokenizer.convert_tokens_to_ids(list(end_tokens))
    out = []
    for conversation in conversations:
        messages, answers = list(conversation), []
        for _ in range(rounds):
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
            with torch.inference_mode():
                generated = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=end_ids,
                    pad_token_id=tokenizer.pad_token_id,
                )
            answer = tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)
            answers.append(answer)
            messages += [
                {"role": "assistant", "content": answer.strip()},
                {"role": "user", "content": refine_prompt},
            ]
        out.append(answers)
    return out
