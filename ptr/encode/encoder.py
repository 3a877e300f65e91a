"""``encode(EncodeConfig) -> summary``: records → chat layout → token ids and segment codes →
(packed) sequences → shards in ``<output_path>/<corpus_name>/``.

The corpus is built in a hidden staging folder beside its final place and renamed into place only
when complete (meta.json last), so a failed or killed run publishes nothing: bad input anywhere
stops the run with ``file:line: field: reason`` and leaves any earlier corpus of that name as it was.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ptr import storage
from ptr.argv import config_argv
from ptr.chat import end_of_turn_tokens
from ptr.encode.layout import ChatLayout, tokenizer_hash, vocab_size
from ptr.encode.packing import BestFitPacker
from ptr.encode.records import Drop, Example, iter_loader, to_example
from ptr.encode.shards import ANSWER, IGNORE, MAX_THOUGHTS, ShardWriter
from ptr.errors import InputError, PtrError, invalid
from ptr.files import write_json
from ptr.models import load_tokenizer, resolve
from ptr.objective import LOSS_WEIGHTS_BY_ENCODING
from ptr.procs import pid_alive
from ptr.prompts import REFINE_PROMPT
from ptr.records import read_records
from ptr.tracking import stage_run

FORMAT_VERSION = 1
# Examples per tokenizer batch and per worker task: the fast tokenizer costs less per text in big
# batches (measured: ~40% more CPU per text in batches of 512 than of 2,000).
CHUNK = 4096


class EncodeConfig(BaseModel):
    """Everything one encoding run depends on (recorded in meta.json)."""

    model_config = ConfigDict(extra="forbid")

    tokenizer_path: str
    output_path: str
    input: str | None = None
    data_loader_path: str | None = None
    corpus_name: str = "ptr"
    encode_type: Literal["ptr", "qa", "pretrain"] = "ptr"
    max_length: int = Field(4096, gt=0)
    merge_data: bool = False
    save_dtype: Literal["uint16", "int16", "int32"] | None = None  # None: uint16 if the vocabulary fits
    tokens_per_file: int = Field(int(5e8), gt=0)
    overflow: Literal["drop", "truncate"] = "drop"
    refine_prompt: str = REFINE_PROMPT
    num_proc: int | None = Field(None, ge=1)  # None: one per core where there are 4 or more

    def to_argv(self) -> list[str]:
        """``ptr encode`` flags that give back this config."""
        return config_argv(self)

    @field_validator("corpus_name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        if not value or value.startswith(".") or "/" in value or "\\" in value:
            raise ValueError(f"{value!r} is not a plain folder name")
        return value

    @model_validator(mode="after")
    def _has_source(self):
        if not self.input and not self.data_loader_path:
            raise ValueError("give --input (a JSONL file, a folder of them, or s3://) or --data_loader_path")
        return self

    @field_validator("tokens_per_file", mode="before")
    @classmethod
    def _float_count(cls, value):
        if isinstance(value, str):  # "5e8" on the command line, as the paper writes it
            value = float(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return value


def config(**values) -> EncodeConfig:
    """``EncodeConfig(**values)``; a validation error becomes ``--field: message`` (exit 2)."""
    try:
        return EncodeConfig(**values)
    except ValidationError as err:
        raise invalid(err, flags=True) from None


# -- dtype ----------------------------------------------------------------------------------------


def choose_dtype(requested: str | None, vocab: int) -> str:
    """The token dtype for a vocabulary of ``vocab`` ids, decided by the vocabulary, never by the ids
    seen: uint16 below 65,536 entries, else int32; int16 only below 32,768. Others are refused."""
    limits = {"uint16": 65_536, "int16": 32_768, "int32": 2**31}
    if requested is None:
        return "uint16" if vocab < limits["uint16"] else "int32"
    if vocab >= limits[requested]:
        fits = [name for name in ("uint16", "int32") if vocab < limits[name]]
        raise PtrError(
            f"--save_dtype {requested} cannot hold this tokenizer's vocabulary ({vocab:,} entries; "
            f"{requested} is accepted below {limits[requested]:,}); use {' or '.join(fits)}"
        )
    return requested


# -- worker processes -----------------------------------------------------------------------------

_WORKER_LAYOUT: ChatLayout | None = None


def _init_worker(layout: ChatLayout) -> None:
    global _WORKER_LAYOUT
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process
    _WORKER_LAYOUT = layout


def _encode_in_worker(chunk: list[Example]):
    return _WORKER_LAYOUT.encode_batch(chunk)


def _default_num_proc() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # Below 4 cores the tokenizer's own threads use them better than extra Python processes.
    return min(cores, 8) if cores >= 4 else 1


def _ordered_map(pool, chunks: Iterator[list], ahead: int):
    """Results in input order, at most ``ahead`` chunks in flight. Reading stays in this thread, so
    a bad record raises here (not in Pool's feeder thread) and memory stays bounded."""
    pending: deque = deque()
    for chunk in chunks:
        pending.append(pool.apply_async(_encode_in_worker, (chunk,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _chunks(examples: Iterator, size: int) -> Iterator[list]:
    """Batches of ``size`` examples, the first ones smaller (1024, 2048, …) so work starts early."""
    step = min(1024, size)
    while batch := list(islice(examples, step)):
        yield batch
        step = min(2 * step, size)


# -- staging and publishing -----------------------------------------------------------------------


def _clear_stale(parent: Path, corpus: str) -> None:
    """Staging folders of encoders that died (killed, out of memory) are removed."""
    for path in parent.glob(f".{corpus}.*-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _publish_local(staging: Path, final: Path) -> None:
    """Swap the finished corpus into place (an earlier one of the same name is replaced)."""
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def _publish_remote(local: Path, uri: str, shards: list[str]) -> None:
    """Upload shards first and meta.json last, so a reader that waits for meta.json sees all shards."""
    for name in shards:
        storage.publish(local / name, f"{uri}/{name}")
    storage.publish(local / "summary.json", f"{uri}/summary.json")
    storage.publish(local / "meta.json", f"{uri}/meta.json")


# -- the run --------------------------------------------------------------------------------------


def _examples(records, cfg: EncodeConfig, counts: Counter) -> Iterator[Example]:
    for where, record in records:
        counts["read"] += 1
        example = to_example(record, where, cfg.encode_type, cfg.refine_prompt)
        if isinstance(example, Drop):
            counts[f"dropped:{example}"] += 1
            continue
        yield example


def encode(cfg: EncodeConfig, *, argv: list[str] | None = None) -> dict:
    """Encode ``cfg.input`` (or the loader's records) into shards; returns the summary."""
    from tqdm import tqdm

    started = time.perf_counter()
    model_dir = resolve(cfg.tokenizer_path)
    tokenizer = load_tokenizer(model_dir)
    vocab = vocab_size(tokenizer)
    dtype = choose_dtype(cfg.save_dtype, vocab)  # refused here, before anything is written
    if cfg.encode_type != "pretrain" and not tokenizer.chat_template:
        raise PtrError(
            f"tokenizer {cfg.tokenizer_path!r} has no chat template; --encode_type {cfg.encode_type} "
            "lays conversations out with it (use --encode_type pretrain for raw text)"
        )
    layout = ChatLayout(tokenizer, end_of_turn=end_of_turn_tokens(tokenizer, model_dir))
    if cfg.data_loader_path:
        records = iter_loader(cfg.data_loader_path, str(storage.fetch(cfg.input)) if cfg.input else None)
    else:
        records = read_records(cfg.input)  # a missing input fails here, before any folder is made

    remote = storage.is_remote(cfg.output_path)
    if remote:
        storage.split_s3(cfg.output_path)
        parent = storage.cache_root() / "encode" / hashlib.sha256(cfg.output_path.encode()).hexdigest()[:16]
    else:
        parent = Path(cfg.output_path)
    parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(parent, cfg.corpus_name)
    staging = parent / f".{cfg.corpus_name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)

    counts: Counter = Counter()
    segment_tokens: Counter = Counter()
    num_proc = cfg.num_proc or _default_num_proc()
    pool = None
    try:
        writer = ShardWriter(staging, dtype, cfg.tokens_per_file)
        packer = BestFitPacker(cfg.max_length) if cfg.merge_data else None
        chunks = _chunks(_examples(records, cfg, counts), CHUNK)
        if num_proc > 1:
            pool = multiprocessing.get_context("fork").Pool(num_proc, _init_worker, (layout,))
            encoded = _ordered_map(pool, chunks, ahead=2 * num_proc)
        else:
            encoded = map(layout.encode_batch, chunks)
        with tqdm(desc=f"encode {cfg.corpus_name}", unit="ex", file=sys.stderr, mininterval=2) as bar:
            for results in encoded:
                for result in results:
                    if isinstance(result, InputError):
                        raise result
                    for seq in _sequences(result, cfg, packer, counts):
                        _write(writer, seq, counts, segment_tokens)
                bar.update(len(results))
            if packer is not None:
                for seq in packer.finish():
                    _write(writer, seq, counts, segment_tokens)
        if not counts["examples"]:
            dropped = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("dropped:")}
            raise PtrError(f"nothing to encode: {counts['read']} records read, dropped {dropped or 'none'}")
        shards = writer.close()
        summary = _summary(cfg, counts, segment_tokens, shards, time.perf_counter() - started)
        meta = _meta(cfg, tokenizer, model_dir, vocab, dtype, counts, summary, argv, layout)
        for name, obj in (("summary.json", summary), ("meta.json", meta)):  # meta last: it marks completion
            write_json(staging / name, obj)
            os.chmod(staging / name, 0o644)  # readable by the trainer's user, like the shards
        final = parent / cfg.corpus_name
        _publish_local(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if pool is not None:
            pool.terminate()
    summary["path"] = f"{cfg.output_path.rstrip('/')}/{cfg.corpus_name}" if remote else str(final)
    try:
        if remote:
            _publish_remote(final, summary["path"], shards)
        _track(cfg, summary, meta, final)
    finally:
        if remote:  # the store holds the corpus now: no second copy left in the cache
            shutil.rmtree(final, ignore_errors=True)
    return summary


def _track(cfg: EncodeConfig, summary: dict, meta: dict, corpus: Path) -> None:
    tags = {"ptr.tokenizer_hash": meta["tokenizer"]["hash"]}
    with stage_run("encode", params=cfg.model_dump(), tags=tags) as run:
        run.log_metrics({f"encode.{k}": v for k, v in summary.items() if isinstance(v, int | float)})
        run.log_artifact(corpus / "summary.json")
        run.log_artifact(corpus / "meta.json")
        if cfg.input and (storage.is_remote(cfg.input) or Path(cfg.input).exists()):
            run.log_dataset(cfg.input, context="encode")
        run.log_dataset(summary["path"], name=cfg.corpus_name, context="encoded")


def _sequences(result, cfg: EncodeConfig, packer, counts: Counter):
    ids, segments = result
    if len(ids) > cfg.max_length:
        if cfg.overflow == "drop":
            counts["dropped:too_long"] += 1
            return
        ids, segments = ids[: cfg.max_length], segments[: cfg.max_length]
        counts["truncated"] += 1
    if not segments.any():
        counts["dropped:no_loss_tokens"] += 1
        return
    counts["examples"] += 1
    if packer is None:
        yield ids, segments, [len(ids)]
    else:
        yield from packer.add(ids, segments)


def _write(writer: ShardWriter, seq, counts: Counter, segment_tokens: Counter) -> None:
    tokens, segments, doc_lens = seq
    writer.add(tokens, segments, doc_lens)
    counts["sequences"] += 1
    counts["documents"] += len(doc_lens)
    counts["tokens"] += len(tokens)
    values, freq = np.unique(segments, return_counts=True)
    for v, n in zip(values.tolist(), freq.tolist(), strict=True):
        segment_tokens[v] += n


def _segment_name(code: int) -> str:
    return "ignore" if code == IGNORE else "answer" if code == ANSWER else f"thought_{code}"


def _summary(cfg, counts: Counter, segment_tokens: Counter, shards: list[str], seconds: float) -> dict:
    tokens = counts["tokens"]
    dropped = {k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("dropped:")}
    return {
        "records": counts["read"],
        "examples": counts["examples"],
        "dropped": dropped,
        "truncated": counts["truncated"],
        "sequences": counts["sequences"],
        "tokens": tokens,  # without padding: the shards hold none
        "loss_tokens": tokens - segment_tokens[IGNORE],
        "tokens_by_segment": {_segment_name(c): n for c, n in sorted(segment_tokens.items())},
        # Filled share of max_length sequences (packed runs only).
        "packing_efficiency": round(tokens / (counts["sequences"] * cfg.max_length), 4)
        if cfg.merge_data and counts["sequences"]
        else None,
        "shards": len(shards),
        "seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else 0.0,
    }


def _meta(cfg, tokenizer, model_dir, vocab, dtype, counts, summary, argv, layout: ChatLayout) -> dict:
    chat = cfg.encode_type != "pretrain"
    return {
        "format_version": FORMAT_VERSION,
        "corpus_name": cfg.corpus_name,
        "encode_type": cfg.encode_type,
        "tokenizer": {
            "name": str(cfg.tokenizer_path),
            "path": str(model_dir),
            "hash": tokenizer_hash(tokenizer),
            "vocab_size": vocab,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        "dtype": dtype,
        "max_length": cfg.max_length,
        "packing": {
            "merge_data": cfg.merge_data,
            "algorithm": "best_fit_decreasing" if cfg.merge_data else "none",
            # Documents in one sequence never attend to each other; positions restart per document.
            "attention": "per_document",
            "position_ids": "restart_per_document",
        },
        "overflow": cfg.overflow,
        "layout": {
            "kind": {"ptr": "ptr_chat", "qa": "chat", "pretrain": "raw_text"}[cfg.encode_type],
            "chat_template": chat,
            "refine_prompt": cfg.refine_prompt if cfg.encode_type == "ptr" else None,
            "end_of_turn_tokens": layout.end_of_turn if chat else [],
            "segment_codes": {"ignore": IGNORE, "answer": ANSWER, "thought": [1, MAX_THOUGHTS]},
        },
        "loss_weights": list(LOSS_WEIGHTS_BY_ENCODING[cfg.encode_type]),
        "counts": {
            "records": counts["read"],
            "examples": counts["examples"],
            "sequences": counts["sequences"],
            "documents": counts["documents"],
            "tokens": counts["tokens"],
            "shards": summary["shards"],
        },
        "config": cfg.model_dump(),
        "argv": argv,
    }
