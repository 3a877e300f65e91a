"""`ptr refine`: answer, then refine, for R rounds — one question, or a JSONL batch."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from ptr.errors import InputError, PtrError, cli_errors
from ptr.inference import (
    BACKENDS,
    BackendOptions,
    SamplingParams,
    load_backend,
    refine,
    refine_prompt_for,
    validate_conversation,
)
from ptr.jsonl import write_jsonl
from ptr.records import iter_jsonl


def add_sampling_args(parser: argparse.ArgumentParser, max_new_tokens: int = 256) -> None:
    """Sampling flags shared by every command that generates."""
    parser.add_argument("--max_new_tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0, help="0 = no top-k cut")
    parser.add_argument("--seed", type=int, default=0)


def sampling_from_args(args) -> SamplingParams:
    try:
        return SamplingParams(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            seed=args.seed,
        )
    except ValueError as err:
        raise PtrError(str(err)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ptr refine", description=__doc__)
    p.add_argument(
        "--model_path", required=True, help="model reference (see ptr.models) or served model name"
    )
    p.add_argument("--backend", choices=BACKENDS, default="transformers")
    p.add_argument("--endpoint", help="base URL of a served model (--backend openai or kserve)")
    p.add_argument("--rounds", type=int, default=3)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--question", help="one question; each round is printed as it finishes")
    src.add_argument("--input", help="JSONL: each line has `question` or chat `messages`")
    p.add_argument("--output", help="JSONL output for --input")
    p.add_argument(
        "--refine_prompt",
        help="the refine turn (default: the one the model was trained with, from its ptr_train.json, "
        "else the paper's)",
    )
    p.add_argument(
        "--batch_size", type=int, default=16, help="rows per batch (concurrent requests over HTTP)"
    )
    p.add_argument("--dtype", default="auto", help="auto, float32 or bfloat16")
    add_sampling_args(p)
    return p


def _conversation_of(record: dict, path: str, line: int):
    if "messages" in record:
        try:
            return validate_conversation(record["messages"], "messages")
        except ValueError as err:
            raise InputError(path, line, str(err), field="messages") from None
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise InputError(path, line, "must be a non-empty string", field="question")
    return [{"role": "user", "content": question}]


def _load_batch(path: str) -> tuple[list[dict], list]:
    records, conversations = [], []
    for line, record in iter_jsonl(path, any_of=("question", "messages")):
        records.append(record)
        conversations.append(_conversation_of(record, path, line))
    return records, conversations


@cli_errors
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.rounds < 1:
        raise PtrError("--rounds must be >= 1")
    if args.input and not args.output:
        raise PtrError("--input needs --output")
    params = sampling_from_args(args)
    if args.input:
        records, conversations = _load_batch(args.input)  # validate everything before loading a model
    options = BackendOptions(dtype=args.dtype, batch_size=args.batch_size, endpoint=args.endpoint)
    backend = load_backend(args.backend, args.model_path, options)
    refine_prompt = refine_prompt_for(backend, args.refine_prompt)

    if args.question is not None:

        def show(k, _indices, outs):
            print(f"Round {k}:\n{outs[0].text.strip()}\n", flush=True)

        refine(
            backend,
            [[{"role": "user", "content": args.question}]],
            args.rounds,
            params,
            refine_prompt=refine_prompt,
            on_round=show,
        )
        return 0

    with tqdm(total=len(conversations) * args.rounds, desc="refine", unit="gen", file=sys.stderr) as bar:
        results = refine(
            backend, conversations, args.rounds, params, refine_prompt=refine_prompt, progress=bar.update
        )
    out = []
    for record, rounds in zip(records, results, strict=True):
        out.append(
            {
                **record,
                "rounds": [
                    {
                        "round": k,
                        "text": c.text,
                        "completion_tokens": c.completion_tokens,
                        "finish_reason": c.finish_reason,
                    }
                    for k, c in enumerate(rounds, 1)
                ],
            }
        )
    write_jsonl(args.output, out)
    print(f"wrote {len(out)} records to {args.output}", file=sys.stderr)
    return 0
