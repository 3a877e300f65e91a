"""The PTR objective, packing and configs of `ptr train`, in-process (no DeepSpeed engine)."""

from __future__ import annotations

import copy
import inspect
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from ptr.encode.shards import ANSWER, IGNORE, ShardDataset
from ptr.errors import PtrError
from ptr.train import ds_config
from ptr.train.data import Batches, block_causal_mask, collate
from ptr.train.loss import beta_weights, objective, objective_from_logits

# -- the objective against a hand computation ---------------------------------------------------


def _cos(a, b):
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _mean_vec(vs):
    return [sum(col) / len(vs) for col in zip(*vs, strict=True)]


# Two documents: doc 5 has thought 1 (2 tokens), thought 2 (1 token), the answer (2 tokens);
# doc 9 is answer-only (3 tokens). Rows are listed out of order on purpose: attempts are found by
# (document, code), not by position.
TOKENS = [
    # (doc, code, logp, hidden)
    (5, ANSWER, -0.7, [1.0, 0.5]),
    (5, 1, -2.0, [0.2, 1.0]),
    (9, ANSWER, -0.3, [0.1, 0.9]),
    (5, 2, -1.5, [1.0, -1.0]),
    (5, 1, -1.0, [0.4, 0.0]),
    (9, ANSWER, -0.9, [0.5, 0.5]),
    (5, ANSWER, -0.1, [0.0, 2.0]),
    (9, ANSWER, -1.2, [-0.3, 0.2]),
]


def _tensors():
    doc = torch.tensor([t[0] for t in TOKENS])
    seg = torch.tensor([t[1] for t in TOKENS])
    logp = torch.tensor([t[2] for t in TOKENS], dtype=torch.float64)
    hidden = torch.tensor([t[3] for t in TOKENS], dtype=torch.float64)
    return logp, hidden, seg, doc


def _by_hand(weights, power):
    answer_logp = [t[2] for t in TOKENS if t[1] == ANSWER]
    nll = -sum(answer_logp) / len(answer_logp)
    cons, conf = [], []
    for d in (5, 9):
        codes = sorted({t[1] for t in TOKENS if t[0] == d})
        pooled = [_mean_vec([t[3] for t in TOKENS if t[0] == d and t[1] == c]) for c in codes]
        probs = [
            math.exp(sum(lp) / len(lp))
            for lp in ([t[2] for t in TOKENS if t[0] == d and t[1] == c] for c in codes)
        ]
        cons.append(sum(1 - _cos(pooled[k], pooled[k - 1]) for k in range(1, len(codes))))
        raw = [(k + 1) ** power for k in range(len(codes))]
        conf.append(sum(r / sum(raw) * (1 - p) for r, p in zip(raw, probs, strict=True)))
    consistency, confidence = sum(cons) / 2, sum(conf) / 2
    total = weights[0] * nll + weights[1] * consistency + weights[2] * confidence
    return total, nll, consistency, confidence


@pytest.mark.parametrize("power", [1.0, 0.0, 2.0])
@pytest.mark.parametrize("weights", [(0.8, 0.1, 0.1), (0.2, 0.5, 0.3)])
def test_each_term_matches_a_hand_computation(weights, power):
    terms = objective(*_tensors(), weights=weights, beta_power=power)
    total, nll, consistency, confidence = _by_hand(weights, power)
    assert terms.nll.item() == pytest.approx(nll, abs=1e-9)
    assert terms.consistency.item() == pytest.approx(consistency, abs=1e-6)
    assert terms.confidence.item() == pytest.approx(confidence, abs=1e-9)
    assert terms.total.item() == pytest.approx(total, abs=1e-6)
    assert 0 < terms.consistency.item() and 0 < terms.confidence.item() < 1


def test_beta_grows_with_t_and_sums_to_one_per_document():
    t = torch.tensor([1, 2, 3, 1, 1, 2])
    doc = torch.tensor([0, 0, 0, 1, 2, 2])
    beta = beta_weights(t, doc, 1.0)
    assert beta.tolist() == pytest.approx([1 / 6, 2 / 6, 3 / 6, 1.0, 1 / 3, 2 / 3])
    assert beta_weights(t, doc, 0.0).tolist() == pytest.approx([1 / 3] * 3 + [1.0] + [0.5] * 2)


def _packed_batch(seed=0, vocab=11):
    """Two rows, each holding two documents, with prompt, thought and answer codes, and padding."""
    g = torch.Generator().manual_seed(seed)
    seg_docs = [
        [IGNORE, IGNORE, 1, 1, IGNORE, ANSWER, ANSWER],
        [IGNORE, ANSWER, ANSWER, ANSWER],
        [IGNORE, IGNORE, 1, IGNORE, 2, 2, IGNORE, ANSWER, ANSWER, ANSWER],
    ]
    items = []
    for docs in ([0, 1], [2]):
        segs = [c for d in docs for c in seg_docs[d]]
        lens = [len(seg_docs[d]) for d in docs]
        ids = torch.randint(0, vocab, (len(segs),), generator=g).numpy()
        pos = torch.cat([torch.arange(n) for n in lens]).numpy()
        items.append({"input_ids": ids, "segments": segs, "doc_lens": lens, "position_ids": pos})
    return collate(items, pad_id=0)


def test_answer_only_weights_equal_plain_cross_entropy_and_mask_gradients():
    batch = _packed_batch()
    B, L = batch["input_ids"].shape
    logits = torch.randn(B, L, 11, dtype=torch.float64, requires_grad=True)
    hidden = torch.randn(B, L, 4, dtype=torch.float64)
    terms = objective_from_logits(
        logits,
        hidden,
        batch["input_ids"],
        batch["segments"],
        batch["position_ids"],
        batch["doc_ids"],
        weights=(1, 0, 0),
    )
    # Plain answer-only cross-entropy, the usual way: shift, label -100 everywhere but answer tokens.
    labels = batch["input_ids"].clone()
    labels[(batch["segments"] != ANSWER) | (batch["position_ids"] == 0)] = -100
    reference = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert terms.total.item() == pytest.approx(reference.item(), abs=1e-12)

    terms.total.backward()
    row_norm = logits.grad.norm(dim=-1)  # row j predicts token j + 1
    predicts_answer = torch.zeros(B, L, dtype=torch.bool)
    predicts_answer[:, :-1] = (batch["segments"][:, 1:] == ANSWER) & (batch["position_ids"][:, 1:] > 0)
    assert (row_norm[~predicts_answer] == 0).all(), "masked tokens must get no gradient from the NLL"
    assert (row_norm[predicts_answer] > 0).all()


def test_thought_tokens_never_change_the_nll_term():
    batch = _packed_batch()
    B, L = batch["input_ids"].shape
    logits, hidden = torch.randn(B, L, 11), torch.randn(B, L, 4)
    args = (batch["segments"], batch["position_ids"], batch["doc_ids"])
    before = objective_from_logits(logits, hidden, batch["input_ids"], *args)
    changed = batch["input_ids"].clone()
    thought = (batch["segments"] > 0) & (batch["segments"] < ANSWER)
    changed[thought] = (changed[thought] + 1) % 11
    after = objective_from_logits(logits, hidden, changed, *args)
    assert after.nll.item() == before.nll.item()
    assert after.confidence.item() != before.confidence.item()  # thoughts do count in the confidence term


# -- packing ----------------------------------------------------------------------------------


def test_collate_pads_with_a_block_of_its_own():
    batch = _packed_batch()
    assert batch["input_ids"].shape == (2, 11)
    assert batch["doc_ids"].tolist() == [[0] * 7 + [1] * 4, [2] * 10 + [-1]]
    assert batch["position_ids"][0].tolist() == list(range(7)) + list(range(4))
    assert batch["position_ids"][1].tolist() == list(range(10)) + [0]
    assert batch["segments"][1, -1].item() == IGNORE
    mask = block_causal_mask(batch["doc_ids"], torch.float32)[:, 0]
    assert mask[0, 7, 6] < -1e30 and mask[0, 7, 7] == 0 and mask[0, 3, 4] < -1e30 and mask[0, 6, 0] == 0


def test_flash_attention_gets_document_boundaries_over_the_flattened_batch():
    from ptr.train.packed_attention import packed_attention_inputs

    batch = _packed_batch()  # rows: docs of 7 and 4 tokens; a doc of 10 tokens and 1 padding token
    mask, extra = packed_attention_inputs("flash_attention_2", batch["doc_ids"], torch.bfloat16)
    assert mask is None
    assert (
        extra["cu_seq_lens_q"].tolist() == [0, 7, 11, 21, 22] and extra["cu_seq_lens_q"].dtype == torch.int32
    )
    assert extra["max_length_q"] == extra["max_length_k"] == 10
    mask, extra = packed_attention_inputs("sdpa", batch["doc_ids"], torch.float32)
    assert extra == {} and mask.shape == (2, 1, 11, 11)


@pytest.fixture(scope="module")
def tiny_lm(tiny_path):
    from ptr.models import load_tokenizer
    from ptr.train.packed_model import load_causal_lm

    return load_causal_lm(tiny_path, "sdpa").eval(), load_tokenizer(tiny_path)


def _packed_logits(lm, attn, input_ids, position_ids, doc_ids):
    from ptr.train.packed_attention import VARLEN_SDPA, cu_seqlens, register

    register()
    lm.config._attn_implementation = attn
    try:
        with torch.no_grad():
            if attn == VARLEN_SDPA:
                bounds = cu_seqlens(doc_ids)
                return lm(
                    input_ids=input_ids, position_ids=position_ids, cu_seq_lens_q=bounds, cu_seq_lens_k=bounds
                ).logits
            mask = block_causal_mask(doc_ids, torch.float32)
            return lm(input_ids=input_ids, position_ids=position_ids, attention_mask=mask).logits
    finally:
        lm.config._attn_implementation = "sdpa"


@pytest.mark.parametrize("attn", ["ptr_varlen_sdpa", "sdpa", "eager"])
def test_packed_documents_do_not_see_each_other(tiny_lm, attn):
    lm, _ = tiny_lm
    g = torch.Generator().manual_seed(1)
    a, b = torch.randint(5, 700, (1, 20), generator=g), torch.randint(5, 700, (1, 15), generator=g)
    packed = torch.cat([b, a], dim=1)
    positions = torch.cat([torch.arange(15), torch.arange(20)])[None]
    doc_ids = torch.tensor([[0] * 15 + [1] * 20])
    with torch.no_grad():
        alone = lm(input_ids=a, position_ids=torch.arange(20)[None]).logits
        leaky = lm(input_ids=packed, position_ids=positions, attention_mask=torch.ones_like(packed)).logits
    isolated = _packed_logits(lm, attn, packed, positions, doc_ids)
    torch.testing.assert_close(isolated[:, 15:], alone, atol=1e-4, rtol=1e-4)
    assert (leaky[:, 15:] - alone).abs().max() > 1e-2  # a plain causal mask would leak across documents


def test_varlen_attention_equals_the_block_mask_on_a_padded_batch(tiny_lm):
    lm, _ = tiny_lm
    batch = _packed_batch(vocab=700)  # two rows, three documents, one padding token
    args = (batch["input_ids"], batch["position_ids"], batch["doc_ids"])
    by_mask, by_document = _packed_logits(lm, "sdpa", *args), _packed_logits(lm, "ptr_varlen_sdpa", *args)
    real = batch["doc_ids"] >= 0
    torch.testing.assert_close(by_document[real], by_mask[real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attn", ["ptr_varlen_sdpa", "sdpa"])
def test_objective_of_a_document_is_the_same_alone_and_packed(tiny_lm, attn):
    from ptr.train.packed_attention import register
    from ptr.train.packed_model import PackedObjective

    lm, _ = tiny_lm
    register()
    lm.config._attn_implementation = attn
    module = PackedObjective(lm)
    g = torch.Generator().manual_seed(2)
    doc_a = {"input_ids": torch.randint(5, 700, (18,), generator=g).numpy()}
    doc_a["segments"] = [IGNORE] * 4 + [1] * 4 + [IGNORE] * 3 + [2] * 3 + [IGNORE] + [ANSWER] * 3
    other = torch.randint(5, 700, (12,), generator=g).numpy()
    alone = collate([{**doc_a, "doc_lens": [18], "position_ids": torch.arange(18).numpy()}], 0)
    packed_item = {
        "input_ids": torch.cat([torch.from_numpy(other), torch.from_numpy(doc_a["input_ids"])]).numpy(),
        "segments": [IGNORE] * 12 + doc_a["segments"],
        "doc_lens": [12, 18],
        "position_ids": torch.cat([torch.arange(12), torch.arange(18)]).numpy(),
    }
    packed = collate([packed_item], 0)
    with torch.no_grad():
        one, two = module(**alone), module(**packed)
    lm.config._attn_implementation = "sdpa"
    for key in ("loss", "nll", "consistency", "confidence"):
        assert two[key].item() == pytest.approx(one[key].item(), abs=1e-5), key


# -- data position ----------------------------------------------------------------------------


def test_batches_are_addressed_by_step(tmp_path, tiny_lm):
    from tests.support.thought_shards import write_corpus

    _, tokenizer = tiny_lm
    corpus = write_corpus(tmp_path / "c", tokenizer, n_docs=20, pack_to=100)
    ds = ShardDataset(corpus, seed=1, rank=1, world_size=2)
    batches = Batches(ds, micro_batch=2, grad_accum=2, pad_id=0)
    assert batches.steps_per_epoch == len(ds) // 2 // 4
    later = batches.steps_per_epoch + 1  # second epoch, second step
    assert batches.position(later).epoch == 1 and batches.position(later).index == 2
    fresh = Batches(ShardDataset(corpus, seed=1, rank=1, world_size=2), 2, 2, 0)
    for x, y in zip(batches.for_step(later), fresh.for_step(later), strict=True):
        assert torch.equal(x["input_ids"], y["input_ids"])
    with pytest.raises(PtrError, match="fewer than one optimizer step"):
        Batches(ds, micro_batch=64, grad_accum=1, pad_id=0)


# -- configs ----------------------------------------------------------------------------------

GOOD = {"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}, "zero_optimization": {"stage": 2}}


@pytest.mark.parametrize(
    "change, key",
    [
        ({"trian_batch_size": 4}, "trian_batch_size: unknown key"),
        (
            {"zero_optimization": {"stage": 2, "offload_optimiser": {}}},
            "zero_optimization.offload_optimiser: unknown key",
        ),
        ({"zero_optimization": {"stage": 7}}, "zero_optimization.stage"),
        ({"optimizer": {"type": "AdamW", "params": {"learning_rate": 1}}}, "optimizer.params.learning_rate"),
        ({"optimizer": {"type": "Adamm"}}, "optimizer.type"),
        (
            {"scheduler": {"type": "WarmupLR", "params": {"total_num_steps": 3}}},
            "scheduler.params.total_num_steps",
        ),
        ({"bf16": {"enabled": True, "loss_scale": 1}}, "bf16.loss_scale: unknown key"),
        (
            {"train_batch_size": 6, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1},
            "train_batch_size: 6 is not a multiple",
        ),
        ({"train_micro_batch_size_per_gpu": 0}, "train_micro_batch_size_per_gpu"),
        ({"bf16": {"enabled": True}, "fp16": {"enabled": True}}, "fp16.enabled"),
        (
            {"zero_optimization": {"stage": 0, "offload_optimizer": {"device": "cpu"}}},
            "zero_optimization.offload_optimizer",
        ),
    ],
)
def test_bad_deepspeed_configs_name_the_key(change, key):
    with pytest.raises(PtrError, match="^x.json: " + key.replace(".", r"\.")):
        ds_config.validate({**GOOD, **change}, "x.json")


def test_batch_sizes_are_checked_against_the_world_size():
    raw = {
        **GOOD,
        "train_batch_size": 8,
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 2,
    }
    ds_config.validate(raw)
    assert (
        ds_config.resolve(raw, world_size=2, total_steps=5, on_cpu=True, bf16_native=False)[
            "train_batch_size"
        ]
        == 8
    )
    with pytest.raises(PtrError, match=r"train_batch_size: 8 ≠ .* \(2 × 2 × 4 = 16\)"):
        ds_config.resolve(raw, world_size=4, total_steps=5, on_cpu=True, bf16_native=False)
    derived = {**GOOD, "train_batch_size": 12, "train_micro_batch_size_per_gpu": 2}
    assert ds_config.batch_sizes(derived, 3) == (2, 2)
    with pytest.raises(PtrError, match="gradient_accumulation_steps: cannot derive"):
        ds_config.batch_sizes(derived, 4)


def test_shipped_configs_resolve():
    default, _ = ds_config.load(None)
    resolved = ds_config.resolve(default, world_size=2, total_steps=30, on_cpu=True, bf16_native=False)
    assert resolved["zero_optimization"]["stage"] == 2 and resolved["bf16"]["enabled"] is False
    assert resolved["optimizer"]["params"]["torch_adam"] is True  # no JIT-built Adam on the CPU
    assert resolved["scheduler"]["params"]["total_num_steps"] == 30
    paper, _ = ds_config.load("paper")
    gpu = ds_config.resolve(paper, world_size=8, total_steps=3000, on_cpu=False, bf16_native=True)
    assert gpu["bf16"]["enabled"] is True and gpu["optimizer"]["params"]["lr"] == 7e-5
    assert gpu["optimizer"]["params"]["torch_adam"] is False  # DeepSpeedCPUAdam for the offloaded optimizer
    assert gpu["scheduler"]["params"] == {
        "warmup_min_lr": 1e-5,
        "warmup_max_lr": 7e-5,
        "warmup_num_steps": 800,
        "warmup_type": "linear",
        "total_num_steps": 3000,
    }
    assert gpu["zero_optimization"] == {
        "stage": 1,
        "offload_optimizer": {"device": "cpu", "pin_memory": True},
    }
    assert (gpu["train_micro_batch_size_per_gpu"], gpu["gradient_accumulation_steps"]) == (1, 10)


def test_scheduler_parameters_match_deepspeed():
    from deepspeed.runtime import lr_schedules

    for name, params in ds_config.SCHEDULER_PARAMS.items():
        signature = inspect.signature(getattr(lr_schedules, name).__init__)
        assert params == set(signature.parameters) - {"self", "optimizer"}, name


def _main(argv, monkeypatch):
    from ptr.train.cli import main

    monkeypatch.setattr(os, "environ", dict(os.environ))  # the CLI fills in launch variables
    return main(argv)


def test_cli_rejects_a_bad_config_before_training(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({**GOOD, "zero_optimization": {"stage": 2, "overlap_com": True}}))
    args = [
        "--model_path",
        "tiny-random",
        "--data_path",
        str(tmp_path),
        "--output_path",
        str(tmp_path / "out"),
    ]
    assert _main([*args, "--deepspeed_config_path", str(bad)], monkeypatch) == 2
    assert "zero_optimization.overlap_com: unknown key" in capsys.readouterr().err
    assert _main([*args, "--loss_weights", "0.5,0.1,0.1"], monkeypatch) == 2
    assert "--loss_weights: λ1,λ2,λ3 must be non-negative and sum to 1" in capsys.readouterr().err
    assert _main([*args, "--beta", "-1"], monkeypatch) == 2
    assert "--beta" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_lora_config_unknown_key(tmp_path):
    from ptr.train.packed_model import lora_config

    path = tmp_path / "lora.json"
    path.write_text(json.dumps({"r": 4, "alpha": 8}))
    with pytest.raises(PtrError, match="alpha: unknown key"):
        lora_config(str(path), "base")
    path.write_text(json.dumps({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}))
    assert lora_config(str(path), "base").r == 4


def test_loss_weights_come_from_the_corpus_unless_given():
    from ptr.train.config import DEFAULT_LOSS_WEIGHTS, resolve_loss_weights

    qa, ptr_meta = {"loss_weights": [1.0, 0.0, 0.0]}, {"loss_weights": [0.8, 0.1, 0.1]}
    assert resolve_loss_weights(None, [qa], "c") == ((1.0, 0.0, 0.0), "the corpus (c/meta.json)")
    assert resolve_loss_weights(None, [qa, dict(qa)], "c")[0] == (1.0, 0.0, 0.0)
    weights, source = resolve_loss_weights((0.8, 0.1, 0.1), [qa], "c")
    assert weights == (0.8, 0.1, 0.1) and source == "--loss_weights (over the corpus's 1,0,0)"
    assert resolve_loss_weights((1.0, 0.0, 0.0), [qa], "c") == ((1.0, 0.0, 0.0), "--loss_weights")
    assert resolve_loss_weights(None, [{}], "c") == (
        DEFAULT_LOSS_WEIGHTS,
        "the default (the corpus names none)",
    )
    with pytest.raises(
        PtrError, match="c: the corpora hold different loss weights .*; choose with --loss_weights"
    ):
        resolve_loss_weights(None, [qa, ptr_meta], "c")
    assert resolve_loss_weights((0.5, 0.25, 0.25), [qa, ptr_meta], "c")[0] == (0.5, 0.25, 0.25)


def test_export_ends_generation_at_the_trained_end_of_turn(tiny_lm, tmp_path):
    """A base model that stops only at <|endoftext|> (as Qwen2-7B does), trained on chat-format answers
    that end with <|im_end|>: the exported generation config stops at both."""
    from ptr.train import export

    lm, tokenizer = (copy.deepcopy(x) for x in tiny_lm)
    tokenizer.eos_token = "<|endoftext|>"
    lm.generation_config.eos_token_id = endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert endoftext != im_end
    chat = {"layout": {"kind": "ptr_chat", "end_of_turn_tokens": ["<|im_end|>"]}}
    assert export.stop_token_ids(tokenizer, lm, chat) == [endoftext, im_end]
    assert export.stop_token_ids(
        tokenizer, lm, {"layout": {"kind": "raw_text", "end_of_turn_tokens": []}}
    ) == [endoftext]
    out = export.export(lm, tokenizer, tmp_path / "final", stop_tokens=[endoftext, im_end])
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [endoftext, im_end]
