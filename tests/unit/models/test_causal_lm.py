import math

import pytest
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer

from embedforge.config import ModelParams
from embedforge.models.causal_lm import CausalLMLoss, LMHead, LMScore, generate, make_causal
from embedforge.models.encoder import build_encoder

MAX_LENGTH = 32
# The tiny teacher's shape (tests/conftest.py), without dropout so that forward passes are comparable.
FITS_TINY_TEACHER = {"hidden_size": 64, "num_heads": 2, "intermediate_size": 128, "num_layers": 2, "dropout": 0.0}
SENTENCE = "A man is playing a guitar."
PROMPT, CONTINUATION = "A man is", "playing a guitar."


def params() -> ModelParams:
    return ModelParams(**FITS_TINY_TEACHER, teacher_layers=[1, 0], max_positions=64)


def build(tiny_teacher, seed: int = 0) -> SentenceTransformer:
    return build_encoder(params(), tiny_teacher, MAX_LENGTH, tiny_teacher, seed)


@pytest.fixture
def causal(tiny_teacher) -> SentenceTransformer:
    return make_causal(build(tiny_teacher))


def token_embeddings(model: SentenceTransformer, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    with torch.no_grad():
        return model[0]({"input_ids": input_ids, "attention_mask": attention_mask})["token_embeddings"]


def changed_after(model: SentenceTransformer, position: int, padded: bool) -> tuple[bool, bool]:
    """Whether changing the token at ``position`` of SENTENCE changes its token embeddings (before it, from it on).

    Padded, SENTENCE shares its batch with a shorter sentence: the attention mask then goes
    through transformers' mask building, unpadded through SDPA's own causal flag.
    """
    batch = model.tokenizer([SENTENCE, "Hello"] if padded else [SENTENCE], padding=True, return_tensors="pt")
    other = batch["input_ids"].clone()
    other[0, position] = model.tokenizer.convert_tokens_to_ids("dog")
    before = token_embeddings(model, batch["input_ids"], batch["attention_mask"])[0]
    after = token_embeddings(model, other, batch["attention_mask"])[0]
    return not torch.equal(before[:position], after[:position]), not torch.equal(before[position:], after[position:])


@pytest.mark.parametrize("padded", [False, True], ids=["no padding", "padding"])
def test_the_causal_mask_blocks_the_future(tiny_teacher, causal, padded):
    assert changed_after(build(tiny_teacher).eval(), 4, padded) == (True, True)  # bidirectional: the past sees it
    assert changed_after(causal.eval(), 4, padded) == (False, True)


def test_setting_is_decoder_on_a_built_model_alone_is_not_causal(tiny_teacher):
    """Why make_causal rebuilds: attention fixes its causality when constructed."""
    model = build(tiny_teacher).eval()
    model[0].auto_model.config.is_decoder = True
    assert changed_after(model, 4, padded=False)[0]


def test_make_causal_keeps_every_weight_and_the_mode(tiny_teacher):
    original = build(tiny_teacher).train()
    weights = {name: tensor.clone() for name, tensor in original.state_dict().items()}
    made = make_causal(original)
    assert made is original and made.training and made[0].auto_model.training
    assert made[0].auto_model.config.is_decoder and not made[0].auto_model.config.use_cache
    assert made.state_dict().keys() == weights.keys()
    assert all(torch.equal(made.state_dict()[name], tensor) for name, tensor in weights.items())


def test_a_saved_causal_student_reloads_causal(causal, tmp_path):
    causal.save(str(tmp_path / "student"))
    reloaded = SentenceTransformer(str(tmp_path / "student"), device="cpu")
    assert reloaded[0].auto_model.config.is_decoder
    assert changed_after(reloaded, 4, padded=False) == (False, True)
    assert torch.allclose(torch.tensor(reloaded.encode([SENTENCE])), torch.tensor(causal.encode([SENTENCE])), atol=1e-6)


def tiny_head(vocab_size: int = 5, hidden_size: int = 4) -> LMHead:
    torch.manual_seed(0)
    return LMHead(torch.nn.Embedding(vocab_size, hidden_size).weight)


def test_the_loss_is_next_token_cross_entropy_over_real_targets():
    head = tiny_head()
    hidden = torch.randn(2, 4, 4)
    input_ids = torch.tensor([[0, 1, 2, 3], [4, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    logits = head(hidden)
    # Sequence 0 predicts 1, 2, 3 from positions 0..2; sequence 1 predicts only 3 from position 0 (the rest is padding).
    expected = torch.stack(
        [
            *(F.cross_entropy(logits[0, t], input_ids[0, t + 1]) for t in range(3)),
            F.cross_entropy(logits[1, 0], input_ids[1, 1]),
        ]
    ).mean()
    loss = CausalLMLoss(head)(hidden, input_ids, mask)
    torch.testing.assert_close(loss, expected)
    # score sums in float32 and divides in Python: equal to the mean within float32's precision, not float64's
    score = CausalLMLoss(head).score(hidden, input_ids, mask)
    assert score.loss == pytest.approx(float(expected.detach()), rel=1e-6) and score.tokens == 4


def test_a_batch_without_targets_has_zero_loss_not_nan():
    hidden = torch.randn(2, 1, 4, requires_grad=True)
    loss = CausalLMLoss(tiny_head())(hidden, torch.tensor([[1], [2]]), torch.ones(2, 1))
    assert loss.item() == 0.0
    loss.backward()
    assert hidden.grad is not None


def test_token_accuracy_counts_correct_argmax_predictions():
    head = tiny_head(vocab_size=3, hidden_size=3)
    with torch.no_grad():
        head.dense.weight.copy_(torch.eye(3))
        head.dense.bias.zero_()
        head.word_embeddings.copy_(torch.eye(3))
    # Position t's hidden is the one-hot of the id it will predict best (after dense = identity, GELU, LayerNorm).
    hidden = 5 * torch.eye(3)[torch.tensor([[1, 2, 1, 0]])]
    input_ids = torch.tensor([[0, 1, 0, 2]])  # targets 1, 0, 2: the first right, the second wrong, the third padding
    score = CausalLMLoss(head).score(hidden, input_ids, torch.tensor([[1, 1, 1, 0]]))
    assert (score.tokens, score.correct) == (2, 1)
    assert score.token_accuracy == 0.5


def test_scores_aggregate_token_weighted_and_perplexity_is_exp_of_the_loss():
    total = LMScore()
    total.add(LMScore(loss_sum=6.0, tokens=3, correct=1))
    total.add(LMScore(loss_sum=1.0, tokens=1, correct=1))
    assert (total.loss, total.token_accuracy) == (7.0 / 4, 2 / 4)
    assert total.perplexity == math.exp(total.loss)


def test_perplexity_is_exp_of_a_computed_loss_and_overflows_to_inf():
    head = tiny_head()
    score = CausalLMLoss(head).score(torch.randn(1, 4, 4), torch.tensor([[0, 1, 2, 3]]), torch.ones(1, 4))
    assert score.perplexity == math.exp(score.loss) and score.perplexity > 1
    assert LMScore(loss_sum=1000.0, tokens=1).perplexity == math.inf


def test_an_empty_score_is_nan_not_a_division_error():
    assert math.isnan(LMScore().loss) and math.isnan(LMScore().token_accuracy) and math.isnan(LMScore().perplexity)


def test_the_head_is_tied_to_the_students_word_embeddings(causal):
    embeddings = causal[0].auto_model.get_input_embeddings().weight
    head = LMHead.for_student(causal)
    assert head.word_embeddings is embeddings
    assert head.word_embeddings.data_ptr() == embeddings.data_ptr()
    assert head.bias.shape == (embeddings.shape[0],)
    # Held, not registered: the optimizer walks the student and the objective and must see the matrix once.
    student = {id(parameter) for parameter in causal.parameters()}
    assert not student & {id(parameter) for parameter in CausalLMLoss(head).parameters()}
    features = causal.preprocess([SENTENCE])
    loss = CausalLMLoss(head)(causal(features)["token_embeddings"], features["input_ids"], features["attention_mask"])
    loss.backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0


def test_training_on_one_sentence_lowers_the_loss_and_generate_reproduces_it(causal):
    loss_fn = CausalLMLoss(LMHead.for_student(causal))
    optimizer = torch.optim.AdamW([*causal.parameters(), *loss_fn.parameters()], lr=1e-2)
    features = causal.preprocess([SENTENCE])
    causal.train()
    losses = []
    for _ in range(20):
        loss = loss_fn(causal(dict(features))["token_embeddings"], features["input_ids"], features["attention_mask"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10
    assert generate(causal, loss_fn.head, PROMPT) == CONTINUATION
    assert causal.training and loss_fn.head.training  # modes restored


def test_generate_stops_at_sep_and_returns_text(causal):
    head = LMHead.for_student(causal)
    with torch.no_grad():
        head.bias[causal.tokenizer.sep_token_id] = 1e4  # [SEP] always wins
    assert generate(causal, head, PROMPT) == ""
    with torch.no_grad():
        head.bias[causal.tokenizer.sep_token_id] = -1e4
        head.bias[causal.tokenizer.convert_tokens_to_ids("dog")] = 1e4
    assert generate(causal, head, PROMPT, max_new_tokens=3) == "dog dog dog"


def test_generate_stops_at_the_models_max_seq_length(causal):
    head = LMHead.for_student(causal)
    causal.max_seq_length = len(causal.tokenizer(PROMPT)["input_ids"]) + 1  # room for 2 new tokens after [CLS] a man is
    with torch.no_grad():
        head.bias[causal.tokenizer.convert_tokens_to_ids("dog")] = 1e4
    assert generate(causal, head, PROMPT) == "dog dog"
