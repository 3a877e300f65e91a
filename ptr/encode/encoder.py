"""``encode(EncodeConfig) -> summary``: records → chat layout → token ids and segment codes →
(packed) sequences → shards in ``<output_path>/<corpus_name>/``.

One run, in named phases: the tokenizer and layout are set up (bad flags fail here), the input is
found, a staging folder is begun, examples stream through the layout and the tokenizer
(:mod:`ptr.encode.stream`) into fitted, packed shards, and the summary and meta.json complete the
corpus, which is then published (:mod:`ptr.encode.staging`). A failed or killed run publishes
nothing: bad input anywhere stops the run with ``file:line: field: reason`` and leaves any earlier
corpus of that name as it was.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from tqdm import tqdm

from ptr import storage
from ptr.argv import config_argv
from ptr.chat import end_of_turn_tokens
from ptr.encode import stream
from ptr.encode.layout import ChatLayout, tokenizer_hash, vocab_size
from ptr.encode.overflow import Overflow, fit
from ptr.encode.packing import BestFitPacker
from ptr.encode.records import Drop, Example, RefinePrompt, iter_loader, to_example
from ptr.encode.shards import ANSWER, IGNORE, MAX_THOUGHTS, ShardWriter
from ptr.encode.staging import Staging
from ptr.errors import InputError, PtrError, invalid
from ptr.models import load_tokenizer, resolve
from ptr.objective import LOSS_WEIGHTS_BY_ENCODING
from ptr.records import Where, read_records
from ptr.tracking import stage_run

FORMAT_VERSION = 1


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
    overflow: Overflow = "drop"
    refine_prompt: str | None = None  # None: the records' own (ptr thoughts writes it), else the paper's
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
        if self.overflow == "shorten_thoughts" and self.encode_type != "ptr":
            raise ValueError(
                f"--overflow shorten_thoughts needs thoughts: --encode_type ptr, not {self.encode_type}"
            )
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


# -- phase 1: the tokenizer and its chat layout -----------------------------------------------------


@dataclass
class TokenizerSetup:
    model_dir: str
    tokenizer: object
    vocab: int
    dtype: str
    layout: ChatLayout
    end_of_turn_ids: frozenset[int]


def setup_tokenizer(cfg: EncodeConfig) -> TokenizerSetup:
    """Load the tokenizer and check it can do what ``cfg`` asks, before anything is written."""
    model_dir = resolve(cfg.tokenizer_path)
    tokenizer = load_tokenizer(model_dir)
    vocab = vocab_size(tokenizer)
    dtype = choose_dtype(cfg.save_dtype, vocab)
    if cfg.encode_type != "pretrain" and not tokenizer.chat_template:
        raise PtrError(
            f"tokenizer {cfg.tokenizer_path!r} has no chat template; --encode_type {cfg.encode_type} "
            "lays conversations out with it (use --encode_type pretrain for raw text)"
        )
    end_of_turn = end_of_turn_tokens(tokenizer, model_dir)
    ids = frozenset(tokenizer.convert_tokens_to_ids(end_of_turn))
    return TokenizerSetup(
        model_dir, tokenizer, vocab, dtype, ChatLayout(tokenizer, end_of_turn=end_of_turn), ids
    )


# -- phase 2: records → examples ------------------------------------------------------------------


def open_records(cfg: EncodeConfig) -> Iterator[tuple[Where, dict]]:
    """The input's records; a missing input fails here, before any folder is made."""
    if cfg.data_loader_path:
        return iter_loader(cfg.data_loader_path, str(storage.fetch(cfg.input)) if cfg.input else None)
    return read_records(cfg.input)


@dataclass
class Tally:
    """What happened to the records, for summary.json and meta.json."""

    read: int = 0
    examples: int = 0
    dropped: Counter = field(default_factory=Counter)
    truncated: int = 0
    shortened: int = 0
    sequences: int = 0
    documents: int = 0
    tokens: int = 0
    segment_tokens: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))


def examples(records: Iterable[tuple[Where, dict]], cfg: EncodeConfig, refine: RefinePrompt, tally: Tally):
    for where, record in records:
        tally.read += 1
        example = to_example(record, where, cfg.encode_type, refine)
        if isinstance(example, Drop):
            tally.dropped[str(example)] += 1
            continue
        yield example


# -- phase 3: encoded examples → fitted, packed sequences → shards --------------------------------


class CorpusWriter:
    """Fits each encoded example to ``max_length``, packs it (``merge_data``) and writes shards."""

    def __init__(self, directory: Path, cfg: EncodeConfig, setup: TokenizerSetup, tally: Tally):
        self.cfg, self.tally, self.end_of_turn = cfg, tally, setup.end_of_turn_ids
        self.shards = ShardWriter(directory, setup.dtype, cfg.tokens_per_file)
        self.packer = BestFitPacker(cfg.max_length) if cfg.merge_data else None

    def add(self, ids: np.ndarray, segments: np.ndarray) -> None:
        fitted = fit(ids, segments, self.cfg.max_length, self.cfg.overflow, self.end_of_turn)
        tally = self.tally
        if fitted.dropped:
            tally.dropped[fitted.dropped] += 1
            return
        tally.truncated += fitted.truncated
        tally.shortened += fitted.shortened
        if not fitted.segments.any():
            tally.dropped["no_loss_tokens"] += 1
            return
        tally.examples += 1
        if self.packer is None:
            self._write(fitted.ids, fitted.segments, [len(fitted.ids)])
        else:
            for seq in self.packer.add(fitted.ids, fitted.segments):
                self._write(*seq)

    def _write(self, tokens: np.ndarray, segments: np.ndarray, doc_lens: list[int]) -> None:
        self.shards.add(tokens, segments, doc_lens)
        self.tally.sequences += 1
        self.tally.documents += len(doc_lens)
        self.tally.tokens += len(tokens)
        self.tally.segment_tokens += np.bincount(segments, minlength=256)

    def close(self) -> list[str]:
        if self.packer is not None:
            for seq in self.packer.finish():
                self._write(*seq)
        return self.shards.close()


def write_corpus(
    directory: Path, examples: Iterable[Example], setup: TokenizerSetup, cfg: EncodeConfig, tally: Tally
) -> list[str]:
    """Stream the examples through the layout and the tokenizer into shards; returns the shard names."""
    writer = CorpusWriter(directory, cfg, setup, tally)
    num_proc = cfg.num_proc or stream.default_num_proc()
    with tqdm(desc=f"encode {cfg.corpus_name}", unit="ex", file=sys.stderr, mininterval=2) as bar:
        for results in stream.encoded(examples, setup.layout, num_proc):
            for result in results:
                if isinstance(result, InputError):
                    raise result
                writer.add(*result)
            bar.update(len(results))
    if not tally.examples:
        raise PtrError(
            f"nothing to encode: {tally.read} records read, dropped {dict(tally.dropped) or 'none'}"
        )
    return writer.close()


# -- the run --------------------------------------------------------------------------------------


def encode(cfg: EncodeConfig, *, argv: list[str] | None = None) -> dict:
    """Encode ``cfg.input`` (or the loader's records) into shards; returns the summary."""
    started = time.perf_counter()
    setup = setup_tokenizer(cfg)
    records = open_records(cfg)
    staging = Staging(cfg.output_path, cfg.corpus_name)
    tally, refine = Tally(), RefinePrompt(cfg.refine_prompt)
    directory = staging.begin()
    try:
        shards = write_corpus(directory, examples(records, cfg, refine, tally), setup, cfg, tally)
        summary = make_summary(cfg, tally, shards, time.perf_counter() - started)
        meta = make_meta(cfg, setup, tally, summary, argv, refine)
        staging.complete(summary, meta)
    except BaseException:
        staging.abort()
        raise
    summary["path"] = staging.uri
    try:
        if staging.remote:
            staging.upload(shards)
        _track(cfg, summary, meta, staging.final)
    finally:
        staging.drop_local_copy()
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


# -- summary.json and meta.json -------------------------------------------------------------------


def _segment_name(code: int) -> str:
    return "ignore" if code == IGNORE else "answer" if code == ANSWER else f"thought_{code}"


def make_summary(cfg: EncodeConfig, tally: Tally, shards: list[str], seconds: float) -> dict:
    tokens = tally.tokens
    by_segment = {_segment_name(c): int(n) for c, n in enumerate(tally.segment_tokens.tolist()) if n}
    return {
        "records": tally.read,
        "examples": tally.examples,
        "dropped": dict(sorted(tally.dropped.items())),
        "truncated": tally.truncated,
        "thoughts_shortened": tally.shortened,
        "sequences": tally.sequences,
        "tokens": tokens,  # without padding: the shards hold none
        "loss_tokens": tokens - int(tally.segment_tokens[IGNORE]),
        "tokens_by_segment": by_segment,
        # Filled share of max_length sequences (packed runs only).
        "packing_efficiency": round(tokens / (tally.sequences * cfg.max_length), 4)
        if cfg.merge_data and tally.sequences
        else None,
        "shards": len(shards),
        "seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else 0.0,
    }


def make_meta(cfg, setup: TokenizerSetup, tally: Tally, summary: dict, argv, refine: RefinePrompt) -> dict:
    chat = cfg.encode_type != "pretrain"
    tokenizer = setup.tokenizer
    return {
        "format_version": FORMAT_VERSION,
        "corpus_name": cfg.corpus_name,
        "encode_type": cfg.encode_type,
        "tokenizer": {
            "name": str(cfg.tokenizer_path),
            "path": str(setup.model_dir),
            "hash": tokenizer_hash(tokenizer),
            "vocab_size": setup.vocab,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        "dtype": setup.dtype,
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
            # The refine turn the corpus was laid out with (the trainer records it with the model).
            "refine_prompt": refine.value if cfg.encode_type == "ptr" else None,
            "end_of_turn_tokens": setup.layout.end_of_turn if chat else [],
            "segment_codes": {"ignore": IGNORE, "answer": ANSWER, "thought": [1, MAX_THOUGHTS]},
        },
        "loss_weights": list(LOSS_WEIGHTS_BY_ENCODING[cfg.encode_type]),
        "counts": {
            "records": tally.read,
            "examples": tally.examples,
            "sequences": tally.sequences,
            "documents": tally.documents,
            "tokens": tally.tokens,
            "shards": summary["shards"],
        },
        "config": cfg.model_dump(),
        "argv": argv,
    }
