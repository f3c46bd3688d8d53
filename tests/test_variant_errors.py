"""Bad variant input fails with one clear line naming the file and the field."""

import pytest
from typer.testing import CliRunner

from ablate.cli import app
from ablate.registry import VariantError, resolve

BASE = """family: llama
model: {block: attention, num_attention_heads: 4, num_key_value_heads: 2}
scales:
  tiny: {vocab_size: 64, hidden_size: 32, num_hidden_layers: 2, intermediate_size: 64, max_position_embeddings: 128}
"""


@pytest.fixture
def variants(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_VARIANTS", str(tmp_path))
    (tmp_path / "base.yaml").write_text(BASE)

    def write(name, text):
        (tmp_path / f"{name}.yaml").write_text(text)
        return tmp_path / f"{name}.yaml"

    return write


@pytest.mark.parametrize(
    "files, name, field, words",
    [
        ({}, "nosuch", "variant", "unknown variant 'nosuch'"),
        ({"a": "extend: b\n", "b": "extend: a\n"}, "a", "extend", "extend cycle: a -> b -> a"),
        ({"typo": "extend: base\nmodel: {num_atention_heads: 4}\n"}, "typo", "model.num_atention_heads", "did you mean 'num_attention_heads'"),
        ({"gqa": "extend: base\nmodel: {num_key_value_heads: 3}\n"}, "gqa", "num_key_value_heads", "not divisible by 3 KV heads"),
        ({"win": "extend: base\nmodel: {sliding_window: 512}\n"}, "win", "sliding_window", "larger than the context"),
        ({"orphan": "extend: nosuch\n"}, "orphan", "extend", "unknown variant 'nosuch'"),
        ({"typed": "extend: base\nmodel: {num_attention_heads: four}\n"}, "typed", "num_attention_heads", "must be int"),
        ({"top": "extends: base\n"}, "top", "extends", "unknown top-level field"),
        ({"sc": "extend: base\nscales: {huge: {}}\n"}, "sc", "scales.huge", "unknown scale"),
        ({"const": "extend: base\nmodel: {sliding_window: $window}\n"}, "const", "sliding_window", "refers to $window"),
        ({"mix": "extend: base\nmodel: {sliding_window: 8, kv_sharing: [[0, 1]], full_attention_layers: [0]}\n"}, "mix", "kv_sharing", "mixes full and sliding-window layers"),
    ],
)
def test_bad_variant_names_file_and_field(variants, files, name, field, words):
    for file, text in files.items():
        variants(file, text)
    with pytest.raises(VariantError) as err:
        resolve(name, "tiny")
    message = str(err.value)
    assert "\n" not in message
    assert err.value.field == field
    assert words in message
    if files:  # the file that set the bad value is named
        assert ".yaml" in message


def test_cli_prints_one_line_and_exits_nonzero(variants):
    variants("gqa", "extend: base\nmodel: {num_key_value_heads: 3}\n")
    result = CliRunner().invoke(app, ["show", "gqa"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "gqa.yaml" in lines[0] and "num_key_value_heads" in lines[0]


def test_unique_prefix_resolves():
    assert resolve("table1-13", "tiny").name == "table1-13-meta-tokens"
