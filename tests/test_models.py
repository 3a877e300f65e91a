import hashlib
import multiprocessing
import os
from pathlib import Path

import pytest

from ptr.cache import cached_dir
from ptr.errors import PtrError
from ptr.models import load_model, load_tokenizer, resolve
from tests.conftest import run_ptr


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


def test_tiny_random_is_small_llama_with_chat_template(tiny_path):
    model, tok = load_model("tiny-random", dtype="float32")
    assert model.config.model_type == "llama"
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert model.config.tie_word_embeddings
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = tok("What is 12 * 7?").input_ids
    assert tok.decode(ids) == "What is 12 * 7?"


def test_tiny_random_builds_byte_identical_in_two_caches(tmp_path, monkeypatch):
    from ptr.models import tiny

    a = cached_dir("tiny-a", tiny.build)
    monkeypatch.setenv("PTR_CACHE", str(tmp_path / "c1"))
    b = cached_dir("tiny", tiny.build)
    monkeypatch.setenv("PTR_CACHE", str(tmp_path / "c2"))
    c = cached_dir("tiny", tiny.build)
    assert _digest(b) == _digest(c)
    assert a.exists()


def _slow_build(out: Path) -> None:
    import time

    counter = Path(os.environ["PTR_CACHE"]) / "builds"
    with open(counter, "a") as f:
        f.write("x")
    (out / "part1").write_text("half")
    time.sleep(0.5)
    (out / "part2").write_text("done")


def _build_in_child(_):
    d = cached_dir("racy", _slow_build)
    return sorted(p.name for p in d.iterdir())


def test_concurrent_builds_build_once_and_never_expose_half(tmp_path, monkeypatch):
    monkeypatch.setenv("PTR_CACHE", str(tmp_path))
    with multiprocessing.get_context("fork").Pool(3) as pool:
        listings = pool.map(_build_in_child, range(3))
    assert all(x == ["part1", "part2"] for x in listings)
    assert (tmp_path / "builds").read_text() == "x"
    assert not list(tmp_path.glob(".racy.tmp-*"))


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PTR_CACHE", str(tmp_path))

    def broken(out: Path):
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        cached_dir("broken", broken)
    assert not (tmp_path / "broken").exists()
    assert not list(tmp_path.glob(".broken.tmp-*"))


def test_local_directory_and_unknown_references(tiny_path, tmp_path):
    assert resolve(tiny_path) == tiny_path
    assert load_tokenizer(tiny_path).pad_token == "<|pad|>"
    assert resolve("Qwen/Qwen2-7B") == "Qwen/Qwen2-7B"  # hub ids pass through for real use
    for bad in ["no-such-model", "./missing/dir", str(tmp_path / "nothing")]:
        with pytest.raises(PtrError, match="accepted|expected"):
            resolve(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PtrError, match="config.json"):
        resolve(str(empty))


def test_unknown_reference_exits_2_naming_accepted_forms():
    proc = run_ptr("refine", "--model_path", "no-such-model", "--question", "hi")
    assert proc.returncode == 2
    assert (
        "tiny-random" in proc.stderr and "smollm2-135m-instruct" in proc.stderr and "models:/" in proc.stderr
    )
    assert "Traceback" not in proc.stderr


@pytest.mark.smollm
def test_smollm2_converted_directory_is_plain_hf(smollm_path):
    import json

    config = json.loads((Path(smollm_path) / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama"
    assert list(Path(smollm_path).glob("*.safetensors"))
    assert not list(Path(smollm_path).glob("*.gguf"))


def _same_tokenizer(a, b, tmp_path: Path) -> None:
    """Everything a stage can see of a tokenizer agrees: saved files, hash, ids, templates."""
    from ptr.encode.layout import tokenizer_hash

    assert type(a) is type(b)
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert tokenizer_hash(a) == tokenizer_hash(b)
    assert {k: str(v) for k, v in a.init_kwargs.items()} == {k: str(v) for k, v in b.init_kwargs.items()}
    assert repr(a) == repr(b)
    assert a.special_tokens_map == b.special_tokens_map and a.all_special_ids == b.all_special_ids
    assert str(a.added_tokens_decoder) == str(b.added_tokens_decoder)
    texts = ["Hello <|im_start|>world<|im_end|> 12345 ünïcode\n\n  spaces", "x", ""]
    for special in (True, False):
        assert (
            a(texts, add_special_tokens=special).input_ids == b(texts, add_special_tokens=special).input_ids
        )
    ids = a(texts[0]).input_ids
    assert a.decode(ids) == b.decode(ids) and a.decode(ids, skip_special_tokens=True) == b.decode(
        ids, skip_special_tokens=True
    )
    chat = [{"role": "user", "content": "Hi <|im_end|> there"}, {"role": "assistant", "content": "x"}]
    assert a.apply_chat_template(chat, tokenize=False) == b.apply_chat_template(chat, tokenize=False)
    assert a.apply_chat_template(chat, add_generation_prompt=True) == b.apply_chat_template(
        chat, add_generation_prompt=True
    )


def test_saved_fast_tokenizer_loads_as_auto_tokenizer_does(tiny_path, tmp_path):
    """The one-read path (ptr.models.fast_tokenizer) builds what AutoTokenizer.from_pretrained builds."""
    from transformers import AutoTokenizer

    from ptr.models.fast_tokenizer import load_saved_fast

    fast = load_saved_fast(tiny_path)
    assert fast is not None
    _same_tokenizer(AutoTokenizer.from_pretrained(tiny_path), fast, tmp_path)


@pytest.mark.smollm
def test_smollm2_tokenizer_loads_as_auto_tokenizer_does(smollm_path, tmp_path):
    from transformers import AutoTokenizer

    from ptr.models.fast_tokenizer import load_saved_fast

    fast = load_saved_fast(smollm_path)
    assert fast is not None
    _same_tokenizer(AutoTokenizer.from_pretrained(smollm_path), fast, tmp_path)


def test_tokenizers_that_need_auto_tokenizer_take_its_path(tiny_path, tmp_path):
    """A folder that from_pretrained would treat differently is left to AutoTokenizer, and
    load_tokenizer still loads it."""
    import json
    import shutil

    from ptr.models.fast_tokenizer import load_saved_fast

    def variant(name: str, change) -> str:
        folder = tmp_path / name
        shutil.copytree(tiny_path, folder)
        change(folder)
        return str(folder)

    def edit_json(file: str, **values):
        def change(folder: Path):
            data = json.loads((folder / file).read_text())
            data.update(values)
            (folder / file).write_text(json.dumps(data))

        return change

    special_map = {"eos_token": {"content": "<|im_end|>", "lstrip": False, "rstrip": False}}
    cases = {
        "legacy_special_tokens": lambda f: (f / "special_tokens_map.json").write_text(
            json.dumps(special_map)
        ),
        "remote_code": edit_json("tokenizer_config.json", auto_map={"AutoTokenizer": ["x.Tok", None]}),
        "other_class": edit_json("tokenizer_config.json", tokenizer_class="LlamaTokenizer"),
        "rewritten_key": edit_json("tokenizer_config.json", add_bos_token=True),
        "token_object": edit_json("tokenizer_config.json", eos_token={"content": "<|im_end|>"}),
        "registered_class": edit_json("config.json", model_type="qwen2"),  # Qwen2's class is swapped in
    }
    for name, change in cases.items():
        folder = variant(name, change)
        assert load_saved_fast(folder) is None, name
    assert load_saved_fast("Qwen/Qwen2-7B") is None  # a hub id
    tokenizer = load_tokenizer(variant("loads", cases["rewritten_key"]))
    assert tokenizer("hi", add_special_tokens=False).input_ids
