"""The trained tokenizer's folder loads with ``AutoTokenizer.from_pretrained`` (offline, local folder)."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pipeline.locations import Location
from stages.tokenizer.hf_files import hf_tokenizer_files, special_token_roles, write_hf_tokenizer_files

TEXTS = ["Debian is a free operating system.", "Le système Debian est libre.", "Debian ist frei."] * 20


def _folder(tmp_path, specials: list[str], max_len: int | None = None):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tokenizer.json"))
    write_hf_tokenizer_files(Location.of(tmp_path), specials, model_max_length=max_len)
    return tok


def test_roles_from_the_spec_special_tokens():
    assert special_token_roles(["<|endoftext|>", "<|padding|>"]) == {"eos_token": "<|endoftext|>",
                                                                     "pad_token": "<|padding|>"}
    assert special_token_roles(["<s>", "</s>", "<unk>", "<pad>"]) == {
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    # no padding token: EOS pads
    assert special_token_roles(["<|endoftext|>"]) == {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    files = hf_tokenizer_files(["<|endoftext|>", "<|padding|>", "<|im_start|>"], model_max_length=2048)
    assert files["tokenizer_config.json"]["additional_special_tokens"] == ["<|im_start|>"]
    assert files["tokenizer_config.json"]["model_max_length"] == 2048


def test_auto_tokenizer_loads_the_folder_with_eos_and_pad(tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = _folder(tmp_path, ["<|endoftext|>", "<|padding|>"], max_len=64)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert hf.eos_token == "<|endoftext|>" and hf.pad_token == "<|padding|>"
    assert hf.eos_token_id == tok.token_to_id("<|endoftext|>")
    assert hf.pad_token_id == tok.token_to_id("<|padding|>")
    assert hf.model_max_length == 64
    batch = hf(["Debian", "Debian is a free operating system."], padding=True)
    ids = batch["input_ids"]
    assert len(ids[0]) == len(ids[1]) and ids[0][-1] == hf.pad_token_id
    assert batch["attention_mask"][0][-1] == 0
    assert hf.decode(tok.encode("Debian ist frei.").ids) == "Debian ist frei."
    assert json.loads((tmp_path / "special_tokens_map.json").read_text())["eos_token"] == "<|endoftext|>"
