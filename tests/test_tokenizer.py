"""Reading a T5 tokenizer folder: refusals of other models' tokenizers, and spiece.model-only folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixart_delta_core.errors import CheckpointError
from pixart_delta_core.text.encoder import load_tokenizer


def test_a_tokenizer_of_another_model_is_refused(tmp_path: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import Unigram, WordLevel

    Tokenizer(Unigram([("<unk>", 0.0), ("cat", -1.0), ("dog", -1.0)], 0, False)).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(
        CheckpointError, match="not a T5 tokenizer: expected padding as token 0 and end-of-text as token 1"
    ):
        load_tokenizer(tmp_path)
    Tokenizer(WordLevel({"[UNK]": 0, "cat": 1}, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(CheckpointError, match=r"not a T5 tokenizer: .* found padding None"):
        load_tokenizer(tmp_path)


def test_a_sentencepiece_only_tokenizer_loads_or_names_what_it_needs(tmp_path: Path) -> None:
    import sentencepiece

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a red cat sits on the mat\nan astronaut riding a horse\n" * 50)
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "spiece"), vocab_size=20, pad_id=0, eos_id=1, unk_id=2, bos_id=-1
    )
    (folder / "spiece.vocab").unlink()
    try:
        import google.protobuf  # noqa: F401
    except ImportError:
        with pytest.raises(CheckpointError, match="needs the protobuf package"):
            load_tokenizer(folder)
        return
    tokenizer = load_tokenizer(folder)
    assert tokenizer("").input_ids == [1] and tokenizer("a red cat").input_ids[-1] == 1
