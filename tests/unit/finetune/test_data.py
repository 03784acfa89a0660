"""Fine-tuning data: loading and validation errors, completion-only masking per format, packing."""

from __future__ import annotations

import json

import pytest

from finetune.data import (
    IGNORE,
    Collator,
    DataConfig,
    DataError,
    encode_row,
    load_rows,
    pack,
    split_train_val,
    tokenize_rows,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


CHAT = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris [1]."},
    {"role": "user", "content": "And of Spain?"},
    {"role": "assistant", "content": "Madrid."},
]}


def trained_text(tokenizer, ex):
    """The text of the tokens that carry a label, per contiguous run."""
    runs, cur = [], []
    for tok, lab in zip(ex["input_ids"], ex["labels"], strict=True):
        if lab != IGNORE:
            assert lab == tok
            cur.append(tok)
        elif cur:
            runs.append(tokenizer.decode(cur))
            cur = []
    if cur:
        runs.append(tokenizer.decode(cur))
    return runs


def test_messages_labels_cover_exactly_the_assistant_turns(tokenizer):
    ex = encode_row(tokenizer, CHAT, "messages")
    assert trained_text(tokenizer, ex) == ["Paris [1].<|im_end|>\n", "Madrid.<|im_end|>\n"]
    # everything else (system, user, role headers) is masked
    masked = tokenizer.decode([t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab == IGNORE])
    assert "Capital of France?" in masked and "Be brief." in masked and "Paris" not in masked
    assert masked.count("<|im_start|>assistant") == 2


def test_alpaca_row_trains_only_the_output(tokenizer):
    row = {"instruction": "Translate to French", "input": "cat", "output": "chat"}
    ex = encode_row(tokenizer, row, "alpaca")
    assert trained_text(tokenizer, ex) == ["chat<|im_end|>\n"]
    assert "Translate to French\n\ncat" in tokenizer.decode(ex["input_ids"])


def test_alpaca_without_chat_template_uses_the_plain_prompt(tokenizer):
    import copy

    plain = copy.copy(tokenizer)
    plain.chat_template = None
    ex = encode_row(plain, {"instruction": "Say hi", "output": "hi"}, "alpaca")
    assert trained_text(plain, ex) == ["hi" + plain.eos_token]
    with pytest.raises(DataError, match="no chat template"):
        encode_row(plain, CHAT, "messages")


def test_text_rows_train_every_token(tokenizer):
    ex = encode_row(tokenizer, {"text": "plain text to learn"}, "text")
    assert IGNORE not in ex["labels"] and ex["labels"] == ex["input_ids"]
    assert tokenizer.decode(ex["input_ids"]).endswith(tokenizer.eos_token)


def test_truncation_is_counted_and_rows_without_target_are_dropped(tokenizer):
    long_answer = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "word " * 200}]}
    long_prompt = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]}
    out = tokenize_rows(tokenizer, [long_answer, long_prompt, CHAT], "messages", max_length=64)
    assert out.truncated == 2 and out.dropped == 1 and len(out.examples) == 2
    assert all(len(e["input_ids"]) <= 64 for e in out.examples)
    assert out.stats["trained_tokens"] == out.trained_tokens > 0


def test_packing_keeps_whole_examples_and_restarts_positions():
    exs = [{"input_ids": [i] * n, "labels": [i] * n} for i, n in enumerate([5, 3, 4, 2, 6], 1)]
    bins = pack(exs, max_length=8)
    assert all(len(b["input_ids"]) <= 8 for b in bins)
    assert sorted(t for b in bins for t in b["input_ids"]) == sorted(t for e in exs for t in e["input_ids"])
    assert len(bins) == 3  # 20 tokens in bins of 8
    for b in bins:  # each example is contiguous and its positions start at 0
        ids, pos = b["input_ids"], b["position_ids"]
        starts = [i for i, p in enumerate(pos) if p == 0]
        for s, e in zip(starts, starts[1:] + [len(ids)], strict=True):
            assert len(set(ids[s:e])) == 1 and pos[s:e] == list(range(e - s))


def test_collator_pads_and_packed_batches_get_a_block_mask_from_positions():
    batch = [{"input_ids": [1, 2, 3], "labels": [IGNORE, 2, 3]}, {"input_ids": [4], "labels": [4]}]
    out = Collator(pad_id=0)(batch)
    assert out["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert out["labels"].tolist() == [[IGNORE, 2, 3], [4, IGNORE, IGNORE]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert Collator(pad_id=0, max_length=5)(batch)["input_ids"].shape == (2, 5)
    packed = Collator(pad_id=0)(pack([{"input_ids": [1, 2], "labels": [1, 2]},
                                      {"input_ids": [3], "labels": [3]}], 4))
    assert "attention_mask" not in packed and packed["position_ids"].tolist() == [[0, 1, 0]]


def test_packed_examples_do_not_attend_to_each_other(tiny_model_dir):
    """Logits of an example are the same alone and packed after another one (training: no KV cache)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    a = {"input_ids": [10, 11, 12, 13], "labels": [10, 11, 12, 13]}
    b = {"input_ids": [20, 21, 22], "labels": [20, 21, 22]}
    with torch.no_grad():
        alone = model(**Collator(0)([b]), use_cache=False).logits[0]
        packed_batch = Collator(0)(pack([a, b], 8))
        order = packed_batch["input_ids"][0].tolist()
        start = order.index(20)
        packed = model(**packed_batch, use_cache=False).logits[0, start:start + 3]
        leaky = model(**packed_batch, use_cache=True).logits[0, start:start + 3]
    assert torch.allclose(alone, packed, atol=1e-4)
    assert not torch.allclose(alone, leaky, atol=1e-4)  # why finetune.train turns the cache off


def test_split_is_deterministic_and_holds_out_at_least_one():
    items = list(range(20))
    tr, va = split_train_val(items, 0.1, seed=3)
    assert len(va) == 2 and sorted(tr + va) == items
    assert split_train_val(items, 0.1, seed=3) == (tr, va)
    assert split_train_val([1, 2, 3], 0.01, 0)[1] != []


def test_formats_are_detected_and_where_filters(tmp_path):
    p = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "i", "output": "o", "split": "train"},
                                          {"instruction": "j", "output": "p", "split": "test"}])
    rows, fmt, digest = load_rows(DataConfig(path=str(p), where={"split": "train"}))
    assert fmt == "alpaca" and len(rows) == 1 and len(digest) == 64
    p2 = write_jsonl(tmp_path / "b.jsonl", [{"text": "t"}])
    assert load_rows(DataConfig(path=str(p2)))[1] == "text"


def test_csv_parquet_json_and_saved_dataset_folder_load(tmp_path):
    import datasets
    import pandas as pd

    df = pd.DataFrame({"instruction": ["a", "b"], "output": ["x", "y"]})
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_parquet(tmp_path / "d.parquet")
    (tmp_path / "d.json").write_text(df.to_json(orient="records"))
    datasets.Dataset.from_pandas(df).save_to_disk(str(tmp_path / "saved"))
    for name in ("d.csv", "d.parquet", "d.json", "saved"):
        rows, fmt, _ = load_rows(DataConfig(path=str(tmp_path / name)))
        assert fmt == "alpaca" and [r["output"] for r in rows] == ["x", "y"], name


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"question": "q", "answer": "a"}], "cannot tell the format from the columns"),
        ([{"messages": [{"role": "user", "content": "hi"}]}], "row 1: no assistant turn"),
        ([CHAT, {"messages": [{"role": "robot", "content": "x"}]}], r"row 2: messages\[0\].role"),
        ([CHAT, CHAT, {"messages": "hello"}], "row 3: 'messages' must be a non-empty list"),
        ([{"instruction": "i", "output": ""}], "row 1: 'output' must be a non-empty string"),
    ],
)
def test_bad_rows_name_row_and_field(tmp_path, rows, message):
    p = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=message):
        load_rows(DataConfig(path=str(p)))


def test_non_utf8_empty_missing_and_unsupported_files(tmp_path):
    bad = tmp_path / "latin.jsonl"
    bad.write_bytes(json.dumps(CHAT).encode() + b"\n" + '{"text": "caf\xe9"}'.encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=r"latin.jsonl:2: line is not valid UTF-8"):
        load_rows(DataConfig(path=str(bad)))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no rows to train on"):
        load_rows(DataConfig(path=str(empty)))
    with pytest.raises(DataError, match="does not exist"):
        load_rows(DataConfig(path=str(tmp_path / "nope.jsonl")))
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        load_rows(DataConfig(path=str(tmp_path / "x.txt")))
    p = write_jsonl(tmp_path / "w.jsonl", [CHAT])
    with pytest.raises(DataError, match="no rows to train on after data.where"):
        load_rows(DataConfig(path=str(p), where={"split": "train"}) if False else
                  DataConfig(path=str(write_jsonl(tmp_path / "w2.jsonl", [dict(CHAT, split="test")])),
                             where={"split": "train"}))
    with pytest.raises(DataError, match="column 'split'"):
        load_rows(DataConfig(path=str(p), where={"split": "train"}))


def test_shipped_dataset_is_valid_and_split(repo_root):
    path = repo_root / "examples/finetune/context_qa.jsonl"
    train, fmt, _ = load_rows(DataConfig(path=str(path), where={"split": "train"}))
    test, _, _ = load_rows(DataConfig(path=str(path), where={"split": "test"}))
    assert fmt == "messages" and len(train) >= 300 and len(test) >= 50
    assert all(r["messages"][-1]["content"] == r["reference"] for r in train + test)
